package modbus_test

import (
	"fmt"
	"testing"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/anon"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestAgentBuildsProfileDevice drives the agent's own start-up path:
// config parsing, discovery through a throwaway driver, merging with a
// renamed point, and the polling driver built from the discovered points
// (their settings carried across), against a strict simulator. Every
// point reads OK with the profile's scale applied, and only reads arrive.
// Both with the profile named and chosen by the device's identification
// (renaming a point needs the profile named: the agent's merge replaces a
// discovered point, settings and all, by the configured one).
func TestAgentBuildsProfileDevice(t *testing.T) {
	t.Run("named", func(t *testing.T) {
		testAgentBuildsProfileDevice(t, "profile: danfoss-fc102", "\n    points:\n      - {ref: u2/hr/16129/uint16, name: supply fan frequency}")
	})
	t.Run("identified", func(t *testing.T) { testAgentBuildsProfileDevice(t, "", "") })
}

func testAgentBuildsProfileDevice(t *testing.T, profile, points string) {
	prof, err := modbus.LoadProfile("danfoss-fc102")
	if err != nil {
		t.Fatal(err)
	}
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{2: modbussim.FromProfile(prof)})
	cfg, err := config.Parse([]byte(fmt.Sprintf(`site: {name: test}
data_dir: %s
uplink: {url: "https://127.0.0.1:1"}
devices:
  - name: fan
    driver: modbus
    interval: 1s
    discover: true
    settings: {host: %q, unit: 2, %s}%s
`, t.TempDir(), sim.Addr(), profile, points)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := driver.NewRegistry(modbus.Info())
	if err != nil {
		t.Fatal(err)
	}
	var secret anon.Secret
	devs, err := daemon.BuildDevices(t.Context(), cfg, reg, anon.NewRegistry(anon.New(secret)), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	dev := devs[0]
	defer dev.Driver.Close()
	if len(dev.Points) != len(prof.Points) {
		t.Fatalf("%d points, want the profile's %d (the renamed one merged)", len(dev.Points), len(prof.Points))
	}
	if err := dev.Driver.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	samples, err := dev.Driver.Read(t.Context(), dev.Points)
	if err != nil {
		t.Fatal(err)
	}
	byRef := map[string]modbus.ProfilePoint{}
	for _, p := range prof.Points {
		byRef["u2/"+p.Ref] = p
	}
	for i, s := range samples {
		p := dev.Points[i]
		pp := byRef[p.Ref]
		if s.Status != telemetry.StatusOK || s.PointID != p.ID {
			t.Errorf("%s (%s): %+v", p.Ref, p.Name, s)
		}
		// The simulator encodes with the profile's scale: a value off by
		// a factor of ten or a hundred means the settings were lost.
		if want := modbussim.Value(pp, 0); s.Value < want*0.5 || s.Value > want*1.5 {
			t.Errorf("%s (%s) = %v, want about %v", p.Ref, p.Name, s.Value, want)
		}
		if points != "" && p.Ref == "u2/hr/16129/uint16" && p.Name != "supply fan frequency" {
			t.Errorf("configured name lost: %q", p.Name)
		}
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("writes reached the simulator: %v", w)
	}
}
