package store

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

var site1 = SiteRef{Tenant: "t1", Site: "s1"}

func samplesEvery(point uint64, start time.Time, every time.Duration, vals ...float64) []telemetry.Sample {
	out := make([]telemetry.Sample, len(vals))
	for i, v := range vals {
		out[i] = telemetry.Sample{PointID: point, Time: start.Add(time.Duration(i) * every).UnixMilli(), Value: v}
	}
	return out
}

func TestObserveBatchRollups(t *testing.T) {
	ctx := context.Background()
	db, c := open(t)
	t0 := time.Date(2026, 6, 1, 11, 0, 0, 0, time.UTC)
	// Point 1: a sample a minute for 10 minutes, split over two batches,
	// with one comm failure; point 2: one sample.
	s1 := samplesEvery(1, t0, time.Minute, 1, 2, 3, 4, 5)
	s2 := samplesEvery(1, t0.Add(5*time.Minute), time.Minute, 10, 0, 7, 8, 9)
	s2[1].Status = telemetry.StatusCommFailure
	b1 := &batch.Batch{Header: batch.Header{AgentID: "ag-1", Site: "s1", Seq: 1, Health: batch.Health{BufferSamples: 7, DevicesUp: 2, DevicesDown: 1}}, Samples: s1}
	b2 := &batch.Batch{Header: batch.Header{AgentID: "ag-1", Site: "s1", Seq: 2, Health: batch.Health{BufferSamples: 3, DroppedSamples: 4, DevicesUp: 3}},
		Samples: append(s2, telemetry.Sample{PointID: 2, Time: t0.UnixMilli(), Value: math.NaN(), Status: telemetry.StatusOK})}
	for _, b := range []*batch.Batch{b1, b2} {
		if err := db.ObserveBatch(ctx, site1, "ag-1", b); err != nil {
			t.Fatal(err)
		}
	}
	// An older batch arriving late must not move the health backwards.
	if err := db.ObserveBatch(ctx, site1, "ag-1", &batch.Batch{Header: batch.Header{AgentID: "ag-1", Site: "s1", Seq: 0, Health: batch.Health{BufferSamples: 99}}}); err != nil {
		t.Fatal(err)
	}
	// The same batch again (a retry) changes nothing: counts stay single.
	if err := db.ObserveBatch(ctx, site1, "ag-1", b2); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		res  time.Duration
		want []Rollup
	}{
		{"5 minutes", Res5Min, []Rollup{
			{Bucket: t0, N: 5, Good: 5, Min: 1, Max: 5, Mean: 3, Last: 5},
			{Bucket: t0.Add(5 * time.Minute), N: 5, Bad: 1, Good: 4, Min: 7, Max: 10, Mean: 8.5, Last: 9},
		}},
		{"hour", ResHour, []Rollup{{Bucket: t0, N: 10, Bad: 1, Good: 9, Min: 1, Max: 10, Mean: 49.0 / 9, Last: 9}}},
		{"day", ResDay, []Rollup{{Bucket: t0.Truncate(24 * time.Hour), N: 10, Bad: 1, Good: 9, Min: 1, Max: 10, Mean: 49.0 / 9, Last: 9}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := db.Rollups(ctx, site1, 1, tt.res, t0.Add(-48*time.Hour), t0.Add(48*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d buckets %+v, want %+v", len(got), got, tt.want)
			}
			for i := range got {
				g, w := got[i], tt.want[i]
				if !g.Bucket.Equal(w.Bucket) || g.N != w.N || g.Bad != w.Bad || g.Good != w.Good || g.Min != w.Min || g.Max != w.Max ||
					math.Abs(g.Mean-w.Mean) > 1e-9 || g.Last != w.Last {
					t.Errorf("bucket %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
	if _, err := db.Rollups(ctx, site1, 1, time.Minute, t0, t0.Add(time.Hour)); err == nil {
		t.Error("a 1-minute resolution was accepted")
	}

	l, err := db.LatestValue(ctx, site1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if l.Value != 9 || !l.Time.Equal(t0.Add(9*time.Minute)) || l.Interval != time.Minute || !l.FirstTime.Equal(t0) || l.AgentID != "ag-1" {
		t.Errorf("latest of point 1 = %+v", l)
	}
	if _, err := db.LatestValue(ctx, site1, 3); !errors.Is(err, ErrNotFound) {
		t.Errorf("latest of an unknown point: %v, want ErrNotFound", err)
	}
	all, err := db.LatestValues(ctx, site1)
	if err != nil || len(all) != 2 {
		t.Fatalf("latest values: %v %+v", err, all)
	}
	n, bad, err := db.Received(ctx, site1, 1, t0, t0.Add(time.Hour))
	if err != nil || n != 10 || bad != 1 {
		t.Errorf("received = %d, %d, %v; want 10, 1", n, bad, err)
	}
	byPoint, err := db.ReceivedAll(ctx, site1, Res5Min, t0, t0.Add(time.Hour))
	if err != nil || byPoint[1] != [2]int64{10, 1} || byPoint[2] != [2]int64{1, 1} {
		t.Errorf("received all = %v, %v", byPoint, err)
	}
	hs, err := db.AgentHealths(ctx)
	if err != nil || len(hs) != 1 {
		t.Fatalf("agent health: %v %+v", err, hs)
	}
	if h := hs[0]; h.LastSeq != 2 || h.BufferSamples != 3 || h.DroppedSamples != 4 || h.DevicesUp != 3 || !h.LastUpload.Equal(c.now()) ||
		!h.LastSample.Equal(t0.Add(9*time.Minute)) || h.Site != site1 {
		t.Errorf("health = %+v", h)
	}
	sites, err := db.Sites(ctx)
	if err != nil || len(sites) != 1 || sites[0].SiteRef != site1 {
		t.Errorf("the batch did not create its building: %v %+v", err, sites)
	}
}

func TestPruneRollups(t *testing.T) {
	ctx := context.Background()
	db, _ := open(t)
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	b := &batch.Batch{Samples: samplesEvery(1, t0, 5*time.Minute, make([]float64, 24)...)}
	if err := db.ObserveBatch(ctx, site1, "ag-1", b); err != nil {
		t.Fatal(err)
	}
	n, err := db.PruneRollups(ctx, Res5Min, t0.Add(time.Hour))
	if err != nil || n != 12 {
		t.Fatalf("pruned %d (%v), want 12", n, err)
	}
	five, _ := db.Rollups(ctx, site1, 1, Res5Min, t0, t0.Add(3*time.Hour))
	hours, _ := db.Rollups(ctx, site1, 1, ResHour, t0, t0.Add(3*time.Hour))
	if len(five) != 12 || !five[0].Bucket.Equal(t0.Add(time.Hour)) || len(hours) != 2 {
		t.Errorf("after pruning: %d 5-minute buckets from %v, %d hours", len(five), five[0].Bucket, len(hours))
	}
}

func TestPruneObserved(t *testing.T) {
	ctx := context.Background()
	db, c := open(t)
	b := &batch.Batch{Header: batch.Header{Seq: 1}, Samples: samplesEvery(1, c.now(), time.Minute, 1)}
	if err := db.ObserveBatch(ctx, site1, "ag-1", b); err != nil {
		t.Fatal(err)
	}
	c.add(KeepObserved + time.Hour)
	if n, err := db.PruneObserved(ctx, c.now().Add(-KeepObserved)); err != nil || n != 1 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	// Forgotten: the same batch counts again (so KeepObserved must
	// outlast any retry).
	if err := db.ObserveBatch(ctx, site1, "ag-1", b); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := db.Received(ctx, site1, 1, c.now().Add(-48*time.Hour*30), c.now()); n != 2 {
		t.Errorf("received %d, want 2", n)
	}
}

func TestUsersAndSessions(t *testing.T) {
	ctx := context.Background()
	db, c := open(t)
	if _, err := db.AddUser(ctx, "ann", "root", "h"); err == nil {
		t.Error("a bad role was accepted")
	}
	u, err := db.AddUser(ctx, "ann", RoleEngineer, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddUser(ctx, "ann", RoleViewer, "h"); !errors.Is(err, ErrExists) {
		t.Errorf("second ann: %v, want ErrExists", err)
	}
	if err := db.AssignSites(ctx, "ann", []SiteRef{site1, {Tenant: "t1", Site: "s2"}}); err != nil {
		t.Fatal(err)
	}
	if err := db.PutSite(ctx, site1, "Main Library"); err != nil {
		t.Fatal(err)
	}
	u, err = db.User(ctx, "ann")
	if err != nil {
		t.Fatal(err)
	}
	if !u.MaySee(site1) || u.MaySee(SiteRef{Tenant: "t2", Site: "s1"}) || len(u.Sites) != 2 {
		t.Errorf("ann's buildings: %+v", u.Sites)
	}
	if !(User{Role: RoleAdmin}).MaySee(SiteRef{Tenant: "x", Site: "y"}) {
		t.Error("an admin may not see a building")
	}
	sites, _ := db.Sites(ctx)
	if len(sites) != 2 || sites[0].Name != "Main Library" {
		t.Errorf("sites: %+v", sites)
	}

	id := []byte("0123456789abcdef")
	if err := db.CreateSession(ctx, id, Session{UserID: u.ID, CSRF: []byte("c"), Stage: SessionFull}); err != nil {
		t.Fatal(err)
	}
	sess, err := db.Session(ctx, id)
	if err != nil || sess.UserID != u.ID || sess.Stage != SessionFull {
		t.Fatalf("session: %+v %v", sess, err)
	}
	// Changing the password ends every session.
	if err := db.SetPassword(ctx, "ann", "h2"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Session(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("session after password change: %v, want ErrNotFound", err)
	}
	// So does disabling the account.
	if err := db.CreateSession(ctx, id, Session{UserID: u.ID, CSRF: []byte("c"), Stage: SessionFull}); err != nil {
		t.Fatal(err)
	}
	if err := db.SetDisabled(ctx, "ann", true); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Session(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("session after disabling: %v, want ErrNotFound", err)
	}
	if u, _ := db.User(ctx, "ann"); !u.Disabled() || u.Hash != "h2" {
		t.Errorf("ann: %+v", u)
	}
	if err := db.SetRole(ctx, "nobody", RoleViewer); !errors.Is(err, ErrNotFound) {
		t.Errorf("role of an unknown user: %v", err)
	}
	// Timeouts are swept by creation and last-seen time.
	if err := db.CreateSession(ctx, id, Session{UserID: u.ID, CSRF: []byte("c"), Stage: SessionFull}); err != nil {
		t.Fatal(err)
	}
	c.add(time.Hour)
	if err := db.DeleteSessionsBefore(ctx, c.now().Add(-2*time.Hour), c.now().Add(-30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Session(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("idle session survived the sweep: %v", err)
	}

	// TOTP steps are single use.
	if err := db.SetTOTP(ctx, "ann", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		step int64
		ok   bool
	}{{100, true}, {100, false}, {99, false}, {101, true}} {
		ok, err := db.UseTOTPStep(ctx, u.ID, tc.step)
		if err != nil || ok != tc.ok {
			t.Errorf("case %d: UseTOTPStep(%d) = %v, %v; want %v", i, tc.step, ok, err, tc.ok)
		}
	}
}

func TestLoginFailures(t *testing.T) {
	ctx := context.Background()
	db, c := open(t)
	since := func() time.Time { return c.now().Add(-15 * time.Minute) }
	for i := 1; i <= 3; i++ {
		n, s, err := db.LoginFailure(ctx, "ann", "10.0.0.1", since())
		if err != nil || n != i || s != i {
			t.Fatalf("failure %d: %d %d %v", i, n, s, err)
		}
	}
	if n, s, _ := db.LoginFailure(ctx, "bob", "10.0.0.1", since()); n != 1 || s != 4 {
		t.Errorf("bob from the same source: %d %d, want 1 4", n, s)
	}
	c.add(16 * time.Minute)
	if n, s, _ := db.LoginFailures(ctx, "ann", "10.0.0.1", since()); n != 0 || s != 0 {
		t.Errorf("failures outlived the window: %d %d", n, s)
	}
	db.LoginFailure(ctx, "ann", "10.0.0.2", since())
	if err := db.ClearLoginFailures(ctx, "ann"); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := db.LoginFailures(ctx, "ann", "x", since()); n != 0 {
		t.Errorf("failures after clearing: %d", n)
	}
}

// TestMigrationFromVersion1 opens a database made by the first schema and
// finds the dashboard's tables added, the registry intact.
func TestMigrationFromVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	all := migrations
	migrations = all[:1]
	db, err := Open(ctx, path, Options{})
	migrations = all
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Audit(ctx, "cli", "test", "x", ""); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.AddUser(ctx, "ann", RoleViewer, "h"); err != nil {
		t.Errorf("after migration: %v", err)
	}
	if n, err := db.VerifyAudit(ctx); err != nil || n != 1 {
		t.Errorf("audit after migration: %d %v", n, err)
	}
}

func BenchmarkObserveBatch(b *testing.B) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	// A typical batch: 500 points, 12 samples each (a minute at 5 s).
	const points, per = 500, 12
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := db.ObserveBatch(ctx, site1, "ag", benchBatch(uint64(i), points, per)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(points*per*b.N)/b.Elapsed().Seconds(), "samples/s")
}

// benchBatch is batch seq of agent "ag" at site1: points points with per
// samples each, 5 s apart, in the seq-th minute of 2026.
func benchBatch(seq uint64, points, per int) *batch.Batch {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	bt := &batch.Batch{Header: batch.Header{AgentID: "ag", Site: site1.Site, Seq: seq}}
	base := t0.Add(time.Duration(seq) * time.Minute)
	for p := range points {
		for k := range per {
			bt.Samples = append(bt.Samples, telemetry.Sample{PointID: uint64(p), Time: base.Add(time.Duration(k) * 5 * time.Second).UnixMilli(), Value: float64(k)})
		}
	}
	return bt
}

// TestLatestKeepsItsAgent: an older sample arriving later (another agent's
// backlog) changes neither the latest value nor the agent credited with it.
func TestLatestKeepsItsAgent(t *testing.T) {
	ctx := context.Background()
	db, _ := open(t)
	t0 := time.Date(2026, 6, 1, 11, 0, 0, 0, time.UTC)
	newer := &batch.Batch{Header: batch.Header{Seq: 1}, Samples: samplesEvery(1, t0.Add(time.Hour), time.Minute, 42)}
	older := &batch.Batch{Header: batch.Header{Seq: 1}, Samples: samplesEvery(1, t0, time.Minute, 7)}
	if err := db.ObserveBatch(ctx, site1, "ag-new", newer); err != nil {
		t.Fatal(err)
	}
	if err := db.ObserveBatch(ctx, site1, "ag-old", older); err != nil {
		t.Fatal(err)
	}
	l, err := db.LatestValue(ctx, site1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if l.Value != 42 || l.AgentID != "ag-new" {
		t.Errorf("latest = %v from %s, want 42 from ag-new", l.Value, l.AgentID)
	}
}
