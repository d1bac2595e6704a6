package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// benchArchive writes a day of 500 points sampled once a minute, as 24
// hourly batches of one agent, into a directory archive; compacted, it is
// one day blob instead.
func benchArchive(b *testing.B, compacted bool) (*blob.Dir, []*batch.Batch, int) {
	b.Helper()
	ctx := context.Background()
	dir, err := blob.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	day := now.Add(-48 * time.Hour).Truncate(24 * time.Hour)
	var batches []*batch.Batch
	n := 0
	for h := range 24 {
		var smp []telemetry.Sample
		for p := range 500 {
			for m := range 60 {
				i := p*60 + m
				smp = append(smp, telemetry.Sample{PointID: uint64(0x10000 + p), Time: day.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute).UnixMilli(),
					Value: 18 + float64((i*7919)%1000)/100})
			}
		}
		bt := &batch.Batch{Header: batch.Header{AgentID: "ag-bench", Site: "s1", Seq: uint64(h + 1), SentAt: smp[len(smp)-1].Time}, Samples: smp}
		enc, err := batch.Encode(bt)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := dir.Put(ctx, blob.TableName(tenant, "s1", enc.TableHash.String()), enc.Table); err != nil {
			b.Fatal(err)
		}
		if _, err := dir.Put(ctx, blob.BatchName(tenant, "s1", "ag-bench", bt.Seq, time.UnixMilli(smp[0].Time)), enc.Data); err != nil {
			b.Fatal(err)
		}
		batches = append(batches, bt)
		n += len(smp)
	}
	if compacted {
		if _, err := compact.New(dir, compact.Options{}).Day(ctx, tenant, "s1", day); err != nil {
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
