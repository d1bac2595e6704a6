package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure/azuritetest"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/export"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

func TestArchiveCompactAndExport(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := blob.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Three days back from the machine's clock: compact without --day
	// takes the days that ended --older-than (26 h) ago, so a fixed date
	// passed only once the machine's clock was past it (this one failed
	// before 2026-12-01T02:00Z).
	day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -3)
	n := 0
	for h := range 3 {
		var smp []telemetry.Sample
		for p := range 4 {
			for m := range 60 {
				smp = append(smp, telemetry.Sample{PointID: uint64(0xa0 + p), Time: day.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute).UnixMilli(), Value: float64(m)})
			}
		}
		n += len(smp)
		enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: "ag-x", Site: "s1", Seq: uint64(h + 1), SentAt: smp[0].Time}, Samples: smp})
		if err != nil {
			t.Fatal(err)
		}
		store.Put(ctx, blob.TableName("acme", "s1", enc.TableHash.String()), enc.Table)
		store.Put(ctx, blob.BatchName("acme", "s1", "ag-x", uint64(h+1), time.UnixMilli(smp[0].Time)), enc.Data)
	}
	out, _, err := run(t, ctx, "archive", "compact", "--store-dir", dir, "--tenant", "acme", "--site", "s1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var res []compact.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res) != 1 || res[0].Samples != n || res[0].Sources != 3 {
		t.Fatalf("compact --json = %s (%v)", out, err)
	}
	// archive cat reads the day blob like any batch.
	cat, _, err := run(t, ctx, "archive", "cat", "--store-dir", dir, "acme/s1/")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(cat, "\n"); got != n {
		t.Errorf("archive cat printed %d samples, want %d", got, n)
	}
	pq := filepath.Join(t.TempDir(), "day.parquet")
	if _, _, err := run(t, ctx, "archive", "export", "--store-dir", dir, "--tenant", "acme", "--site", "s1", "--day", day.Format(time.DateOnly), "--out", pq); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(pq)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := parquet.Read[export.Row](bytes.NewReader(data), int64(len(data)))
	if err != nil || len(rows) != n {
		t.Fatalf("%d Parquet rows (%v), want %d", len(rows), err, n)
	}
	if _, _, err := run(t, ctx, "archive", "export", "--store-dir", dir, "--tenant", "acme", "--site", "s1", "--day", day.AddDate(0, 0, -1).Format(time.DateOnly), "--out", pq); err == nil || !strings.Contains(err.Error(), "no samples") {
		t.Errorf("exporting an empty day: %v", err)
	}
}

// TestArchiveCommandsOnAzuriteIntegration runs cat, compact and export on
// an archive in the Azure store, reached through the ingest's config.
func TestArchiveCommandsOnAzuriteIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("Azurite integration test: skipped with -short")
	}
	ctx := context.Background()
	srv := azuritetest.Start(t, azuritetest.Options{})
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "ingest.yaml")
	cfg := "ca_dir: ca\ndatabase: ingest.db\nstore:\n  kind: azure\n  azure:\n    account_url: " + srv.AccountURL + "\n    container: archive\n    auth: shared-key-emulator\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.LoadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	store, _, err := openStore(ctx, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	var smp []telemetry.Sample
	for m := range 120 {
		smp = append(smp, telemetry.Sample{PointID: 0xb1, Time: day.Add(time.Duration(m) * time.Minute).UnixMilli(), Value: float64(m)})
	}
	enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: "ag-x", Site: "s1", Seq: 1, SentAt: smp[0].Time}, Samples: smp})
	if err != nil {
		t.Fatal(err)
	}
	store.Put(ctx, blob.TableName("acme", "s1", enc.TableHash.String()), enc.Table)
	store.Put(ctx, blob.BatchName("acme", "s1", "ag-x", 1, day), enc.Data)

	out, _, err := run(t, ctx, "archive", "cat", "--config", cfgPath, "acme/s1/")
	if err != nil || strings.Count(out, "\n") != len(smp) {
		t.Fatalf("archive cat on Azure: %d lines, %v", strings.Count(out, "\n"), err)
	}
	if _, _, err := run(t, ctx, "archive", "compact", "--config", cfgPath, "--tenant", "acme", "--site", "s1", "--day", "2026-11-29"); err != nil {
		t.Fatal(err)
	}
	names, _ := store.List(ctx, "acme/s1/2026/")
	if len(names) != 0 {
		t.Errorf("batch blobs left after compaction: %v", names)
	}
	pq := filepath.Join(dir, "day.parquet")
	if _, _, err := run(t, ctx, "archive", "export", "--config", cfgPath, "--tenant", "acme", "--site", "s1", "--day", "2026-11-29", "--out", pq); err != nil {
		t.Fatal(err)
	}
	out, _, err = run(t, ctx, "archive", "cat", "--config", cfgPath, "acme/s1/days/")
	if err != nil || strings.Count(out, "\n") != len(smp) {
		t.Errorf("archive cat of the day blob: %d lines, %v", strings.Count(out, "\n"), err)
	}
}
