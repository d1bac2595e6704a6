package subprocess

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// encodeAnswer builds a child-to-parent frame as the host does.
func encodeAnswer(a answer) []byte {
	e := newEnc(a.typ, a.id)
	switch a.typ {
	case ansReady:
		e.withReady(a.version, a.caps)
	case ansError:
		e.uvarint(errorKinds(a.err))
		e.str(a.err.Error())
		e.counters(a.counters)
	case ansOK:
		e.counters(a.counters)
	case ansSamples:
		e.samples(a.samples)
		e.counters(a.counters)
		e.optBytes(a.state)
	case ansPoints:
		e.uvarint(uint64(len(a.points)))
		for _, p := range a.points {
			b, err := encodeSettings(p.Settings)
			if err != nil {
				panic(err)
			}
			e.point(p, b)
		}
	}
	return e.b
}

func TestAnswerRoundTrip(t *testing.T) {
	nan := math.Float64frombits(0x7ff0_0000_0000_0001) // a signalling NaN payload
	tests := []struct {
		name string
		a    answer
	}{
		{"ready", answer{typ: ansReady, id: 0, version: Version, caps: capDiscoverer | capCommitter}},
		{"ok", answer{typ: ansOK, id: 1 << 40}},
		{"no samples", answer{typ: ansSamples, id: 3}},
		{"samples", answer{typ: ansSamples, id: 4, samples: []telemetry.Sample{
			{PointID: math.MaxUint64, Time: math.MinInt64, Value: nan, Status: telemetry.StatusInAlarm},
			{PointID: 1, Time: -1, Value: math.Inf(-1), Status: telemetry.StatusOK},
			{PointID: 2, Time: 1767323045000, Value: math.Copysign(0, -1), Status: 255},
		}}},
		{"samples and counters", answer{typ: ansSamples, id: 6, samples: []telemetry.Sample{{PointID: 7, Time: 8, Value: 9}},
			counters: []driver.Counter{{Name: "requests", Value: math.MaxUint64}, {Name: driver.GuardRefusals, Value: 0}, {Name: "", Value: 1}}}},
		{"samples and a checkpoint", answer{typ: ansSamples, id: 8, samples: []telemetry.Sample{{PointID: 7, Time: 8, Value: 9}}, state: []byte(`{"version":1,"points":{"ns=2;s=x":{"last":1}}}`)}},
		{"an empty checkpoint", answer{typ: ansSamples, id: 9, state: []byte{}}},
		{"a checkpoint at the limit", answer{typ: ansSamples, id: 10, state: bytes.Repeat([]byte{0xff}, MaxState)}},
		{"points", answer{typ: ansPoints, id: 5, points: []driver.Point{
			{Ref: "ns=2;s=AHU1.SAT", Name: "AHU1 / SAT", Unit: "°C", Description: "supply air", Tags: []string{"ahu", ""}, Interval: -time.Second, Settings: yamlSettings("offset: 1\n")},
			{ID: 99, Ref: ""},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeAnswer(encodeAnswer(tt.a))
			if err != nil {
				t.Fatal(err)
			}
			if !answersEqual(got, tt.a) {
				t.Errorf("decoded %+v, want %+v", got, tt.a)
			}
		})
	}
}

// answersEqual compares answers, floats by their bits.
func answersEqual(a, b answer) bool {
	if a.typ != b.typ || a.id != b.id || a.version != b.version || a.caps != b.caps || len(a.samples) != len(b.samples) {
		return false
	}
	for i := range a.samples {
		x, y := a.samples[i], b.samples[i]
		if x.PointID != y.PointID || x.Time != y.Time || x.Status != y.Status || math.Float64bits(x.Value) != math.Float64bits(y.Value) {
			return false
		}
	}
	return reflect.DeepEqual(a.points, b.points) && slices.Equal(a.counters, b.counters) && bytes.Equal(a.state, b.state) && (a.state == nil) == (b.state == nil)
}

func TestErrorKindsCross(t *testing.T) {
	tests := []struct {
		err  error
		want []error
	}{
		{fmt.Errorf("reading: %w", driver.ErrConnLost), []error{driver.ErrConnLost}},
		{fmt.Errorf("busy: %w", driver.ErrBusy), []error{driver.ErrBusy}},
		{fmt.Errorf("guard: %w", driver.ErrRefused), []error{driver.ErrRefused}},
		{fmt.Errorf("connecting: %w", errors.Join(context.DeadlineExceeded, driver.ErrConnLost)), []error{driver.ErrConnLost, context.DeadlineExceeded}},
		{fmt.Errorf("read: %w", context.Canceled), []error{context.Canceled}},
		{errors.New("plain"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			got, err := decodeAnswer(encodeAnswer(answer{typ: ansError, id: 1, err: tt.err}))
			if err != nil {
				t.Fatal(err)
			}
			if got.err.Error() != tt.err.Error() {
				t.Errorf("message %q, want %q", got.err, tt.err)
			}
			for _, s := range kindErrors {
				want := false
				for _, w := range tt.want {
					want = want || w == s
				}
				if errors.Is(got.err, s) != want {
					t.Errorf("errors.Is(%v) = %v, want %v", s, !want, want)
				}
			}
		})
	}
}

func TestDecodeAnswerRefuses(t *testing.T) {
	samples := encodeAnswer(answer{typ: ansSamples, id: 1, samples: []telemetry.Sample{{PointID: 1, Time: 2, Value: 3}}})
	tests := []struct {
		name string
		body []byte
	}{
		{"empty", nil},
		{"unknown type", []byte{'?', 0}},
		{"truncated", samples[:len(samples)-1]},
		{"left over", append(bytes.Clone(samples), 0)},
		{"a count the frame cannot hold", []byte{ansSamples, 1, 0xff, 0xff, 0xff, 0xff, 0x07}},
		{"a string longer than the frame", []byte{ansError, 1, 0, 0xff, 0x01, 'x'}},
		{"a bad settings flag", append(binary.AppendUvarint([]byte{ansPoints, 1}, 1), 0, 0, 0, 0, 0, 0, 0, 7)},
		{"more counters than allowed", append(binary.AppendUvarint([]byte{ansSamples, 1, 0}, maxCounters+1), bytes.Repeat([]byte{0, 0}, maxCounters+1)...)},
		{"an overlong varint", []byte{ansOK, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}},
		{"samples without a state flag", samples[:len(samples)-1]},
		{"a bad state flag", append(bytes.Clone(samples[:len(samples)-1]), 2)},
		{"a state longer than the frame", append(bytes.Clone(samples[:len(samples)-1]), 1, 5, 'x')},
		{"a state above MaxState", append(binary.AppendUvarint(append(bytes.Clone(samples[:len(samples)-1]), 1), MaxState+1), bytes.Repeat([]byte{'x'}, MaxState+1)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a, err := decodeAnswer(tt.body); !errors.Is(err, errMalformed) {
				t.Errorf("decodeAnswer = %+v, %v; want an error wrapping errMalformed", a, err)
			}
		})
	}
}

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	for _, body := range [][]byte{{1}, bytes.Repeat([]byte{2}, 70000)} {
		if err := writeFrame(&buf, body); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{1, 70000} {
		b, err := readFrame(&buf)
		if err != nil || len(b) != n {
			t.Fatalf("readFrame = %d bytes, %v; want %d", len(b), err, n)
		}
	}
	if _, err := readFrame(&buf); !errors.Is(err, io.EOF) {
		t.Errorf("readFrame at the end = %v; want io.EOF", err)
	}
	if err := writeFrame(io.Discard, make([]byte, MaxFrame+1)); err == nil {
		t.Error("writeFrame wrote a frame above MaxFrame")
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"zero length", []byte{0, 0, 0, 0}},
		{"above the limit, refused before allocating", []byte{0xff, 0xff, 0xff, 0xff}},
		{"cut short", []byte{0, 0, 0, 9, 1, 2}},
		{"header cut short", []byte{0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := readFrame(bytes.NewReader(tt.in)); !errors.Is(err, errMalformed) {
				t.Errorf("readFrame = %v; want an error wrapping errMalformed", err)
			}
		})
	}
}

// TestSettingsCross carries the kinds of settings the agent has: the
// configuration's YAML, a driver's own fixed type, none, and empty.
func TestSettingsCross(t *testing.T) {
	type ps struct {
		Offset float64 `yaml:"offset"`
		Mode   string  `yaml:"mode"`
	}
	tests := []struct {
		name string
		in   driver.Settings
		want ps
	}{
		{"yaml", drivertest.YAML("offset: 1.5\nmode: subscribe\n"), ps{1.5, "subscribe"}},
		{"empty", drivertest.YAML(""), ps{}},
		{"carried", yamlSettings("mode: poll"), ps{Mode: "poll"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := encodeSettings(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			var got ps
			if err := yamlSettings(b).Decode(&got); err != nil || got != tt.want {
				t.Errorf("carried settings decode to %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if b, err := encodeSettings(nil); b != nil || err != nil {
		t.Errorf("encodeSettings(nil) = %q, %v; want nil", b, err)
	}
}

// TestStartCarriesDevice checks the start frame the child decodes.
func TestStartCarriesDevice(t *testing.T) {
	points := []driver.Point{{ID: 1, Ref: "a", Settings: drivertest.YAML("offset: 2")}, {ID: 2, Ref: "b", Tags: []string{"t"}}}
	body, err := encodeStart(0, start{version: Version, driver: "opcua", device: "ahu", dataDir: "/var/lib/sightglass", level: slog.LevelWarn, interval: 15 * time.Second, settings: drivertest.YAML("endpoint: opc.tcp://127.0.0.1:4840"), points: points})
	if err != nil {
		t.Fatal(err)
	}
	c, err := decodeCall(body)
	if err != nil {
		t.Fatal(err)
	}
	s := c.start
	if c.typ != msgStart || s.version != Version || s.driver != "opcua" || s.device != "ahu" || s.dataDir != "/var/lib/sightglass" || s.level != slog.LevelWarn || s.interval != 15*time.Second || len(s.points) != 2 {
		t.Fatalf("decoded start %+v", s)
	}
	var dev struct {
		Endpoint string `yaml:"endpoint"`
	}
	if err := s.settings.Decode(&dev); err != nil || dev.Endpoint != "opc.tcp://127.0.0.1:4840" {
		t.Errorf("device settings %+v, %v", dev, err)
	}
	if s.points[1].Tags[0] != "t" || !strings.Contains(string(s.points[0].Settings.(yamlSettings)), "offset: 2") {
		t.Errorf("points %+v", s.points)
	}
}

// TestRestoreCall checks the restore call the child decodes, and that it
// refuses one without a state.
func TestRestoreCall(t *testing.T) {
	tests := []struct {
		name  string
		state []byte
	}{
		{"a state", []byte(`{"version":1}`)},
		{"an empty state", []byte{}},
		{"binary", []byte{0, 0xff, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnc(msgRestore, 3)
			e.uvarint(uint64(time.Second))
			e.optBytes(tt.state)
			c, err := decodeCall(e.b)
			if err != nil {
				t.Fatal(err)
			}
			if c.typ != msgRestore || c.id != 3 || c.timeout != time.Second || !bytes.Equal(c.state, tt.state) || c.state == nil {
				t.Errorf("decoded %+v, want restore 3 of %q", c, tt.state)
			}
		})
	}
	none := newEnc(msgRestore, 4)
	none.uvarint(0)
	none.optBytes(nil)
	if c, err := decodeCall(none.b); !errors.Is(err, errMalformed) {
		t.Errorf("a restore without a state decoded to %+v, %v; want errMalformed", c, err)
	}
}

// holder is comparable as a type, but an incomparable value in its field
// makes == panic.
type holder struct{ v any }

func (holder) Decode(any) error { return nil }

func TestSamePoint(t *testing.T) {
	cfg := drivertest.YAML("offset: 1")
	base := driver.Point{ID: 1, Ref: "a", Tags: []string{"x"}, Settings: cfg}
	tests := []struct {
		name string
		p    driver.Point
		want bool
	}{
		{"same", base, true},
		{"other name", driver.Point{ID: 1, Ref: "a", Name: "n", Tags: []string{"x"}, Settings: cfg}, false},
		{"other tags", driver.Point{ID: 1, Ref: "a", Settings: cfg}, false},
		{"other settings", driver.Point{ID: 1, Ref: "a", Tags: []string{"x"}, Settings: drivertest.YAML("offset: 2")}, false},
		{"no settings", driver.Point{ID: 1, Ref: "a", Tags: []string{"x"}}, false},
		{"incomparable settings", driver.Point{ID: 1, Ref: "a", Tags: []string{"x"}, Settings: holder{[]int{1}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := base
			if tt.name == "incomparable settings" {
				b.Settings = holder{[]int{1}}
			}
			if got := samePoint(tt.p, b); got != tt.want {
				t.Errorf("samePoint = %v, want %v", got, tt.want)
			}
		})
	}
}
