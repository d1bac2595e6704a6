package csvtrend

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// TestMaxFileSize: a file over settings.max_file_size is refused with a
// log line naming it and the cap (once, however often the folder is
// polled), left in place unread, never moved by Commit, and does not stop
// the files beside it; once it is cut down under the cap it is read.
func TestMaxFileSize(t *testing.T) {
	// fileA is 74 bytes and fileB 42: a 64-byte cap takes b.csv only.
	big := fileA
	tests := []struct {
		name   string
		single bool // path is the big file itself
		files  map[string]string
		want   int      // samples of the files under the cap, in all
		left   []string // files in place after reading and committing
	}{
		{name: "folder", files: map[string]string{"a.csv": big, "b.csv": fileB, "c.csv": fileB}, want: 2,
			left: []string{"a.csv", "processed/b.csv", "processed/c.csv"}},
		{name: "single file", single: true, files: map[string]string{"a.csv": big}, want: 0,
			left: []string{"a.csv"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				writeFile(t, dir, name, content)
			}
			path := dir
			if tt.single {
				path = filepath.Join(dir, "a.csv")
			}
			d, logs := newTestDriver(t, settingsFor(path, "max_file_size: 64"), satMat...)
			ctx := t.Context()
			got := 0
			for range 4 { // more reads than files: the refused one is retried every poll
				s, err := d.Read(ctx, satMat)
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				got += len(s)
				if err := d.Commit(ctx); err != nil {
					t.Fatalf("Commit: %v", err)
				}
			}
			if got != tt.want {
				t.Errorf("read %d samples, want %d from the files under the cap", got, tt.want)
			}
			if left := names(tree(t, dir)); !slices.Equal(left, tt.left) {
				t.Errorf("files after reading: %v, want %v (the big one in place, not in processed or failed)", left, tt.left)
			}
			line := "refusing trend file larger than settings.max_file_size"
			if n := strings.Count(logs.String(), line); n != 1 {
				t.Errorf("refusal logged %d times, want once:\n%s", n, logs)
			}
			for _, want := range []string{"file=" + filepath.Join(dir, "a.csv"), "max_file_size=64", "size=" + strconv.Itoa(len(big))} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("refusal log does not say %q:\n%s", want, logs)
				}
			}

			// Cut down under the cap (a new mtime): read as any file.
			writeFile(t, dir, "a.csv", fileB)
			s, err := d.Read(ctx, satMat)
			if err != nil || len(s) != 1 {
				t.Fatalf("Read of a.csv under the cap = %d samples, %v; want 1", len(s), err)
			}
		})
	}
}

// TestReadStableLimit: readStable holds at most limit bytes, whether the
// size shows the file too big up front or the file turns out bigger than
// it said (here a FIFO, whose size is 0, fed more than the cap).
func TestReadStableLimit(t *testing.T) {
	dir := t.TempDir()
	exact := writeFile(t, dir, "exact.csv", fileB)
	tests := []struct {
		name    string
		limit   int64
		tooBig  bool
		content string
	}{
		{"at the cap", int64(len(fileB)), false, fileB},
		{"one byte over", int64(len(fileB)) - 1, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, _, changed, err := readStable(exact, tt.limit)
			if got := errors.Is(err, errTooLarge); got != tt.tooBig {
				t.Fatalf("readStable(limit %d) err = %v; want too large: %v", tt.limit, err, tt.tooBig)
			}
			if string(data) != tt.content || changed {
				t.Errorf("readStable = %q, changed %v; want %q", data, changed, tt.content)
			}
		})
	}

	t.Run("grows past the cap", func(t *testing.T) {
		fifo := filepath.Join(dir, "growing.csv")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Skipf("cannot make a FIFO here: %v", err)
		}
		done := make(chan error, 1)
		go func() {
			// Opening blocks until readStable opens the other end; the
			// few bytes fit the pipe's buffer, so the write never blocks.
			w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				done <- err
				return
			}
			_, err = w.WriteString(fileA)
			done <- errors.Join(err, w.Close())
		}()
		data, _, _, err := readStable(fifo, 10)
		if werr := <-done; werr != nil {
			t.Fatal(werr)
		}
		if !errors.Is(err, errTooLarge) || data != nil {
			t.Fatalf("readStable of a FIFO fed %d bytes, cap 10 = %d bytes, %v; want an error wrapping errTooLarge", len(fileA), len(data), err)
		}
	})
}

// TestDiscoverSkipsTooLarge: discovery does not offer the columns of a
// file Read would refuse, and says why.
func TestDiscoverSkipsTooLarge(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.csv", "t,Big (°F)\n"+strings.Repeat("2025-01-01 00:00:00,1\n", 4))
	writeFile(t, dir, "b.csv", fileB)
	d, logs := newTestDriver(t, settingsFor(dir, "max_file_size: 64", "point_from: column"))
	points, err := d.Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, p := range points {
		refs = append(refs, p.Ref)
	}
	if !slices.Equal(refs, []string{"SAT", "MAT"}) {
		t.Errorf("discovered %v, want b.csv's SAT and MAT only", refs)
	}
	if !strings.Contains(logs.String(), "Read would refuse it") || !strings.Contains(logs.String(), "a.csv") {
		t.Errorf("skipping a.csv not logged:\n%s", logs)
	}
	if _, err := d.Read(t.Context(), []driver.Point{{ID: 1, Ref: "SAT"}}); err != nil {
		t.Fatal(err)
	}
}
