package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pointtable/pointtabletest"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// archiveOneBatch stores one batch of site s1, an hour before now, and
// its point table in a new directory archive.
func archiveOneBatch(t *testing.T) (*blob.Dir, time.Time) {
	t.Helper()
	dir, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	at := now.Add(-time.Hour)
	enc, err := batch.Encode(&batch.Batch{
		Header:  batch.Header{AgentID: "ag-a", Site: "s1", Seq: 1, SentAt: at.UnixMilli()},
		Samples: []telemetry.Sample{{PointID: 7, Time: at.UnixMilli(), Value: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		blob.TableName(tenant, "s1", enc.TableHash.String()): enc.Table,
		blob.BatchName(tenant, "s1", "ag-a", 1, at):          enc.Data,
	} {
		if _, err := dir.Put(context.Background(), name, data); err != nil {
			t.Fatal(err)
		}
	}
	return dir, at
}

// Ctrl-C during a point table's fetch stops the rebuild at once.
func TestRebuildTableFetchStopsWithTheContext(t *testing.T) {
	dir, at := archiveOneBatch(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &pointtabletest.Stall{Store: dir, OnStall: cancel}
	rep, err := openDB(t, "rebuilt.db").Rebuild(ctx, st, store.RebuildOptions{Tenant: tenant, Site: "s1", Since: at})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("err = %v, want an interruption", err)
	}
	if st.Stalls() != 1 {
		t.Errorf("%d table reads stalled, want 1", st.Stalls())
	}
	if len(rep.Sites) != 1 || rep.Sites[0].Complete || len(rep.Sites[0].Skipped) != 0 {
		t.Errorf("report %+v: want the site incomplete and nothing skipped", rep.Sites)
	}
}

// errOutage is what a store in an outage answers.
var errOutage = errors.New("connection refused")

// failingTables is a blob.Store whose first fails Gets of point tables
// fail as a store in an outage does (every one when fails is negative);
// everything else goes to Store.
type failingTables struct {
	blob.Store
	mu          sync.Mutex
	fails, gets int
}

func (f *failingTables) Get(ctx context.Context, name string) ([]byte, error) {
	if !strings.Contains(name, "/tables/") {
		return f.Store.Get(ctx, name)
	}
	f.mu.Lock()
	f.gets++
	fail := f.fails < 0 || f.gets <= f.fails
	f.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("getting %s: %w", name, errOutage)
	}
	return f.Store.Get(ctx, name)
}

// TestRebuildTableOutage: a point table the archive fails to give (not a
// missing or damaged one) is asked for again a few times; a short outage
// is ridden out, a longer one stops the site with an error that says so,
// and the batch is neither skipped nor the site's old rows touched.
func TestRebuildTableOutage(t *testing.T) {
	ctx := context.Background()
	ref := store.SiteRef{Tenant: tenant, Site: "s1"}
	for _, tt := range []struct {
		name     string
		fails    int
		complete bool
		gets     int // table reads: the first and up to 3 retries
	}{
		{"short outage", 2, true, 3},
		{"long outage", -1, false, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, at := archiveOneBatch(t)
			db := openDB(t, "rebuilt.db")
			o := store.RebuildOptions{Tenant: tenant, Site: "s1", Since: at}
			if _, err := db.Rebuild(ctx, dir, o); err != nil {
				t.Fatal(err)
			}
			before, err := db.LatestValues(ctx, ref)
			if err != nil || len(before) != 1 {
				t.Fatalf("latest values %+v (%v) after a first rebuild, want one", before, err)
			}

			st := &failingTables{Store: dir, fails: tt.fails}
			rep, err := db.Rebuild(ctx, st, o)
			if tt.complete != (err == nil) {
				t.Fatalf("err = %v, want the site complete: %v", err, tt.complete)
			}
			if !tt.complete && (!errors.Is(err, errOutage) || !strings.Contains(err.Error(), "point table") ||
				!strings.Contains(err.Error(), "run the rebuild again") || !strings.Contains(err.Error(), "not changed")) {
				t.Errorf("err = %v, want the store's error, the point table, that nothing changed and to run it again", err)
			}
			if len(rep.Sites) != 1 || rep.Sites[0].Complete != tt.complete || len(rep.Sites[0].Skipped) != 0 {
				t.Fatalf("report %+v: want complete %v and nothing skipped", rep.Sites, tt.complete)
			}
			if tt.complete && rep.Sites[0].Batches != 1 {
				t.Errorf("%d batches rebuilt, want 1", rep.Sites[0].Batches)
			}
			if st.gets != tt.gets {
				t.Errorf("%d table reads, want %d", st.gets, tt.gets)
			}
			after, err := db.LatestValues(ctx, ref)
			if err != nil || !reflect.DeepEqual(after, before) {
				t.Errorf("latest values %+v (%v), want %+v kept", after, err, before)
			}
		})
	}
}

// failingBatches is an archive whose batch reads fail (an outage, not a
// missing blob).
type failingBatches struct{ blob.Store }

func (f failingBatches) Get(ctx context.Context, name string) ([]byte, error) {
	if strings.HasSuffix(name, ".sgb") {
		return nil, fmt.Errorf("getting %s: %w", name, errOutage)
	}
	return f.Store.Get(ctx, name)
}

// TestRebuildBatchOutage: a batch the archive fails to give stops the
// rebuild with an error saying so, instead of being skipped as damaged.
func TestRebuildBatchOutage(t *testing.T) {
	ctx := context.Background()
	dir, at := archiveOneBatch(t)
	db := openDB(t, "rebuilt.db")
	rep, err := db.Rebuild(ctx, failingBatches{dir}, store.RebuildOptions{Tenant: tenant, Site: "s1", Since: at})
	if !errors.Is(err, errOutage) || !strings.Contains(err.Error(), "run the rebuild again") {
		t.Fatalf("err = %v, want the store's error and to run the rebuild again", err)
	}
	for _, s := range rep.Sites {
		if len(s.Skipped) != 0 || s.Complete {
			t.Errorf("site report %+v: want it incomplete with nothing skipped", s)
		}
	}
}
