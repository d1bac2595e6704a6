package modbus_test

import (
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestMisbehavingDevice: every broken answer is a clear error, never a
// panic, and the next read on a well-behaved answer works again.
func TestMisbehavingDevice(t *testing.T) {
	tests := []struct {
		fault   modbussim.Fault
		want    string
		connErr bool // the error wraps ErrConnLost
		busy    bool
	}{
		{modbussim.CloseBeforeAnswer, "closed the connection before answering", true, false},
		{modbussim.CloseMidAnswer, "cut off", true, false},
		{modbussim.WrongTransaction, "transaction id", true, false},
		{modbussim.BadHeaderLength, "answer length 0", true, false},
		{modbussim.WrongLength, "data bytes, want", false, false},
		{modbussim.Busy, "busy", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			var misbehave atomic.Bool
			sim := startSim(t, modbussim.Options{Fault: func(r modbussim.Request) modbussim.Fault {
				if misbehave.Load() {
					return tt.fault
				}
				return modbussim.NoFault
			}}, map[byte]*modbussim.Unit{1: handMap()})
			p := point(1, "hr/0/float32", "")
			d := newDriver(t, sim.Addr(), "request_timeout: 1s", p)
			misbehave.Store(true)
			_, err := d.Read(t.Context(), []driver.Point{p})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to say %q", err, tt.want)
			}
			if errors.Is(err, driver.ErrConnLost) != tt.connErr || errors.Is(err, driver.ErrBusy) != tt.busy {
				t.Errorf("err %v: ErrConnLost %v (want %v), ErrBusy %v (want %v)", err,
					errors.Is(err, driver.ErrConnLost), tt.connErr, errors.Is(err, driver.ErrBusy), tt.busy)
			}
			misbehave.Store(false)
			// The transport dials again after a broken connection.
			samples, err := d.Read(t.Context(), []driver.Point{p})
			if err != nil || samples[0].Value != 12.5 {
				t.Fatalf("read after the fault: %+v, %v", samples, err)
			}
		})
	}
}

// TestUnitsBehindGateway: a silent unit and a missing unit cost only
// their own points, and a device failure exception only its block's.
func TestUnitsBehindGateway(t *testing.T) {
	sim := startSim(t, modbussim.Options{Fault: func(r modbussim.Request) modbussim.Fault {
		switch {
		case r.Unit == 3:
			return modbussim.Silent
		case r.Unit == 1 && r.Function == 4:
			return modbussim.DeviceFailure
		}
		return modbussim.NoFault
	}}, map[byte]*modbussim.Unit{1: handMap(), 2: handMap(), 3: handMap()})
	points := []driver.Point{
		point(1, "u1/hr/0/float32", ""),
		point(2, "u2/hr/0/float32", ""),
		point(3, "u3/hr/0/float32", ""),
		point(4, "u3/hr/10", ""),
		point(5, "u4/hr/0", ""), // no such unit: the gateway answers 11
		point(6, "u1/ir/9", ""),
	}
	d := newDriver(t, sim.Addr(), "request_timeout: 1s", points...)
	// The units' rest follows this clock: a loaded machine taking longer
	// between the reads than the 2s a silent unit first rests must not
	// wake it up early.
	clock := &fakeClock{now: time.Now()}
	modbus.SetClock(d, clock.Now)
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	want := []telemetry.Status{telemetry.StatusOK, telemetry.StatusOK, telemetry.StatusCommFailure,
		telemetry.StatusCommFailure, telemetry.StatusCommFailure, telemetry.StatusFault}
	for i, s := range samples {
		if s.Status != want[i] {
			t.Errorf("%s: status %v, want %v", points[i].Ref, s.Status, want[i])
		}
	}
	// The silent unit was asked once: its second block was skipped.
	n := 0
	for _, r := range sim.Requests() {
		if r.Unit == 3 {
			n++
		}
	}
	if n != 1 {
		t.Errorf("silent unit asked %d times in one read, want 1", n)
	}

	// The next poll lets the silent and the missing unit rest: the
	// others are read at once, without waiting for a timeout (which only
	// a request to the silent unit could cost, and none is sent).
	sim.ResetRequests()
	samples, err = d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range samples {
		if s.Status != want[i] {
			t.Errorf("second read %s: status %v, want %v", points[i].Ref, s.Status, want[i])
		}
	}
	for _, r := range sim.Requests() {
		if r.Unit == 3 || r.Unit == 4 {
			t.Errorf("resting unit %d asked: %+v", r.Unit, r)
		}
	}

	// When every unit of a read rests, it is asked anyway.
	sim.ResetRequests()
	only := []driver.Point{points[2]}
	if _, err := d.Read(t.Context(), only); err == nil {
		t.Error("read of the silent unit alone succeeded")
	}
	if len(sim.Requests()) != 1 {
		t.Errorf("read of a resting unit alone sent %d requests, want 1", len(sim.Requests()))
	}

	// The missing unit has rested its 2s (the silent one, asked again
	// just now, rests 4s from then): it is asked again with the others.
	clock.Advance(3 * time.Second)
	sim.ResetRequests()
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatal(err)
	}
	asked := map[byte]int{}
	for _, r := range sim.Requests() {
		asked[r.Unit]++
	}
	if asked[4] != 1 || asked[3] != 0 {
		t.Errorf("after 3s units were asked %v; want unit 4 once more (rested 2s) and unit 3 not (rests 4s)", asked)
	}
}

// TestLearnsMaxBlock: a controller refusing reads over 40 registers is
// learned from once; later reads fit its limit at the first try.
func TestLearnsMaxBlock(t *testing.T) {
	u := modbussim.NewUnit().MaxRead(40)
	var points []driver.Point
	for i := range 100 {
		u.SetRegisters(modbussim.Holding, uint16(i), uint16(i))
		points = append(points, point(uint64(i+1), "hr/"+strconv.Itoa(i), ""))
	}
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: u})
	d := newDriver(t, sim.Addr(), "", points...)
	// The limit is found by halving within the first read, then probed
	// between the longest read that worked and the shortest refused.
	for round := range 8 {
		sim.ResetRequests()
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range samples {
			if s.Status != telemetry.StatusOK || s.Value != float64(i) {
				t.Fatalf("round %d: %s = %+v", round, points[i].Ref, s)
			}
		}
		reqs := sim.Requests()
		for _, r := range reqs {
			if round > 5 && r.Quantity > 40 {
				t.Errorf("round %d asked for %d registers after learning the limit 40", round, r.Quantity)
			}
		}
		if round > 5 && len(reqs) > 3 {
			// 100 registers in reads of at most 40: 3 at best.
			t.Errorf("round %d: %d requests, want 3 at most", round, len(reqs))
		}
	}
}

// TestIdleConnectionDropped: a gateway that closed the idle connection
// costs no read; the driver dials again and asks once more.
func TestIdleConnectionDropped(t *testing.T) {
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	p := point(1, "hr/0/float32", "")
	d := newDriver(t, sim.Addr(), "", p)
	for i := range 3 {
		sim.DropConnections()
		time.Sleep(20 * time.Millisecond) // let the close reach our side
		samples, err := d.Read(t.Context(), []driver.Point{p})
		if err != nil || samples[0].Value != 12.5 {
			t.Fatalf("read %d after the device dropped the connection: %+v, %v", i, samples, err)
		}
	}
}

// TestPause spaces requests for devices that drop them back to back.
func TestPause(t *testing.T) {
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	points := []driver.Point{point(1, "hr/0", ""), point(2, "ir/9", ""), point(3, "coil/0", "")}
	d := newDriver(t, sim.Addr(), "pause: 60ms", points...)
	start := time.Now()
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 120*time.Millisecond {
		t.Errorf("three requests with pause 60ms took %s", el)
	}
}
