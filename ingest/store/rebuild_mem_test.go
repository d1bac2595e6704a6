//go:build !race

package store_test

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
)

// The race detector multiplies both the time and the memory a rebuild
// takes, so this test runs without it only.

// peakHeap runs fn and returns the most heap in use seen while it ran,
// sampled every 10 ms.
func peakHeap(fn func()) uint64 {
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

// Memory does not grow with the archive: rebuilding four times the days
// needs about the same heap as one day.
func TestRebuildMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("rebuilds 3.6 million samples: skipped with -short")
	}
	var peaks []uint64
	for _, days := range []int{1, 4} {
		dir, _, n := writeDays(t, days)
		db := openDB(t, "rebuilt.db")
		peaks = append(peaks, peakHeap(func() {
			rep, err := db.Rebuild(context.Background(), dir, store.RebuildOptions{})
			if err != nil || rep.Samples != int64(n) {
				t.Errorf("rebuilt %d of %d samples: %v", rep.Samples, n, err)
			}
		}))
		t.Logf("%d days, %d samples: peak heap in use %.1f MB", days, n, float64(peaks[len(peaks)-1])/1e6)
	}
	if peaks[1] > peaks[0]+32<<20 {
		t.Errorf("peak heap %d MB for 4 days against %d MB for 1: memory grows with the archive", peaks[1]>>20, peaks[0]>>20)
	}
}
