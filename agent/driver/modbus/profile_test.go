package modbus_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestBuiltinProfiles loads every shipped profile, serves it from a strict
// simulator (unmapped registers answer exception 2) and polls it through
// Discover, as `discover: true` does: every point reads OK, with the value
// the simulator encoded.
func TestBuiltinProfiles(t *testing.T) {
	names := modbus.BuiltinProfiles()
	if len(names) < 5 {
		t.Fatalf("%d built-in profiles, want at least 5: %v", len(names), names)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			p, err := modbus.LoadProfile(name)
			if err != nil {
				t.Fatal(err)
			}
			if p.Source == "" || p.Vendor == "" || len(p.Points) < 5 {
				t.Errorf("profile %s: source %q vendor %q, %d points", name, p.Source, p.Vendor, len(p.Points))
			}
			// The simulator's values follow the time since FromProfile:
			// taken just before it, el is at most one read's duration past
			// the time of the values read, however long a loaded machine
			// takes to start the simulator and discover.
			start := time.Now()
			sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{7: modbussim.FromProfile(p)})
			// No profile named: Discover picks it from the identification.
			probe := newDriver(t, sim.Addr(), "unit: 7")
			found, err := probe.Discover(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			points := make([]driver.Point, len(found))
			for i, f := range found {
				if !strings.HasPrefix(f.Ref, "u7/") {
					t.Errorf("discovered ref %q does not name unit 7", f.Ref)
				}
				f.ID = uint64(i + 1)
				points[i] = f
			}
			d := newDriver(t, sim.Addr(), "unit: 7", points...)
			for round := range 2 {
				sim.ResetRequests()
				samples, err := d.Read(t.Context(), points)
				if err != nil {
					t.Fatal(err)
				}
				el := time.Since(start).Seconds()
				for i, s := range samples {
					want := modbussim.Value(p.Points[i], el)
					tol := 0.02*math.Abs(want) + 2*math.Abs(p.Points[i].Scale) + 1e-6
					if s.Status != telemetry.StatusOK || math.Abs(s.Value-want) > tol {
						t.Errorf("round %d %s (%s): %+v, want about %v", round, points[i].Ref, points[i].Name, s, want)
					}
				}
				if round == 1 {
					t.Logf("%s: %d points in %d requests", name, len(points), len(sim.Requests()))
				}
			}
		})
	}
}

func TestParseProfileErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"no source", "points: [{ref: hr/0}]", "source: required"},
		{"unknown key", "source: x\nbogus: 1\npoints: [{ref: hr/0}]", "bogus"},
		{"bad point", "source: x\npoints:\n  - {ref: hr/0}\n  - {ref: hr/1/float16}", `point "hr/1/float16" (line 4): unknown type`},
		{"unit in ref", "source: x\npoints: [{ref: u2/hr/0}]", "name no unit"},
		{"duplicate", "source: x\npoints:\n  - {ref: hr/0}\n  - {ref: 40001}", "same register and type as the point at line 3"},
		{"point key", "source: x\npoints: [{ref: hr/0, scael: 2}]", "scael"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := modbus.ParseProfile("x", []byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestProfileOrderOverride: a device whose firmware swaps words sets
// order on the device, and the profile's floats follow it.
func TestProfileOrderOverride(t *testing.T) {
	p, err := modbus.LoadProfile("eastron-sdm630")
	if err != nil {
		t.Fatal(err)
	}
	// 230.5 as float32 is 0x43668000: the device sends the low word first.
	u := modbussim.NewUnit().SetRegisters(modbussim.Input, 0, 0x8000, 0x4366)
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: u})
	d := newDriver(t, sim.Addr(), "profile: eastron-sdm630\norder: CDAB")
	found, err := d.Discover(t.Context())
	if err != nil || len(found) != len(p.Points) {
		t.Fatalf("Discover: %d points, %v", len(found), err)
	}
	pt := found[0]
	if pt.Kind != "float32" {
		t.Errorf("discovered %s has kind %q, want its data type float32", pt.Ref, pt.Kind)
	}
	pt.ID = 1
	// The polling instance gets the discovered point, as the agent does.
	d2 := newDriver(t, sim.Addr(), "profile: eastron-sdm630\norder: CDAB", pt)
	samples, err := d2.Read(t.Context(), []driver.Point{pt})
	if err != nil || samples[0].Value != 230.5 {
		t.Errorf("%s with order CDAB: %+v, %v; want 230.5", pt.Ref, samples, err)
	}
}

// TestDiscoverSilentIdentification: a device that never answers 43/14
// still gets its configured profile's points.
func TestDiscoverSilentIdentification(t *testing.T) {
	sim := startSim(t, modbussim.Options{Fault: func(r modbussim.Request) modbussim.Fault {
		if r.Function == 43 {
			return modbussim.Silent
		}
		return modbussim.NoFault
	}}, map[byte]*modbussim.Unit{1: handMap()})
	d := newDriver(t, sim.Addr(), "profile: regin-rcfd230c\nrequest_timeout: 200ms")
	found, err := d.Discover(t.Context())
	if err != nil || len(found) != 10 {
		t.Errorf("Discover: %d points, %v; want the profile's 10", len(found), err)
	}
	// Without a profile there is nothing to go on.
	d2 := newDriver(t, sim.Addr(), "request_timeout: 200ms")
	if _, err := d2.Discover(t.Context()); err == nil {
		t.Error("Discover without a profile or identification succeeded")
	}
}
