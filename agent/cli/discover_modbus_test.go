package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
)

// TestDiscoverModbus scans a simulated gateway: unit 1 a meter that
// identifies itself, unit 5 a controller without identification, the rest
// nothing. Only reads may reach the simulator, and the starter config it
// writes must build drivers.
func TestDiscoverModbus(t *testing.T) {
	prof, err := modbus.LoadProfile("schneider-pm5300")
	if err != nil {
		t.Fatal(err)
	}
	ctrl := modbussim.NewUnit().SetRegisters(modbussim.Holding, 0, 417)
	sim, err := modbussim.Start(modbussim.Options{}, map[byte]*modbussim.Unit{1: modbussim.FromProfile(prof), 5: ctrl})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	out := filepath.Join(t.TempDir(), "modbus.yaml")
	stdout, stderr, err := run(t, t.Context(), "discover", "modbus", "--host", sim.Addr(), "--units", "1-6", "--timeout", "200ms", "--rate", "500", "--out", out)
	if err != nil {
		t.Fatalf("discover modbus: %v\n%s", err, stderr)
	}
	for _, want := range []string{"unit 1: Schneider Electric", "(profile schneider-pm5300)", "unit 5:", "u5/hr/0/uint16 = 417", "2 of 6 unit ids answered"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "probed 6/6 unit ids") {
		t.Errorf("no progress on stderr:\n%s", stderr)
	}
	for _, r := range sim.Requests() {
		if !r.IsRead() {
			t.Errorf("discovery sent a non-read: %+v", r)
		}
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("writes reached the simulator: %v", w)
	}

	// The starter config: every device builds a modbus driver.
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Devices []struct {
			Name     string    `yaml:"name"`
			Driver   string    `yaml:"driver"`
			Interval string    `yaml:"interval"`
			Discover bool      `yaml:"discover"`
			Settings yaml.Node `yaml:"settings"`
			Points   []struct {
				Ref string `yaml:"ref"`
			} `yaml:"points"`
		} `yaml:"devices"`
	}
	if err := yaml.Load(data, &cfg, yaml.WithKnownFields()); err != nil {
		t.Fatalf("starter config: %v\n%s", err, data)
	}
	if len(cfg.Devices) != 2 || !cfg.Devices[0].Discover || len(cfg.Devices[1].Points) == 0 {
		t.Fatalf("starter config devices: %+v\n%s", cfg.Devices, data)
	}
	for _, d := range cfg.Devices {
		var points []driver.Point
		for i, p := range d.Points {
			points = append(points, driver.Point{ID: uint64(i + 1), Ref: p.Ref})
		}
		node := d.Settings
		if _, err := modbus.New(driver.Device{Name: d.Name, Settings: nodeSettings{&node}, Points: points}); err != nil {
			t.Errorf("starter device %s: %v", d.Name, err)
		}
	}

	stdout, _, err = run(t, t.Context(), "discover", "modbus", "--host", sim.Addr(), "--units", "1", "--json", "--rate", "500")
	if err != nil {
		t.Fatal(err)
	}
	var reports []modbus.UnitReport
	if err := json.Unmarshal([]byte(stdout), &reports); err != nil || len(reports) != 1 || reports[0].Profile != "schneider-pm5300" {
		t.Errorf("--json: %v %+v\n%s", err, reports, stdout)
	}
}

func TestDiscoverModbusFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--units", "1"}, `required flag(s) "host"`},
		{[]string{"--host", "127.0.0.1", "--units", "300"}, "--units"},
		{[]string{"--host", "127.0.0.1", "--units", "5-2"}, "--units"},
		{[]string{"--host", "127.0.0.1", "--rate", "0"}, "--rate"},
	}
	for _, tt := range tests {
		_, _, err := run(t, t.Context(), append([]string{"discover", "modbus"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}

// nodeSettings is driver.Settings over a YAML node, strict.
type nodeSettings struct{ n *yaml.Node }

func (s nodeSettings) Decode(v any) error { return s.n.Load(v, yaml.WithKnownFields()) }

// TestDiscoverModbusIgnoredUnitID: a device answering every unit id alike
// is listed once.
func TestDiscoverModbusIgnoredUnitID(t *testing.T) {
	u := modbussim.NewUnit().SetRegisters(modbussim.Holding, 0, 9)
	units := map[byte]*modbussim.Unit{}
	for id := range byte(5) {
		units[id+1] = u
	}
	sim, err := modbussim.Start(modbussim.Options{}, units)
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	out := filepath.Join(t.TempDir(), "modbus.yaml")
	stdout, stderr, err := run(t, t.Context(), "discover", "modbus", "--host", sim.Addr(), "--units", "1-5", "--rate", "500", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "ignores the unit id") || !strings.Contains(stdout, "unit 3: (answers exactly like unit 1)") {
		t.Errorf("output:\n%s", stdout)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "driver: modbus"); n != 1 {
		t.Errorf("starter config lists %d devices, want 1:\n%s", n, data)
	}
}
