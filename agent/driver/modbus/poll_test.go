package modbus_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/agent/poll"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

type countSink struct{ n atomic.Int64 }

func (s *countSink) Append(_ context.Context, samples []telemetry.Sample) error {
	s.n.Add(int64(len(samples)))
	return nil
}

// TestDeadDevicesDoNotSlowOthers polls a live meter beside a device that
// never answers and one that refuses connections, through the agent's
// scheduler: the live one keeps being read while the silent one's first
// read is still waiting for an answer, and shutdown does not wait for it.
//
// Nothing here depends on how fast the machine is. The silent device's
// timeouts are longer than the test, so its read is in flight throughout:
// were the live device's reads held behind it, the live device would never
// reach its reads and the test would fail at its deadline. The live device
// reads its point every 50ms but may take 30s over a read (a loaded CI
// machine under -race can stall one for more than a short interval, which
// is a slow read, not a failure).
func TestDeadDevicesDoNotSlowOthers(t *testing.T) {
	live := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	silent := startSim(t, modbussim.Options{Fault: func(modbussim.Request) modbussim.Fault { return modbussim.Silent }}, map[byte]*modbussim.Unit{1: handMap()})
	gone := startSim(t, modbussim.Options{}, nil)
	goneAddr := gone.Addr()
	gone.Close()

	const hang = time.Hour // longer than any run of this test
	mk := func(name, addr string, id uint64, timeout time.Duration) poll.Device {
		p := point(id, "hr/0/float32", "")
		p.Interval = 50 * time.Millisecond
		settings := fmt.Sprintf("host: %s\nrequest_timeout: %s", addr, timeout)
		d, err := modbus.New(driver.Device{Name: name, Settings: yamlSettings(settings), Points: []driver.Point{p}, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return poll.Device{Name: name, Driver: d, Points: []driver.Point{p}, Interval: hang, Timeout: timeout}
	}
	sink := &countSink{}
	s, err := poll.New([]poll.Device{mk("live", live.Addr(), 1, 30*time.Second), mk("silent", silent.Addr(), 2, hang), mk("gone", goneAddr, 3, 30*time.Second)}, sink,
		poll.Options{BackoffBase: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	stats := func() map[string]poll.DeviceStats {
		out := map[string]poll.DeviceStats{}
		for _, st := range s.Stats() {
			out[st.Name] = st
		}
		return out
	}
	// Cancel rather than a deadline: a deadline would also end the read
	// in flight as a timeout, a hair before the scheduler sees it.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	const wantReads = 10
	deadline := time.Now().Add(60 * time.Second) // only bounds a hang
	for {
		st := stats()
		if st["live"].Reads >= wantReads && st["gone"].Failures >= 2 {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-ran
			t.Fatalf("after 60s: live device %d reads (want %d), refusing device %d failures (want 2): a dead device held the others up",
				st["live"].Reads, wantReads, st["gone"].Failures)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-ran:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second): // the silent read's own timeout is an hour
		t.Fatal("Run did not return within 30s of cancel: the silent device's read in flight held the scheduler")
	}
	st := stats()
	if l := st["live"]; l.Failures > 0 || !l.Up {
		t.Errorf("live device: %d reads, %d failures, up %v; want no failure", l.Reads, l.Failures, l.Up)
	}
	if sl := st["silent"]; sl.Up || sl.Reads > 0 {
		t.Errorf("silent device: up %v with %d reads", sl.Up, sl.Reads)
	}
	if g := st["gone"]; g.Up || g.Reads > 0 {
		t.Errorf("refusing device: up %v with %d reads", g.Up, g.Reads)
	}
	if n := sink.n.Load(); n < wantReads {
		t.Errorf("%d samples stored for %d reads", n, wantReads)
	}
}
