package opcua

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestSubscribeSim subscribes to the simulator's fan speed next to a
// polled point and a node that does not exist: values arrive between
// Reads, the missing node is a faulty point, the polled one is read.
func TestSubscribeSim(t *testing.T) {
	sim := startSim(t, simopcua.Options{})
	points := []driver.Point{
		{ID: 1, Ref: fmt.Sprintf("ns=%d;s=AHU1.SupplyAirTemp", sim.NS)},
		{ID: 2, Ref: fmt.Sprintf("ns=%d;s=AHU1.FanSpeed", sim.NS), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\nqueue_size: 5")},
		{ID: 3, Ref: fmt.Sprintf("ns=%d;s=Nowhere", sim.NS), Settings: yamlSettings("mode: subscribe")},
	}
	d, err := New(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL, "publishing_interval: 200ms"), Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Ten Reads at least, and on until three subscribed values came
	// (2 s on an idle machine; the deadline only bounds a hang).
	counts := map[uint64]map[telemetry.Status]int{1: {}, 2: {}, 3: {}}
	reads := 0
	deadline := time.Now().Add(60 * time.Second)
	for ; (reads < 10 || counts[2][telemetry.StatusOK] < 3) && time.Now().Before(deadline); reads++ {
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range samples {
			counts[s.PointID][s.Status]++
		}
		time.Sleep(200 * time.Millisecond)
	}
	if counts[1][telemetry.StatusOK] != reads {
		t.Errorf("polled point: %v, want %d ok, one per Read", counts[1], reads)
	}
	if counts[2][telemetry.StatusOK] < 3 {
		t.Errorf("subscribed point: %v, want values between reads", counts[2])
	}
	if counts[3][telemetry.StatusFault] != 1 || counts[3][telemetry.StatusOK] != 0 {
		t.Errorf("missing subscribed node: %v, want one fault", counts[3])
	}
	if bad := notReads(sim.Services()); len(bad) > 0 {
		t.Errorf("sent %q", bad)
	}
}

// TestPushRefusesUnknownHandles: a value for a handle the subscription never
// gave out is dropped and counted, not queued where no one reads it; a full
// queue counts what it pushes out.
func TestPushRefusesUnknownHandles(t *testing.T) {
	s := &subscription{handles: map[string]uint32{"a": 1, "b": 2}, pending: map[uint32][]*ua.DataValue{}}
	for _, h := range []uint32{0, 3, 1 << 31} {
		s.push(h, &ua.DataValue{})
	}
	if len(s.pending) != 0 || s.droppedValues() != 3 {
		t.Fatalf("pending %v, dropped %d; want nothing queued and 3 dropped", s.pending, s.droppedValues())
	}
	for range maxPending + 5 {
		s.push(2, &ua.DataValue{})
	}
	if n := len(s.take(2)); n != maxPending || s.droppedValues() != 8 {
		t.Errorf("queue of %d, %d dropped; want %d and 8", n, s.droppedValues(), maxPending)
	}
}

// TestQueuedValuesSurviveDrop lets notifications queue in the driver
// between Reads, then drops the session (as a failed request does): the
// values the agent had already received come with the next Read, before
// the new subscription's, instead of being lost with the old one.
func TestQueuedValuesSurviveDrop(t *testing.T) {
	sim := startSim(t, simopcua.Options{})
	points := []driver.Point{{ID: 1, Ref: fmt.Sprintf("ns=%d;s=AHU1.FanSpeed", sim.NS), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\nqueue_size: 5")}}
	d, logs := connected(t, noneSettings(t, sim.URL, "publishing_interval: 200ms"), points)
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatal(err)
	}
	if !waitFor(t.Context(), 60*time.Second, func() bool {
		d.mu.Lock()
		sub := d.sub
		d.mu.Unlock()
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return len(sub.pending[1]) >= 3
	}) {
		t.Fatalf("no notifications queued\n%s", logs.String())
	}
	d.drop(t.Context(), errors.New("the test dropped the session"))
	dropped := time.Now().UnixMilli()
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	before := 0
	for _, s := range samples {
		if s.Time < dropped {
			before++
		}
	}
	if before < 3 {
		t.Errorf("%d of the values received before the session dropped came through, want the 3 or more queued: %v", before, samples)
	}
	if d.Sessions() != 2 {
		t.Errorf("%d sessions, want 2", d.Sessions())
	}
}
