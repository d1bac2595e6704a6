package buffer

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestConcurrent has many poll workers appending while the uplink seals,
// pipelines, acknowledges and occasionally rejects; every appended sample
// must come out exactly once, and the counters must end at zero.
func TestConcurrent(t *testing.T) {
	const (
		workers = 16
		appends = 150
		per     = 7
	)
	ctx := context.Background()
	path := tempPath(t)
	b := openT(t, path, Options{NoSync: true})
	defer func() { b.Close() }()

	var (
		wg       sync.WaitGroup
		done     atomic.Bool
		rejected []telemetry.Sample
	)
	for w := range workers {
		wg.Go(func() {
			for i := range appends {
				if err := b.Append(ctx, mkSamples((w*appends+i)*per, per)); err != nil {
					t.Error(err)
					return
				}
				_ = b.Stats() // the status socket reads while workers write
			}
		})
	}
	seen := make(map[uint64]int) // point id -> times seen
	var drainErr error
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		var inflight uint64
		for {
			finished := done.Load() // read before sealing: what follows sees every append
			if _, _, err := b.Seal(ctx, 50, fakeSeal); err != nil {
				drainErr = err
				return
			}
			// Pipeline up to 3 batches, then acknowledge the oldest.
			for range 3 {
				s, ok, err := b.Next(inflight)
				if err != nil {
					drainErr = err
					return
				}
				if !ok {
					break
				}
				inflight = s.Seq
			}
			s, ok, err := b.Next(0)
			if err != nil {
				drainErr = err
				return
			}
			if !ok {
				if finished {
					return
				}
				continue
			}
			_, samples, err := fakeOpen(s.Data)
			if err != nil {
				drainErr = err
				return
			}
			if _, err := b.Table(s.TableHash); err != nil {
				drainErr = err
				return
			}
			if s.Seq%17 == 0 {
				rejected = append(rejected, samples...)
				err = b.Reject(s.Seq, "test")
			} else {
				for _, x := range samples {
					seen[x.PointID]++
				}
				err = b.Ack(s.Seq)
			}
			if err != nil {
				drainErr = err
				return
			}
		}
	}()
	wg.Wait()
	done.Store(true)
	<-drained
	if drainErr != nil {
		t.Fatal(drainErr)
	}
	for _, x := range rejected {
		seen[x.PointID]++
	}
	total := 0
	for w := range workers {
		for i := range appends {
			for _, x := range mkSamples((w*appends+i)*per, per) {
				if n := seen[x.PointID]; n != 1 {
					t.Fatalf("sample of point %016x seen %d times", x.PointID, n)
				}
				total++
			}
		}
	}
	if len(seen) != total {
		t.Fatalf("saw %d distinct samples, appended %d", len(seen), total)
	}
	st := b.Stats()
	if st.PendingSamples != 0 || st.SealedBatches != 0 || st.SealedSamples != 0 || st.DroppedSamples != 0 || st.RejectedBatches == 0 {
		t.Fatalf("final stats: %+v", st)
	}
	b = reopen(t, b, path, Options{NoSync: true})
}
