package server

import (
	"context"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// BenchmarkIngest measures what one core does with a batch once its bytes
// have arrived: decode it in full, validate it against the identity and
// the time window, and store it (claim and blob) in the directory store.
// A batch holds 1,000 points of 15 samples, as a 15-minute upload of a
// building polled every minute would.
func BenchmarkIngest(b *testing.B) {
	ca, err := pki.Init(b.TempDir(), pki.InitOptions{})
	if err != nil {
		b.Fatal(err)
	}
	dir, err := blob.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Config{Now: func() time.Time { return now }}, dir, ca, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	id := pki.Identity{Tenant: "t", Site: "s1", Agent: "ag-bench"}
	const points, perPoint = 1000, 15
	var smp []telemetry.Sample
	start := now.Add(-time.Hour).UnixMilli()
	for p := range points {
		for i := range perPoint {
			smp = append(smp, telemetry.Sample{PointID: uint64(p)*7919 + 1, Time: start + int64(i)*60_000, Value: 20 + math.Sin(float64(p+i))*3})
		}
	}
	enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: id.Agent, Site: id.Site, Seq: 1, SentAt: now.UnixMilli()}, Samples: smp})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := dir.Put(context.Background(), blob.TableName(id.Tenant, id.Site, enc.TableHash.String()), enc.Table); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(int64(len(enc.Data)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		bt, rf := srv.checkBatch(ctx, enc.Data, id)
		if rf != nil {
			b.Fatal(rf.msg)
		}
		// Every iteration stores a new batch: the same bytes under a new
		// seq would be a conflict, so the header's seq is what changes.
		bt.Seq = uint64(i + 1)
		if _, rf := srv.storeBatch(ctx, enc.Data, bt, pki.Identity{Tenant: id.Tenant, Site: id.Site, Agent: id.Agent}); rf != nil {
			b.Fatal(rf.msg)
		}
	}
	b.ReportMetric(float64(b.N*len(smp))/b.Elapsed().Seconds(), "samples/s")
}
