package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/observequeue"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	rdb "github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// noObserver is a hot store that never gets the chance: the process that
// wrote the marker stopped before retrying it.
type noObserver struct{}

func (noObserver) Observe(context.Context, pki.Identity, *batch.Batch) error { return nil }

// TestServeRetriesMarkersOfEarlierRun: a batch archived by an earlier run
// whose hot-store update failed (its marker in the archive) reaches the
// hot store once serve starts again, and the marker is removed.
func TestServeRetriesMarkersOfEarlierRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	caDir := newCA(t)
	archive, err := blob.OpenDir(filepath.Join(dir, "archive"))
	if err != nil {
		t.Fatal(err)
	}
	id := pki.Identity{Tenant: "acme", Site: "s1", Agent: "ag-1"}
	end := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	enc, err := batch.Encode(&batch.Batch{
		Header: batch.Header{AgentID: id.Agent, Site: id.Site, Seq: 1, SentAt: end.UnixMilli()},
		Samples: []telemetry.Sample{
			{PointID: 0xa1, Time: end.UnixMilli(), Value: 21.5},
			{PointID: 0xb2, Time: end.UnixMilli(), Value: 3},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// What the earlier run archived: table, batch blob, claim.
	name := blob.BatchName(id.Tenant, id.Site, id.Agent, 1, end)
	sum := sha256.Sum256(enc.Data)
	for n, data := range map[string][]byte{
		blob.TableName(id.Tenant, id.Site, enc.TableHash.String()): enc.Table,
		name: enc.Data,
		blob.ClaimName(id.Tenant, id.Site, id.Agent, 1): []byte(hex.EncodeToString(sum[:]) + " " + name + "\n"),
	} {
		if _, err := archive.Put(ctx, n, data); err != nil {
			t.Fatal(err)
		}
	}
	earlier, err := observequeue.New(archive, noObserver{}, slog.New(slog.DiscardHandler), observequeue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := earlier.Add(ctx, id, 1); err != nil {
		t.Fatal(err)
	}

	cfg := writeConfig(t, dir, fmt.Sprintf("listen: 127.0.0.1:0\nca_dir: %s\ndatabase: hot.db\nstore:\n  kind: dir\n  dir: archive\n", caDir))
	srv := startServe(t, "--config", cfg)
	// Bounded: the first pass runs as serve starts.
	for i := 0; ; i++ {
		names, err := archive.List(ctx, observequeue.Prefix)
		if err != nil {
			t.Fatal(err)
		}
		if len(names) == 0 {
			break
		}
		if i == 300 {
			t.Fatalf("serve left the marker %v for 30s", names)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := srv.stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	db, err := rdb.Open(ctx, filepath.Join(dir, "hot.db"), rdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	latest, err := db.LatestValues(ctx, rdb.SiteRef{Tenant: id.Tenant, Site: id.Site})
	if err != nil || len(latest) != 2 {
		t.Errorf("latest values %+v (%v), want the batch's 2 points", latest, err)
	}
}
