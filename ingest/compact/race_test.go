package compact

import (
	"context"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob"
)

// TestRivalCompactorsWithOtherSources: compactor B saw only the first of two
// batches (the second arrived after its listing) and writes a one-part
// generation while A, which saw both, is about to write a two-part one
// under the same generation number. Part names differ with the part count,
// so only the generation's claim stops A: it starts over on top of B's
// output, and no sample is lost, now or after the next compaction.
func TestRivalCompactorsWithOtherSources(t *testing.T) {
	a := newArchive(t)
	a.upload("ag-a", hour(1, 2, func(p, m int) float64 { return float64(m) }))
	s2 := a.upload("ag-a", hour(2, 2, func(p, m int) float64 { return float64(m) }))
	ctx := context.Background()
	b := New(&hidingStore{Dir: a.store, hide: s2}, Options{PartSamples: 200})
	rival := New(&beforeDayPut{Dir: a.store, before: func() {
		if _, err := b.Day(ctx, "t1", "s1", day); err != nil {
			t.Fatalf("B: %v", err)
		}
	}}, Options{PartSamples: 200})
	if _, err := rival.Day(ctx, "t1", "s1", day); err != nil {
		t.Fatalf("A: %v", err)
	}
	for _, step := range []string{"after both", "after the next compaction"} {
		got, err := New(a.store, Options{}).ReadDay(ctx, "t1", "s1", day)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 240 {
			names, _ := a.store.List(ctx, "t1/s1/")
			t.Fatalf("%s: the day holds %d samples, want 240:\n%s", step, len(got), strings.Join(names, "\n"))
		}
		if _, err := New(a.store, Options{PartSamples: 200}).Day(ctx, "t1", "s1", day); err != nil {
			t.Fatal(err)
		}
	}
}

// hidingStore lists everything but one blob, as a listing made just before
// that blob arrived would.
type hidingStore struct {
	*blob.Dir
	hide string
}

func (h *hidingStore) List(ctx context.Context, prefix string) ([]string, error) {
	names, err := h.Dir.List(ctx, prefix)
	out := names[:0:0]
	for _, n := range names {
		if n != h.hide {
			out = append(out, n)
		}
	}
	return out, err
}

// beforeDayPut runs before once, just before the first write under days/.
type beforeDayPut struct {
	*blob.Dir
	before func()
	fired  bool
}

func (o *beforeDayPut) Put(ctx context.Context, name string, data []byte) (bool, error) {
	if !o.fired && strings.Contains(name, "/days/") {
		o.fired = true
		o.before()
	}
	return o.Dir.Put(ctx, name, data)
}
