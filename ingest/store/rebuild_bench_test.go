package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure/azuritetest"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// benchArchive is a day of writeDays; compacted, it is one day blob
// instead of 24 batch blobs.
func benchArchive(b *testing.B, compacted bool) (*blob.Dir, []*batch.Batch, int) {
	b.Helper()
	dir, batches, n := writeDays(b, 1, 500)
	if compacted {
		day := time.UnixMilli(batches[0].Samples[0].Time)
		if _, err := compact.New(dir, compact.Options{}).Day(context.Background(), tenant, "s1", day); err != nil {
			b.Fatal(err)
		}
	}
	return dir, batches, n
}

// BenchmarkRebuild measures samples/s rebuilt into a new SQLite hot store
// from batch blobs and from a compacted day, against ObserveBatch folding
// the same batches as they arrive (the live path) as the reference.
func BenchmarkRebuild(b *testing.B) {
	ctx := context.Background()
	for _, bc := range []struct {
		name      string
		compacted bool
		live      bool
	}{{name: "batches"}, {name: "compacted", compacted: true}, {name: "reference=ObserveBatch", live: true}} {
		b.Run(bc.name, func(b *testing.B) {
			dir, batches, n := benchArchive(b, bc.compacted)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				db := openDB(b, "bench.db")
				b.StartTimer()
				if bc.live {
					for _, bt := range batches {
						if err := db.ObserveBatch(ctx, store.SiteRef{Tenant: tenant, Site: "s1"}, bt.AgentID, bt); err != nil {
							b.Fatal(err)
						}
					}
					continue
				}
				rep, err := db.Rebuild(ctx, dir, store.RebuildOptions{Tenant: tenant, Site: "s1", Since: now.AddDate(0, -1, 0)})
				if err != nil || rep.Samples != int64(n) {
					b.Fatalf("rebuilt %d samples (%v), want %d", rep.Samples, err, n)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// writeDays writes days of points at one sample a minute, as hourly
// batches of one agent, into a new directory archive; it returns the
// batches too.
func writeDays(t testing.TB, days, points int) (*blob.Dir, []*batch.Batch, int) {
	t.Helper()
	ctx := context.Background()
	dir, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := now.Add(-time.Duration(days+1) * 24 * time.Hour).Truncate(24 * time.Hour)
	n := 0
	var batches []*batch.Batch
	for h := range days * 24 {
		smp := make([]telemetry.Sample, 0, points*60)
		for p := range points {
			for m := range 60 {
				smp = append(smp, telemetry.Sample{PointID: uint64(0x10000 + p), Time: start.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute).UnixMilli(),
					Value: float64((p*m)%100) / 3})
			}
		}
		bt := &batch.Batch{Header: batch.Header{AgentID: "ag-m", Site: "s1", Seq: uint64(h + 1), SentAt: smp[0].Time}, Samples: smp}
		enc, err := batch.Encode(bt)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dir.Put(ctx, blob.TableName(tenant, "s1", enc.TableHash.String()), enc.Table); err != nil {
			t.Fatal(err)
		}
		if _, err := dir.Put(ctx, blob.BatchName(tenant, "s1", "ag-m", bt.Seq, time.UnixMilli(smp[0].Time)), enc.Data); err != nil {
			t.Fatal(err)
		}
		batches = append(batches, bt)
		n += len(smp)
	}
	return dir, batches, n
}

// BenchmarkRebuildAzure measures blobs/s rebuilt from small batch blobs
// (100 samples each) in Azurite, fetching one blob at a time against
// DefaultPrefetch at once: on Azure every Get is a round trip.
func BenchmarkRebuildAzure(b *testing.B) {
	ctx := context.Background()
	srv := azuritetest.Start(b, azuritetest.Options{})
	st, err := azure.New(azure.Options{AccountURL: srv.AccountURL, Container: "bench", SharedKey: azure.EmulatorSharedKey()})
	if err != nil {
		b.Fatal(err)
	}
	if err := st.CreateContainer(ctx); err != nil {
		b.Fatal(err)
	}
	const blobs = 200
	start := now.Add(-24 * time.Hour)
	for i := range blobs {
		var smp []telemetry.Sample
		for p := range 10 {
			for m := range 10 {
				smp = append(smp, telemetry.Sample{PointID: uint64(0x20000 + p), Time: start.Add(time.Duration(i*10+m) * time.Minute).UnixMilli(), Value: float64(m)})
			}
		}
		enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: "ag-az", Site: "s1", Seq: uint64(i + 1), SentAt: smp[0].Time}, Samples: smp})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Put(ctx, blob.TableName(tenant, "s1", enc.TableHash.String()), enc.Table); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Put(ctx, blob.BatchName(tenant, "s1", "ag-az", uint64(i+1), time.UnixMilli(smp[0].Time)), enc.Data); err != nil {
			b.Fatal(err)
		}
	}
	for _, prefetch := range []int{1, store.DefaultPrefetch} {
		b.Run(fmt.Sprintf("prefetch=%d", prefetch), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				db := openDB(b, "bench.db")
				b.StartTimer()
				rep, err := db.Rebuild(ctx, st, store.RebuildOptions{Prefetch: prefetch})
				if err != nil || rep.Blobs != blobs {
					b.Fatalf("rebuilt %d blobs (%v), want %d", rep.Blobs, err, blobs)
				}
			}
			b.ReportMetric(blobs*float64(b.N)/b.Elapsed().Seconds(), "blobs/s")
			b.ReportMetric(blobs*100*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
