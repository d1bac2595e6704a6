package server

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// recordingObserver keeps what it was shown and fails when told to.
type recordingObserver struct {
	mu   sync.Mutex
	seen []string // "agent/seq"
	ids  []pki.Identity
	fail error
}

func (o *recordingObserver) Observe(_ context.Context, id pki.Identity, b *batch.Batch) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seen = append(o.seen, id.Agent+"/"+strconv.FormatUint(b.Seq, 10))
	o.ids = append(o.ids, id)
	return o.fail
}

func TestObserverSeesEveryArchivedBatch(t *testing.T) {
	tests := []struct {
		name string
		fail error
	}{
		{"observer succeeds", nil},
		{"observer fails: the upload still succeeds", errors.New("hot store full")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := &recordingObserver{fail: tt.fail}
			e := newEnv(t, func(c *Config, _ *blob.Store) { c.Observer = obs })
			enc := e.encode("a", 3, samples(10, now.Add(-time.Hour)))
			wantReply(t, e.upload("a", enc), http.StatusOK, "")
			// The retry is a duplicate: shown again (the observer is
			// idempotent), so a crash before the first Observe heals.
			r := e.upload("a", enc)
			wantReply(t, r, http.StatusOK, "")
			if r.body["status"] != StatusDuplicate {
				t.Fatalf("retry: %v", r.body)
			}
			// A refused batch (another site's identity) is never shown.
			bad := e.encode("c", 4, samples(5, now.Add(-time.Hour)))
			e.upload("a", bad)
			obs.mu.Lock()
			defer obs.mu.Unlock()
			id := e.agents["a"].Identity
			if len(obs.seen) != 2 || obs.seen[0] != id.Agent+"/3" || obs.seen[1] != id.Agent+"/3" || obs.ids[0] != id {
				t.Errorf("observer saw %v %v, want batch 3 of %v twice", obs.seen, obs.ids, id)
			}
			wantErrs := uint64(0)
			if tt.fail != nil {
				wantErrs = 2
			}
			if st := e.srv.Stats(); st.ObserveErrors != wantErrs || st.BatchesStored != 1 {
				t.Errorf("stats %+v, want %d observe errors and 1 stored", st, wantErrs)
			}
		})
	}
}

// TestObserverHotStore stores a batch through the server into a real hot
// store and finds its latest values and rollups there.
func TestObserverHotStore(t *testing.T) {
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "hot.db"), store.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e := newEnv(t, func(c *Config, _ *blob.Store) { c.Observer = db })
	smp := samples(30, now.Add(-time.Hour))
	enc := e.encode("a", 1, smp)
	wantReply(t, e.upload("a", enc), http.StatusOK, "")
	// The retry is shown again and counted once.
	wantReply(t, e.upload("a", enc), http.StatusOK, "")
	id := e.agents["a"].Identity
	ref := store.SiteRef{Tenant: id.Tenant, Site: id.Site}
	latest, err := db.LatestValues(context.Background(), ref)
	if err != nil || len(latest) != 3 {
		t.Fatalf("latest values: %v %+v", err, latest)
	}
	n, _, err := db.Received(context.Background(), ref, 0x1000, now.Add(-3*time.Hour), now)
	if err != nil || n != 10 {
		t.Errorf("received %d samples of point 0x1000 (%v), want 10", n, err)
	}
}
