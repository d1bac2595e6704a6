package opcua

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestNodeOPCUAReconnectIntegration kills the node-opcua peer under a
// driver with polled and subscribed points, restarts it on the same port,
// and measures how the driver comes back: how long after the server
// listens again data resumes, how many sessions it tried to create while
// the server was away (the backoff keeps that small), and that the
// subscription is recreated and delivers again.
func TestNodeOPCUAReconnectIntegration(t *testing.T) {
	pki := t.TempDir()
	p1 := startPeer(t, peerOptions{PKI: pki})
	settings := yamlSettings(fmt.Sprintf(`endpoint: %s
security_policy: Basic256Sha256
security_mode: SignAndEncrypt
pki_dir: %s
reconnect_min: 200ms
reconnect_max: 2s
request_timeout: 3s
publishing_interval: 200ms
`, p1.URL, t.TempDir()))
	points := []driver.Point{
		{ID: 1, Ref: peerRef("AHU1.SupplyAirTemp")},
		{ID: 2, Ref: peerRef("Plant.ChilledWaterSupplyTemp"), Settings: yamlSettings("history: true")},
		{ID: 3, Ref: peerRef("AHU1.FanSpeed"), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\nqueue_size: 10")},
		{ID: 4, Ref: peerRef("AHU1.ReturnAirTemp"), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\ndeadband: 100")},
	}
	var logs logBuffer
	d, err := newDriver(driver.Device{Name: "peer", Settings: settings, Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	counts := map[uint64]int{}
	collect := func(samples []telemetry.Sample) {
		for _, s := range samples {
			if s.Status == telemetry.StatusOK {
				counts[s.PointID]++
			}
		}
	}
	// FanSpeed changes all the time: a queue of values arrives per
	// publish, 8 within 2 s on an idle machine. Reads go on until they
	// came (and at least 10 Reads), the deadline only bounding a hang:
	// a loaded machine samples and publishes late, not never.
	// ReturnAirTemp moves less than the deadband: its first value only.
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; (i < 10 || counts[3] < 8 || counts[4] == 0) && time.Now().Before(deadline); i++ {
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		collect(samples)
		time.Sleep(200 * time.Millisecond)
	}
	if counts[3] < 8 {
		t.Errorf("subscribed FanSpeed delivered %d values in 60 s, want many", counts[3])
	}
	if counts[4] != 1 {
		t.Errorf("ReturnAirTemp under a deadband of 100 delivered %d values, want the initial one only", counts[4])
	}
	before, beforeAttempts := d.Sessions(), d.Attempts()

	p1.stop()
	down := time.Now()
	// The poller keeps reading while the server is away.
	var failures int
	for time.Since(down) < 2*time.Second {
		if _, err := d.Read(t.Context(), points); err != nil {
			failures++
		}
		time.Sleep(100 * time.Millisecond)
	}
	if failures == 0 {
		t.Fatal("reads kept succeeding with the server killed")
	}
	reads := make(chan struct{})
	stopReads := make(chan struct{})
	// Keep polling every 100 ms while the peer starts (it takes seconds).
	// resumed is when data came back, and resuming when the Read that
	// brought it began (that Read opened the session).
	var resumed, resuming time.Time
	var afterCounts = map[uint64]int{}
	go func() {
		defer close(reads)
		for {
			select {
			case <-stopReads:
				return
			case <-time.After(100 * time.Millisecond):
			}
			began := time.Now()
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				continue
			}
			for _, s := range samples {
				if s.Status == telemetry.StatusOK {
					afterCounts[s.PointID]++
				}
			}
			if resumed.IsZero() && afterCounts[1] > 0 {
				resumed, resuming = time.Now(), began
			}
			if afterCounts[3] > 0 {
				return
			}
		}
	}()
	p2 := startPeer(t, peerOptions{PKI: pki, Port: p1.Port})
	listening := time.Now()
	select {
	case <-reads:
	case <-time.After(60 * time.Second):
		close(stopReads)
		<-reads
		t.Fatalf("no subscribed value within 60 s of the server's restart\n%s", logs.String())
	}
	attempts := d.Attempts() - beforeAttempts
	outage := listening.Sub(down)
	t.Logf("reconnect: server down %s; data resumed %s after it listened again (by a Read begun after %s); %d connection attempts (%d reaching CreateSession) for about %d reads; %d CreateSession on the restarted server",
		outage.Round(time.Millisecond), resumed.Sub(listening).Round(time.Millisecond), resuming.Sub(listening).Round(time.Millisecond), attempts, d.Sessions()-before, failures+int(time.Since(down)/(100*time.Millisecond)), p2.count("CreateSession"))
	// The backoff caps at 2s: the Read that reopened the session began
	// at most that long after the server listened (after the last
	// attempt it refused), plus an attempt the server, just started, let
	// time out (request_timeout 3s) and a second of slack for the Read
	// loop's wake-ups. How long that Read then took (a secure session
	// costs RSA work on both sides; seconds under -race on a loaded
	// machine) is the machine's speed, not the backoff, and is only
	// logged: bounding it too would fail a correct driver on a machine
	// slow enough.
	if wait := resuming.Sub(listening); wait > 2*time.Second+3*time.Second+time.Second {
		t.Errorf("the Read that brought data back began %s after the server listened; the backoff caps at 2s", wait)
	}
	// Backoff: 200ms doubling to 2s with jitter; a storm would be one
	// attempt per Read (every 100ms).
	if limit := int(outage/(100*time.Millisecond)) / 3; attempts > limit {
		t.Errorf("%d connection attempts in %s of outage: a storm (limit %d)", attempts, outage, limit)
	}
	// The peer's log comes through a pipe, behind its answers (node
	// writes a piped stdout asynchronously): the last Read's HistoryRead
	// was answered but not yet logged when the test looked, and it failed
	// 'saw no HistoryRead' (1 run in 2 under load). Wait for every service
	// the reconnect must bring.
	recreated := []string{"CreateSession", "CreateSubscription", "CreateMonitoredItems", "Publish", "HistoryRead"}
	waitFor(t.Context(), 60*time.Second, func() bool {
		got := p2.Services()
		return !slices.ContainsFunc(recreated, func(s string) bool { return !slices.Contains(got, s) })
	})
	if n := p2.count("CreateSession"); n != 1 {
		t.Errorf("the restarted server saw %d CreateSession, want 1", n)
	}
	for _, want := range recreated[1:] {
		if p2.count(want) == 0 {
			t.Errorf("the restarted server saw no %s: the driver did not recreate its subscription or backfill (%q)", want, p2.Services())
		}
	}
	if bad := notReads(p2.Services()); len(bad) > 0 {
		t.Errorf("the restarted server received %q", bad)
	}
}

// TestNodeOPCUARestartBetweenPollsIntegration restarts the peer between
// two polls: the second poll finds its connection closed, reconnects at
// once and returns data, so no poll is lost.
func TestNodeOPCUARestartBetweenPollsIntegration(t *testing.T) {
	pki := t.TempDir()
	p1 := startPeer(t, peerOptions{PKI: pki})
	points := peerPoints()[:3]
	d, err := New(driver.Device{Name: "peer", Settings: noneSettings(t, p1.URL), Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatal(err)
	}
	p1.stop()
	p2 := startPeer(t, peerOptions{PKI: pki, Port: p1.Port})
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("the first poll after a restart failed: %v", err)
	}
	checkPeerSamples(t, samples, points, 0)
	waitFor(t.Context(), 60*time.Second, func() bool { return p2.count("CreateSession") > 0 })
	if n := p2.count("CreateSession"); n != 1 {
		t.Errorf("%d CreateSession after the restart, want 1", n)
	}
}

// TestNodeOPCUAUnansweredReadsIntegration loses every byte between the
// driver and node-opcua without closing the connection (a pulled cable, a
// dead host: no reset arrives) while the poller's Read deadline is far
// shorter than request_timeout, so no request ever times out on its own.
// After two Reads in a row got no answer the driver gives up the session
// and tries a new connection, rather than waiting for TCP to notice (with
// data outstanding, many minutes); once the network carries bytes again a
// Read succeeds on a new session.
func TestNodeOPCUAUnansweredReadsIntegration(t *testing.T) {
	p := shared(t)
	proxy := startProxy(t, p.URL)
	points := peerPoints()[:2]
	d, logs := connected(t, noneSettings(t, proxy.URL(), "request_timeout: 30s"), points)
	if _, err := deadlineRead(t, d, points, time.Second); err != nil {
		t.Fatal(err)
	}
	conns := proxy.Accepted()
	proxy.Blackhole()
	for i := range 4 {
		if _, err := deadlineRead(t, d, points, 300*time.Millisecond); err == nil {
			t.Fatalf("Read %d succeeded with every byte lost", i)
		}
		time.Sleep(100 * time.Millisecond) // past the reconnect backoff (50-200 ms)
	}
	if proxy.Accepted() == conns {
		t.Fatalf("4 unanswered Reads and no new connection tried: the driver waits on a dead session\n%s", logs.String())
	}
	proxy.Restore()
	if !waitFor(t.Context(), 60*time.Second, func() bool {
		_, err := deadlineRead(t, d, points, 2*time.Second)
		return err == nil
	}) {
		t.Fatalf("no Read succeeded after the network came back:\n%s", logs.String())
	}
	if d.Sessions() != 2 {
		t.Errorf("%d sessions, want 2 (a new one after the unanswered reads)", d.Sessions())
	}
}
