package store_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure/azuritetest"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/server"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// now is the clock of the ingest and of every hot store in these tests.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const tenant = "acme"

// live is an ingest server writing to an archive and, as its Observer, to
// a hot store: batches reach both exactly as in production.
type live struct {
	t       *testing.T
	archive blob.Store
	db      *store.DB
	base    string
	agents  map[string]pki.Bundle // "a", "b" of site s1, "c" of site s2
	clients map[string]*http.Client
}

func startLive(t *testing.T, archive blob.Store) *live {
	t.Helper()
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	db := openDB(t, "live.db")
	srv, err := server.New(server.Config{Now: func() time.Time { return now }, Observer: db}, archive, ca, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	l := &live{t: t, archive: archive, db: db, base: "https://" + ln.Addr().String(), agents: map[string]pki.Bundle{}, clients: map[string]*http.Client{}}
	for name, site := range map[string]string{"a": "s1", "b": "s1", "c": "s2"} {
		b, err := ca.NewAgentBundle(tenant, site, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(b.CertPEM, b.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{TLSClientConfig: pki.ClientTLSConfig(cert, ca.Pool()), ForceAttemptHTTP2: true}
		l.agents[name], l.clients[name] = b, &http.Client{Transport: tr}
		t.Cleanup(tr.CloseIdleConnections)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return l
}

// ingested is a directory archive and the live store after ingestAll.
func ingested(t *testing.T) (*blob.Dir, *live) {
	t.Helper()
	dir, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l := startLive(t, dir)
	l.ingestAll()
	return dir, l
}

func openDB(t testing.TB, name string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), name), store.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// upload sends one batch of agent through the server, table first, and
// fails the test unless it is stored.
func (l *live) upload(agent string, seq uint64, smp []telemetry.Sample) {
	l.t.Helper()
	id := l.agents[agent].Identity
	enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: id.Agent, Site: id.Site, Seq: seq, SentAt: now.UnixMilli()}, Samples: smp})
	if err != nil {
		l.t.Fatal(err)
	}
	for _, req := range []struct{ method, path string }{{http.MethodPut, "/v1/tables/" + enc.TableHash.String()}, {http.MethodPost, "/v1/batches"}} {
		body := enc.Table
		if req.method == http.MethodPost {
			body = enc.Data
		}
		r, err := http.NewRequest(req.method, l.base+req.path, bytes.NewReader(body))
		if err != nil {
			l.t.Fatal(err)
		}
		r.Header.Set(server.SentAtHeader, strconv.FormatInt(now.UnixMilli(), 10))
		resp, err := l.clients[agent].Do(r)
		if err != nil {
			l.t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
			l.t.Fatalf("%s %s: %d %s", req.method, req.path, resp.StatusCode, msg)
		}
	}
}

// windows are the spans each agent sends batches for: 40 days ago (past
// the 5-minute retention), across a midnight, and the last three hours.
var windows = []time.Time{
	now.Add(-40 * 24 * time.Hour).Add(-4 * time.Hour),
	time.Date(2026, 2, 27, 22, 40, 0, 0, time.UTC),
	now.Add(-3 * time.Hour),
}

// samplesOf are agent k's four points, once a minute for 30 minutes from
// start; every 17th sample is a fault.
func samplesOf(k int, start time.Time) []telemetry.Sample {
	var out []telemetry.Sample
	for p := range 4 {
		for m := range 30 {
			i := k*1000 + p*100 + m
			smp := telemetry.Sample{PointID: uint64(0x1000*(k+1) + p), Time: start.Add(time.Duration(m) * time.Minute).UnixMilli(), Value: 20 + float64(i%37)/8}
			if i%17 == 0 {
				smp.Status, smp.Value = telemetry.StatusFault, 0
			}
			out = append(out, smp)
		}
	}
	return out
}

// ingestAll sends every agent's batches through the server and prunes the
// live store as serve does.
func (l *live) ingestAll() {
	l.t.Helper()
	for k, agent := range []string{"a", "b", "c"} {
		seq := uint64(1)
		for _, w := range windows {
			for h := range 6 {
				l.upload(agent, seq, samplesOf(k, w.Add(time.Duration(h)*30*time.Minute)))
				seq++
			}
		}
	}
	if _, err := l.db.PruneRollups(context.Background(), store.Res5Min, now.Add(-store.Keep5Min)); err != nil {
		l.t.Fatal(err)
	}
}

var sites = []store.SiteRef{{Tenant: tenant, Site: "s1"}, {Tenant: tenant, Site: "s2"}}

// snapshot is what a dashboard can read of the hot store.
type snapshot struct {
	latest  []store.Latest
	rollups map[string][]store.Rollup // "site/point/res"
}

func snap(t *testing.T, db *store.DB) snapshot {
	t.Helper()
	ctx := context.Background()
	s := snapshot{rollups: map[string][]store.Rollup{}}
	for _, ref := range sites {
		lv, err := db.LatestValues(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		s.latest = append(s.latest, lv...)
		for _, l := range lv {
			for _, res := range []time.Duration{store.Res5Min, store.ResHour} {
				r, err := db.Rollups(ctx, ref, l.PointID, res, time.Unix(0, 0), now.Add(24*time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				s.rollups[fmt.Sprintf("%s/%x/%v", ref.Site, l.PointID, res)] = r
			}
		}
	}
	return s
}

// same reports how got differs from want; the agent of a latest value is
// compared only when withAgents, as a day part does not say it.
func same(want, got snapshot, withAgents bool) error {
	if len(got.latest) != len(want.latest) {
		return fmt.Errorf("%d latest values, want %d", len(got.latest), len(want.latest))
	}
	for i, w := range want.latest {
		g := got.latest[i]
		if !withAgents {
			g.AgentID = w.AgentID
		}
		if g != w {
			return fmt.Errorf("latest value %d: %+v, want %+v", i, g, w)
		}
	}
	if len(got.rollups) != len(want.rollups) {
		return fmt.Errorf("rollups of %d series, want %d", len(got.rollups), len(want.rollups))
	}
	for k, w := range want.rollups {
		g := got.rollups[k]
		if len(g) != len(w) {
			return fmt.Errorf("%s: %d buckets, want %d", k, len(g), len(w))
		}
		for i := range w {
			// The mean is a float sum: summed in another grouping it
			// may differ in the last bits.
			gm, wm := g[i].Mean, w[i].Mean
			g[i].Mean, w[i].Mean = 0, 0
			if g[i] != w[i] || math.Abs(gm-wm) > 1e-9*math.Max(1, math.Abs(wm)) {
				return fmt.Errorf("%s bucket %d: %+v (mean %v), want %+v (mean %v)", k, i, g[i], gm, w[i], wm)
			}
			g[i].Mean, w[i].Mean = gm, wm
		}
	}
	return nil
}

func rebuild(t *testing.T, db *store.DB, archive blob.Store, o store.RebuildOptions) store.RebuildReport {
	t.Helper()
	rep, err := db.Rebuild(context.Background(), archive, o)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	return rep
}

// compactDays compacts every day of both sites that has batches, up to
// and including last.
func compactDays(t *testing.T, archive blob.Store, last time.Time) {
	t.Helper()
	c := compact.New(archive.(compact.Store), compact.Options{})
	for _, ref := range sites {
		for d := windows[0].Truncate(24 * time.Hour); !d.After(last); d = d.Add(24 * time.Hour) {
			if _, err := c.Day(context.Background(), ref.Tenant, ref.Site, d); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// copies reads the blobs under prefix, to put them back later.
func copies(t *testing.T, archive blob.Store, prefix string) map[string][]byte {
	t.Helper()
	names, err := archive.List(context.Background(), prefix)
	if err != nil || len(names) == 0 {
		t.Fatalf("listing %s: %v %v", prefix, names, err)
	}
	out := map[string][]byte{}
	for _, n := range names {
		if out[n], err = archive.Get(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func putAll(t *testing.T, archive blob.Store, blobs map[string][]byte) {
	t.Helper()
	for n, data := range blobs {
		if _, err := archive.Put(context.Background(), n, data); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRebuildEqualsLive(t *testing.T) {
	yesterday := now.Add(-24 * time.Hour).Truncate(24 * time.Hour)
	tests := []struct {
		name string
		// prepare changes the archive after live ingestion (and may
		// send more batches); it returns the blobs Rebuild must skip.
		prepare func(t *testing.T, l *live) (skipped []string)
		// inPlace rebuilds the live store itself instead of a new one.
		inPlace        bool
		withAgents     bool
		wantDuplicates bool
	}{
		{name: "raw batches into a new store", withAgents: true},
		{name: "raw batches over the live store", inPlace: true, withAgents: true},
		{
			name:       "days compacted, today still in batches",
			withAgents: true,
			prepare: func(t *testing.T, l *live) []string {
				compactDays(t, l.archive, yesterday)
				return nil
			},
		},
		{
			name:           "a compaction stopped before deleting its sources, and a late batch beside a day blob",
			withAgents:     true,
			wantDuplicates: true,
			prepare: func(t *testing.T, l *live) []string {
				left := copies(t, l.archive, compact.DayPrefix(tenant, "s1", windows[1]))
				compactDays(t, l.archive, yesterday)
				putAll(t, l.archive, left)
				l.upload("a", 100, samplesOf(0, windows[1].Add(5*time.Hour)))
				return nil
			},
		},
		{
			name: "everything compacted, today too",
			prepare: func(t *testing.T, l *live) []string {
				compactDays(t, l.archive, now)
				return nil
			},
		},
		{
			name:       "damaged blobs are skipped, the rest rebuilt",
			withAgents: true,
			prepare: func(t *testing.T, l *live) []string {
				ctx := context.Background()
				id := l.agents["a"].Identity
				garbage := blob.BatchName(tenant, "s1", id.Agent, 900, windows[2])
				names, err := l.archive.List(ctx, compact.DayPrefix(tenant, "s1", windows[2]))
				if err != nil {
					t.Fatal(err)
				}
				good, err := l.archive.Get(ctx, names[0])
				if err != nil {
					t.Fatal(err)
				}
				// A real batch under another seq's name: moved at rest.
				moved := blob.BatchName(tenant, "s1", id.Agent, 901, windows[2])
				// A batch whose point table is not in the archive.
				enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: id.Agent, Site: "s1", Seq: 902, SentAt: now.UnixMilli()},
					Samples: []telemetry.Sample{{PointID: 0xdead, Time: windows[2].UnixMilli(), Value: 1}}})
				if err != nil {
					t.Fatal(err)
				}
				noTable := blob.BatchName(tenant, "s1", id.Agent, 902, windows[2])
				putAll(t, l.archive, map[string][]byte{garbage: []byte("not a batch"), moved: good, noTable: enc.Data})
				return []string{garbage, moved, noTable}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, l := ingested(t)
			var wantSkipped []string
			if tt.prepare != nil {
				wantSkipped = tt.prepare(t, l)
			}
			want := snap(t, l.db)
			if len(want.latest) != 12 {
				t.Fatalf("the live store has %d latest values, want 12", len(want.latest))
			}
			target := l.db
			if !tt.inPlace {
				target = openDB(t, "rebuilt.db")
			}
			var logs bytes.Buffer
			rep := rebuild(t, target, dir, store.RebuildOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil)), ProgressEvery: 3})
			if err := same(want, snap(t, target), tt.withAgents); err != nil {
				t.Fatal(err)
			}
			var skipped []string
			for _, s := range rep.Sites {
				if !s.Complete {
					t.Errorf("site %s not complete", s.Site)
				}
				for _, sk := range s.Skipped {
					skipped = append(skipped, sk.Name)
					if !strings.Contains(logs.String(), sk.Name) {
						t.Errorf("skipped %s not logged", sk.Name)
					}
				}
			}
			if strings.Join(skipped, " ") != strings.Join(wantSkipped, " ") || rep.Skipped != len(wantSkipped) {
				t.Errorf("skipped %v (%d), want %v", skipped, rep.Skipped, wantSkipped)
			}
			if (rep.Duplicates > 0) != tt.wantDuplicates {
				t.Errorf("%d duplicates reported", rep.Duplicates)
			}
			if !strings.Contains(logs.String(), "rebuild progress") {
				t.Errorf("no progress logged: %s", logs.String())
			}
			// Idempotent: a second run gives the same store.
			rebuild(t, target, dir, store.RebuildOptions{})
			if err := same(want, snap(t, target), tt.withAgents); err != nil {
				t.Fatalf("second run: %v", err)
			}
		})
	}
}

// The rebuilt store keeps only hourly rollups past the 5-minute
// retention, as serve's pruning leaves a live one.
func TestRebuildKeepsRetention(t *testing.T) {
	dir, _ := ingested(t)
	db := openDB(t, "rebuilt.db")
	rebuild(t, db, dir, store.RebuildOptions{})
	ref := sites[0]
	old := windows[0]
	for _, tt := range []struct {
		res  time.Duration
		want int
	}{{store.Res5Min, 0}, {store.ResHour, 3}} {
		r, err := db.Rollups(context.Background(), ref, 0x1000, tt.res, old.Add(-time.Hour), old.Add(4*time.Hour))
		if err != nil || len(r) != tt.want {
			t.Errorf("%v rollups 40 days ago: %d (%v), want %d", tt.res, len(r), err, tt.want)
		}
	}
}

// A rebuild names the agent of a point whose newest sample is in a day
// part from the catalogue, and changes nothing but latest values and
// rollups: not the catalogue, users, agents or audit log.
func TestRebuildTouchesOnlyLatestAndRollups(t *testing.T) {
	ctx := context.Background()
	dir, l := ingested(t)
	compactDays(t, dir, now)
	db := openDB(t, "rebuilt.db")
	agentA := l.agents["a"].Identity.Agent
	cat := []store.CatalogPoint{{ID: 0x1000, Name: "AHU-1 supply temp", Unit: "°C"}, {ID: 0x1001, Name: "AHU-1 return temp"}}
	if err := db.PutCatalog(ctx, tenant, "s1", agentA, cat); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddUser(ctx, "eve", "viewer", "$argon2id$v=19$m=65536,t=1,p=1$c2FsdA$aGFzaA"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Audit(ctx, "test", "user_added", "eve", ""); err != nil {
		t.Fatal(err)
	}
	before := func() string {
		c, err := db.Catalog(ctx, tenant, "s1")
		if err != nil {
			t.Fatal(err)
		}
		u, err := db.Users(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a, err := db.AuditLog(ctx, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		ag, err := db.Agents(ctx)
		if err != nil {
			t.Fatal(err)
		}
		h, err := db.AgentHealths(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal([]any{c, u, a, ag, h})
		return string(out)
	}
	was := before()
	rebuild(t, db, dir, store.RebuildOptions{})
	if after := before(); after != was {
		t.Errorf("the rebuild changed other tables:\n%s\nwas\n%s", after, was)
	}
	for _, tt := range []struct {
		point uint64
		agent string
	}{{0x1000, agentA}, {0x1001, agentA}, {0x1002, compact.AgentID}} {
		lv, err := db.LatestValue(ctx, sites[0], tt.point)
		if err != nil || lv.AgentID != tt.agent {
			t.Errorf("point %x: agent %q (%v), want %q", tt.point, lv.AgentID, err, tt.agent)
		}
	}
}

// Options choose what is rebuilt and whether anything is written.
func TestRebuildOptions(t *testing.T) {
	dir, _ := ingested(t)
	total := int64(3 * len(windows) * 6 * 120)
	tests := []struct {
		name        string
		o           store.RebuildOptions
		wantSites   []string
		wantSamples int64
		wantLatest  int // in the store afterwards
		wantErr     string
	}{
		{name: "every site", wantSites: []string{"s1", "s2"}, wantSamples: total, wantLatest: 12},
		{name: "one tenant", o: store.RebuildOptions{Tenant: tenant}, wantSites: []string{"s1", "s2"}, wantSamples: total, wantLatest: 12},
		{name: "one site", o: store.RebuildOptions{Tenant: tenant, Site: "s2"}, wantSites: []string{"s2"}, wantSamples: total / 3, wantLatest: 4},
		{name: "dry run writes nothing", o: store.RebuildOptions{DryRun: true}, wantSites: []string{"s1", "s2"}, wantSamples: total, wantLatest: 0},
		{name: "small flushes", o: store.RebuildOptions{FlushSamples: 100}, wantSites: []string{"s1", "s2"}, wantSamples: total, wantLatest: 12},
		{name: "a site without its tenant", o: store.RebuildOptions{Site: "s1"}, wantErr: "needs its tenant"},
		{name: "an unknown site", o: store.RebuildOptions{Tenant: tenant, Site: "nope"}, wantSites: []string{"nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openDB(t, "rebuilt.db")
			rep, err := db.Rebuild(context.Background(), dir, tt.o)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range rep.Sites {
				got = append(got, s.Site)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantSites, ",") || rep.Samples != tt.wantSamples || rep.DryRun != tt.o.DryRun {
				t.Errorf("sites %v, %d samples, dry run %v; want %v, %d", got, rep.Samples, rep.DryRun, tt.wantSites, tt.wantSamples)
			}
			n := 0
			for _, ref := range sites {
				lv, err := db.LatestValues(context.Background(), ref)
				if err != nil {
					t.Fatal(err)
				}
				n += len(lv)
			}
			if n != tt.wantLatest {
				t.Errorf("%d latest values in the store, want %d", n, tt.wantLatest)
			}
		})
	}
}

// cancelling is an archive that ends the rebuild's context after some
// reads, as Ctrl-C would.
type cancelling struct {
	blob.Store
	mu     sync.Mutex
	after  int
	cancel context.CancelFunc
}

func (c *cancelling) Get(ctx context.Context, name string) ([]byte, error) {
	c.mu.Lock()
	c.after--
	if c.after == 0 {
		c.cancel()
	}
	c.mu.Unlock()
	return c.Store.Get(ctx, name)
}

// Ctrl-C stops the rebuild between blobs, says so, and a second run
// finishes the job.
func TestRebuildInterrupted(t *testing.T) {
	dir, l := ingested(t)
	want := snap(t, l.db)
	db := openDB(t, "rebuilt.db")
	for _, after := range []int{3, 30} {
		ctx, cancel := context.WithCancel(context.Background())
		rep, err := db.Rebuild(ctx, &cancelling{Store: dir, after: after, cancel: cancel}, store.RebuildOptions{FlushSamples: 500})
		cancel()
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "interrupted") {
			t.Fatalf("after %d reads: err = %v, want an interruption", after, err)
		}
		if last := rep.Sites[len(rep.Sites)-1]; last.Complete {
			t.Errorf("after %d reads: the interrupted site is reported complete", after)
		}
	}
	rebuild(t, db, dir, store.RebuildOptions{})
	if err := same(want, snap(t, db), true); err != nil {
		t.Fatal(err)
	}
}

// The same rebuild from an Azure archive (Azurite), compacted and not.
func TestRebuildAzureIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("Azurite integration test: skipped with -short")
	}
	srv := azuritetest.Start(t, azuritetest.Options{})
	st, err := azure.New(azure.Options{AccountURL: srv.AccountURL, Container: "rebuild", SharedKey: azure.EmulatorSharedKey()})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateContainer(context.Background()); err != nil {
		t.Fatal(err)
	}
	l := startLive(t, st)
	l.ingestAll()
	want := snap(t, l.db)
	for _, step := range []string{"raw", "compacted"} {
		if step == "compacted" {
			compactDays(t, st, now.Add(-24*time.Hour))
		}
		db := openDB(t, step+".db")
		rep := rebuild(t, db, st, store.RebuildOptions{})
		if rep.Skipped != 0 || rep.Samples != int64(3*len(windows)*6*120) {
			t.Errorf("%s: report %+v", step, rep)
		}
		if err := same(want, snap(t, db), true); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		// Each site by name, scanned month by month (from near the
		// data: each month costs two list calls).
		named := openDB(t, step+"-named.db")
		for _, ref := range sites {
			rebuild(t, named, st, store.RebuildOptions{Tenant: ref.Tenant, Site: ref.Site, Since: windows[0]})
		}
		if err := same(want, snap(t, named), true); err != nil {
			t.Fatalf("%s, by site: %v", step, err)
		}
	}
}
