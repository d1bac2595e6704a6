package csvtrend

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
)

// TestConformance runs the driver kit. For csvtrend the "wire" is the
// export folder: Writes reports any source file whose bytes changed or
// vanished (moving is allowed) and any file the driver created.
func TestConformance(t *testing.T) {
	var dir string
	var original map[string]string // name -> hash
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			dir = t.TempDir()
			copyFile(t, filepath.Join(bmsDir, "ahu7", "AHU7.csv"), dir)
			copyFile(t, filepath.Join(bmsDir, "s7", "S-7_DA-T.csv"), dir)
			copyFile(t, filepath.Join(bmsDir, "s7", "S-7_OCC-C.csv"), dir)
			original = tree(t, dir)
			points := []driver.Point{
				{ID: 11, Ref: "SAT", Name: "SAT"}, // AHU7.csv is read first
				{ID: 12, Ref: "MAT", Name: "MAT"},
				{ID: 13, Ref: "S-7_DA-T", Name: "S-7_DA-T"},
				{ID: 14, Ref: "S-7_OCC-C", Name: "S-7_OCC-C"},
			}
			d, err := New(driver.Device{
				Name:     "conformance",
				Settings: yamlSettings(settingsFor(dir, "timezone: America/Chicago")),
				Points:   points,
			})
			if err != nil {
				t.Fatal(err)
			}
			return d, points
		},
		Writes: func() []string { return sourceWrites(dir, original) },
	})
}

// sourceWrites compares the files under dir with original (name -> hash):
// a source whose bytes are nowhere to be found any more, or a file with
// bytes that were not there before, is a write.
func sourceWrites(dir string, original map[string]string) []string {
	files, err := hashTree(dir)
	if err != nil {
		return []string{"cannot check the folder: " + err.Error()}
	}
	now := map[string]bool{}
	var out []string
	for name, hash := range files {
		now[hash] = true
		if !containsValue(original, hash) {
			out = append(out, fmt.Sprintf("%s: created or modified", name))
		}
	}
	for name, hash := range original {
		if !now[hash] {
			out = append(out, fmt.Sprintf("%s: bytes changed or file removed", name))
		}
	}
	slices.Sort(out)
	return out
}

// TestSourceWrites proves the harness's write check can fail.
func TestSourceWrites(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.csv", fileA)
	writeFile(t, dir, "b.csv", fileB)
	original := tree(t, dir)
	if w := sourceWrites(dir, original); len(w) != 0 {
		t.Fatalf("untouched folder reports %v", w)
	}
	if _, err := moveFile(filepath.Join(dir, "a.csv"), filepath.Join(dir, "processed")); err != nil {
		t.Fatal(err)
	}
	if w := sourceWrites(dir, original); len(w) != 0 {
		t.Fatalf("a move reports %v", w)
	}
	writeFile(t, dir, "b.csv", fileB+"2025-01-01 00:45:00,58,63\n")
	writeFile(t, dir, "new.csv", "x")
	want := []string{"b.csv: bytes changed or file removed", "b.csv: created or modified", "new.csv: created or modified"}
	if w := sourceWrites(dir, original); !slices.Equal(w, want) {
		t.Fatalf("writes = %q, want %q", w, want)
	}
}

func containsValue(m map[string]string, v string) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}
