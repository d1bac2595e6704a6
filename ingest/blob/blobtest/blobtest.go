// Package blobtest is the conformance suite every blob.Store passes: call
// Run from the implementation's tests with a function that returns a new,
// empty store.
package blobtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob"
)

// Run runs the suite. newStore must return an empty store each call; the
// store may be shared by no other test.
func Run(t *testing.T, newStore func(t *testing.T) blob.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s blob.Store)
	}{
		{"PutGet", testPutGet},
		{"EmptyAndLarge", testEmptyAndLarge},
		{"IdenticalRetry", testIdenticalRetry},
		{"Conflict", testConflict},
		{"NotFound", testNotFound},
		{"BadNames", testBadNames},
		{"List", testList},
		{"ConcurrentSameBytes", testConcurrentSameBytes},
		{"ConcurrentDifferentBytes", testConcurrentDifferentBytes},
		{"ConcurrentDistinctNames", testConcurrentDistinctNames},
		{"CanceledContext", testCanceledContext},
		{"Delete", testDelete},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, newStore(t))
		})
	}
}

func put(t *testing.T, s blob.Store, name string, data []byte) bool {
	t.Helper()
	created, err := s.Put(t.Context(), name, data)
	if err != nil {
		t.Fatalf("Put(%q): %v", name, err)
	}
	return created
}

func get(t *testing.T, s blob.Store, name string) []byte {
	t.Helper()
	b, err := s.Get(t.Context(), name)
	if err != nil {
		t.Fatalf("Get(%q): %v", name, err)
	}
	return b
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func testPutGet(t *testing.T, s blob.Store) {
	name := "t1/s1/2026/01/02/03/ag-1-00000000000000000001.sgb"
	data := []byte("batch bytes")
	if !put(t, s, name, data) {
		t.Fatal("Put of a new name reported created=false")
	}
	// The store must own its copy: neither the caller's later writes to
	// the slice nor writes to a returned slice may reach the stored blob.
	data[0] = 'X'
	got := get(t, s, name)
	if string(got) != "batch bytes" {
		t.Fatalf("Get = %q, want %q", got, "batch bytes")
	}
	got[0] = 'Y'
	if got := get(t, s, name); string(got) != "batch bytes" {
		t.Fatalf("Get after changing a returned slice = %q", got)
	}
	other := "t1/s1/2026/01/02/03/ag-1-00000000000000000002.sgb"
	if !put(t, s, other, []byte("second")) {
		t.Fatal("Put of a second name reported created=false")
	}
	if got := get(t, s, other); string(got) != "second" {
		t.Fatalf("Get(second) = %q", got)
	}
}

func testEmptyAndLarge(t *testing.T, s blob.Store) {
	if !put(t, s, "empty", nil) {
		t.Fatal("Put of an empty blob reported created=false")
	}
	if got := get(t, s, "empty"); len(got) != 0 {
		t.Fatalf("empty blob came back with %d bytes", len(got))
	}
	if created, err := s.Put(t.Context(), "empty", []byte{}); err != nil || created {
		t.Fatalf("retrying the empty blob = %v, %v; want false, nil", created, err)
	}
	if _, err := s.Put(t.Context(), "empty", []byte{0}); !errors.Is(err, blob.ErrConflict) {
		t.Fatalf("one byte over an empty blob: err = %v, want ErrConflict", err)
	}
	large := randomBytes(t, 4<<20)
	if !put(t, s, "large/blob", large) {
		t.Fatal("Put of a large blob reported created=false")
	}
	if got := get(t, s, "large/blob"); !bytes.Equal(got, large) {
		t.Fatalf("large blob came back different (%d bytes, want %d)", len(got), len(large))
	}
}

func testIdenticalRetry(t *testing.T, s blob.Store) {
	name := "t1/s1/claims/ag-1/00000000000000000007"
	data := []byte("claim")
	if !put(t, s, name, data) {
		t.Fatal("first Put reported created=false")
	}
	for i := range 3 {
		created, err := s.Put(t.Context(), name, slices.Clone(data))
		if err != nil || created {
			t.Fatalf("retry %d = %v, %v; want false, nil", i, created, err)
		}
	}
	if got := get(t, s, name); string(got) != "claim" {
		t.Fatalf("Get = %q", got)
	}
}

func testConflict(t *testing.T, s blob.Store) {
	name := "t1/s1/tables/abc.sgt"
	put(t, s, name, []byte("original"))
	for _, other := range []string{"changed!", "original plus", "orig", ""} {
		created, err := s.Put(t.Context(), name, []byte(other))
		if !errors.Is(err, blob.ErrConflict) || created {
			t.Fatalf("Put(%q) over different bytes = %v, %v; want false, ErrConflict", other, created, err)
		}
	}
	if got := get(t, s, name); string(got) != "original" {
		t.Fatalf("after conflicts Get = %q, want the original", got)
	}
}

func testNotFound(t *testing.T, s blob.Store) {
	put(t, s, "a/b/c", []byte("x"))
	for _, name := range []string{"missing", "a/b", "a/b/c/d", "a/b/cc", "a/bx"} {
		if _, err := s.Get(t.Context(), name); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("Get(%q): err = %v, want ErrNotFound", name, err)
		}
	}
}

// BadNames lists names ValidName refuses; exported so stores' own tests and
// fuzzers can reuse it.
var BadNames = []string{
	"", "/abs", "trailing/", "a//b", ".", "..", "a/./b", "a/../b", "../escape",
	"back\\slash", "sp ace", "a/b~c", "colon:", "uni\u00e9", "nul\x00", "q?", "star*",
	strings.Repeat("a", blob.MaxNameLen+1),
}

func testBadNames(t *testing.T, s blob.Store) {
	for _, name := range BadNames {
		if created, err := s.Put(t.Context(), name, []byte("x")); !errors.Is(err, blob.ErrBadName) || created {
			t.Errorf("Put(%q) = %v, %v; want ErrBadName", name, created, err)
		}
		if _, err := s.Get(t.Context(), name); !errors.Is(err, blob.ErrBadName) {
			t.Errorf("Get(%q): err = %v, want ErrBadName", name, err)
		}
	}
	for _, prefix := range []string{"/abs", "a//", "../", "a/../b", "sp ace", "a~", strings.Repeat("a", blob.MaxNameLen+1)} {
		if _, err := s.List(t.Context(), prefix); !errors.Is(err, blob.ErrBadName) {
			t.Errorf("List(%q): err = %v, want ErrBadName", prefix, err)
		}
	}
	if names, err := s.List(t.Context(), ""); err != nil || len(names) != 0 {
		t.Errorf("after refused Puts List = %v, %v; want nothing stored", names, err)
	}
}

func testList(t *testing.T, s blob.Store) {
	all := []string{
		"t1/s1/2026/01/02/03/ag-1-00000000000000000001.sgb",
		"t1/s1/2026/01/02/04/ag-1-00000000000000000002.sgb",
		"t1/s1/2026/01/02/04/ag-2-00000000000000000001.sgb",
		"t1/s1/claims/ag-1/00000000000000000001",
		"t1/s1/claims/ag-1/00000000000000000002",
		"t1/s1/tables/ff.sgt",
		"t1/s10/x",
		"t1/s1-b/y",
		"t1/s1.c",
		"t2/s1/z",
		"top",
	}
	// Put in reverse so a store that returns insertion order fails.
	for _, n := range slices.Backward(all) {
		put(t, s, n, []byte(n))
	}
	for _, prefix := range []string{
		"", "t1/", "t1/s1/", "t1/s1", "t1/s1/2026/01/02/", "t1/s1/2026/01/02/04/ag-1",
		"t1/s1/claims/ag-1/", "t1/s1/claims/ag-1/0", "t1/s1/tables/ff.sgt", "t", "to",
		"nope/", "nope", "t1/s1/2027/", "t1/s1/tables/ff.sgt/", "top/",
	} {
		t.Run(prefix, func(t *testing.T) {
			var want []string
			for _, n := range all {
				if strings.HasPrefix(n, prefix) {
					want = append(want, n)
				}
			}
			slices.Sort(want)
			got, err := s.List(t.Context(), prefix)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("List(%q) =\n%s\nwant\n%s", prefix, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

const writers = 16

func testConcurrentSameBytes(t *testing.T, s blob.Store) {
	name := "t1/s1/2026/01/02/03/ag-1-00000000000000000009.sgb"
	data := randomBytes(t, 64<<10)
	results := make([]bool, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			results[i], errs[i] = s.Put(context.Background(), name, slices.Clone(data))
		})
	}
	wg.Wait()
	created := 0
	for i := range writers {
		if errs[i] != nil {
			t.Errorf("writer %d: %v", i, errs[i])
		}
		if results[i] {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d writers reported created, want exactly 1", created)
	}
	if got := get(t, s, name); !bytes.Equal(got, data) {
		t.Fatal("stored bytes differ from what every writer offered")
	}
}

func testConcurrentDifferentBytes(t *testing.T, s blob.Store) {
	name := "t1/s1/claims/ag-1/00000000000000000003"
	results := make([]bool, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			results[i], errs[i] = s.Put(context.Background(), name, []byte(fmt.Sprintf("writer %02d", i)))
		})
	}
	wg.Wait()
	winner := -1
	for i := range writers {
		switch {
		case results[i] && errs[i] == nil:
			if winner >= 0 {
				t.Fatalf("writers %d and %d both reported created", winner, i)
			}
			winner = i
		case !results[i] && errors.Is(errs[i], blob.ErrConflict):
		default:
			t.Errorf("writer %d = %v, %v; want created or ErrConflict", i, results[i], errs[i])
		}
	}
	if winner < 0 {
		t.Fatal("no writer reported created")
	}
	if got, want := string(get(t, s, name)), fmt.Sprintf("writer %02d", winner); got != want {
		t.Fatalf("stored %q, but the writer that reported created offered %q", got, want)
	}
}

func testConcurrentDistinctNames(t *testing.T, s blob.Store) {
	// Many writers creating the same new folders at once.
	var want []string
	for i := range writers {
		want = append(want, fmt.Sprintf("t9/s9/2026/12/31/23/ag-%02d-00000000000000000001.sgb", i))
	}
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i, name := range want {
		wg.Go(func() {
			created, err := s.Put(context.Background(), name, []byte(name))
			if err == nil && !created {
				err = errors.New("created=false for a new name")
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	got, err := s.List(t.Context(), "t9/")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
}

func testCanceledContext(t *testing.T, s blob.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if created, err := s.Put(ctx, "canceled", []byte("x")); !errors.Is(err, context.Canceled) || created {
		t.Errorf("Put with a canceled context = %v, %v; want context.Canceled", created, err)
	}
	if _, err := s.Get(t.Context(), "canceled"); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("a Put with a canceled context stored something: Get err = %v", err)
	}
	put(t, s, "there", []byte("x"))
	if _, err := s.Get(ctx, "there"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a canceled context: err = %v, want context.Canceled", err)
	}
	if _, err := s.List(ctx, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("List with a canceled context: err = %v, want context.Canceled", err)
	}
}

// Deleter is the optional capability compaction needs.
type Deleter interface {
	Delete(ctx context.Context, name string) error
}

func testDelete(t *testing.T, s blob.Store) {
	d, ok := s.(Deleter)
	if !ok {
		t.Skip("the store cannot delete")
	}
	put(t, s, "t/s/a", []byte("one"))
	put(t, s, "t/s/b", []byte("two"))
	if err := d.Delete(t.Context(), "t/s/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(t.Context(), "t/s/a"); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := d.Delete(t.Context(), "t/s/a"); err != nil {
		t.Errorf("deleting a blob already gone: %v, want nil", err)
	}
	if got := get(t, s, "t/s/b"); string(got) != "two" {
		t.Errorf("the other blob changed: %q", got)
	}
	// A deleted name can be written again (a retried upload after compaction).
	if !put(t, s, "t/s/a", []byte("three")) {
		t.Error("Put after Delete did not create")
	}
	if err := d.Delete(t.Context(), "../x"); !errors.Is(err, blob.ErrBadName) {
		t.Errorf("Delete of a bad name: %v", err)
	}
}
