package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/observequeue"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

var _ ObserveQueue = (*observequeue.Queue)(nil)

// flakyObserver fails its first fails calls, as a hot store that is
// locked or briefly out of disk, then hands batches to next.
type flakyObserver struct {
	next  Observer
	mu    sync.Mutex
	fails int
	calls int
}

func (o *flakyObserver) Observe(ctx context.Context, id pki.Identity, b *batch.Batch) error {
	o.mu.Lock()
	o.calls++
	fail := o.calls <= o.fails
	o.mu.Unlock()
	if fail {
		return errors.New("database is locked")
	}
	return o.next.Observe(ctx, id, b)
}

func (o *flakyObserver) setFails(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fails = o.calls + n
}

func openHot(t *testing.T) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "hot.db"), store.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func newQueue(t *testing.T, st blob.Store, obs Observer, logger *slog.Logger) *observequeue.Queue {
	t.Helper()
	qs, ok := st.(observequeue.Store)
	if !ok {
		t.Fatalf("%T cannot delete", st)
	}
	q, err := observequeue.New(qs, obs, logger, observequeue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// drain runs passes until the queue is empty, a bounded number of times.
func drain(t *testing.T, q *observequeue.Queue) {
	t.Helper()
	for range 10 {
		if _, err := q.Pass(context.Background()); err != nil {
			t.Fatalf("pass: %v", err)
		}
		if q.Pending() == 0 {
			return
		}
	}
	t.Fatalf("%d markers still pending after 10 passes", q.Pending())
}

func (e *env) markers() []string {
	e.t.Helper()
	names, err := e.dir.List(context.Background(), observequeue.Prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	return names
}

// received is the number of samples of point 0x1000 the hot store holds
// for agent a's site.
func received(t *testing.T, e *env, db *store.DB) int64 {
	t.Helper()
	id := e.agents["a"].Identity
	n, _, err := db.Received(context.Background(), store.SiteRef{Tenant: id.Tenant, Site: id.Site}, 0x1000, now.Add(-48*time.Hour), now)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestObserveQueueHealsFailedObserve: the hot store fails on three of
// four batches, then works. Every upload is answered as if nothing had
// failed; the three are recorded, shown on /healthz, retried into the hot
// store, each counted once, and their markers are gone at the end.
func TestObserveQueueHealsFailedObserve(t *testing.T) {
	db := openHot(t)
	obs := &flakyObserver{next: db, fails: 3}
	var q *observequeue.Queue
	e := newEnv(t, func(c *Config, s *blob.Store) {
		q = newQueue(t, *s, db, slog.New(slog.DiscardHandler))
		c.Observer, c.ObserveQueue = obs, q
	})
	internal, _ := e.serve(e.srv.ServeInternal)
	var encs []batch.Encoded
	for seq := uint64(1); seq <= 4; seq++ {
		enc := e.encode("a", seq, samples(9, now.Add(-time.Duration(seq)*time.Hour)))
		encs = append(encs, enc)
		r := e.upload("a", enc)
		wantReply(t, r, http.StatusOK, "")
		if r.body["status"] != StatusStored {
			t.Errorf("batch %d answered %v, want stored", seq, r.body)
		}
	}
	// The agent retries batch 1 (its answer was lost): a duplicate, shown
	// to the hot store, which takes it now; its marker is left to the
	// queue, which finds it observed already.
	if r := e.upload("a", encs[0]); r.status != http.StatusOK || r.body["status"] != StatusDuplicate {
		t.Fatalf("retry: %d %v", r.status, r.body)
	}
	if m := e.markers(); len(m) != 3 {
		t.Fatalf("markers %v, want one for each of the 3 failed batches", m)
	}
	if st := e.srv.Stats(); st.ObserveErrors != 3 || st.ObservePending != 3 || st.BatchesStored != 4 {
		t.Errorf("stats %+v, want 3 observe errors, 3 pending, 4 stored", st)
	}
	if got := healthPending(t, internal); got != 3 {
		t.Errorf("/healthz says %d pending, want 3", got)
	}
	if n := received(t, e, db); n != 6 {
		t.Fatalf("the hot store holds %d samples of the point before the retries, want batches 1 and 4's 6", n)
	}

	drain(t, q)
	if n := received(t, e, db); n != 12 {
		t.Errorf("the hot store holds %d samples of the point, want 12: each of the 4 batches' 3 once", n)
	}
	if m := e.markers(); len(m) != 0 {
		t.Errorf("markers left: %v", m)
	}
	if st := e.srv.Stats(); st.ObservePending != 0 {
		t.Errorf("stats %+v, want none pending", st)
	}
	if got := healthPending(t, internal); got != 0 {
		t.Errorf("/healthz says %d pending, want 0", got)
	}
}

func healthPending(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var rep struct {
		Status         string `json:"status"`
		ObservePending *int   `json:"observe_pending"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil || resp.StatusCode != http.StatusOK || rep.ObservePending == nil {
		t.Fatalf("/healthz: %d %s (%v)", resp.StatusCode, raw, err)
	}
	return *rep.ObservePending
}

// refuseMarkers is an archive that cannot write observe markers.
type refuseMarkers struct {
	observequeue.Store
	mu      sync.Mutex
	refused bool
}

func (r *refuseMarkers) Put(ctx context.Context, name string, data []byte) (bool, error) {
	r.mu.Lock()
	refused := r.refused && strings.HasPrefix(name, observequeue.Prefix)
	r.mu.Unlock()
	if refused {
		return false, errors.New("disk full")
	}
	return r.Store.Put(ctx, name, data)
}

// TestObserveQueueUnavailable: when the hot store fails and the marker
// cannot be written either, the agent is told to retry (503) rather than
// acknowledged with the batch missing from the hot store; its retry is a
// duplicate that the hot store then takes.
func TestObserveQueueUnavailable(t *testing.T) {
	db := openHot(t)
	obs := &flakyObserver{next: db, fails: 1}
	var rm *refuseMarkers
	e := newEnv(t, func(c *Config, s *blob.Store) {
		rm = &refuseMarkers{Store: (*s).(observequeue.Store), refused: true}
		*s = rm
		c.Observer, c.ObserveQueue = obs, newQueue(t, rm, db, slog.New(slog.DiscardHandler))
	})
	enc := e.encode("a", 1, samples(9, now.Add(-time.Hour)))
	r := e.upload("a", enc)
	wantReply(t, r, http.StatusServiceUnavailable, CodeStoreUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if n := received(t, e, db); n != 0 {
		t.Fatalf("hot store holds %d samples after the failure", n)
	}
	// Counted as answered: refused, not stored as well.
	if st := e.srv.Stats(); st.BatchesStored != 0 || st.Samples != 0 || st.Bytes != 0 || st.BatchesDuplicate != 0 || st.Refused[CodeStoreUnavailable] != 1 {
		t.Errorf("stats after the 503 %+v, want only 1 refused (%s)", st, CodeStoreUnavailable)
	}
	rm.mu.Lock()
	rm.refused = false
	rm.mu.Unlock()
	r = e.upload("a", enc)
	wantReply(t, r, http.StatusOK, "")
	if r.body["status"] != StatusDuplicate {
		t.Errorf("retry answered %v, want duplicate", r.body)
	}
	if n := received(t, e, db); n != 3 {
		t.Errorf("hot store holds %d samples of the point after the retry, want 3", n)
	}
	if m := e.markers(); len(m) != 0 {
		t.Errorf("markers %v, want none (the hot store took the retry)", m)
	}
	if st := e.srv.Stats(); st.BatchesStored != 0 || st.BatchesDuplicate != 1 || st.Refused[CodeStoreUnavailable] != 1 {
		t.Errorf("stats after the retry %+v, want the 503 refused and the retry a duplicate, nothing stored twice", st)
	}
}

// TestObserveOutageLoggedOnce: while the hot store fails every batch, the
// server logs the first failure and, once the hot store works again, one
// line with how many failed; a later outage is logged again. Whatever
// became of the batches: queued, refused (the queue failed too) or missed
// (no queue).
func TestObserveOutageLoggedOnce(t *testing.T) {
	tests := []struct {
		name      string
		queue     bool
		refuse    bool // the archive cannot write markers either
		status    int  // the answer to a batch during the outage
		firstLine string
		counts    string // in the recovery line
	}{
		{"queued", true, false, http.StatusOK, "queued for a retry", "queued=4 refused=0 missed=0"},
		{"queue fails too", true, true, http.StatusServiceUnavailable, "could not be queued", "queued=0 refused=4 missed=0"},
		{"no queue", false, false, http.StatusOK, "misses it", "queued=0 refused=0 missed=4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openHot(t)
			obs := &flakyObserver{next: db}
			var log syncBuffer
			e := newEnvLog(t, slog.New(slog.NewTextHandler(&log, nil)), func(c *Config, s *blob.Store) {
				c.Observer = obs
				if tt.queue {
					rm := &refuseMarkers{Store: (*s).(observequeue.Store), refused: tt.refuse}
					*s = rm
					c.ObserveQueue = newQueue(t, rm, db, slog.New(slog.DiscardHandler))
				}
			})
			seq := uint64(0)
			upload := func(want int) {
				t.Helper()
				seq++
				if r := e.upload("a", e.encode("a", seq, samples(9, now.Add(-time.Duration(seq)*time.Minute)))); r.status != want {
					t.Fatalf("batch %d answered %d %v, want %d", seq, r.status, r.body, want)
				}
			}
			const recovered = `msg="updating the hot store works again"`
			for outage := 1; outage <= 2; outage++ {
				obs.setFails(4)
				for range 4 {
					upload(tt.status)
				}
				if n := strings.Count(log.String(), "updating the hot store failed"); n != outage {
					t.Fatalf("outage %d: %d failure lines, want %d:\n%s", outage, n, outage, log.String())
				}
				if !strings.Contains(log.String(), tt.firstLine) {
					t.Errorf("log does not say %q:\n%s", tt.firstLine, log.String())
				}
				if n := strings.Count(log.String(), recovered); n != outage-1 {
					t.Fatalf("outage %d: %d recovery lines before the hot store recovered:\n%s", outage, n, log.String())
				}
				upload(http.StatusOK)
				upload(http.StatusOK)
				if n := strings.Count(log.String(), recovered); n != outage {
					t.Fatalf("outage %d: %d recovery lines, want %d:\n%s", outage, n, outage, log.String())
				}
				if n := strings.Count(log.String(), tt.counts); n != outage {
					t.Errorf("outage %d: the recovery lines do not say %q:\n%s", outage, tt.counts, log.String())
				}
			}
			if st := e.srv.Stats(); st.ObserveErrors != 8 {
				t.Errorf("stats %+v, want 8 observe errors counted", st)
			}
		})
	}
}

// TestObserveQueueAfterRestart: a marker left by a process that stopped
// before retrying it is taken by the next process's queue; if compaction
// deleted the batch blob meanwhile, the marker is removed with a log line
// naming the rebuild, since the day blob cannot be replayed for one batch.
func TestObserveQueueAfterRestart(t *testing.T) {
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		compact bool
		want    int64 // samples of the point in the hot store at the end
	}{
		{"batch blob there", false, 3},
		{"batch compacted meanwhile", true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openHot(t)
			obs := &flakyObserver{next: db, fails: 1}
			e := newEnv(t, func(c *Config, s *blob.Store) {
				// This process's queue never runs: it stops first.
				c.Observer, c.ObserveQueue = obs, newQueue(t, *s, db, slog.New(slog.DiscardHandler))
			})
			wantReply(t, e.upload("a", e.encode("a", 1, samples(9, now.Add(-time.Hour)))), http.StatusOK, "")
			e.stop()
			if m := e.markers(); len(m) != 1 {
				t.Fatalf("markers %v, want 1", m)
			}
			if tt.compact {
				if _, err := compact.New(e.dir, compact.Options{}).Day(context.Background(), tenant, "s1", day); err != nil {
					t.Fatal(err)
				}
			}
			var log syncBuffer
			next := newQueue(t, e.dir, db, slog.New(slog.NewTextHandler(&log, nil)))
			res, err := next.Pass(context.Background())
			if err != nil {
				t.Fatalf("pass: %v", err)
			}
			if m := e.markers(); len(m) != 0 {
				t.Errorf("markers left: %v", m)
			}
			if n := received(t, e, db); n != tt.want {
				t.Errorf("the hot store holds %d samples of the point, want %d", n, tt.want)
			}
			if tt.compact {
				if res.Abandoned != 1 || !strings.Contains(log.String(), "store rebuild --tenant "+tenant+" --site s1") {
					t.Errorf("pass %+v, log:\n%s\nwant the marker abandoned with the rebuild to run", res, log.String())
				}
			} else if res.Observed != 1 {
				t.Errorf("pass %+v, want the batch observed", res)
			}
		})
	}
}
