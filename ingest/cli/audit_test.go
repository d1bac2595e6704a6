package cli

import (
	"context"
	"database/sql"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

// auditEntries opens the store at path and appends n audit entries.
func auditEntries(t *testing.T, path string, n int) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if _, err := db.Audit(context.Background(), "cli", "revoke", "ag-1", ""); err != nil {
			db.Close()
			t.Fatal(err)
		}
	}
	return db
}

// TestAuditVerifyAnchors: with --config, audit verify reads the archive's
// anchors and finds the newest entries deleted, which the chain alone
// cannot show.
func TestAuditVerifyAnchors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "ca_dir: ca\ndatabase: ingest.db\nstore: {kind: dir, dir: archive}\n")
	db := auditEntries(t, filepath.Join(dir, "ingest.db"), 10)
	archive, err := blob.OpenDir(filepath.Join(dir, "archive"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.AnchorAudit(ctx, archive); err != nil {
		t.Fatal(err)
	}
	db.Close()

	if out, _, err := run(t, ctx, "audit", "verify", "--config", cfg); err != nil || !strings.Contains(out, "10 entries") || !strings.Contains(out, "1 anchors") {
		t.Fatalf("intact log: %q, %v", out, err)
	}
	// Someone with the database drops the trigger and deletes the newest
	// three entries: the chain still verifies on its own.
	raw, err := sql.Open("sqlite", filepath.Join(dir, "ingest.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP TRIGGER audit_no_delete`, `DELETE FROM audit WHERE seq > 7`} {
		if _, err := raw.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()
	if out, _, err := run(t, ctx, "audit", "verify", "--db", filepath.Join(dir, "ingest.db")); err != nil || !strings.Contains(out, "anchors not checked") {
		t.Errorf("without --config: %q, %v; want ok and a note that anchors were not checked", out, err)
	}
	_, _, err = run(t, ctx, "audit", "verify", "--config", cfg)
	if err == nil || !strings.Contains(err.Error(), "entries after 7 missing") {
		t.Errorf("audit verify after deleting the newest entries: %v, want \"entries after 7 missing\"", err)
	}
}

// TestServeAnchorsAuditAtShutdown: serve anchors the newest audit entry in
// its archive when it stops, so the next `audit verify --config` checks it.
func TestServeAnchorsAuditAtShutdown(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, _, err := run(t, ctx, "ca", "init", "--dir", filepath.Join(dir, "ca")); err != nil {
		t.Fatalf("ca init: %v", err)
	}
	auditEntries(t, filepath.Join(dir, "ingest.db"), 4).Close()
	cfg := writeConfig(t, dir, "listen: 127.0.0.1:0\ninternal_listen: 127.0.0.1:0\nca_dir: ca\ndatabase: ingest.db\nstore:\n  kind: dir\n  dir: archive\n")
	srv := startServe(t, "--config", cfg)
	// Running once the health listener answers: serve has started
	// everything, the anchoring included.
	ready := false
	for range 100 {
		r, err := http.Get("http://" + srv.internal + "/healthz")
		if err == nil {
			r.Body.Close()
			if ready = r.StatusCode == http.StatusOK; ready {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !ready {
		t.Fatal("serve never answered /healthz")
	}
	if err := srv.stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	archive, err := blob.OpenDir(filepath.Join(dir, "archive"))
	if err != nil {
		t.Fatal(err)
	}
	names, err := archive.List(ctx, store.AnchorPrefix)
	if err != nil || len(names) == 0 {
		t.Fatalf("anchors after serve stopped: %v, %v", names, err)
	}
	if out, _, err := run(t, ctx, "audit", "verify", "--config", cfg); err != nil || !strings.Contains(out, "anchors in") {
		t.Errorf("audit verify: %q, %v", out, err)
	}
}
