package blob_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/blobtest"
)

func TestDirConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store {
		d, err := blob.OpenDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

func TestValidName(t *testing.T) {
	good := []string{
		"a", "A.b_c-9", "t1/s1/2026/01/02/03/ag-x-00000000000000000001.sgb", ".hidden", "..x", "x..",
		"a/.b", strings.Repeat("a", blob.MaxNameLen),
	}
	for _, name := range good {
		t.Run("good/"+name[:min(len(name), 40)], func(t *testing.T) {
			if err := blob.ValidName(name); err != nil {
				t.Errorf("ValidName: %v", err)
			}
		})
	}
	for _, name := range blobtest.BadNames {
		t.Run(fmt.Sprintf("bad/%q", name[:min(len(name), 40)]), func(t *testing.T) {
			if err := blob.ValidName(name); !errors.Is(err, blob.ErrBadName) {
				t.Errorf("ValidName: err = %v, want ErrBadName", err)
			}
		})
	}
}

func TestValidPrefix(t *testing.T) {
	tests := []struct {
		prefix string
		ok     bool
	}{
		{"", true}, {"t1", true}, {"t1/", true}, {"t1/s1/20", true}, {"a/.b/", true},
		{"/", false}, {"/t1", false}, {"t1//", false}, {"t1/../", false}, {"./", false},
		{"t1/s~", false}, {"t1 /", false},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			err := blob.ValidPrefix(tt.prefix)
			if tt.ok != (err == nil) || (err != nil && !errors.Is(err, blob.ErrBadName)) {
				t.Errorf("ValidPrefix = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestLayoutNames(t *testing.T) {
	at := time.Date(2026, 3, 4, 23, 59, 59, 0, time.FixedZone("CET", 3600))
	tests := []struct {
		name, got, want string
	}{
		{"batch in UTC", blob.BatchName("t1", "s1", "ag-abc", 42, at), "t1/s1/2026/03/04/22/ag-abc-00000000000000000042.sgb"},
		{"batch max seq", blob.BatchName("t", "s", "a", ^uint64(0), time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC)), "t/s/2026/12/31/00/a-18446744073709551615.sgb"},
		{"claim", blob.ClaimName("t1", "s1", "ag-abc", 42), "t1/s1/claims/ag-abc/00000000000000000042"},
		{"table", blob.TableName("t1", "s1", "0123abcd"), "t1/s1/tables/0123abcd.sgt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
			if err := blob.ValidName(tt.got); err != nil {
				t.Errorf("layout name is not a valid blob name: %v", err)
			}
		})
	}
	// Zero-padded sequences sort numerically as strings, so listing a
	// claims folder yields sequence order.
	a, b := blob.ClaimName("t", "s", "a", 9), blob.ClaimName("t", "s", "a", 10)
	if a >= b {
		t.Errorf("claim %q sorts after %q", a, b)
	}
}

func TestOpenDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "archive", "blobs")
	d, err := blob.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); !fi.IsDir() || m&^0o750 != 0 {
		t.Errorf("root mode %v, want a directory with at most 0750", fi.Mode())
	}
	if !filepath.IsAbs(d.Root()) {
		t.Errorf("Root %q is not absolute", d.Root())
	}
	if _, err := d.Put(t.Context(), "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "a", "b")); err != nil || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("blob file: %v, %v; want no access for others", fi.Mode(), err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := blob.OpenDir(file); err == nil {
		t.Error("OpenDir on a regular file succeeded")
	}
}

// Two Dir values on one root stand for two ingest replicas sharing an
// archive: create-if-absent must hold across them.
func TestDirTwoReplicas(t *testing.T) {
	root := t.TempDir()
	var stores [2]*blob.Dir
	for i := range stores {
		d, err := blob.OpenDir(root)
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = d
	}
	const (
		names   = 20
		writers = 8 // per name, alternating stores
	)
	type result struct {
		created bool
		err     error
	}
	results := make([][writers]result, names)
	var wg sync.WaitGroup
	for n := range names {
		for w := range writers {
			wg.Go(func() {
				name := fmt.Sprintf("t1/s1/claims/ag-1/%020d", n)
				// Half the writers offer the same bytes as the first
				// writer of each store; conflicts are expected from the rest.
				data := fmt.Appendf(nil, "batch %d from store %d", n, w%2)
				c, err := stores[w%2].Put(context.Background(), name, data)
				results[n][w] = result{c, err}
			})
		}
	}
	wg.Wait()
	for n := range names {
		name := fmt.Sprintf("t1/s1/claims/ag-1/%020d", n)
		got, err := stores[0].Get(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		created := 0
		for w, r := range results[n] {
			mine := string(got) == fmt.Sprintf("batch %d from store %d", n, w%2)
			switch {
			case r.created && r.err == nil && mine:
				created++
			case !r.created && r.err == nil && mine:
			case !r.created && errors.Is(r.err, blob.ErrConflict) && !mine:
			default:
				t.Errorf("%s writer %d (store %d) = %v, %v; stored %q", name, w, w%2, r.created, r.err, got)
			}
		}
		if created != 1 {
			t.Errorf("%s: %d writers reported created, want 1", name, created)
		}
	}
	list, err := stores[1].List(t.Context(), "t1/")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != names {
		t.Errorf("List found %d blobs, want %d", len(list), names)
	}
	assertNoTemp(t, root)
}

func assertNoTemp(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(e.Name(), "~") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

// A crash between writing the temporary file and linking it, or between
// linking and removing it, leaves temporary files; they are not blobs.
func TestDirIgnoresLeftoverTempFiles(t *testing.T) {
	root := t.TempDir()
	d, err := blob.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := d.Put(ctx, "t1/s1/blob", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{
		"put~123456",
		"t1/s1/put~987654",
		"t1/put~dir/inside",
	}
	for _, l := range leftovers {
		p := filepath.Join(root, filepath.FromSlash(l))
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("half a batch"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	// A leftover that is a second link to a blob (crash after link).
	if err := os.Link(filepath.Join(root, "t1", "s1", "blob"), filepath.Join(root, "t1", "s1", "put~linked")); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"", "t1/", "t1/s1/", "t1/s1/p", "p"} {
		got, err := d.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"t1/s1/blob"}
		if !strings.HasPrefix("t1/s1/blob", prefix) {
			want = nil
		}
		if !slices.Equal(got, want) {
			t.Errorf("List(%q) = %v, want %v", prefix, got, want)
		}
	}
	for _, l := range leftovers {
		if _, err := d.Get(ctx, l); !errors.Is(err, blob.ErrBadName) {
			t.Errorf("Get(%q): err = %v, want ErrBadName", l, err)
		}
	}
	// Puts beside leftovers still work.
	if created, err := d.Put(ctx, "t1/s1/other", []byte("new")); err != nil || !created {
		t.Errorf("Put beside leftovers = %v, %v", created, err)
	}
}

// The directory store cannot hold both "a" and "a/b"; it says so as a
// conflict rather than failing obscurely.
func TestDirFolderBlobCollision(t *testing.T) {
	d, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := d.Put(ctx, "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Put(ctx, "a", []byte("x")); !errors.Is(err, blob.ErrConflict) {
		t.Errorf("Put over a folder: err = %v, want ErrConflict", err)
	}
	if _, err := d.Put(ctx, "a/b/c", []byte("x")); !errors.Is(err, blob.ErrConflict) {
		t.Errorf("Put under a blob: err = %v, want ErrConflict", err)
	}
	assertNoTemp(t, d.Root())
}

func BenchmarkDirPut(b *testing.B) {
	d, err := blob.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 32<<10)
	b.SetBytes(int64(len(data)))
	i := 0
	for b.Loop() {
		if _, err := d.Put(context.Background(), blob.BatchName("t1", "s1", "ag-1", uint64(i), time.Unix(int64(i), 0)), data); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/put")
}
