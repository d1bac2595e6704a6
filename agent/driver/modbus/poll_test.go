package modbus_test

import (
	"context"
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
// scheduler: the live one keeps its pace.
func TestDeadDevicesDoNotSlowOthers(t *testing.T) {
	live := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	silent := startSim(t, modbussim.Options{Fault: func(modbussim.Request) modbussim.Fault { return modbussim.Silent }}, map[byte]*modbussim.Unit{1: handMap()})
	gone := startSim(t, modbussim.Options{}, nil)
	goneAddr := gone.Addr()
	gone.Close()

	mk := func(name, addr string, id uint64) poll.Device {
		p := point(id, "hr/0/float32", "")
		d, err := modbus.New(driver.Device{Name: name, Settings: yamlSettings("host: " + addr + "\nrequest_timeout: 2s"), Points: []driver.Point{p}, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return poll.Device{Name: name, Driver: d, Points: []driver.Point{p}, Interval: 200 * time.Millisecond, Timeout: 200 * time.Millisecond}
	}
	sink := &countSink{}
	s, err := poll.New([]poll.Device{mk("live", live.Addr(), 1), mk("silent", silent.Addr(), 2), mk("gone", goneAddr, 3)}, sink,
		poll.Options{BackoffBase: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Cancel rather than a deadline: a deadline would also end the read
	// in flight as a timeout, a hair before the scheduler sees it.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	time.AfterFunc(2*time.Second, cancel)
	start := time.Now()
	if err := s.Run(ctx); err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("shutdown took %s: a dead device held the scheduler", el)
	}
	for _, st := range s.Stats() {
		switch st.Name {
		case "live":
			// 2 s at 200 ms: about 10 reads.
			if st.Reads < 7 || st.Failures > 0 {
				t.Errorf("live device: %d reads, %d failures; want about 10 and none", st.Reads, st.Failures)
			}
		default:
			if st.Up || st.Failures == 0 {
				t.Errorf("%s: up %v with %d failures", st.Name, st.Up, st.Failures)
			}
		}
	}
	if sink.n.Load() < 7 {
		t.Errorf("%d samples stored", sink.n.Load())
	}
}
