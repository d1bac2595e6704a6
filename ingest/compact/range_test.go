package compact

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pointtable/pointtabletest"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// span makes samples of points 1000.. once a minute from start for n
// minutes, valued so that a sample's origin shows.
func span(start time.Time, minutes, points int, value float64) []telemetry.Sample {
	var out []telemetry.Sample
	for p := range points {
		for m := range minutes {
			out = append(out, telemetry.Sample{PointID: uint64(1000 + p), Time: start.Add(time.Duration(m) * time.Minute).UnixMilli(), Value: value})
		}
	}
	return out
}

// key is a sample's point and time.
type key struct {
	id uint64
	t  int64
}

// midnightArchive fills an archive around day (the 30th) with batches that
// cross midnight both ways, and returns every distinct sample in it (the
// first copy of each point and time, in upload order).
func midnightArchive(a *archive) []telemetry.Sample {
	prev, next := day.Add(-24*time.Hour), day.Add(24*time.Hour)
	uploads := [][]telemetry.Sample{
		span(prev.Add(22*time.Hour), 60, 3, 1),                // the 29th, inside it
		span(prev.Add(23*time.Hour+30*time.Minute), 60, 3, 2), // filed on the 29th, half of it on the 30th
		span(day.Add(0), 10, 3, 3),                            // the 30th, all of it re-sent inside the batch above
		span(day.Add(12*time.Hour), 30, 3, 4),                 // the 30th, inside it
		span(day.Add(23*time.Hour+45*time.Minute), 30, 3, 5),  // filed on the 30th, half of it on the 31st
		span(next.Add(5*time.Minute), 20, 3, 6),               // the 31st, half of it re-sent above
		span(next.Add(23*time.Hour+59*time.Minute), 3, 3, 7),  // filed on the 31st, into the 1st
		span(prev.Add(-time.Hour), 90, 3, 8),                  // filed on the 28th, into the 29th
	}
	seen := map[key]bool{}
	var all []telemetry.Sample
	for _, u := range uploads {
		a.upload("ag-a", u)
		for _, s := range u {
			if k := (key{s.PointID, s.Time}); !seen[k] {
				seen[k] = true
				all = append(all, s)
			}
		}
	}
	return all
}

func TestReadDayCutsAtMidnight(t *testing.T) {
	days := []time.Time{day.Add(-72 * time.Hour), day.Add(-48 * time.Hour), day.Add(-24 * time.Hour), day, day.Add(24 * time.Hour), day.Add(48 * time.Hour)}
	tests := []struct {
		name    string
		compact []time.Time // days compacted before reading
		late    bool        // a late batch of the 30th arrives after compaction
	}{
		{"batches only", nil, false},
		{"every day compacted", days, false},
		{"the day before compacted", []time.Time{day.Add(-24 * time.Hour)}, false},
		{"the day itself compacted", []time.Time{day}, false},
		{"compacted, with a late batch beside the day blob", days, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newArchive(t)
			all := midnightArchive(a)
			for _, d := range tt.compact {
				if _, err := New(a.store, Options{}).Day(context.Background(), "t1", "s1", d); err != nil {
					t.Fatal(err)
				}
			}
			if tt.late {
				// Point 1000 is there already (the 30th's batch into the
				// 31st has it, and wins); point 1003 is new.
				late := span(day.Add(23*time.Hour+50*time.Minute), 15, 1, 9)
				fresh := span(day.Add(23*time.Hour+50*time.Minute), 20, 4, 9)[60:]
				a.upload("ag-b", append(late, fresh...))
				all = append(all, fresh...)
			}
			var union []telemetry.Sample
			seen := map[key]string{}
			for _, d := range days {
				got, err := New(a.store, Options{}).ReadDay(context.Background(), "t1", "s1", d.Add(7*time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range got {
					if s.Time < d.UnixMilli() || s.Time >= d.Add(24*time.Hour).UnixMilli() {
						t.Errorf("the export of %s holds a sample of %s", d.Format(time.DateOnly), time.UnixMilli(s.Time).UTC())
					}
					k := key{s.PointID, s.Time}
					if other, dup := seen[k]; dup {
						t.Errorf("point %d at %s is in the exports of %s and %s", s.PointID, time.UnixMilli(s.Time).UTC(), other, d.Format(time.DateOnly))
					}
					seen[k] = d.Format(time.DateOnly)
				}
				union = append(union, got...)
			}
			// Each copy first uploaded wins, as in compaction; values say
			// which upload a sample came from.
			sameSamples(t, union, all)
		})
	}
}

func TestReadRange(t *testing.T) {
	a := newArchive(t)
	all := midnightArchive(a)
	if _, err := New(a.store, Options{}).Day(context.Background(), "t1", "s1", day.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	within := func(from, to time.Time) []telemetry.Sample {
		var out []telemetry.Sample
		for _, s := range all {
			if s.Time >= from.UnixMilli() && s.Time < to.UnixMilli() {
				out = append(out, s)
			}
		}
		return out
	}
	tests := []struct {
		name     string
		from, to time.Time
	}{
		{"midnight to midnight", day, day.Add(24 * time.Hour)},
		{"across midnight", day.Add(-30 * time.Minute), day.Add(30 * time.Minute)},
		{"three days", day.Add(-24 * time.Hour), day.Add(48 * time.Hour)},
		{"one minute", day.Add(5 * time.Minute), day.Add(6 * time.Minute)},
		{"ends at midnight", day.Add(23 * time.Hour), day.Add(24 * time.Hour)},
		{"only samples filed the day before", day.Add(-24 * time.Hour), day.Add(-23 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := New(a.store, Options{}).ReadRange(context.Background(), "t1", "s1", tt.from, tt.to)
			if err != nil {
				t.Fatal(err)
			}
			want := within(tt.from, tt.to)
			if len(want) == 0 {
				t.Fatal("the test's range holds no samples")
			}
			// EachRange streams exactly what ReadRange returns, in order.
			var streamed []telemetry.Sample
			n, err := New(a.store, Options{}).EachRange(context.Background(), "t1", "s1", tt.from, tt.to, func(c []telemetry.Sample) error {
				streamed = append(streamed, c...)
				return nil
			})
			if err != nil || n != len(got) || !slices.Equal(streamed, got) {
				t.Errorf("EachRange streamed %d samples (said %d, %v), ReadRange returned %d; equal: %v", len(streamed), n, err, len(got), slices.Equal(streamed, got))
			}
			sameSamples(t, got, want)
		})
	}
	stop := errors.New("the reader stopped")
	if _, err := New(a.store, Options{}).EachDay(context.Background(), "t1", "s1", day, func([]telemetry.Sample) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("EachDay with a failing fn: err = %v, want it returned", err)
	}
	if _, err := New(a.store, Options{}).ReadRange(context.Background(), "t1", "s1", day, day); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("an empty range: err = %v", err)
	}
}

// TestReadRangeWarnsOfLongBatches: a batch spanning more than the lookback
// is read where it is filed, and the warning says batches like it filed
// earlier would be missed; a longer lookback reads them.
func TestReadRangeWarnsOfLongBatches(t *testing.T) {
	a := newArchive(t)
	long := span(day.Add(-50*time.Hour), 60*60, 1, 1) // 60 hours from the 27th, into the 30th
	a.upload("ag-a", long)
	on := func(d time.Time) int {
		n := 0
		for _, s := range long {
			if s.Time >= d.UnixMilli() && s.Time < d.Add(24*time.Hour).UnixMilli() {
				n++
			}
		}
		return n
	}
	tests := []struct {
		name     string
		day      time.Time
		lookback time.Duration
		want     int
		warned   bool
	}{
		{"the default lookback misses it", day, 0, 0, false},
		{"a lookback of three days reads it", day, 72 * time.Hour, on(day), false},
		{"a day whose lookback reaches its filing day warns", day.Add(-48 * time.Hour), 0, on(day.Add(-48 * time.Hour)), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			c := New(a.store, Options{Lookback: tt.lookback, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			got, err := c.ReadDay(context.Background(), "t1", "s1", tt.day)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.want {
				t.Errorf("%d samples, want %d", len(got), tt.want)
			}
			if w := strings.Contains(logs.String(), "span more than the lookback"); w != tt.warned {
				t.Errorf("warned = %v, want %v; log:\n%s", w, tt.warned, logs.String())
			}
		})
	}
}

// tableStall is the archive with table reads that stall until their
// context ends, and the Delete compaction needs.
type tableStall struct {
	*pointtabletest.Stall
	dir *blob.Dir
}

func (s tableStall) Delete(ctx context.Context, name string) error { return s.dir.Delete(ctx, name) }

func TestTableReadsStopWithTheContext(t *testing.T) {
	ops := []struct {
		name string
		run  func(ctx context.Context, c *Compactor) error
	}{
		{"compact", func(ctx context.Context, c *Compactor) error {
			_, err := c.Day(ctx, "t1", "s1", day)
			return err
		}},
		{"read a day", func(ctx context.Context, c *Compactor) error {
			_, err := c.ReadDay(ctx, "t1", "s1", day)
			return err
		}},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			a := newArchive(t)
			a.upload("ag-a", hour(3, 2, linear))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st := &pointtabletest.Stall{Store: a.store, OnStall: cancel}
			err := op.run(ctx, New(tableStall{st, a.store}, Options{}))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if st.Stalls() != 1 {
				t.Errorf("%d table reads stalled, want 1", st.Stalls())
			}
			if len(a.sources()) != 1 {
				t.Errorf("the source batch is gone after an interrupted run")
			}
		})
	}
}

// compactFirst runs a compaction of the day just before the first read of
// one of its batches, as another replica might between a reader's listing
// and its read.
type compactFirst struct {
	*blob.Dir
	t     *testing.T
	fired bool
}

func (s *compactFirst) Get(ctx context.Context, name string) ([]byte, error) {
	if !s.fired && strings.HasSuffix(name, ".sgb") && !strings.Contains(name, "/days/") {
		s.fired = true
		if _, err := New(s.Dir, Options{}).Day(ctx, "t1", "s1", day); err != nil {
			s.t.Errorf("the concurrent compaction: %v", err)
		}
	}
	return s.Dir.Get(ctx, name)
}

func TestReadDayDuringACompaction(t *testing.T) {
	a := newArchive(t)
	var want []telemetry.Sample
	for h := range 3 {
		s := hour(h+1, 2, linear)
		a.upload("ag-a", s)
		want = append(want, s...)
	}
	st := &compactFirst{Dir: a.store, t: t}
	got, err := New(st, Options{}).ReadDay(context.Background(), "t1", "s1", day)
	if err != nil {
		t.Fatal(err)
	}
	if !st.fired {
		t.Fatal("no compaction ran during the read")
	}
	sameSamples(t, got, want)
}
