package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pointtable/pointtabletest"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Ctrl-C during a point table's fetch stops the rebuild at once.
func TestRebuildTableFetchStopsWithTheContext(t *testing.T) {
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for name, data := range map[string][]byte{
		blob.TableName(tenant, "s1", enc.TableHash.String()): enc.Table,
		blob.BatchName(tenant, "s1", "ag-a", 1, at):          enc.Data,
	} {
		if _, err := dir.Put(ctx, name, data); err != nil {
			t.Fatal(err)
		}
	}
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
