package csvtrend

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestSplitHeader(t *testing.T) {
	tests := []struct{ in, ref, unit string }{
		{"SAT (°F)", "SAT", "°F"},
		{"RTU_11_DA_T(°F)", "RTU_11_DA_T", "°F"},
		{"SA Static Press (inH₂O)", "SA Static Press", "inH₂O"},
		{"Value (°F)", "Value", "°F"},
		{"RTU_11_RA_H(%RH)", "RTU_11_RA_H", "%RH"},
		{"  Econ Ena  ", "Econ Ena", ""},
		{"Flow (m(3)/h)", "Flow", "m(3)/h"},
		{"(%)", "(%)", ""},
		{"Odd)", "Odd)", ""},
		{"A (x) B", "A (x) B", ""},
		{"", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ref, unit := splitHeader(tt.in)
			if ref != tt.ref || unit != tt.unit {
				t.Errorf("splitHeader(%q) = %q, %q; want %q, %q", tt.in, ref, unit, tt.ref, tt.unit)
			}
		})
	}
}

func TestColumnsPointFrom(t *testing.T) {
	tests := []struct {
		pointFrom string
		file      string
		header    string
		want      string // refs joined by |, or an error substring prefixed with !
	}{
		{"auto", "/x/S-7_DA-T.csv", "Times,Value (°F)", "S-7_DA-T"},
		{"auto", "/x/DA-P.csv", "Date,duct_static", "DA-P"},
		{"auto", "/x/AHU7.csv", "timestamp,SAT (°F),MAT (°F)", "SAT|MAT"},
		{"auto", "/x/a.csv", "t,SAT,", "a"}, // a nameless trailing column does not count
		{"column", "/x/S-7_DA-T.csv", "Times,Value (°F)", "Value"},
		{"column", "/x/DA-P.csv", "Date,duct_static", "duct_static"},
		{"file", "/x/DA-P.csv", "Date,duct_static", "DA-P"},
		{"file", "/x/AHU7.csv", "t,SAT,MAT", "!point_from is file but the file has 2 value columns"},
		{"auto", "/x/.csv", "t,Value (%)", "Value"}, // no name to take
		{"auto", "/x/a.csv", "t", "!no value column"},
		{"auto", "/x/a.csv", "t,,", "!names no value column"},
		{"auto", "/x/a.csv", "t,SAT (°F),SAT", `!columns 2 and 3 both read as point "SAT"`},
		{"auto", "/x/a.csv", "2025-01-01 00:00:00,1.5", "!no header row"},
	}
	for _, tt := range tests {
		t.Run(tt.pointFrom+" "+tt.header, func(t *testing.T) {
			p := &parser{loc: time.UTC, states: defaultStates, pointFrom: tt.pointFrom}
			cols, err := p.header(tt.file, strings.NewReader("\xEF\xBB\xBF"+tt.header+"\n"))
			if strings.HasPrefix(tt.want, "!") {
				if err == nil || !strings.Contains(err.Error(), tt.want[1:]) {
					t.Fatalf("header: %v; want error containing %q", err, tt.want[1:])
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var refs []string
			for _, c := range cols {
				refs = append(refs, c.ref)
			}
			if got := strings.Join(refs, "|"); got != tt.want {
				t.Errorf("refs = %q, want %q", got, tt.want)
			}
		})
	}
}

// parseString parses content with every column mapped to an ID in header
// order (1, 2, ...).
func parseString(t *testing.T, p *parser, content string) (*fileResult, error) {
	t.Helper()
	ids := map[string]uint64{}
	return p.parse(t.Context(), "/x/t.csv", []byte(content), func(ref string) []uint64 {
		if ids[ref] == 0 {
			ids[ref] = uint64(len(ids) + 1)
		}
		return []uint64{ids[ref]}
	})
}

func TestParseCells(t *testing.T) {
	states := map[string]float64{"auto": 2}
	for k, v := range defaultStates {
		states[k] = v
	}
	p := &parser{loc: time.UTC, states: states, pointFrom: pointFromColumn}
	content := "Time,A,B (%),C\n" +
		"2025-01-01 00:00:00, -0.0,1.5,On\n" + // spaces around a number
		"2025-01-01 00:15:00,,2.5,UnOccupied\n" + // empty cell: not logged
		"2025-01-01 00:30:00,oops,NaN,Auto\n" + // bad, bad, custom state
		"2025-01-01 00:45:00,4,Inf,TRUE,,\n" + // trailing empty fields are fine
		"2025-01-01 01:00:00,5,6\n" + // short row: skipped
		"2025-01-01 01:15:00,5,6,7,8\n" + // long row: skipped
		"2025-01-01 01:30:00,\"7\",bad,false\n"
	res, err := parseString(t, p, content)
	if err != nil {
		t.Fatal(err)
	}
	if res.rows != 5 {
		t.Errorf("rows = %d, want 5", res.rows)
	}
	if got := fmt.Sprint(res.short); got != "[6 7]" {
		t.Errorf("short rows at lines %v, want [6 7]", res.short)
	}
	got := byID(res.samples)
	want := map[uint64][]float64{1: {0, 4, 7}, 2: {1.5, 2.5}, 3: {1, 0, 2, 1, 0}}
	for id, vals := range want {
		if len(got[id]) != len(vals) {
			t.Errorf("point %d: %d samples, want %d", id, len(got[id]), len(vals))
			continue
		}
		for i, v := range vals {
			if got[id][i].Value != v {
				t.Errorf("point %d sample %d = %v, want %v", id, i, got[id][i].Value, v)
			}
		}
	}
	if s := got[1][0]; math.Signbit(s.Value) != true || utc(s.Time) != "2025-01-01T00:00:00Z" {
		t.Errorf("first sample %+v: want -0 at 00:00", s)
	}
	if b := res.bad["A"]; b == nil || b.count != 1 || b.line != 4 || b.text != "oops" {
		t.Errorf("bad cells of A = %+v, want 1 at line 4", b)
	}
	if b := res.bad["B"]; b == nil || b.count != 3 || b.line != 4 {
		t.Errorf("bad cells of B = %+v, want 3 from line 4", b)
	}
}

func TestParseUnwantedColumnsSkipped(t *testing.T) {
	p := &parser{loc: time.UTC, states: defaultStates, pointFrom: pointFromAuto}
	res, err := p.parse(t.Context(), "/x/t.csv", []byte("t,A,B,C\n2025-01-01 00:00:00,1,2,3\n"), func(ref string) []uint64 {
		if ref == "B" {
			return []uint64{7, 8} // two points may read one column
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.samples) != 2 || res.samples[0].PointID != 7 || res.samples[1].PointID != 8 || res.samples[0].Value != 2 {
		t.Errorf("samples = %+v, want B's value for 7 and 8", res.samples)
	}
	if strings.Join(res.unused, ",") != "A,C" {
		t.Errorf("unused = %v, want A, C", res.unused)
	}
}

func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"empty", "", "empty file"},
		{"no value column", "Timestamp\n2025-01-01 00:00:00\n", "no value column"},
		{"no header", "2025-01-01 00:00:00,1\n2025-01-01 00:15:00,2\n", "no header row"},
		{"bad timestamp names line", "t,A\n2025-01-01 00:00:00,1\nlater,2\n", "line 3: timestamp \"later\""},
		{"wrong zone names line", "t,A\n07-May-22 12:00:00 PM CDT,1\n", "line 2: zone abbreviation \"CDT\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &parser{loc: mustLoc(t, "America/New_York"), states: defaultStates, pointFrom: pointFromAuto}
			_, err := parseString(t, p, tt.content)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parse: %v; want error containing %q", err, tt.want)
			}
		})
	}
}

// TestParseStrayQuote: a quote left open swallows the rest of the file
// into one field; that is a malformed row, reported, not a crash or a
// silently shifted column.
func TestParseStrayQuote(t *testing.T) {
	p := &parser{loc: time.UTC, states: defaultStates, pointFrom: pointFromAuto}
	res, err := parseString(t, p, "t,A\n2025-01-01 00:00:00,1\n\"2025-01-01 00:15:00\"x,2\n2025-01-01 00:30:00,3\n")
	if err != nil {
		t.Fatal(err)
	}
	if res.rows != 1 || len(res.samples) != 1 || fmt.Sprint(res.short) != "[3]" {
		t.Errorf("rows %d, samples %d, short %v; want 1, 1, [3]", res.rows, len(res.samples), res.short)
	}
}

func TestParseHonoursContext(t *testing.T) {
	p := &parser{loc: time.UTC, states: defaultStates, pointFrom: pointFromAuto}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.parse(ctx, "/x/t.csv", []byte("t,A\n2025-01-01 00:00:00,1\n"), func(string) []uint64 { return []uint64{1} }); err == nil {
		t.Fatal("parse with a cancelled context succeeded")
	}
}
