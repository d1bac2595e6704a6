package csvtrend

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

const (
	fileA = "t,SAT (°F),MAT (°F)\n2025-01-01 00:00:00,55,60\n2025-01-01 00:15:00,56,61\n"
	fileB = "t,SAT (°F),MAT (°F)\n2025-01-01 00:30:00,57,\n"
)

var satMat = []driver.Point{{ID: 1, Ref: "SAT"}, {ID: 2, Ref: "MAT"}}

func settingsFor(path string, extra ...string) string {
	return "path: " + path + "\nsettle: 0s\n" + strings.Join(extra, "\n")
}

func TestReadThenCommit(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "b.csv", fileB)
	writeFile(t, dir, "a.csv", fileA)
	writeFile(t, dir, "notes.txt", "not a trend file")
	d, _ := newTestDriver(t, settingsFor(dir), satMat...)
	ctx := t.Context()

	s, err := d.Read(ctx, satMat)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 4 || utc(s[0].Time) != "2025-01-01T00:00:00Z" {
		t.Fatalf("first Read: %+v; want a.csv's 4 samples", s)
	}
	if got := names(tree(t, dir)); !slices.Equal(got, []string{"a.csv", "b.csv", "notes.txt"}) {
		t.Errorf("files moved before Commit: %v", got)
	}

	s, err = d.Read(ctx, satMat)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 || s[0].Value != 57 {
		t.Fatalf("second Read: %+v; want b.csv's one sample, not a.csv again", s)
	}
	if s, err := d.Read(ctx, satMat); s != nil || err != nil {
		t.Fatalf("third Read = %v, %v; want nothing", s, err)
	}

	before := tree(t, dir)
	if err := d.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	after := tree(t, dir)
	if got := names(after); !slices.Equal(got, []string{"notes.txt", "processed/a.csv", "processed/b.csv"}) {
		t.Fatalf("after Commit: %v", got)
	}
	if after["processed/a.csv"] != before["a.csv"] || after["processed/b.csv"] != before["b.csv"] {
		t.Error("Commit changed a file's bytes")
	}
	if s, err := d.Read(ctx, satMat); s != nil || err != nil {
		t.Fatalf("Read after Commit = %v, %v; want nothing", s, err)
	}

	// A new export with a name already in processed/ keeps both.
	writeFile(t, dir, "a.csv", fileB)
	if s, err := d.Read(ctx, satMat); len(s) != 1 || err != nil {
		t.Fatalf("Read of the new a.csv = %v, %v", s, err)
	}
	if err := d.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := names(tree(t, dir)); !slices.Equal(got, []string{"notes.txt", "processed/a.1.csv", "processed/a.csv", "processed/b.csv"}) {
		t.Errorf("after second Commit: %v", got)
	}
}

// TestCrashBeforeCommit: without Commit nothing moves, so the next driver
// (after a restart) reads the same files again.
func TestCrashBeforeCommit(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.csv", fileA)
	d1, _ := newTestDriver(t, settingsFor(dir), satMat...)
	if s, err := d1.Read(t.Context(), satMat); len(s) != 4 || err != nil {
		t.Fatalf("Read = %d samples, %v", len(s), err)
	}
	d1.Close()
	if err := d1.Commit(t.Context()); err == nil {
		t.Error("Commit after Close succeeded")
	}
	d2, _ := newTestDriver(t, settingsFor(dir), satMat...)
	if s, err := d2.Read(t.Context(), satMat); len(s) != 4 || err != nil {
		t.Fatalf("Read after restart = %d samples, %v; want a.csv again", len(s), err)
	}
}

func TestReadSkipsFilesWithoutWantedSamples(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "1-header-only.csv", "Timestamp,Value\n")
	writeFile(t, dir, "2-other.csv", "t,RAT\n2025-01-01 00:00:00,70\n")
	writeFile(t, dir, "3-a.csv", fileA)
	d, logs := newTestDriver(t, settingsFor(dir, "point_from: column"), satMat...)
	s, err := d.Read(t.Context(), satMat)
	if err != nil || len(s) != 4 {
		t.Fatalf("Read = %d samples, %v; want 3-a.csv's 4", len(s), err)
	}
	if err := d.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := names(tree(t, dir)); !slices.Equal(got, []string{"processed/1-header-only.csv", "processed/2-other.csv", "processed/3-a.csv"}) {
		t.Errorf("after Commit: %v", got)
	}
	if n := strings.Count(logs.String(), "ignoring columns no configured point reads"); n != 2 {
		t.Errorf("unused columns reported %d times, want once per column set:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "columns=RAT") {
		t.Errorf("log does not name the unused column RAT:\n%s", logs)
	}
}

func TestReadNoPointsConsumesNothing(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.csv", fileA)
	d, _ := newTestDriver(t, settingsFor(dir))
	if s, err := d.Read(t.Context(), nil); s != nil || err != nil {
		t.Fatalf("Read(nil) = %v, %v", s, err)
	}
	if err := d.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := names(tree(t, dir)); !slices.Equal(got, []string{"a.csv"}) {
		t.Errorf("Read with no points consumed files: %v", got)
	}
}

func TestFailedFilesMovedAside(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "1-empty.csv", "")
	writeFile(t, dir, "2-noheader.csv", "2025-01-01 00:00:00,1\n")
	writeFile(t, dir, "3-badtime.csv", "t,SAT\n2025-01-01 00:00:00,1\nnot a time,2\n")
	writeFile(t, dir, "4-zone.csv", "t,SAT\n07-May-22 12:00:00 PM EDT,1\n")
	writeFile(t, dir, "5-good.csv", fileA)
	d, logs := newTestDriver(t, settingsFor(dir, "timezone: America/Chicago", "failed_dir: rejects"), satMat...)
	s, err := d.Read(t.Context(), satMat)
	if err != nil || len(s) != 4 {
		t.Fatalf("Read = %d samples, %v; want the good file's 4 past the bad ones", len(s), err)
	}
	want := []string{"5-good.csv", "rejects/1-empty.csv", "rejects/2-noheader.csv", "rejects/3-badtime.csv", "rejects/4-zone.csv"}
	if got := names(tree(t, dir)); !slices.Equal(got, want) {
		t.Errorf("files = %v, want %v", got, want)
	}
	for _, w := range []string{"3-badtime.csv", `line 3: timestamp \"not a time\"`, "4-zone.csv", `line 2: zone abbreviation \"EDT\"`, "no header row"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %q:\n%s", w, logs)
		}
	}
}

func TestSingleFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "export.csv", fileA)
	writeFile(t, dir, "other.csv", fileB)
	d, _ := newTestDriver(t, settingsFor(path), satMat...)
	if s, err := d.Read(t.Context(), satMat); len(s) != 4 || err != nil {
		t.Fatalf("Read = %d samples, %v", len(s), err)
	}
	if s, err := d.Read(t.Context(), satMat); s != nil || err != nil {
		t.Fatalf("second Read = %v, %v; want nothing (other.csv is not watched)", s, err)
	}
	if err := d.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := names(tree(t, dir)); !slices.Equal(got, []string{"other.csv", "processed/export.csv"}) {
		t.Errorf("files = %v", got)
	}
	if s, err := d.Read(t.Context(), satMat); s != nil || err != nil {
		t.Fatalf("Read after the file moved = %v, %v; want nothing", s, err)
	}
}

// TestUnmovableFile: when the file cannot be moved (read-only share), it is
// remembered and not read again while its content is the same.
func TestUnmovableFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "export.csv", fileA)
	// A processed_dir below a regular file cannot be created, even by root.
	blocker := writeFile(t, t.TempDir(), "blocker", "")
	d, logs := newTestDriver(t, settingsFor(path, "processed_dir: "+filepath.Join(blocker, "sub")), satMat...)
	if s, err := d.Read(t.Context(), satMat); len(s) != 4 || err != nil {
		t.Fatalf("Read = %d samples, %v", len(s), err)
	}
	if err := d.Commit(t.Context()); err != nil {
		t.Fatalf("Commit: %v; an unmovable file is logged, not an error", err)
	}
	if !strings.Contains(logs.String(), "cannot move trend file to processed_dir") {
		t.Errorf("log does not report the failed move:\n%s", logs)
	}
	if s, err := d.Read(t.Context(), satMat); s != nil || err != nil {
		t.Fatalf("Read after failed move = %v, %v; want nothing", s, err)
	}
	// Touched but unchanged: still not read again.
	later := old.Add(time.Minute)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if s, err := d.Read(t.Context(), satMat); s != nil || err != nil {
		t.Fatalf("Read after touch = %v, %v; want nothing", s, err)
	}
	// Rewritten: a new export, read again.
	writeFile(t, dir, "export.csv", fileB)
	if s, err := d.Read(t.Context(), satMat); len(s) != 1 || err != nil {
		t.Fatalf("Read after rewrite = %d samples, %v; want 1", len(s), err)
	}
}

func TestSettle(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "a.csv", fileA)
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		t.Fatal(err)
	}
	d, _ := newTestDriver(t, "path: "+dir+"\nsettle: 1h", satMat...)
	if s, err := d.Read(t.Context(), satMat); s != nil || err != nil {
		t.Fatalf("Read of a file still being written = %v, %v; want nothing", s, err)
	}
	d.now = func() time.Time { return now.Add(2 * time.Hour) }
	if s, err := d.Read(t.Context(), satMat); len(s) != 4 || err != nil {
		t.Fatalf("Read once settled = %d samples, %v", len(s), err)
	}
}

// TestFileChangedAfterRead: rows appended after the read must not be lost
// by moving the file; it is read again whole.
func TestFileChangedAfterRead(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "a.csv", fileA)
	d, logs := newTestDriver(t, settingsFor(dir), satMat...)
	if s, err := d.Read(t.Context(), satMat); len(s) != 4 || err != nil {
		t.Fatalf("Read = %d samples, %v", len(s), err)
	}
	writeFile(t, dir, "a.csv", fileA+"2025-01-01 00:30:00,57,62\n")
	later := old.Add(time.Minute)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "changed after it was read") {
		t.Errorf("log does not report the change:\n%s", logs)
	}
	if s, err := d.Read(t.Context(), satMat); len(s) != 6 || err != nil {
		t.Fatalf("Read after the change = %d samples, %v; want all 6", len(s), err)
	}
}

func TestStates(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.csv", "t,Mode,Occ\n"+
		"2025-01-01 00:00:00,Auto,Occupied\n"+
		"2025-01-01 00:15:00,hand,UnOccupied\n"+
		"2025-01-01 00:30:00,Off,standby\n")
	points := []driver.Point{{ID: 1, Ref: "Mode"}, {ID: 2, Ref: "Occ"}}
	d, logs := newTestDriver(t, settingsFor(dir, "states: {Auto: 2, HAND: 3, unoccupied: -1}"), points...)
	s, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	got := byID(s)
	var mode, occ []float64
	for _, x := range got[1] {
		mode = append(mode, x.Value)
	}
	for _, x := range got[2] {
		occ = append(occ, x.Value)
	}
	if !slices.Equal(mode, []float64{2, 3, 0}) || !slices.Equal(occ, []float64{1, -1}) {
		t.Errorf("Mode = %v, Occ = %v; want [2 3 0], [1 -1]", mode, occ)
	}
	if !strings.Contains(logs.String(), "column=Occ count=1 first_line=4 text=standby") {
		t.Errorf("unknown state not reported with its line:\n%s", logs)
	}
}

func TestDiscover(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, filepath.Join(bmsDir, "ahu7", "AHU7.csv"), dir)
	copyFile(t, filepath.Join(bmsDir, "s7", "S-7_DA-T.csv"), dir)
	copyFile(t, filepath.Join(bmsDir, "s7", "DA-P.csv"), dir)
	writeFile(t, dir, "broken.csv", "")
	before := tree(t, dir)
	d, logs := newTestDriver(t, settingsFor(dir, "timezone: America/Chicago"))
	points, err := d.Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range points {
		if p.ID != 0 || p.Name != p.Ref {
			t.Errorf("discovered %+v: want ID 0 and Name = Ref", p)
		}
		got[p.Ref] = p.Unit
	}
	want := map[string]string{
		"SAT": "°F", "SA Static Press": "inH₂O", "Clg Vlv Cmd": "%", "Econ Ena": "", // AHU7.csv
		"S-7_DA-T": "°F", // single Value column: the file's name
		"DA-P":     "",   // single column with a name: still the file's name under auto
	}
	for ref, unit := range want {
		if u, ok := got[ref]; !ok || u != unit {
			t.Errorf("discovered %q unit %q (found %v); want unit %q", ref, u, ok, unit)
		}
	}
	if len(points) != 20+2 {
		t.Errorf("discovered %d points, want 22", len(points))
	}
	if !strings.Contains(logs.String(), "broken.csv") {
		t.Errorf("broken header not logged:\n%s", logs)
	}
	if after := tree(t, dir); len(after) != len(before) {
		t.Errorf("Discover moved files: %v", names(after))
	}
	// Discovery consumed nothing.
	s, err := d.Read(t.Context(), []driver.Point{{ID: 9, Ref: "SAT"}})
	if err != nil || len(s) == 0 {
		t.Fatalf("Read after Discover = %d samples, %v", len(s), err)
	}
}

func TestLifecycleErrors(t *testing.T) {
	dir := t.TempDir()
	d, err := newDriver(driver.Device{Name: "x", Settings: yamlSettings(settingsFor(dir))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read(t.Context(), satMat); !errors.Is(err, errNotConnected) {
		t.Errorf("Read before Connect: %v", err)
	}
	missing, err := newDriver(driver.Device{Name: "x", Settings: yamlSettings(settingsFor(filepath.Join(dir, "nope")))})
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.Connect(t.Context()); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "settings.path") {
		t.Errorf("Connect to a missing path: %v", err)
	}
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The folder vanishing (a share unmounted) is a lost connection.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read(t.Context(), satMat); !errors.Is(err, driver.ErrConnLost) {
		t.Errorf("Read of a vanished folder: %v; want ErrConnLost", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := d.Connect(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Connect(cancelled): %v", err)
	}
}
