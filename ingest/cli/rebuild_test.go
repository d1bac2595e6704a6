package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// archiveOf writes n hourly batches of agent ag-x of acme/s1 (two points,
// one sample a minute) into a new directory archive and returns its root.
func archiveOf(t *testing.T, n int) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := blob.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().UTC().Add(-time.Duration(n+1) * time.Hour).Truncate(time.Hour)
	for h := range n {
		var smp []telemetry.Sample
		for p := range 2 {
			for m := range 60 {
				smp = append(smp, telemetry.Sample{PointID: uint64(0xc0 + p), Time: start.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute).UnixMilli(), Value: float64(m)})
			}
		}
		enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: "ag-x", Site: "s1", Seq: uint64(h + 1), SentAt: smp[0].Time}, Samples: smp})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Put(ctx, blob.TableName("acme", "s1", enc.TableHash.String()), enc.Table); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Put(ctx, blob.BatchName("acme", "s1", "ag-x", uint64(h+1), time.UnixMilli(smp[0].Time)), enc.Data); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestStoreRebuild(t *testing.T) {
	ctx := context.Background()
	archive := archiveOf(t, 3)
	damaged := t.TempDir()
	if err := os.CopyFS(damaged, os.DirFS(archive)); err != nil {
		t.Fatal(err)
	}
	bad := blob.BatchName("acme", "s1", "ag-x", 99, time.Now().Add(-time.Hour))
	st, err := blob.OpenDir(damaged)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, bad, []byte("damaged at rest")); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "ingest.yaml")
	if err := os.WriteFile(cfg, []byte("ca_dir: ca\ndatabase: ingest.db\nstore:\n  kind: dir\n  dir: "+archive+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		args        []string
		db          string // the hot store the command writes, read afterwards
		wantOut     []string
		wantErr     string
		wantLatest  int
		wantSamples int64 // with --json
		// serving has an agent upload to the database just before the
		// command runs, as if an ingest were still running.
		serving    bool
		wantStderr string
		badFlag    bool // refused before anything is read
	}{
		{name: "json", args: []string{"--store-dir", archive, "--json"}, wantLatest: 2, wantSamples: 360},
		{name: "human", args: []string{"--store-dir", archive, "--tenant", "acme", "--site", "s1"}, wantLatest: 2,
			wantOut: []string{"rebuilt acme/s1: 3 batches, 0 day parts, 360 samples", "rebuilt 1 sites: 3 blobs read, 360 samples, 0 skipped"}},
		{name: "config", args: []string{"--config", cfg}, db: filepath.Join(filepath.Dir(cfg), "ingest.db"), wantLatest: 2,
			wantOut: []string{"rebuilt 1 sites: 3 blobs read, 360 samples, 0 skipped"}},
		{name: "dry run", args: []string{"--store-dir", archive, "--dry-run"}, wantLatest: 0,
			wantOut: []string{"would rebuild acme/s1: 3 batches", "would rebuild 1 sites: 3 blobs read, 360 samples, 0 skipped"}},
		{name: "damaged blob", args: []string{"--store-dir", damaged}, wantLatest: 2, wantErr: "1 blobs could not be read",
			wantOut: []string{"skipped " + bad + ": ", "rebuilt 1 sites: 3 blobs read, 360 samples, 1 skipped"}},
		{name: "beside a running ingest", args: []string{"--store-dir", archive}, serving: true, wantLatest: 2,
			wantStderr: "is the ingest still running?"},
		{name: "since this month", args: []string{"--store-dir", archive, "--tenant", "acme", "--site", "s1", "--since", time.Now().UTC().Add(-5 * time.Hour).Format("2006-01")}, wantLatest: 2,
			wantOut: []string{"rebuilt 1 sites: 3 blobs read, 360 samples, 0 skipped"}},
		{name: "since after the data", args: []string{"--store-dir", archive, "--since", time.Now().UTC().AddDate(0, 2, 0).Format("2006-01")}, wantErr: "nothing archived"},
		{name: "since, badly written", args: []string{"--store-dir", archive, "--since", "2026"}, wantErr: "want yyyy-mm", badFlag: true},
		{name: "nothing archived", args: []string{"--store-dir", archive, "--tenant", "acme", "--site", "other"}, wantErr: "nothing archived"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := tt.db
			args := append([]string{"store", "rebuild"}, tt.args...)
			if db == "" {
				db = filepath.Join(t.TempDir(), "ingest.db")
				args = append(args, "--db", db)
			}
			if tt.serving {
				hot, err := store.Open(ctx, db, store.Options{})
				if err != nil {
					t.Fatal(err)
				}
				err = hot.ObserveBatch(ctx, store.SiteRef{Tenant: "acme", Site: "s1"}, "ag-x",
					&batch.Batch{Header: batch.Header{AgentID: "ag-x", Site: "s1", Seq: 1000, SentAt: time.Now().UnixMilli()}})
				hot.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			out, stderr, err := run(t, ctx, args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			if tt.badFlag {
				return
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tt.wantSamples > 0 {
				var rep store.RebuildReport
				if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Samples != tt.wantSamples || len(rep.Sites) != 1 || !rep.Sites[0].Complete {
					t.Errorf("--json = %s (%v)", out, err)
				}
			}
			if strings.Contains(stderr, "still running") != (tt.wantStderr != "") || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr %q, want it to say %q", stderr, tt.wantStderr)
			}
			if !strings.Contains(stderr, "rebuilding site") {
				t.Errorf("no progress on stderr: %q", stderr)
			}
			if slices.Contains(tt.args, "--dry-run") {
				if _, err := os.Stat(db); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("the command made the database %s (%v)", db, err)
				}
				return
			}
			hot, err := store.Open(ctx, db, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer hot.Close()
			lv, err := hot.LatestValues(ctx, store.SiteRef{Tenant: "acme", Site: "s1"})
			if err != nil || len(lv) != tt.wantLatest {
				t.Errorf("%d latest values (%v), want %d", len(lv), err, tt.wantLatest)
			}
		})
	}
}
