package store

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// BenchmarkObserveBatchParallel folds batches from several uploads at once,
// as the server does under load: the writes take turns (in Go, or in
// SQLite's busy handler, which sleeps and retries).
func BenchmarkObserveBatchParallel(b *testing.B) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	// Smaller batches than BenchmarkObserveBatch's: 50 points, 12 samples
	// each, so waiting for the turn weighs in.
	const points, per = 50, 12
	var seq atomic.Uint64
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := db.ObserveBatch(ctx, site1, "ag", benchBatch(seq.Add(1), points, per)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
