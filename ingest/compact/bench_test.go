package compact

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Synthetic day for the memory benchmarks: benchPoints points once a
// minute, uploaded by one agent in 15-minute batches, with every tenth
// batch retried (its samples filed twice, as an upload whose answer was
// lost). A real site of 10,000 points is ten times this; the figures are
// per sample, so they carry over.
const (
	benchPoints  = 1000
	benchBatch   = 15 // minutes per batch
	benchRetried = 10 // every benchRetried-th batch is filed twice
	// benchPart is the part size of the benchmarks' compactions: the
	// default's share of a 10,000-point day, so a day here has as many
	// parts as a real one of that size (eight).
	benchPart = DefaultPartSamples * benchPoints / 10_000
	// benchMerge likewise scales the merge's budget: a day here is merged
	// in as many ranges as a real one of 10,000 points (four).
	benchMerge = DefaultMergeSamples * benchPoints / 10_000
)

// benchBudgets are the merge budgets the memory benchmarks run with: the
// whole day in memory, and the default's share, in ranges of points.
var benchBudgets = []struct {
	name   string
	budget int
}{{"whole", math.MaxInt}, {"ranged", benchMerge}}

// benchArchive fills an archive with the synthetic day of points points
// and returns the distinct samples in it.
func benchArchive(tb testing.TB, points int) (*archive, int) {
	a := newArchive(tb)
	distinct := 0
	for i := range 24 * 60 / benchBatch {
		start := day.Add(time.Duration(i*benchBatch) * time.Minute)
		s := make([]telemetry.Sample, 0, points*benchBatch)
		for p := range points {
			for m := range benchBatch {
				// A slow wave per point: values that compress as real
				// trends do, not a constant.
				v := math.Round(100*(20+math.Sin(float64(i*benchBatch+m)/97+float64(p)))) / 100
				s = append(s, telemetry.Sample{PointID: uint64(1_000_000 + p*7919), Time: start.Add(time.Duration(m) * time.Minute).UnixMilli(), Value: v})
			}
		}
		a.upload("ag-a", s)
		if i%benchRetried == 0 {
			a.upload("ag-a", s)
		}
		distinct += len(s)
	}
	return a, distinct
}

// heapPeak samples the heap's objects on a ticker until stop is called,
// and returns the highest figure seen above the level at start (after a
// collection). The collector runs at GOGC=10 meanwhile, so the heap holds
// little garbage and the figure is close to what the operation keeps live
// at its peak; at the default GOGC=100 a process needs up to twice that.
// Allocations shorter than the tick may be missed; the merge's large
// slices live for many ticks.
func heapPeak() (stop func() uint64) {
	gogc := debug.SetGCPercent(10)
	runtime.GC()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	base := read()
	var (
		peak = base // written by the sampler only until wg.Wait
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				peak = max(peak, read())
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		debug.SetGCPercent(gogc)
		if v := read(); v > peak {
			peak = v
		}
		return peak - min(peak, base)
	}
}

// reportMemory runs op b.N times and reports, per distinct sample of the
// day, the bytes allocated and the peak growth of the live heap.
func reportMemory(b *testing.B, samples int, op func()) {
	b.Helper()
	var before, after runtime.MemStats
	var peak uint64
	b.ResetTimer()
	for range b.N {
		runtime.ReadMemStats(&before)
		stop := heapPeak()
		op()
		peak = max(peak, stop())
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(samples), "alloc-B/sample")
	}
	b.ReportMetric(float64(peak)/float64(samples), "peak-B/sample")
	b.ReportMetric(float64(samples), "samples")
}

// BenchmarkReadDayMemory reads a synthetic day as the archive export
// does, and reports the memory it takes per sample.
func BenchmarkReadDayMemory(b *testing.B) {
	a, n := benchArchive(b, benchPoints)
	for _, bb := range benchBudgets {
		b.Run(bb.name, func(b *testing.B) {
			c := New(a.store, Options{MergeSamples: bb.budget})
			reportMemory(b, n, func() {
				got, err := c.ReadDay(context.Background(), "t1", "s1", day)
				if err != nil {
					b.Fatal(err)
				}
				if len(got) != n {
					b.Fatalf("%d samples, want %d", len(got), n)
				}
			})
		})
	}
}

// BenchmarkEachDayMemory streams a synthetic day as an export that
// writes as it reads does, and reports the memory it takes per sample.
func BenchmarkEachDayMemory(b *testing.B) {
	a, n := benchArchive(b, benchPoints)
	for _, bb := range benchBudgets {
		b.Run(bb.name, func(b *testing.B) {
			c := New(a.store, Options{MergeSamples: bb.budget})
			reportMemory(b, n, func() {
				got, err := c.EachDay(context.Background(), "t1", "s1", day, func([]telemetry.Sample) error { return nil })
				if err != nil {
					b.Fatal(err)
				}
				if got != n {
					b.Fatalf("%d samples, want %d", got, n)
				}
			})
		})
	}
}

// BenchmarkCompactDayMemory compacts a synthetic day (merge, encode,
// store, verify, delete) and reports the memory it takes per sample.
func BenchmarkCompactDayMemory(b *testing.B) {
	for _, bb := range benchBudgets {
		b.Run(bb.name, func(b *testing.B) {
			var total, peak uint64
			var n int
			for range b.N {
				b.StopTimer()
				a, distinct := benchArchive(b, benchPoints)
				n = distinct
				c := New(a.store, Options{PartSamples: benchPart, MergeSamples: bb.budget})
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				stop := heapPeak()
				b.StartTimer()
				res, err := c.Day(context.Background(), "t1", "s1", day)
				b.StopTimer()
				peak = max(peak, stop())
				runtime.ReadMemStats(&after)
				total += after.TotalAlloc - before.TotalAlloc
				if err != nil {
					b.Fatal(err)
				}
				if res.Samples != n {
					b.Fatalf("%d samples, want %d", res.Samples, n)
				}
			}
			b.ReportMetric(float64(total)/float64(b.N)/float64(n), "alloc-B/sample")
			b.ReportMetric(float64(peak)/float64(n), "peak-B/sample")
			b.ReportMetric(float64(n), "samples")
		})
	}
}

// TestDayMemoryBound: compacting a day keeps the decoded sources and one
// part's samples live, not a map and a sorted copy of the whole day; past
// the merge's budget, a range of points' decoded sources and the sources'
// bytes. The map-based merge peaked at about 135 bytes a sample here, the
// merge of sorted runs at about 55 (the 32-byte samples, 10% of them
// retried duplicates, and a part being encoded and verified), the ranged
// merge at about 25.
func TestDayMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("measures a compaction of 144,000 samples")
	}
	const points = 100
	tests := []struct {
		name   string
		budget int
		bound  float64 // bytes a sample
	}{
		{"the whole day in memory", math.MaxInt, 80},
		{"ranges of points", DefaultMergeSamples * points / 10_000, 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, n := benchArchive(t, points)
			c := New(a.store, Options{PartSamples: DefaultPartSamples * points / 10_000, MergeSamples: tt.budget})
			stop := heapPeak()
			res, err := c.Day(context.Background(), "t1", "s1", day)
			peak := float64(stop()) / float64(n)
			if err != nil {
				t.Fatal(err)
			}
			if res.Samples != n || res.Parts != 8 {
				t.Fatalf("%d samples in %d parts, want %d in 8", res.Samples, res.Parts, n)
			}
			t.Logf("live heap peak %.1f bytes a sample", peak)
			if peak > tt.bound {
				t.Errorf("compacting a day kept %.1f bytes a sample live at its peak, want at most %.0f", peak, tt.bound)
			}
		})
	}
}
