package modbus

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	gmodbus "github.com/goburrow/modbus"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

func items(tbl table, spans ...span) []*item {
	var out []*item
	for i, s := range spans {
		out = append(out, &item{area: area{1, tbl}, span: s, specs: []int{i}})
	}
	return out
}

func describe(blocks []block) string {
	var parts []string
	for _, b := range blocks {
		parts = append(parts, fmt.Sprintf("%s%d-%d", b.area.table, b.span.start, b.span.end))
	}
	return strings.Join(parts, " ")
}

func TestPlan(t *testing.T) {
	opts := planOptions{maxRegisters: 125, maxBits: 2000, maxGap: 4}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		items []*item
		lim   limits
		want  string
	}{
		{"contiguous", items(holding, span{0, 2}, span{2, 4}, span{4, 5}), limits{}, "hr0-5"},
		{"overlapping", items(holding, span{0, 2}, span{1, 2}, span{1, 3}), limits{}, "hr0-3"},
		{"small gap bridged", items(holding, span{0, 2}, span{6, 8}), limits{}, "hr0-8"},
		{"wide gap split", items(holding, span{0, 2}, span{7, 8}), limits{}, "hr0-2 hr7-8"},
		{"125 registers", items(holding, span{0, 100}, span{100, 125}, span{125, 126}), limits{}, "hr0-125 hr125-126"},
		{"learned max", items(holding, span{0, 10}, span{10, 20}, span{20, 30}), limits{okLen: 20, badLen: 21}, "hr0-20 hr20-30"},
		{"probing max", items(holding, span{0, 10}, span{10, 20}, span{20, 30}), limits{okLen: 10, badLen: 30}, "hr0-20 hr20-30"},
		{"cut", items(holding, span{0, 2}, span{4, 6}, span{6, 8}), limits{cuts: []int{4}}, "hr0-2 hr4-8"},
		{"hole skipped and not bridged", items(holding, span{0, 2}, span{3, 4}, span{5, 6}), limits{holes: []hole{{span: span{3, 4}, learned: now, refusals: 1}}}, "hr0-2 hr5-6"},
		{"hole due: asked alone", items(holding, span{0, 2}, span{3, 4}, span{4, 6}),
			limits{holes: []hole{{span: span{3, 4}, learned: now.Add(-holeRetryBase), refusals: 1}}}, "hr0-2 hr3-4 hr4-6"},
		{"hole refused thrice: rests 40 minutes", items(holding, span{0, 2}, span{3, 4}, span{4, 6}),
			limits{holes: []hole{{span: span{3, 4}, learned: now.Add(-30 * time.Minute), refusals: 3}}}, "hr0-2 hr4-6"},
		{"hole cut", items(holding, span{0, 2}, span{4, 6}, span{6, 8}), limits{holeCuts: []int{4}}, "hr0-2 hr4-8"},
		{"bits bridge 16x", items(coils, span{0, 1}, span{60, 61}, span{200, 201}), limits{}, "coil0-61 coil200-201"},
		{"unsupported table", items(input, span{0, 1}), limits{unsupported: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lim := tt.lim
			blocks, _ := plan(tt.items, func(area) *limits { return &lim }, now, opts)
			if got := describe(blocks); got != tt.want {
				t.Errorf("plan = %q, want %q", got, tt.want)
			}
		})
	}
	// Areas never mix.
	mixed := append(items(holding, span{0, 1}), items(input, span{1, 2})...)
	mixed = append(mixed, &item{area: area{2, holding}, span: span{1, 2}})
	blocks, _ := plan(mixed, func(area) *limits { return &limits{} }, now, opts)
	if len(blocks) != 3 {
		t.Errorf("three areas planned as %s", describe(blocks))
	}
}

func TestSplit(t *testing.T) {
	b := block{area: area{1, holding}, span: span{0, 30}, items: items(holding, span{0, 2}, span{4, 6}, span{20, 22}, span{22, 30})}
	l, r, atGap := b.split()
	if describe([]block{l, r}) != "hr0-6 hr20-30" || !atGap {
		t.Errorf("split at the widest gap: %s %s, at gap %v", describe([]block{l}), describe([]block{r}), atGap)
	}
	b = block{area: area{1, holding}, span: span{0, 4}, items: items(holding, span{0, 1}, span{1, 2}, span{2, 3}, span{3, 4})}
	l, r, atGap = b.split()
	if describe([]block{l, r}) != "hr0-2 hr2-4" || atGap {
		t.Errorf("split contiguous in the middle: %s, at gap %v", describe([]block{l, r}), atGap)
	}
}

func TestLimitsConverge(t *testing.T) {
	var l limits
	// A device whose limit is 40: the first read halved 100 into 25s.
	l.refused(100)
	l.succeeded(25)
	for range 10 {
		m := l.maxLen()
		if m <= 40 {
			l.succeeded(m)
		} else {
			l.refused(m)
		}
	}
	if l.maxLen() != 40 {
		t.Errorf("limit 40 probed to %d (ok %d, bad %d)", l.maxLen(), l.okLen, l.badLen)
	}
	l.succeeded(80) // a read past the "limit" worked: it was no limit
	if l.maxLen() != 0 {
		t.Errorf("after a long read worked, maxLen = %d, want none", l.maxLen())
	}
}

func TestHoleBackoff(t *testing.T) {
	tests := []struct {
		refusals int
		want     time.Duration
	}{
		{0, 10 * time.Minute}, {1, 10 * time.Minute}, {2, 20 * time.Minute}, {3, 40 * time.Minute},
		{6, 320 * time.Minute}, {7, 6 * time.Hour}, {1000, 6 * time.Hour},
	}
	for _, tt := range tests {
		if got := holeBackoff(tt.refusals); got != tt.want {
			t.Errorf("holeBackoff(%d) = %s, want %s", tt.refusals, got, tt.want)
		}
	}
}

// TestHoleLifecycle: a hole is learned once, refused again keeps it and
// doubles its wait, and a read that works takes its addresses out of it,
// with the cuts learned beside holes.
func TestHoleLifecycle(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var l limits
	if !l.refusedAlone(span{10, 14}, now) {
		t.Error("first refusal not reported as a new hole")
	}
	l.holeCuts = []int{10, 14}
	l.cuts = []int{30}
	if l.due(span{10, 14}, now.Add(holeRetryBase-time.Second)) || !l.due(span{10, 14}, now.Add(holeRetryBase)) {
		t.Errorf("a hole refused once is due after %s", holeRetryBase)
	}
	later := now.Add(holeRetryBase)
	if l.refusedAlone(span{10, 14}, later) {
		t.Error("a known hole refused again reported as new")
	}
	if h := l.holes[0]; len(l.holes) != 1 || h.refusals != 2 || !h.learned.Equal(later) || !h.retryAt().Equal(later.Add(2*holeRetryBase)) {
		t.Errorf("after a second refusal: %+v", l.holes)
	}
	if l.readable(span{0, 5}) {
		t.Error("a read beside the hole changed it")
	}
	if !l.readable(span{11, 12}) {
		t.Fatal("a read inside the hole did not change it")
	}
	want := []hole{{span{10, 11}, later, 2}, {span{12, 14}, later, 2}}
	if len(l.holes) != 2 || l.holes[0] != want[0] || l.holes[1] != want[1] {
		t.Errorf("hole after reading 11: %+v, want %+v", l.holes, want)
	}
	if l.holeCuts != nil || len(l.cuts) != 1 {
		t.Errorf("cuts after a hole shrank: hole cuts %v (want none), cuts %v (want [30])", l.holeCuts, l.cuts)
	}
	l.readable(span{10, 14})
	if len(l.holes) != 0 || !l.allows(span{0, 20}) {
		t.Errorf("after the whole hole answered: holes %+v, allows 0-20 %v", l.holes, l.allows(span{0, 20}))
	}
}

// recordTransport records the frames the guard lets through.
type recordTransport struct{ sent [][]byte }

func (r *recordTransport) Send(adu []byte) ([]byte, error) {
	r.sent = append(r.sent, adu)
	return nil, errors.New("recorded")
}

// TestGuardAtSend bypasses the packager: raw frames with write function
// codes are refused at Send and never reach the transport below.
func TestGuardAtSend(t *testing.T) {
	g := NewGuard(nil)
	rec := &recordTransport{}
	tr := g.Transporter(rec)
	frames := map[string][]byte{
		"write single register": {0, 1, 0, 0, 0, 6, 1, 6, 0, 0, 0, 1},
		"write multiple coils":  {0, 1, 0, 0, 0, 8, 1, 15, 0, 0, 0, 1, 1, 1},
		"43/13 CANopen":         {0, 1, 0, 0, 0, 5, 1, 43, 13, 0, 0},
		"43 without MEI":        {0, 1, 0, 0, 0, 2, 1, 43},
		"diagnostics":           {0, 1, 0, 0, 0, 6, 1, 8, 0, 1, 0, 0},
		"too short":             {0, 1, 0, 0, 0, 1, 1},
	}
	for name, f := range frames {
		if _, err := tr.Send(f); !errors.Is(err, driver.ErrRefused) {
			t.Errorf("%s: %v, want ErrRefused", name, err)
		}
	}
	if len(rec.sent) != 0 || g.Refused() != uint64(len(frames)) {
		t.Errorf("%d frames reached the transport, %d refused", len(rec.sent), g.Refused())
	}
	for _, fc := range []byte{1, 2, 3, 4} {
		tr.Send([]byte{0, 1, 0, 0, 0, 6, 1, fc, 0, 0, 0, 1})
	}
	tr.Send([]byte{0, 1, 0, 0, 0, 5, 1, 43, 14, 1, 0})
	if len(rec.sent) != 5 {
		t.Errorf("%d of 5 reads reached the transport", len(rec.sent))
	}
	// The packager refuses before a frame exists.
	pk := g.Packager(newPackager(1))
	for _, pdu := range []*gmodbus.ProtocolDataUnit{nil, {FunctionCode: 6, Data: []byte{0, 0, 0, 1}}, {FunctionCode: 43, Data: []byte{13}}} {
		if adu, err := pk.Encode(pdu); !errors.Is(err, driver.ErrRefused) || adu != nil {
			t.Errorf("Encode(%+v) = %x, %v; want ErrRefused", pdu, adu, err)
		}
	}
}
