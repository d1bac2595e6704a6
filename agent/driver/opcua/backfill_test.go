package opcua

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// deadlineRead reads points under a deadline, as the poller does.
func deadlineRead(t *testing.T, d *Driver, points []driver.Point, timeout time.Duration) ([]telemetry.Sample, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	return d.Read(ctx, points)
}

// simPort is the port of a simulator's endpoint.
func simPort(t *testing.T, sim *simopcua.Server) int {
	t.Helper()
	port, err := strconv.Atoi(sim.URL[strings.LastIndex(sim.URL, ":")+1:])
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// TestBackfillAcrossReads gives the driver a server whose history takes
// more pages than fit in one Read's deadline (a value every millisecond,
// 300 ms per HistoryRead, Reads of 1 s): Connect comes up at once under
// the same deadline, and the window of history (backfill_max 6s) arrives
// over several Reads that all succeed. Then the session drops (as when a
// request fails on it) for a while: the gap is filled the same way, every
// millisecond of it, and nothing is read twice. (The simulator answers
// GetEndpoints only for its own URL, so a proxy does not suit this test,
// and a restart takes seconds more: it builds gopcua's server anew.)
func TestBackfillAcrossReads(t *testing.T) {
	opts := simopcua.Options{Epoch: time.Now().Add(-time.Minute), HistoryInterval: time.Millisecond, HistoryDelay: 300 * time.Millisecond}
	sim := startSim(t, opts)
	ref := fmt.Sprintf("ns=%d;s=%s", sim.NS, simopcua.HistoryNode)
	points := []driver.Point{{ID: 1, Ref: ref, Settings: yamlSettings("history: true")}, {ID: 2, Ref: fmt.Sprintf("ns=%d;s=AHU1.FanSpeed", sim.NS)}}
	var logs logBuffer
	d, err := newDriver(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL, "backfill_max: 6s", "request_timeout: 500ms"), Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const timeout = time.Second
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	err = d.Connect(ctx)
	cancel()
	if err != nil {
		t.Fatalf("Connect under a %s deadline: %v", timeout, err)
	}
	if n := countOf(sim.Services(), "HistoryRead"); n != 0 {
		t.Fatalf("Connect sent %d HistoryRead; history belongs to the Reads", n)
	}

	// read reads once and splits the samples of point 1 into live and
	// history ones. A Read returns its history samples last, and the
	// history_samples counter says how many there are. (Taking the first
	// sample of point 1 as its live one is wrong: a Read whose live
	// sample is left out, because it would repeat the time of the last
	// one, may still carry history, and its first history sample would
	// be miscounted as live, which looks like a lost millisecond.)
	seen := counter(d, "history_samples")
	sortRead := func(phase string, samples []telemetry.Sample) (live, hist []telemetry.Sample) {
		t.Helper()
		n := int(counter(d, "history_samples") - seen)
		seen += uint64(n)
		if n > len(samples) {
			t.Fatalf("%s: a Read counted %d history samples and returned %d samples", phase, n, len(samples))
		}
		for j, s := range samples {
			switch {
			case j >= len(samples)-n:
				if s.PointID != 1 {
					t.Fatalf("%s: history sample %+v of a point without history", phase, s)
				}
				hist = append(hist, s)
			case s.PointID == 1:
				live = append(live, s)
			}
		}
		return live, hist
	}
	read := func(phase string, i int) (live, hist []telemetry.Sample) {
		t.Helper()
		samples, err := deadlineRead(t, d, points, timeout)
		if err != nil {
			t.Fatalf("%s: Read %d under a %s deadline: %v\n%s", phase, i, timeout, err, logs.String())
		}
		return sortRead(phase, samples)
	}
	// drain reads until the backfill is done, and returns the samples of
	// point 1 and how many Reads carried history. before, when not nil,
	// runs before each Read.
	drain := func(phase string, before func(i int)) (live, hist []telemetry.Sample, reads int) {
		t.Helper()
		for i := 0; i < 40; i++ {
			if before != nil {
				before(i)
			}
			l, h := read(phase, i)
			live, hist = append(live, l...), append(hist, h...)
			if len(h) > 0 {
				reads++
			}
			d.mu.Lock()
			pending := len(d.jobs)
			d.mu.Unlock()
			if pending == 0 {
				return live, hist, reads
			}
		}
		t.Fatalf("%s: backfill not done after 40 reads\n%s", phase, logs.String())
		return nil, nil, 0
	}

	// Two Reads within one millisecond (one that finds no room for a
	// history page takes well under one, and the next may follow at
	// once) leave the second's live sample of point 1 out, as it would
	// repeat the first's time, while the second still carries history.
	// That happened under load, to both points at once, so the Read's
	// first sample was point 1's first from history. Read 1 is made such
	// a Read by moving both points' marks ahead of the clock by its
	// deadline: whenever the server answers it, its values are not later
	// (a margin any shorter is a bet on how fast a loaded machine is).
	var notLater uint64
	live, hist, reads := drain("first session", func(i int) {
		if i != 1 {
			return
		}
		d.mu.Lock()
		for _, m := range d.tl.configured {
			m.last = time.Now().Add(timeout).UnixMilli()
		}
		d.mu.Unlock()
		notLater = counter(d, "samples_not_later")
	})
	if n := counter(d, "samples_not_later") - notLater; n < 2 {
		t.Errorf("Read 1 left %d live samples out, want both; the test no longer covers a Read with history and no live sample", n)
	}
	t.Logf("first session: the window's history came in %d Reads of %s", reads, timeout)
	if reads < 2 {
		t.Errorf("the window's history came in %d Reads; with 300 ms pages and 1 s Reads it cannot fit in one", reads)
	}
	// The window: from 6 s before the session opened up to the first
	// live sample, one value a millisecond, each once.
	first := live[0].Time
	if from := checkHistory(t, "first session", hist, first); from > first-5999 || from < first-7000 {
		t.Errorf("the window's history starts %d ms before the first live sample, want 6 s before the session opened", first-from)
	}

	// Drop the session for a while; the driver fills the gap between
	// its last sample before and its first one after.
	_, _, _ = drain("settle", nil)
	lastBefore := d.tl.configured[1].last
	historyReads := countOf(sim.Services(), "HistoryRead")
	d.drop(t.Context(), errors.New("the test dropped the session"))
	time.Sleep(2500 * time.Millisecond) // 3 pages of history at least
	// The poller reconnects by Close and Connect, under its deadline:
	// Connect opens the session and sends no history request.
	d.Close()
	ctx, cancel = context.WithTimeout(t.Context(), timeout)
	err = d.Connect(ctx)
	cancel()
	if err != nil {
		t.Fatalf("Connect after the session dropped, under a %s deadline: %v", timeout, err)
	}
	if n := countOf(sim.Services(), "HistoryRead"); n != historyReads {
		t.Fatalf("Connect sent %d HistoryRead; history belongs to the Reads", n-historyReads)
	}
	var live2, gap []telemetry.Sample
	if !waitFor(t.Context(), 60*time.Second, func() bool {
		var samples []telemetry.Sample
		if samples, err = deadlineRead(t, d, points, timeout); err != nil {
			return false
		}
		live2, gap = sortRead("after the reconnect", samples)
		return true
	}) {
		t.Fatalf("no Read succeeded after the session dropped: %v\n%s", err, logs.String())
	}
	if len(live2) == 0 {
		t.Fatalf("the first Read after the reconnect has no live sample of point 1\n%s", logs.String())
	}
	firstAfter := live2[0].Time
	_, more, moreReads := drain("after the reconnect", nil)
	t.Logf("after the reconnect: the gap's history came in %d Reads of %s after the first", moreReads, timeout)
	gap = append(gap, more...)
	if moreReads == 0 {
		t.Errorf("a gap of %d ms (3 pages of 300 ms) was filled in the first Read after the reconnect", firstAfter-lastBefore)
	}
	if from := checkHistory(t, "after the reconnect", gap, firstAfter); from != lastBefore+1 {
		t.Errorf("the gap's history starts at %d, want the millisecond after the last sample before the session dropped, %d", from, lastBefore+1)
	}
	if n := countOf(sim.Services(), "HistoryRead") - historyReads; n < 2 {
		t.Errorf("the gap took %d HistoryRead, want pages", n)
	}
	if bad := notReads(sim.Services()); len(bad) > 0 {
		t.Errorf("sent %q", bad)
	}
}

// checkHistory checks that hist holds exactly one ok sample on each
// millisecond from its earliest up to to (exclusive), and returns the
// earliest.
func checkHistory(t *testing.T, phase string, hist []telemetry.Sample, to int64) int64 {
	t.Helper()
	if len(hist) == 0 {
		t.Fatalf("%s: no history", phase)
	}
	times := make([]int64, 0, len(hist))
	for _, s := range hist {
		if s.Status != telemetry.StatusOK {
			t.Fatalf("%s: history sample %+v is not ok", phase, s)
		}
		times = append(times, s.Time)
	}
	slices.Sort(times)
	for i := 1; i < len(times); i++ {
		if d := times[i] - times[i-1]; d != 1 {
			t.Fatalf("%s: history has %d ms between %d and %d, want one value each millisecond, each once", phase, d, times[i-1], times[i])
		}
	}
	if last := times[len(times)-1]; last != to-1 {
		t.Errorf("%s: history ends at %d, want %d (just before the first live sample)", phase, last, to-1)
	}
	t.Logf("%s: %d history samples", phase, len(times))
	return times[0]
}

// split sorts the samples of Reads into live ones (times by point, in the
// order received) and those from history (times of point 1): a Read
// returns its history samples last, and the driver's history_samples
// count says how many there are.
type split struct {
	t    *testing.T
	d    *Driver
	seen uint64
	live map[uint64][]int64
	hist []int64
}

func newSplit(t *testing.T, d *Driver) *split {
	return &split{t: t, d: d, live: map[uint64][]int64{}}
}

func (sp *split) add(samples []telemetry.Sample) {
	n := counter(sp.d, "history_samples") - sp.seen
	sp.seen += n
	for i, s := range samples {
		switch {
		case i >= len(samples)-int(n):
			if s.PointID != 1 {
				sp.t.Fatalf("history sample %+v of a point without history", s)
			}
			sp.hist = append(sp.hist, s.Time)
		case s.Status == telemetry.StatusOK:
			sp.live[s.PointID] = append(sp.live[s.PointID], s.Time)
		}
	}
}

// bracket sorts the history and returns the live samples of point id
// just before and just after it. History fills a gap between two live
// samples: a live sample among the history's times fails the test, and so
// does history with no live sample on either side.
func (sp *split) bracket(id uint64) (prev, next int64) {
	sp.t.Helper()
	if len(sp.hist) == 0 {
		sp.t.Fatal("no history")
	}
	slices.Sort(sp.hist)
	lo, hi := sp.hist[0], sp.hist[len(sp.hist)-1]
	for _, ts := range sp.live[id] {
		switch {
		case ts >= lo && ts <= hi:
			sp.t.Fatalf("live sample at %d among the history [%d, %d]: the backfill overlaps live data", ts, lo, hi)
		case ts < lo:
			prev = max(prev, ts)
		case next == 0 || ts < next:
			next = ts
		}
	}
	if prev == 0 || next == 0 {
		sp.t.Fatalf("history [%d, %d] is not between live samples (%d before, %d after)", lo, hi, prev, next)
	}
	return prev, next
}

// TestSubscriptionGapBackfill restarts the simulator under a driver that
// subscribes to two nodes: one the server historizes (no history: true
// needed) and one it does not. The values the old subscription had queued
// are gone with it; after the reconnect the historized node's gap, from
// its last notification to its first new one, is read from history, and
// the other node's gap is counted (subscription_gaps) and logged once with
// the node count.
func TestSubscriptionGapBackfill(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts the simulator (seconds: gopcua's server is built anew); skipped under -short")
	}
	opts := simopcua.Options{Epoch: time.Now().Add(-time.Minute), HistoryInterval: 50 * time.Millisecond}
	sim := startSim(t, opts)
	points := []driver.Point{
		{ID: 1, Ref: fmt.Sprintf("ns=%d;s=%s", sim.NS, simopcua.HistoryNode), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms")},
		{ID: 2, Ref: fmt.Sprintf("ns=%d;s=AHU1.FanSpeed", sim.NS), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms")},
		{ID: 3, Ref: fmt.Sprintf("ns=%d;s=AHU1.SupplyAirTemp", sim.NS)},
	}
	d, logs := connected(t, noneSettings(t, sim.URL, "publishing_interval: 100ms", "request_timeout: 1s"), points)
	sp := newSplit(t, d)
	byPoint := sp.live
	collect := sp.add
	if !waitFor(t.Context(), 60*time.Second, func() bool {
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		collect(samples)
		return len(byPoint[1]) >= 3 && len(byPoint[2]) >= 3
	}) {
		t.Fatalf("no notifications: %v\n%s", byPoint, logs.String())
	}
	if counter(d, "history_samples") != 0 {
		t.Fatal("history read on the first session without history: true")
	}
	sim.Close()
	opts.Port = simPort(t, sim)
	sim2 := startSim(t, opts)
	reconnected := func() bool {
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			return false
		}
		collect(samples)
		d.mu.Lock()
		pending := len(d.jobs)
		d.mu.Unlock()
		return d.Sessions() >= 2 && pending == 0 && counter(d, "history_samples") > 0
	}
	if !waitFor(t.Context(), 60*time.Second, reconnected) {
		t.Fatalf("no backfill after the restart\n%s", logs.String())
	}
	// The history lies between the last value received before the
	// restart and the first new notification, and every point of its
	// 50 ms grid between them is there, once.
	lastBefore, firstNew := sp.bracket(1)
	gap := sp.hist
	if len(gap) < 10 {
		t.Fatalf("%d history samples for a gap of %d ms at one per 50 ms\n%s", len(gap), firstNew-lastBefore, logs.String())
	}
	if gap[0] > lastBefore+50 || gap[len(gap)-1] < firstNew-50 {
		t.Errorf("history [%d, %d] does not span the gap (%d, %d)", gap[0], gap[len(gap)-1], lastBefore, firstNew)
	}
	for i := 1; i < len(gap); i++ {
		if gap[i]-gap[i-1] != 50 {
			t.Fatalf("history has %d ms between %d and %d, want every 50 ms once", gap[i]-gap[i-1], gap[i-1], gap[i])
		}
	}
	if n := counter(d, "subscription_gaps"); n != 1 {
		t.Errorf("subscription_gaps = %d, want 1 (FanSpeed, which the server does not historize)", n)
	}
	if n := strings.Count(logs.String(), "subscription had queued"); n != 1 || !strings.Contains(logs.String(), "nodes=1") {
		t.Errorf("the lost values were logged %d times, want once with nodes=1:\n%s", n, logs.String())
	}
	if countOf(sim2.Services(), "HistoryRead") == 0 {
		t.Errorf("the restarted server saw no HistoryRead: %q", sim2.Services())
	}
	if bad := notReads(sim2.Services()); len(bad) > 0 {
		t.Errorf("sent %q", bad)
	}
}

// TestNodeOPCUASubscriptionGapIntegration cuts the network between the
// driver and node-opcua (through a loopback proxy) while it subscribes to
// a node the peer historizes and one it does not. node-opcua keeps the old
// subscription, with the values it queued, for a session the driver no
// longer has; after the reconnect the historized node's gap comes from
// HistoryRead, exactly between the last notification before and the first
// after, and the other node's gap is counted.
func TestNodeOPCUASubscriptionGapIntegration(t *testing.T) {
	p := shared(t)
	proxy := startProxy(t, p.URL)
	points := []driver.Point{
		{ID: 1, Ref: peerRef("Plant.ChilledWaterSupplyTemp"), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\nqueue_size: 10")},
		{ID: 2, Ref: peerRef("AHU1.FanSpeed"), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms")},
	}
	d, logs := connected(t, noneSettings(t, proxy.URL(), "publishing_interval: 200ms", "request_timeout: 1s"), points)
	sp := newSplit(t, d)
	live := sp.live
	read := func() error {
		samples, err := d.Read(t.Context(), points)
		if err == nil {
			sp.add(samples)
		}
		return err
	}
	for range 8 {
		if err := read(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(live[1]) < 3 {
		t.Fatalf("%d notifications of the historized node in 1.6 s", len(live[1]))
	}
	proxy.Cut()
	waitFor(t.Context(), 60*time.Second, func() bool { return read() != nil })
	time.Sleep(2 * time.Second)
	proxy.Restore()
	if !waitFor(t.Context(), 60*time.Second, func() bool {
		if read() != nil {
			return false
		}
		d.mu.Lock()
		pending := len(d.jobs)
		d.mu.Unlock()
		return d.Sessions() >= 2 && pending == 0 && len(sp.hist) > 0
	}) {
		t.Fatalf("no backfill after the network came back (%d history samples)\n%s", len(sp.hist), logs.String())
	}
	lastBefore, firstNew := sp.bracket(1)
	hist := sp.hist
	t.Logf("gap (%d, %d): %d ms, %d values from history", lastBefore, firstNew, firstNew-lastBefore, len(hist))
	// The peer logs a value every 200 ms: a gap of over 2 s holds many.
	if len(hist) < 5 {
		t.Errorf("%d history values for a gap of %d ms", len(hist), firstNew-lastBefore)
	}
	if n := len(slices.Compact(slices.Clone(hist))); n != len(hist) {
		t.Errorf("%d history values repeat a time", len(hist)-n)
	}
	if n := counter(d, "subscription_gaps"); n != 1 {
		t.Errorf("subscription_gaps = %d, want 1 (FanSpeed, which the peer does not historize)", n)
	}
	if bad := notReads(p.Services()); len(bad) > 0 {
		t.Errorf("the peer received %q", bad)
	}
}

// TestBackfillJobsBounded opens sessions again and again for a point
// that each session hears but whose gaps are never read: at most
// maxJobsPerPoint wait, the oldest are given up and, the point being
// subscribed, counted as subscription gaps.
// The first session plans the window of history: true points only.
func TestBackfillJobsBounded(t *testing.T) {
	points := []driver.Point{
		{ID: 1, Ref: "ns=2;s=Sub", Settings: yamlSettings("mode: subscribe\nhistory: true")},
		{ID: 2, Ref: "ns=2;s=Polled", Settings: yamlSettings("history: true")},
		{ID: 3, Ref: "ns=2;s=Plain"},
		{ID: 4, Ref: "ns=2;s=SubNoHistory", Settings: yamlSettings("mode: subscribe")},
	}
	var logs logBuffer
	d, err := newDriver(driver.Device{Name: "d", Settings: yamlSettings("endpoint: opc.tcp://127.0.0.1:4840\npki_dir: /nonexistent\nbackfill_max: 1h"), Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(1_700_000_000_000)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.planBackfill(true, 1, now)
	var planned []uint64
	for _, j := range d.jobs {
		planned = append(planned, j.p.ID)
		if !j.from.Equal(now.Add(-time.Hour)) || j.check || j.subscribed {
			t.Errorf("first-session job %+v: want the hour before, no check, not a subscription gap", j)
		}
	}
	if !slices.Equal(planned, []uint64{1, 2}) {
		t.Fatalf("first session planned points %v, want the history: true ones, 1 and 2", planned)
	}
	d.jobs = nil
	for _, m := range d.tl.configured {
		m.last = now.UnixMilli() - 1000
	}
	for s := 2; s <= 6; s++ {
		opened := now.Add(time.Duration(s) * time.Second)
		d.planBackfill(false, s, opened)
		// Each session hears every point (its live read succeeds) and
		// drops before a Read has time for history, so each leaves a gap
		// of its own (one that does not hear a point goes on with the
		// point's open gap: TestBackfillEndsAcrossSessions).
		for _, m := range d.tl.configured {
			ms := opened.UnixMilli() + 100
			m.heard, m.first, m.last = true, ms, ms
		}
	}
	per := map[uint64]int{}
	for _, j := range d.jobs {
		per[j.p.ID]++
	}
	if per[1] != maxJobsPerPoint || per[2] != maxJobsPerPoint || per[4] != maxJobsPerPoint || per[3] != 0 {
		t.Errorf("jobs per point %v after 5 reconnects, want %d each for 1, 2 and 4, none for 3", per, maxJobsPerPoint)
	}
	// Points 1 and 4 are subscribed: their 2 oldest gaps each are given
	// up and counted; point 2's are given up too, but it is polled.
	if d.subGaps != 4 {
		t.Errorf("subscription_gaps = %d, want 4", d.subGaps)
	}
	for _, j := range d.jobs {
		if j.check != (j.p.ID == 4) {
			t.Errorf("job of point %d: check %v; only a subscribed point without history: true is checked for Historizing", j.p.ID, j.check)
		}
	}
}

// TestBackfillPageRetries works off a window of history (a value every
// millisecond, pages of up to 1000) page by page while every third
// HistoryRead fails: the server answers a service fault (BadTimeout,
// after which the page is asked for again in a smaller size, or busy), or
// the page's deadline cuts it off before the server answers. Whatever
// fails, each page is asked for again from the millisecond after the last
// value returned, so the window arrives whole and nothing twice.
func TestBackfillPageRetries(t *testing.T) {
	failing := func(call int) bool { return call%3 == 2 }
	rows := []struct {
		name  string
		fault func(call int) (time.Duration, ua.StatusCode)
		// cut: the failing pages' deadline ends before the server answers.
		cut bool
	}{
		{name: "server timeouts", fault: func(call int) (time.Duration, ua.StatusCode) {
			if failing(call) {
				return 0, ua.StatusBadTimeout
			}
			return 0, ua.StatusOK
		}},
		{name: "server busy", fault: func(call int) (time.Duration, ua.StatusCode) {
			if failing(call) {
				return 0, ua.StatusBadResourceUnavailable
			}
			return 0, ua.StatusOK
		}},
		{name: "cut by the deadline", cut: true, fault: func(call int) (time.Duration, ua.StatusCode) {
			if failing(call) {
				return 300 * time.Millisecond, ua.StatusOK
			}
			return 0, ua.StatusOK
		}},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			opts := simopcua.Options{Epoch: time.Now().Add(-time.Minute), HistoryInterval: time.Millisecond, HistoryFault: row.fault}
			sim := startSim(t, opts)
			points := []driver.Point{{ID: 1, Ref: fmt.Sprintf("ns=%d;s=%s", sim.NS, simopcua.HistoryNode), Settings: yamlSettings("history: true")}}
			d, logs := connected(t, noneSettings(t, sim.URL, "backfill_max: 5s"), points)
			// The live read ends the window's gap; the pages are then
			// driven one by one, so the n-th is the server's n-th
			// HistoryRead.
			live, err := d.readPolled(t.Context(), points)
			if err != nil || len(live) != 1 {
				t.Fatalf("live read: %v, %d samples", err, len(live))
			}
			var hist []telemetry.Sample
			failed := 0
			for call := 1; ; call++ {
				if call > 100 {
					t.Fatalf("backfill not done after 100 requests\n%s", logs.String())
				}
				d.mu.Lock()
				j := d.nextJob()
				d.mu.Unlock()
				if j == nil {
					break
				}
				ctx, cancel := context.WithCancel(t.Context())
				if row.cut && failing(call) {
					ctx, cancel = context.WithTimeout(t.Context(), 100*time.Millisecond)
				}
				samples, err := d.backfillPage(ctx, j)
				cancel()
				if (err != nil) != failing(call) {
					t.Fatalf("request %d: err %v, want an error only on every third request", call, err)
				}
				if err != nil {
					failed++
				}
				hist = append(hist, samples...)
			}
			if failed < 2 {
				t.Fatalf("%d requests failed; the test wants pages asked for again", failed)
			}
			first := live[0].Time
			if from := checkHistory(t, row.name, hist, first); from > first-4999 || from < first-6000 {
				t.Errorf("the window's history starts %d ms before the live sample, want 5 s before the session opened", first-from)
			}
			if n := counter(d, "history_samples"); n != uint64(len(hist)) {
				t.Errorf("history_samples = %d, want the %d returned", n, len(hist))
			}
		})
	}
}

// TestBackfillEndsAcrossSessions opens sessions one after another without
// a Read reaching the backfill in between (each session drops before its
// Reads have time left for history): a gap's end is fixed from the
// session that heard its point, before the next session forgets it, so
// the gaps neither overlap each other nor the live samples between them.
// Without that, the oldest gap ran to the newest session's first sample:
// the live samples and every later gap were read again from history.
func TestBackfillEndsAcrossSessions(t *testing.T) {
	const t0 = int64(1_700_000_000_000)
	type span struct{ from, to int64 }
	rows := []struct {
		name string
		// sessions lists, per session after the first, when it opens
		// (ms after t0) and the live samples it reads; carry are the
		// values a retired subscription left when it opened.
		sessions []struct {
			opened int64
			live   []int64
			carry  []int64
		}
		want []span
	}{
		{
			name: "each session heard the point",
			sessions: []struct {
				opened int64
				live   []int64
				carry  []int64
			}{{opened: 0, live: []int64{100, 500}}, {opened: 2000, live: []int64{2100, 2300}}, {opened: 4000, live: []int64{4100}}},
			want: []span{{-3_600_000, 100}, {501, 2100}, {2301, 4100}},
		},
		{
			name: "a session that did not hear the point",
			sessions: []struct {
				opened int64
				live   []int64
				carry  []int64
			}{{opened: 0, live: []int64{100, 500}}, {opened: 2000}, {opened: 4000, live: []int64{4100}}},
			want: []span{{-3_600_000, 100}, {501, 4100}},
		},
		{
			name: "a session whose values a retired subscription left",
			sessions: []struct {
				opened int64
				live   []int64
				carry  []int64
			}{{opened: 0, live: []int64{100, 500}}, {opened: 2000}, {opened: 4000, carry: []int64{2500, 2600}, live: []int64{2500, 2600, 4100}}},
			want: []span{{-3_600_000, 100}, {501, 2500}, {2601, 4100}},
		},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			p := driver.Point{ID: 1, Ref: "ns=2;s=P", Settings: yamlSettings("mode: subscribe\nhistory: true")}
			d, err := newDriver(driver.Device{Name: "d", Settings: yamlSettings("endpoint: opc.tcp://127.0.0.1:4840\npki_dir: /nonexistent\nbackfill_max: 1h\nrequest_timeout: 1h"), Points: []driver.Point{p}})
			if err != nil {
				t.Fatal(err)
			}
			m := d.tl.of(1)
			for i, s := range row.sessions {
				d.mu.Lock()
				d.carry = map[string][]*ua.DataValue{}
				for _, ms := range s.carry {
					d.carry[p.Ref] = append(d.carry[p.Ref], &ua.DataValue{SourceTimestamp: time.UnixMilli(t0 + ms)})
				}
				d.planBackfill(i == 0, i+1, time.UnixMilli(t0+s.opened))
				d.mu.Unlock()
				for k, ms := range s.live {
					// Carried values are emitted first and are not fresh.
					d.advance(p, m, t0+ms, true, k >= len(s.carry), time.UnixMilli(t0+ms))
				}
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			var got []span
			for _, j := range d.jobs {
				if j.to.IsZero() && !d.fixEnd(j, false) {
					t.Fatalf("job from %d has no end after the last session heard its point", j.from.UnixMilli()-t0)
				}
				got = append(got, span{j.from.UnixMilli() - t0, j.to.UnixMilli() - t0})
			}
			if !slices.Equal(got, row.want) {
				t.Errorf("gaps %v, want %v", got, row.want)
			}
		})
	}
}
