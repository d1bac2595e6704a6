package store_test

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
)

// peakHeap runs fn and returns the most heap in use seen while it ran,
// sampled every 10 ms. The collector runs at GOGC=20 meanwhile, so that
// what is sampled is close to the live heap: at the default 100 the heap
// swings up to twice the live size between collections, and a 10 ms
// sample of a short run can miss the top of that swing where a longer
// run catches it, a difference of megabytes unrelated to what is held.
func peakHeap(fn func()) uint64 {
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	runtime.GC()
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	fn()
	close(stop)
	<-done
	return peak.Load()
}

// Memory does not grow with the archive: rebuilding five times the days
// needs the same heap as one day. Small flushes keep the archive small
// (the race detector slows a rebuild twenty-fold) while holding it all
// would still show: five days of 50 points are 11 MB of samples.
func TestRebuildMemoryBounded(t *testing.T) {
	var peaks []uint64
	for _, days := range []int{1, 5} {
		dir, _, n := writeDays(t, days, 50)
		db := openDB(t, "rebuilt.db")
		peaks = append(peaks, peakHeap(func() {
			rep, err := db.Rebuild(context.Background(), dir, store.RebuildOptions{FlushSamples: 5000})
			if err != nil || rep.Samples != int64(n) {
				t.Errorf("rebuilt %d of %d samples: %v", rep.Samples, n, err)
			}
		}))
		t.Logf("%d days, %d samples: peak heap in use %.1f MB", days, n, float64(peaks[len(peaks)-1])/1e6)
	}
	if peaks[1] > peaks[0]+4<<20 {
		t.Errorf("peak heap %.1f MB for 5 days against %.1f MB for 1: memory grows with the archive", float64(peaks[1])/1e6, float64(peaks[0])/1e6)
	}
}
