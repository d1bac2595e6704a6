package compact

import (
	"context"
	"math"
	"runtime"
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
)

// benchArchive fills an archive with the synthetic day and returns the
// distinct samples in it.
func benchArchive(tb testing.TB) (*archive, int) {
	a := newArchive(tb)
	distinct := 0
	for i := range 24 * 60 / benchBatch {
		start := day.Add(time.Duration(i*benchBatch) * time.Minute)
		s := make([]telemetry.Sample, 0, benchPoints*benchBatch)
		for p := range benchPoints {
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

// heapPeak samples the heap's live objects on a ticker until stop is
// called, and returns the highest figure seen above the level at start
// (after a collection). Allocations shorter than the tick may be missed;
// the merge's large slices live for many ticks.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
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
	a, n := benchArchive(b)
	c := New(a.store, Options{})
	reportMemory(b, n, func() {
		got, err := c.ReadDay(context.Background(), "t1", "s1", day)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) != n {
			b.Fatalf("%d samples, want %d", len(got), n)
		}
	})
}

// BenchmarkCompactDayMemory compacts a synthetic day (merge, encode,
// store, verify, delete) and reports the memory it takes per sample.
func BenchmarkCompactDayMemory(b *testing.B) {
	var total, peak uint64
	var n int
	for range b.N {
		b.StopTimer()
		a, distinct := benchArchive(b)
		n = distinct
		c := New(a.store, Options{})
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
}
