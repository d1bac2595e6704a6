package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// opcuaReads are the services discovery may send.
var opcuaReads = []string{"GetEndpoints", "CreateSession", "ActivateSession", "CloseSession", "Browse", "BrowseNext", "Read"}

// TestDiscoverOPCUA browses the simulated building over a signed and
// encrypted session: endpoints and policies are listed, the variables come
// with data type and unit, only reads reach the server, and the starter
// config builds an opcua driver that reads every point.
func TestDiscoverOPCUA(t *testing.T) {
	sim, err := simopcua.Start(t.Context(), simopcua.Options{Secure: true, MaxNodesPerRead: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	pki := t.TempDir()
	out := filepath.Join(t.TempDir(), "opcua.yaml")
	stdout, stderr, err := run(t, t.Context(), "discover", "opcua", "--endpoint", sim.URL, "--pki-dir", pki, "--out", out, "--name", "sim")
	if err != nil {
		t.Fatalf("discover opcua: %v\n%s\n%s", err, stdout, stderr)
	}
	for _, want := range []string{"Basic256Sha256", "Aes256_Sha256_RsaPss", "SignAndEncrypt", "Building/AHU1/SupplyAirTemp [°C]", "Double", "Boolean", "variables under Objects"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "asking "+sim.URL) || !strings.Contains(stderr, "wrote a starter config") {
		t.Errorf("no progress on stderr:\n%s", stderr)
	}
	for _, s := range sim.Services() {
		if !slices.Contains(opcuaReads, s) {
			t.Errorf("discovery sent %s", s)
		}
	}

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Devices []struct {
			Name     string    `yaml:"name"`
			Driver   string    `yaml:"driver"`
			Interval string    `yaml:"interval"`
			Settings yaml.Node `yaml:"settings"`
			Points   []struct {
				Ref  string `yaml:"ref"`
				Name string `yaml:"name"`
				Unit string `yaml:"unit"`
			} `yaml:"points"`
		} `yaml:"devices"`
	}
	if err := yaml.Load(data, &cfg, yaml.WithKnownFields()); err != nil {
		t.Fatalf("starter config: %v\n%s", err, data)
	}
	if len(cfg.Devices) != 1 || cfg.Devices[0].Driver != "opcua" || len(cfg.Devices[0].Points) != len(sim.Variables()) {
		t.Fatalf("starter config: %+v (want %d points)\n%s", cfg.Devices, len(sim.Variables()), data)
	}
	dev := cfg.Devices[0]
	var points []driver.Point
	for i, p := range dev.Points {
		points = append(points, driver.Point{ID: uint64(i + 1), Ref: p.Ref, Name: p.Name, Unit: p.Unit})
	}
	node := dev.Settings
	d, err := opcua.New(driver.Device{Name: dev.Name, Settings: nodeSettings{&node}, Points: points})
	if err != nil {
		t.Fatalf("starter device: %v\n%s", err, data)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("connecting with the starter config: %v", err)
	}
	samples, err := d.Read(t.Context(), points)
	if err != nil || len(samples) != len(points) {
		t.Fatalf("reading the starter config's points: %d samples, %v", len(samples), err)
	}

	stdout, _, err = run(t, t.Context(), "discover", "opcua", "--endpoint", sim.URL, "--pki-dir", pki, "--start", "ns=1;s=Plant", "--depth", "1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var r opcua.Report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil || len(r.Nodes) != 3 || len(r.Endpoints) == 0 {
		t.Errorf("--json from Plant: %v %+v\n%s", err, r, stdout)
	}
}

func TestDiscoverOPCUAFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, `required flag(s) "endpoint"`},
		{[]string{"--endpoint", "http://x"}, "opc.tcp"},
		{[]string{"--endpoint", "opc.tcp://127.0.0.1:1", "--security-policy", "None"}, "None goes with None only"},
	}
	for _, tt := range tests {
		_, _, err := run(t, t.Context(), append([]string{"discover", "opcua", "--pki-dir", t.TempDir()}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}
