package observequeue

import (
	"context"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// TestOwed: the batches compaction must hold are exactly those with a
// marker, of that tenant and site.
func TestOwed(t *testing.T) {
	ctx := context.Background()
	d, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		id  pki.Identity
		seq uint64
	}{
		{pki.Identity{Tenant: "t1", Site: "s1", Agent: "ag-a"}, 7},
		{pki.Identity{Tenant: "t1", Site: "s2", Agent: "ag-a"}, 8}, // another site
		{pki.Identity{Tenant: "t2", Site: "s1", Agent: "ag-a"}, 9}, // another tenant
	} {
		if _, err := d.Put(ctx, MarkerName(m.id, m.seq), []byte("x\n")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Put(ctx, Prefix+"not-a-marker", []byte("x")); err != nil {
		t.Fatal(err)
	}
	owed, err := Owed(d)(ctx, "t1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		agent string
		seq   uint64
		want  bool
	}{{"ag-a", 7, true}, {"ag-a", 8, false}, {"ag-a", 9, false}, {"ag-b", 7, false}} {
		if got := owed(tt.agent, tt.seq); got != tt.want {
			t.Errorf("owed(%s, %d) = %v, want %v", tt.agent, tt.seq, got, tt.want)
		}
	}
}
