package modbus

import (
	"errors"
	"fmt"
	"strings"
	"testing"

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
		{"hole skipped and not bridged", items(holding, span{0, 2}, span{3, 4}, span{5, 6}), limits{holes: []span{{3, 4}}}, "hr0-2 hr5-6"},
		{"bits bridge 16x", items(coils, span{0, 1}, span{60, 61}, span{200, 201}), limits{}, "coil0-61 coil200-201"},
		{"unsupported table", items(input, span{0, 1}), limits{unsupported: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lim := tt.lim
			blocks, _ := plan(tt.items, func(area) *limits { return &lim }, opts)
			if got := describe(blocks); got != tt.want {
				t.Errorf("plan = %q, want %q", got, tt.want)
			}
		})
	}
	// Areas never mix.
	mixed := append(items(holding, span{0, 1}), items(input, span{1, 2})...)
	mixed = append(mixed, &item{area: area{2, holding}, span: span{1, 2}})
	blocks, _ := plan(mixed, func(area) *limits { return &limits{} }, opts)
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
