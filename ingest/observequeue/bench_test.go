package observequeue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// BenchmarkRetry measures how fast a backlog drains once the hot store
// works again: one marker retried per iteration — its claim and batch
// blob read from a directory archive, decoded, folded into a SQLite hot
// store, the marker deleted. A batch holds 1,000 points of 15 samples, a
// 15-minute upload of a building polled every minute.
func BenchmarkRetry(b *testing.B) {
	ctx := context.Background()
	d, err := blob.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	db, err := store.Open(ctx, filepath.Join(b.TempDir(), "hot.db"), store.Options{Now: func() time.Time { return at }})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	q, err := New(d, db, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		b.Fatal(err)
	}
	const points, perPoint = 1000, 15
	var smp []telemetry.Sample
	start := at.Add(-time.Hour).UnixMilli()
	for p := range points {
		for i := range perPoint {
			smp = append(smp, telemetry.Sample{PointID: uint64(p)*7919 + 1, Time: start + int64(i)*60_000, Value: 20 + math.Sin(float64(p+i))*3})
		}
	}
	for seq := uint64(1); b.Loop(); seq++ {
		b.StopTimer()
		enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: id.Agent, Site: id.Site, Seq: seq, SentAt: at.UnixMilli()}, Samples: smp})
		if err != nil {
			b.Fatal(err)
		}
		name := blob.BatchName(id.Tenant, id.Site, id.Agent, seq, at)
		sum := sha256.Sum256(enc.Data)
		for n, data := range map[string][]byte{
			blob.TableName(id.Tenant, id.Site, enc.TableHash.String()): enc.Table,
			name: enc.Data,
			blob.ClaimName(id.Tenant, id.Site, id.Agent, seq): []byte(hex.EncodeToString(sum[:]) + " " + name + "\n"),
		} {
			if _, err := d.Put(ctx, n, data); err != nil {
				b.Fatal(err)
			}
		}
		if err := q.Add(ctx, id, seq); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := q.Pass(ctx)
		if err != nil || res.Observed != 1 {
			b.Fatalf("pass %+v: %v", res, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(float64(b.N*len(smp))/b.Elapsed().Seconds(), "samples/s")
}

// BenchmarkAdd is what a failed hot-store update adds to its upload: one
// create-if-absent marker, durable (fsync) in a directory archive.
func BenchmarkAdd(b *testing.B) {
	d, err := blob.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	q, err := New(d, &observer{}, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		b.Fatal(err)
	}
	for seq := uint64(1); b.Loop(); seq++ {
		if err := q.Add(context.Background(), id, seq); err != nil {
			b.Fatal(err)
		}
	}
}
