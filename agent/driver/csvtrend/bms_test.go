package csvtrend

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// zones are the time zones the real exports were made in.
var zones = map[string]string{"ahu7/AHU7.csv": "America/Chicago", "ahu7/RTU11.csv": "America/New_York"}

func zoneOf(rel string) string {
	if z, ok := zones[rel]; ok {
		return z
	}
	return "America/Chicago" // the s7 folder
}

// countCells is an independent count of what a file holds: complete rows
// and non-empty cells per column, by plain string splitting (the real
// files have no quoted fields).
func countCells(t *testing.T, data []byte) (header []string, rows int, cells []int, partial int) {
	t.Helper()
	text := strings.TrimSuffix(string(data), "\n")
	if strings.ContainsRune(text, '"') {
		t.Fatal("fixture has quotes; countCells cannot count it")
	}
	lines := strings.Split(text, "\n")
	header = strings.Split(lines[0], ",")
	cells = make([]int, len(header))
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) != len(header) {
			partial++
			continue
		}
		rows++
		for i, c := range f {
			if strings.TrimSpace(c) != "" {
				cells[i]++
			}
		}
	}
	return header, rows, cells, partial
}

// TestBMSFiles imports every real export through the driver and checks it
// against an independent count of the file, plus facts read off the files.
func TestBMSFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(bmsDir, "*", "*.csv"))
	if err != nil || len(files) < 30 {
		t.Fatalf("found %d files in %s (%v)", len(files), bmsDir, err)
	}
	for _, src := range files {
		rel := filepath.ToSlash(strings.TrimPrefix(src, bmsDir+string(filepath.Separator)))
		t.Run(rel, func(t *testing.T) {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			header, rows, cells, partial := countCells(t, data)

			dir := t.TempDir()
			copyFile(t, src, dir)
			d, logs := newTestDriver(t, settingsFor(dir, "timezone: "+zoneOf(rel)))
			found, err := d.Discover(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(found) != len(header)-1 {
				t.Fatalf("discovered %d points, header has %d value columns", len(found), len(header)-1)
			}
			points := make([]driver.Point, len(found))
			for i, p := range found {
				p.ID = uint64(i + 1)
				points[i] = p
			}
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			got := byID(samples)
			total := 0
			for i := range points {
				if n := len(got[uint64(i+1)]); n != cells[i+1] {
					t.Errorf("column %q: %d samples, file has %d non-empty cells", points[i].Ref, n, cells[i+1])
				}
				total += cells[i+1]
			}
			if len(samples) != total {
				t.Errorf("%d samples, want %d", len(samples), total)
			}
			if partial > 0 && !strings.Contains(logs.String(), "skipped rows whose field count differs") {
				t.Errorf("partial row not reported:\n%s", logs)
			}
			if l := logs.String(); strings.Contains(l, "level=ERROR") || (total > 0 && !strings.Contains(l, "bad_cells=0")) {
				t.Errorf("unexpected problems:\n%s", logs)
			}
			if total == 0 {
				// Header only (S-7_FBD-SP.csv): nothing to return, still consumed.
				if samples != nil || rows != 0 {
					t.Errorf("header-only file gave %d samples over %d rows", len(samples), rows)
				}
			}
			// Times only move forward within a column, DST changes included.
			for id, ss := range got {
				for i := 1; i < len(ss); i++ {
					if ss[i].Time < ss[i-1].Time {
						t.Errorf("point %d: time goes back at sample %d: %s after %s", id, i, utc(ss[i].Time), utc(ss[i-1].Time))
						break
					}
				}
			}
			if err := d.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			if after := tree(t, dir); len(after) != 1 || after["processed/"+filepath.Base(src)] == "" {
				t.Errorf("after Commit: %v", names(after))
			}
		})
	}
}

// TestBMSFacts checks values and times read off the files by eye.
func TestBMSFacts(t *testing.T) {
	type fact struct {
		ref      string
		n        int
		first    string // UTC
		firstVal float64
		last     string
		lastVal  float64
		unit     string
	}
	tests := []struct {
		file  string
		facts []fact
	}{
		{"ahu7/AHU7.csv", []fact{
			// 2025-01-01 00:00:00 CST; the last complete row is line 6346, 10:30 CST.
			{"SAT", 6216, "2025-01-01T06:00:00Z", 62.492000579833984, "2025-03-07T16:30:00Z", 63.84199905395508, "°F"},
			{"SA Static Press", 6216, "2025-01-01T06:00:00Z", 0.0268750004470348, "2025-03-07T16:30:00Z", 1.5018999576568604, "inH₂O"},
		}},
		{"ahu7/RTU11.csv", []fact{
			// 01-Jan-26 12:00:00 AM EST ... 26-Mar-26 8:00:00 AM EDT; " -0.0" parses.
			{"RTU_11_DA_T", 2024, "2026-01-01T05:00:00Z", 61.1, "2026-03-26T12:00:00Z", 72.7, "°F"},
			{"RTU_11_DA1_P", 2024, "2026-01-01T05:00:00Z", 0, "2026-03-26T12:00:00Z", 0.4, "in/wc"},
			{"RTU_11_SF_S", 106, "", 0, "", 0, ""},
		}},
		{"s7/S-7_DA-T.csv", []fact{{"S-7_DA-T", 8640, "2022-05-07T17:00:00Z", 72.4, "2022-06-06T16:55:00Z", 75.8, "°F"}}},
		{"s7/DA-P.csv", []fact{{"DA-P", 8640, "2022-05-07T17:00:00Z", 1, "2022-06-06T16:55:00Z", 1, ""}}},
		{"s7/S-7_OCC-C.csv", []fact{{"S-7_OCC-C", 197, "2022-03-02T18:00:43Z", 1, "2022-06-06T12:00:01Z", 1, ""}}},
		{"s7/S-7_ECON-C.csv", []fact{{"S-7_ECON-C", 500, "2022-03-18T09:42:00Z", 0, "2022-06-06T15:54:00Z", 1, ""}}},
		{"s7/S-7_DA-H.csv", []fact{{"S-7_DA-H", 8640, "2022-05-07T17:00:00Z", 32.4, "2022-06-06T16:55:00Z", 50.1, "%RH"}}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			dir := t.TempDir()
			copyFile(t, filepath.Join(bmsDir, filepath.FromSlash(tt.file)), dir)
			d, _ := newTestDriver(t, settingsFor(dir, "timezone: "+zoneOf(tt.file)))
			found, err := d.Discover(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			units := map[string]string{}
			for _, p := range found {
				units[p.Ref] = p.Unit
			}
			var points []driver.Point
			for i, f := range tt.facts {
				points = append(points, driver.Point{ID: uint64(i + 1), Ref: f.ref})
			}
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			got := byID(samples)
			for i, f := range tt.facts {
				ss := got[uint64(i+1)]
				if len(ss) != f.n {
					t.Errorf("%s: %d samples, want %d", f.ref, len(ss), f.n)
					continue
				}
				if units[f.ref] != f.unit {
					t.Errorf("%s: unit %q, want %q", f.ref, units[f.ref], f.unit)
				}
				if f.first == "" {
					continue
				}
				a, z := ss[0], ss[len(ss)-1]
				if utc(a.Time) != f.first || a.Value != f.firstVal || utc(z.Time) != f.last || z.Value != f.lastVal {
					t.Errorf("%s: first %s %v, last %s %v; want %s %v, %s %v",
						f.ref, utc(a.Time), a.Value, utc(z.Time), z.Value, f.first, f.firstVal, f.last, f.lastVal)
				}
			}
		})
	}
}

// TestBMSDaylightSaving: RTU11 logs hourly across the start of EDT
// (08-Mar-26 1:00 AM EST, then 3:00 AM EDT): one hour apart.
func TestBMSDaylightSaving(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, filepath.Join(bmsDir, "ahu7", "RTU11.csv"), dir)
	d, _ := newTestDriver(t, settingsFor(dir, "timezone: America/New_York"))
	p := []driver.Point{{ID: 1, Ref: "RTU_11_DA_T"}}
	s, err := d.Read(t.Context(), p)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(s); i++ {
		if utc(s[i].Time) == "2026-03-08T07:00:00Z" {
			if prev := utc(s[i-1].Time); prev != "2026-03-08T06:00:00Z" {
				t.Errorf("3:00 AM EDT follows %s, want 1:00 AM EST = 06:00Z", prev)
			}
			if s[i].Value != 74.5 || s[i-1].Value != 74.5 {
				t.Errorf("values around the change: %v, %v", s[i-1].Value, s[i].Value)
			}
			return
		}
	}
	t.Fatal("no sample at 2026-03-08 3:00 AM EDT")
}

// TestBMSWrongZone: RTU11 read with the Chicago zone must fail loudly,
// naming file and line, not shift every timestamp by an hour.
func TestBMSWrongZone(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, filepath.Join(bmsDir, "ahu7", "RTU11.csv"), dir)
	d, logs := newTestDriver(t, settingsFor(dir, "timezone: America/Chicago"))
	if s, err := d.Read(t.Context(), []driver.Point{{ID: 1, Ref: "RTU_11_DA_T"}}); s != nil || err != nil {
		t.Fatalf("Read = %d samples, %v; want none", len(s), err)
	}
	for _, w := range []string{"RTU11.csv", `line 2: zone abbreviation \"EST\" is not used by time zone America/Chicago`} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %q:\n%s", w, logs)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "failed", "RTU11.csv")); err != nil {
		t.Errorf("RTU11.csv not moved to failed/: %v", err)
	}
}

func BenchmarkParseAHU7(b *testing.B) {
	data, err := os.ReadFile(filepath.Join(bmsDir, "ahu7", "AHU7.csv"))
	if err != nil {
		b.Fatal(err)
	}
	loc, _ := time.LoadLocation("America/Chicago")
	p := &parser{loc: loc, states: defaultStates, pointFrom: pointFromAuto}
	all := func(string) []uint64 { return []uint64{1} }
	b.SetBytes(int64(len(data)))
	var n int
	for b.Loop() {
		res, err := p.parse(b.Context(), "AHU7.csv", data, all)
		if err != nil {
			b.Fatal(err)
		}
		n = len(res.samples)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
}
