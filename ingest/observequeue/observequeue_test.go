package observequeue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

var (
	at = time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)
	id = pki.Identity{Tenant: "acme", Site: "s1", Agent: "ag-1"}
)

// observer records what it was shown; it fails its first failures calls,
// and every call for a seq in failSeq.
type observer struct {
	mu       sync.Mutex
	calls    int
	failures int
	failSeq  map[uint64]bool
	seen     map[string]int // "agent/seq" -> successful calls
	last     time.Time      // of the latest call
}

var errBusy = errors.New("database is locked")

func (o *observer) Observe(_ context.Context, id pki.Identity, b *batch.Batch) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	o.last = time.Now()
	if o.calls <= o.failures || o.failSeq[b.Seq] {
		return errBusy
	}
	if o.seen == nil {
		o.seen = map[string]int{}
	}
	o.seen[fmt.Sprintf("%s/%s/%s/%d/%d", id.Tenant, id.Site, id.Agent, b.Seq, len(b.Samples))]++
	return nil
}

func (o *observer) snapshot() (calls int, seen map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]int{}
	for k, v := range o.seen {
		out[k] = v
	}
	return o.calls, out
}

// syncBuffer is a log sink safe for the queue's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// archive stores batch seq of id (3 samples) as the ingest does: the point
// table, the batch blob and the claim naming it. It returns the blob name.
func archive(t *testing.T, st blob.Store, seq uint64) string {
	t.Helper()
	ctx := context.Background()
	var smp []telemetry.Sample
	for i := range 3 {
		smp = append(smp, telemetry.Sample{PointID: 0x10 + uint64(i), Time: at.Add(time.Duration(seq) * time.Minute).UnixMilli(), Value: float64(seq)})
	}
	enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: id.Agent, Site: id.Site, Seq: seq, SentAt: at.UnixMilli()}, Samples: smp})
	if err != nil {
		t.Fatal(err)
	}
	name := blob.BatchName(id.Tenant, id.Site, id.Agent, seq, at)
	sum := sha256.Sum256(enc.Data)
	for n, data := range map[string][]byte{
		blob.TableName(id.Tenant, id.Site, enc.TableHash.String()): enc.Table,
		name: enc.Data,
		blob.ClaimName(id.Tenant, id.Site, id.Agent, seq): []byte(hex.EncodeToString(sum[:]) + " " + name + "\n"),
	} {
		if _, err := st.Put(ctx, n, data); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

func newDir(t *testing.T) *blob.Dir {
	t.Helper()
	d, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func newQueue(t *testing.T, st Store, obs Observer, log *syncBuffer, o Options) *Queue {
	t.Helper()
	var w = &syncBuffer{}
	if log != nil {
		w = log
	}
	q, err := New(st, obs, slog.New(slog.NewTextHandler(w, nil)), o)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func markers(t *testing.T, st blob.Store) []string {
	t.Helper()
	names, err := st.List(context.Background(), Prefix)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestMarkerName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{MarkerName(id, 7), true},
		{MarkerName(pki.Identity{Tenant: "t-1", Site: "s-2", Agent: "ag-3"}, 1<<63), true},
		{"_observe/acme.s1.ag-1.7", false},                        // not padded
		{"_observe/acme.s1.ag-1.0000000000000000000x", false},     // not a number
		{"_observe/acme.s1.0000000000000000000007", false},        // no agent
		{"_observe/Acme.s1.ag-1.00000000000000000007", false},     // not an id
		{"_audit/acme.s1.ag-1.00000000000000000007", false},       // not under Prefix
		{"_observe/a.b.acme.s1.ag-1.00000000000000000007", false}, // too many fields
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, seq, err := ParseMarkerName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseMarkerName(%q) = %v, %d, %v; want ok=%v", tt.name, got, seq, err, tt.ok)
			}
			if tt.ok && MarkerName(got, seq) != tt.name {
				t.Errorf("MarkerName(%v, %d) = %q, want %q", got, seq, MarkerName(got, seq), tt.name)
			}
			if err := blob.ValidName(tt.name); tt.ok && err != nil {
				t.Errorf("marker name is not a valid blob name: %v", err)
			}
		})
	}
	// A marker is two segments, so readers looking for {tenant}/{site}/…
	// (store rebuild) do not take _observe for a tenant.
	if n := strings.Count(MarkerName(id, 1), "/"); n != 1 {
		t.Errorf("marker name has %d slashes, want 1", n)
	}
}

// TestPassRetriesUntilObserved: the Observer fails a few times, then
// works; every batch ends up observed, its marker removed, and the
// failures stop each pass early.
func TestPassRetriesUntilObserved(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	obs := &observer{failures: 3}
	var log syncBuffer
	q := newQueue(t, d, obs, &log, Options{PerPass: 2})
	for seq := uint64(1); seq <= 5; seq++ {
		archive(t, d, seq)
		if err := q.Add(ctx, id, seq); err != nil {
			t.Fatal(err)
		}
	}
	// Adding again (an agent's retry failing again) is not an error and
	// not a second marker.
	if err := q.Add(ctx, id, 3); err != nil {
		t.Fatalf("second Add: %v", err)
	}
	if st := q.Stats(); st.Pending != 5 || st.Added != 5 {
		t.Fatalf("stats after adding %+v, want 5 pending and added", st)
	}
	var fails int
	for range 20 {
		res, err := q.Pass(ctx)
		if err != nil {
			fails++
			if !errors.Is(err, errBusy) {
				t.Fatalf("pass failed with %v, want the observer's error", err)
			}
			if res.Observed != 0 || res.Left == 0 {
				t.Errorf("a failed pass %+v: the failure is its first retry and leaves the rest", res)
			}
		}
		if q.Pending() == 0 {
			break
		}
	}
	if fails != 3 {
		t.Errorf("%d passes failed, want 3 (each failure ends its pass)", fails)
	}
	_, seen := obs.snapshot()
	for seq := 1; seq <= 5; seq++ {
		if k := fmt.Sprintf("acme/s1/ag-1/%d/3", seq); seen[k] != 1 {
			t.Errorf("batch %d observed %d times, want once (seen %v)", seq, seen[k], seen)
		}
	}
	if m := markers(t, d); len(m) != 0 {
		t.Errorf("markers left: %v", m)
	}
	if st := q.Stats(); st.Pending != 0 || st.Observed != 5 || st.Failures != 3 || st.Abandoned != 0 {
		t.Errorf("stats %+v, want 0 pending, 5 observed, 3 failures", st)
	}
	// Errors of one kind are logged once, and the recovery once.
	out := log.String()
	if n := strings.Count(out, "retrying a batch the hot store missed failed"); n != 1 {
		t.Errorf("the observer's failures were logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "works again") || !strings.Contains(out, "failures=3") {
		t.Errorf("no recovery line with the failure count:\n%s", out)
	}
}

// TestPassDoesNotStarve: a batch the Observer always fails on does not
// keep the batches after it from being observed.
func TestPassDoesNotStarve(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	obs := &observer{failSeq: map[uint64]bool{1: true}}
	q := newQueue(t, d, obs, nil, Options{PerPass: 10})
	for seq := uint64(1); seq <= 3; seq++ {
		archive(t, d, seq)
		if err := q.Add(ctx, id, seq); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		q.Pass(ctx)
	}
	want := []string{MarkerName(id, 1)}
	if m := markers(t, d); len(m) != 1 || m[0] != want[0] {
		t.Errorf("markers %v, want only %v (the failing batch)", m, want)
	}
	if st := q.Stats(); st.Pending != 1 || st.Observed != 2 {
		t.Errorf("stats %+v, want 1 pending and 2 observed", st)
	}
}

// failingStore fails Gets of names with a suffix, as an archive that does
// not answer.
type failingStore struct {
	Store
	getSuffix string
}

// flakyDelete fails its first Delete.
type flakyDelete struct {
	Store
	mu     sync.Mutex
	failed bool
}

func (f *flakyDelete) Delete(ctx context.Context, name string) error {
	f.mu.Lock()
	fail := !f.failed
	f.failed = true
	f.mu.Unlock()
	if fail {
		return errors.New("connection reset")
	}
	return f.Store.Delete(ctx, name)
}

// TestPassDeleteFails: a batch observed whose marker cannot be deleted
// stays pending; the next pass shows it again (the Observer ignores a
// batch it has seen) and deletes the marker.
func TestPassDeleteFails(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	archive(t, d, 1)
	obs := &observer{}
	q := newQueue(t, &flakyDelete{Store: d}, obs, nil, Options{})
	if err := q.Add(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Pass(ctx); err == nil || len(markers(t, d)) != 1 || q.Pending() != 1 {
		t.Fatalf("first pass: err %v, markers %v, pending %d; want the delete's error and the marker kept", err, markers(t, d), q.Pending())
	}
	if res, err := q.Pass(ctx); err != nil || res.Observed != 1 || len(markers(t, d)) != 0 || q.Pending() != 0 {
		t.Fatalf("second pass: %+v %v, markers %v", res, err, markers(t, d))
	}
	if calls, _ := obs.snapshot(); calls != 2 {
		t.Errorf("observer called %d times, want 2 (once per pass)", calls)
	}
}

func (f *failingStore) Get(ctx context.Context, name string) ([]byte, error) {
	if f.getSuffix != "" && strings.HasSuffix(name, f.getSuffix) {
		return nil, errors.New("connection reset")
	}
	return f.Store.Get(ctx, name)
}

// TestPassBatchGone: a marker whose batch can no longer be read from the
// archive is logged with the rebuild that restores its site and removed;
// one the archive merely fails to answer for is kept.
func TestPassBatchGone(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		damage    func(t *testing.T, d *blob.Dir, blobName string)
		getSuffix string // Gets of these fail
		abandoned bool
		wantLog   string
	}{
		{"batch blob compacted away", func(t *testing.T, d *blob.Dir, n string) {
			if err := d.Delete(ctx, n); err != nil {
				t.Fatal(err)
			}
		}, "", true, "no longer in the archive"},
		{"claim missing", func(t *testing.T, d *blob.Dir, _ string) {
			if err := d.Delete(ctx, blob.ClaimName(id.Tenant, id.Site, id.Agent, 1)); err != nil {
				t.Fatal(err)
			}
		}, "", true, "has no claim"},
		{"batch blob damaged", func(t *testing.T, d *blob.Dir, n string) {
			if err := d.Delete(ctx, n); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Put(ctx, n, []byte("not a batch")); err != nil {
				t.Fatal(err)
			}
		}, "", true, "decoding batch blob"},
		{"point table unreadable: kept", nil, ".sgt", false, "kind=table"},
		{"batch blob unreadable: kept", nil, ".sgb", false, "kind=batch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDir(t)
			n := archive(t, d, 1)
			if tt.damage != nil {
				tt.damage(t, d, n)
			}
			obs := &observer{}
			var log syncBuffer
			q := newQueue(t, &failingStore{Store: d, getSuffix: tt.getSuffix}, obs, &log, Options{})
			if err := q.Add(ctx, id, 1); err != nil {
				t.Fatal(err)
			}
			res, err := q.Pass(ctx)
			if tt.abandoned != (err == nil) {
				t.Fatalf("pass: %+v %v", res, err)
			}
			if calls, _ := obs.snapshot(); calls != 0 {
				t.Errorf("the observer was called %d times for a batch that could not be read", calls)
			}
			left := markers(t, d)
			st := q.Stats()
			if tt.abandoned {
				if len(left) != 0 || st.Abandoned != 1 || res.Abandoned != 1 || st.Pending != 0 {
					t.Errorf("markers %v, stats %+v, pass %+v: want the marker removed and counted abandoned", left, st, res)
				}
				if !strings.Contains(log.String(), "sightglass-ingest store rebuild --tenant acme --site s1") {
					t.Errorf("the log does not say which rebuild to run:\n%s", log.String())
				}
			} else if len(left) != 1 || st.Abandoned != 0 || st.Pending != 1 {
				t.Errorf("markers %v, stats %+v: want the marker kept for the next pass", left, st)
			}
			if !strings.Contains(log.String(), tt.wantLog) {
				t.Errorf("the log does not contain %q:\n%s", tt.wantLog, log.String())
			}
		})
	}
}

// TestPassIgnoresStrays: a blob under Prefix that no queue wrote is
// neither retried, nor counted, nor removed, and is logged once, with a
// message of its own (nothing is retried for it), in the first pass that
// finds it; one removed and put back is logged again.
func TestPassIgnoresStrays(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	var log syncBuffer
	q := newQueue(t, d, &observer{}, &log, Options{})
	steps := []struct {
		name   string
		put    []string // strays written before the pass
		remove []string // and removed
		lines  int      // stray lines in the log after the pass, in all
		first  string   // the stray the newest line names
	}{
		{"a stray", []string{"README"}, nil, 1, "README"},
		{"the same stray again", nil, nil, 1, ""},
		{"another stray", []string{"notes.txt"}, nil, 2, "notes.txt"},
		{"both again", nil, nil, 2, ""},
		{"both removed", nil, []string{"README", "notes.txt"}, 2, ""},
		{"one put back", []string{"README"}, nil, 3, "README"},
	}
	for _, st := range steps {
		for _, n := range st.put {
			if _, err := d.Put(ctx, Prefix+n, []byte("hello")); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range st.remove {
			if err := d.Delete(ctx, Prefix+n); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := q.Pass(ctx); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		lines := strings.Split(strings.TrimSpace(log.String()), "\n")
		var strays []string
		for _, l := range lines {
			if strings.Contains(l, "not observe markers") {
				strays = append(strays, l)
			}
		}
		if len(strays) != st.lines {
			t.Fatalf("%s: %d stray lines, want %d:\n%s", st.name, len(strays), st.lines, log.String())
		}
		if st.first != "" && !strings.Contains(strays[len(strays)-1], "first="+Prefix+st.first) {
			t.Errorf("%s: the newest stray line does not name %s:\n%s", st.name, st.first, log.String())
		}
		if strings.Contains(log.String(), "retrying") || strings.Contains(log.String(), "works again") {
			t.Errorf("%s: strays are logged as a retry:\n%s", st.name, log.String())
		}
		if q.Pending() != 0 || q.Stats().Failures != 0 {
			t.Errorf("%s: stats %+v, want strays neither pending nor failures", st.name, q.Stats())
		}
	}
	if names := markers(t, d); len(names) != 1 {
		t.Errorf("names %v, want the stray left alone", names)
	}
}

// TestRunPicksUpEarlierMarkers: markers an earlier process left (it
// crashed after writing them) are retried by a new queue's Run at once,
// and through the Observer's failures with backoff, until none is left.
func TestRunPicksUpEarlierMarkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := newDir(t)
		earlier := newQueue(t, d, &observer{}, nil, Options{})
		for seq := uint64(1); seq <= 3; seq++ {
			archive(t, d, seq)
			if err := earlier.Add(ctx, id, seq); err != nil {
				t.Fatal(err)
			}
		}
		// earlier never runs: the process stopped.
		obs := &observer{failures: 4}
		q := newQueue(t, d, obs, nil, Options{})
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- q.Run(rctx) }()
		// Backoff 1, 2, 4, 8 s (give or take a fifth) after the
		// failures; the fifth pass takes all three.
		time.Sleep(time.Minute)
		synctest.Wait()
		if m := markers(t, d); len(m) != 0 {
			t.Errorf("markers left after a minute: %v", m)
		}
		calls, seen := obs.snapshot()
		if calls != 7 || len(seen) != 3 {
			t.Errorf("observer called %d times, saw %v; want 4 failures and 3 batches", calls, seen)
		}
		if st := q.Stats(); st.Observed != 3 || st.Pending != 0 || st.Failures != 4 {
			t.Errorf("stats %+v", st)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel", err)
		}
		obs.mu.Lock()
		took := obs.last.Sub(start)
		obs.mu.Unlock()
		if took < 12*time.Second || took > 20*time.Second {
			t.Errorf("the last retry came %v after the start, want 15s give or take a fifth (backoff 1+2+4+8s)", took)
		}
	})
}

func TestNewRefusesMissingParts(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	d := newDir(t)
	for _, tt := range []struct {
		name string
		st   Store
		obs  Observer
		log  *slog.Logger
	}{
		{"no store", nil, &observer{}, log},
		{"no observer", d, nil, log},
		{"no logger", d, &observer{}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.st, tt.obs, tt.log, Options{}); err == nil {
				t.Error("New succeeded")
			}
		})
	}
}
