package buffer

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkAppend measures fsync'd group commits: 8 poll workers append
// 100-sample slices concurrently. One op is one Append.
func BenchmarkAppend(b *testing.B) {
	const workers, per = 8, 100
	buf := openT(b, tempPath(b), Options{MaxBytes: 8 << 30})
	defer buf.Close()
	payload := mkSamples(0, per)
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := buf.Append(ctx, payload); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N*per)/b.Elapsed().Seconds(), "samples/s")
	b.ReportMetric(float64(buf.Stats().Bytes)/float64(b.N*per), "bytes/sample")
}

// BenchmarkDrain measures the uplink side: seal 1,000 samples, read the
// batch, acknowledge it, all fsync'd. One op is one batch.
func BenchmarkDrain(b *testing.B) {
	const per = 100
	buf := openT(b, tempPath(b), Options{MaxBytes: 8 << 30})
	defer buf.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 8 { // filled like BenchmarkAppend, outside the timer
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N)*10; i = next.Add(1) {
				if err := buf.Append(ctx, mkSamples(int(i)*per, per)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ResetTimer()
	for range b.N {
		if _, ok, err := buf.Seal(ctx, 10*per, fakeSeal); err != nil || !ok {
			b.Fatal(ok, err)
		}
		s, ok, err := buf.Next(0)
		if err != nil || !ok {
			b.Fatal(ok, err)
		}
		if err := buf.Ack(s.Seq); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(float64(b.N*10*per)/b.Elapsed().Seconds(), "samples/s")
}
