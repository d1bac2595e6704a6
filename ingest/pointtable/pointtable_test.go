package pointtable

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pointtable/pointtabletest"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// ctxKey marks the caller's context, so the store can tell it got that one.
type ctxKey struct{}

// countingStore counts Gets, fails them while failing is set, and checks
// that every Get runs under the caller's context.
type countingStore struct {
	blob.Store
	mu      sync.Mutex
	gets    int
	failing error
	noCtx   int // Gets that did not get the caller's context
}

func (s *countingStore) Get(ctx context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	s.gets++
	if ctx.Value(ctxKey{}) == nil {
		s.noCtx++
	}
	err := s.failing
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s.Store.Get(ctx, name)
}

func newStore(t *testing.T) *countingStore {
	t.Helper()
	d, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &countingStore{Store: d}
}

// put archives the table of ids for tenant/site and returns its hash.
func put(t *testing.T, s blob.Store, tenant, site string, ids ...uint64) batch.TableHash {
	t.Helper()
	data := batch.EncodePointTable(ids)
	h := batch.HashPointTable(data)
	if _, err := s.Put(context.Background(), blob.TableName(tenant, site, h.String()), data); err != nil {
		t.Fatal(err)
	}
	return h
}

func testCtx() context.Context { return context.WithValue(context.Background(), ctxKey{}, true) }

func TestLookup(t *testing.T) {
	s := newStore(t)
	good := put(t, s, "t1", "s1", 3, 1, 2)
	other := put(t, s, "t1", "s2", 7, 8)
	// A table stored under another table's hash, and bytes that are no table.
	wrong := batch.HashPointTable(batch.EncodePointTable([]uint64{99}))
	if _, err := s.Put(context.Background(), blob.TableName("t1", "s1", wrong.String()), batch.EncodePointTable([]uint64{5})); err != nil {
		t.Fatal(err)
	}
	garbled := batch.TableHash{1, 2, 3}
	if _, err := s.Put(context.Background(), blob.TableName("t1", "s1", garbled.String()), []byte("SGT\x01\x00\x05")); err != nil {
		t.Fatal(err)
	}
	storeDown := errors.New("connection refused")
	tests := []struct {
		name      string
		site      string
		hash      batch.TableHash
		failing   error
		want      []uint64
		wantIs    error
		wantWords []string
	}{
		{"found", "s1", good, nil, []uint64{1, 2, 3}, nil, nil},
		{"missing", "s1", batch.TableHash{9}, nil, nil, batch.ErrUnknownTable, []string{"0900000000000000", "t1/s1", "restore"}},
		{"another site's table", "s1", other, nil, nil, batch.ErrUnknownTable, []string{other.String(), "not in the archive"}},
		{"stored under the wrong hash", "s1", wrong, nil, nil, ErrDamaged, []string{wrong.String(), "hash to"}},
		{"not a table", "s1", garbled, nil, nil, ErrDamaged, []string{garbled.String(), "restore"}},
		{"store down", "s1", good, storeDown, nil, storeDown, []string{good.String(), "retry"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.failing = tt.failing
			defer func() { s.failing = nil }()
			a := New(s, nil) // a cold cache each time
			ids, err := a.Lookup(testCtx(), "t1", tt.site, tt.hash)
			if tt.wantIs == nil {
				if err != nil || !slices.Equal(ids, tt.want) {
					t.Fatalf("Lookup = %v, %v; want %v", ids, err, tt.want)
				}
				return
			}
			if !errors.Is(err, tt.wantIs) {
				t.Fatalf("err = %v, want one wrapping %v", err, tt.wantIs)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Hash != tt.hash || pe.Missing() != (tt.wantIs == batch.ErrUnknownTable) {
				t.Errorf("err %#v is not a *Error for %s with Missing() %v", err, tt.hash, tt.wantIs == batch.ErrUnknownTable)
			}
			for _, w := range tt.wantWords {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q does not say %q", err, w)
				}
			}
		})
	}
	if s.noCtx != 0 {
		t.Errorf("%d Gets ran without the caller's context", s.noCtx)
	}
}

func TestLookupCachesAndResolves(t *testing.T) {
	s := newStore(t)
	h := put(t, s, "t1", "s1", 10, 20)
	a := New(s, nil)
	// Through batch.Decode's interface, as every reader uses it.
	r := a.Resolver(testCtx(), "t1", "s1")
	for range 3 {
		if ids, err := r.PointTable(h); err != nil || !slices.Equal(ids, []uint64{10, 20}) {
			t.Fatalf("PointTable = %v, %v", ids, err)
		}
	}
	if s.gets != 1 {
		t.Errorf("%d Gets for three lookups of one table, want 1", s.gets)
	}
	// A miss is not cached: the agent may upload the table a moment later.
	missing := batch.HashPointTable(batch.EncodePointTable([]uint64{30}))
	if _, err := r.PointTable(missing); !errors.Is(err, batch.ErrUnknownTable) {
		t.Fatalf("err = %v", err)
	}
	put(t, s, "t1", "s1", 30)
	if ids, err := r.PointTable(missing); err != nil || !slices.Equal(ids, []uint64{30}) {
		t.Errorf("after the upload: %v, %v", ids, err)
	}
	// Another site asking for the same hash is not served from the cache.
	if _, err := a.Lookup(testCtx(), "t1", "s2", h); !errors.Is(err, batch.ErrUnknownTable) {
		t.Errorf("site s2 got site s1's table from the cache: %v", err)
	}
	if s.noCtx != 0 {
		t.Errorf("%d Gets ran without the caller's context", s.noCtx)
	}
}

func TestLookupStopsWithContext(t *testing.T) {
	s := newStore(t)
	h := put(t, s, "t1", "s1", 1)
	ctx, cancel := context.WithCancel(testCtx())
	cancel()
	stall := &pointtabletest.Stall{Store: s}
	_, err := New(stall, nil).Lookup(ctx, "t1", "s1", h)
	if !errors.Is(err, context.Canceled) || stall.Stalls() != 1 {
		t.Fatalf("err = %v after %d stalled reads, want context.Canceled after 1", err, stall.Stalls())
	}
}

func TestCacheBounds(t *testing.T) {
	ids := func(n int) []uint64 {
		out := make([]uint64, n)
		for i := range out {
			out[i] = uint64(i)
		}
		return out
	}
	tests := []struct {
		name       string
		max        int
		adds       []int // sizes of tables 0, 1, ... added in order
		again      int   // a table added a second time after the adds (-1: none)
		touch      int   // a table looked up after the adds (-1: none)
		add        int   // then one more of this size (0: none)
		wantKept   []int // tables still cached
		wantPoints int
	}{
		{"all fit", 10, []int{3, 3, 3}, -1, -1, 0, []int{0, 1, 2}, 9},
		{"oldest evicted", 10, []int{4, 4}, -1, -1, 4, []int{1, 2}, 8},
		{"least recently used evicted", 10, []int{4, 4}, -1, 0, 4, []int{0, 2}, 8},
		{"added again is used again", 10, []int{4, 4}, 0, -1, 4, []int{0, 2}, 8},
		{"several evicted for a large one", 10, []int{3, 3, 3}, -1, -1, 9, []int{3}, 9},
		{"too large is never cached", 10, []int{5}, -1, -1, 11, []int{0}, 5},
		{"the same table twice counts once", 10, []int{4, 4}, 1, -1, 0, []int{0, 1}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCache(tt.max)
			h := func(i int) batch.TableHash { return batch.TableHash{byte(i)} }
			for i, n := range tt.adds {
				c.Add("t", "s", h(i), ids(n))
			}
			if tt.again >= 0 {
				c.Add("t", "s", h(tt.again), ids(tt.adds[tt.again]))
			}
			if tt.touch >= 0 {
				if _, ok := c.get(key{"t", "s", h(tt.touch)}); !ok {
					t.Fatalf("table %d not cached before the last add", tt.touch)
				}
			}
			if tt.add > 0 {
				c.Add("t", "s", h(len(tt.adds)), ids(tt.add))
			}
			for i := range len(tt.adds) + 1 {
				_, ok := c.get(key{"t", "s", h(i)})
				if ok != slices.Contains(tt.wantKept, i) {
					t.Errorf("table %d cached = %v", i, ok)
				}
			}
			if n, points := c.Stats(); n != len(tt.wantKept) || points != tt.wantPoints {
				t.Errorf("Stats = %d tables, %d points; want %d, %d", n, points, len(tt.wantKept), tt.wantPoints)
			}
		})
	}
}

// TestConcurrentLookups is for -race: one Archive shared by many readers,
// its cache evicting as they go.
func TestConcurrentLookups(t *testing.T) {
	s := newStore(t)
	var hashes []batch.TableHash
	for i := range 8 {
		hashes = append(hashes, put(t, s, "t1", "s1", uint64(i), uint64(i+100)))
	}
	a := New(s, NewCache(6)) // three tables at a time
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				h := hashes[(g+i)%len(hashes)]
				ids, err := a.Lookup(testCtx(), "t1", "s1", h)
				if err != nil || len(ids) != 2 {
					errs <- errors.Join(err, errors.New("wrong table"))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, points := a.Cache().Stats(); points > 6 {
		t.Errorf("cache holds %d points, bound 6", points)
	}
}
