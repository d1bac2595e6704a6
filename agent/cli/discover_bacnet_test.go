package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"

	bacnetdrv "github.com/sightglass-bms/sightglass/agent/driver/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
)

// TestDiscoverBACnet runs the command against a simulated router with a
// local device, two MS/TP devices and a dead one: discovery finishes, lists
// the live devices' objects and trend logs, writes a config the driver
// accepts, and only reads reach the simulator.
func TestDiscoverBACnet(t *testing.T) {
	local := bacnetsim.NewDevice(100, "AHU 1", 2, 1, 1, true)
	r1 := bacnetsim.NewDevice(501, "VAV 1", 1, 1, 0, false)
	r1.Network, r1.MAC, r1.MaxAPDU, r1.Segmentation = 5, []byte{1}, 128, bacnet.NoSegmentation
	r2 := bacnetsim.NewDevice(502, "VAV 2", 1, 0, 0, false)
	r2.Network, r2.MAC, r2.NoRPM = 5, []byte{2}, true
	sim, err := bacnetsim.Start(t.Context(), bacnetsim.Config{Local: local, Routed: []*bacnetsim.Device{r1, r2}})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	out := filepath.Join(t.TempDir(), "bacnet.yaml")
	for _, asJSON := range []bool{false, true} {
		root := NewRoot()
		var stdout, stderr bytes.Buffer
		root.SetOut(&stdout)
		root.SetErr(&stderr)
		args := []string{"discover", "bacnet", "--local-address", "127.0.0.1:0", "--broadcast", sim.Addr().String(),
			"--wait", "300ms", "--timeout", "300ms", "--rate", "1000", "--out", out}
		if asJSON {
			args = append(args, "--json")
		}
		root.SetArgs(args)
		start := time.Now()
		if err := root.ExecuteContext(t.Context()); err != nil {
			t.Fatalf("%v\n%s", err, stderr.String())
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("discovery took %v", d)
		}
		if asJSON {
			var reports []bacnetdrv.DeviceReport
			if err := json.Unmarshal(stdout.Bytes(), &reports); err != nil || len(reports) != 3 {
				t.Fatalf("json: %v, %d reports\n%s", err, len(reports), stdout.String())
			}
			if reports[0].Name != "AHU 1" || len(reports[0].Objects) != 4 || reports[0].Objects[0].TrendLog == nil || reports[0].Objects[0].Unit != "°C" {
				t.Errorf("device 100: %+v", reports[0])
			}
			continue
		}
		for _, want := range []string{"100", "501", "502", "analog-input:1", "AHU 1 AI-1", "trend-log:1", "VAV 2 AI-1", "3 devices answered"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("table lacks %q:\n%s", want, stdout.String())
			}
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Devices []struct {
			Name     string    `yaml:"name"`
			Driver   string    `yaml:"driver"`
			Settings yaml.Node `yaml:"settings"`
			Points   []map[string]string
		} `yaml:"devices"`
	}
	if err := yaml.Load(b, &doc); err != nil || len(doc.Devices) != 3 {
		t.Fatalf("starter config: %v\n%s", err, b)
	}
	if doc.Devices[0].Name != "ahu-1-100" || doc.Devices[0].Points[0]["trend_log"] != "trend-log:1" {
		t.Errorf("starter config:\n%s", b)
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("discovery sent non-reads: %q", w)
	}
}

func TestDiscoverBACnetFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--broadcast", "127.255.255.255:47808"}, "--local-address"},
		{[]string{"--local-address", "127.0.0.1:0"}, "--broadcast"},
		{[]string{"--local-address", "127.0.0.1:0", "--broadcast", "127.255.255.255:47808", "--network", "70000"}, "--network"},
		{[]string{"--local-address", "127.0.0.1:0", "--broadcast", "127.255.255.255:47808", "--rate", "0"}, "--rate"},
	}
	for _, tt := range tests {
		root := NewRoot()
		root.SetOut(&bytes.Buffer{})
		root.SetErr(&bytes.Buffer{})
		root.SetArgs(append([]string{"discover", "bacnet"}, tt.args...))
		if err := root.Execute(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want one naming %s", tt.args, err, tt.want)
		}
	}
}
