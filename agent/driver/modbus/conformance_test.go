package modbus_test

import (
	"testing"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
)

// TestConformance runs the SDK's kit against a recording simulator that
// serves a meter profile on unit 1 and a hand-made map on unit 2.
func TestConformance(t *testing.T) {
	var sim *modbussim.Server
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			prof, err := modbus.LoadProfile("eastron-sdm630")
			if err != nil {
				t.Fatal(err)
			}
			u2 := modbussim.NewUnit().
				SetRegisters(modbussim.Holding, 0, 0x4148, 0x0000, 7, 0xffff).
				SetBits(modbussim.Coils, 0, true, false, true)
			sim = startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: modbussim.FromProfile(prof), 2: u2})
			points := []driver.Point{
				point(1, "u1/ir/0/float32", ""),
				point(2, "30007/float32", ""),
				point(3, "u2/hr/0/float32", ""),
				point(4, "u2/hr/2/int16", "scale: 0.5"),
				point(5, "u2/hr/3/bit15", ""),
				point(6, "u2/coil/2", ""),
			}
			d, err := modbus.New(driver.Device{Name: "sim", Settings: yamlSettings("host: " + sim.Addr() + "\nprofile: eastron-sdm630"), Points: points, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			return d, points
		},
		Writes: func() []string { return sim.Writes() },
	})
}
