package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
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
// local device, two MS/TP devices and a dead one (it answers Who-Is, as a
// controller whose application crashed does, and never a read): discovery
// finishes within the per-device limit, reports the dead device with its
// error and leaves it out of the starter config, lists the live devices'
// objects and trend logs, writes a config the driver accepts, and only
// reads reach the simulator.
func TestDiscoverBACnet(t *testing.T) {
	local := bacnetsim.NewDevice(100, "AHU 1", 2, 1, 1, true)
	r1 := bacnetsim.NewDevice(501, "VAV 1", 1, 1, 0, false)
	r1.Network, r1.MAC, r1.MaxAPDU, r1.Segmentation = 5, []byte{1}, 128, bacnet.NoSegmentation
	r2 := bacnetsim.NewDevice(502, "VAV 2", 1, 0, 0, false)
	r2.Network, r2.MAC, r2.NoRPM = 5, []byte{2}, true
	dead := bacnetsim.NewDevice(503, "VAV 3", 1, 0, 0, false)
	dead.Network, dead.MAC, dead.Hung = 5, []byte{3}, true
	sim, err := bacnetsim.Start(t.Context(), bacnetsim.Config{Local: local, Routed: []*bacnetsim.Device{r1, r2, dead}})
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
			"--wait", "300ms", "--timeout", "300ms", "--per-device", "2s", "--rate", "1000", "--out", out}
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
			if err := json.Unmarshal(stdout.Bytes(), &reports); err != nil || len(reports) != 4 {
				t.Fatalf("json: %v, %d reports\n%s", err, len(reports), stdout.String())
			}
			if reports[0].Name != "AHU 1" || len(reports[0].Objects) != 4 || reports[0].Objects[0].TrendLog == nil || reports[0].Objects[0].Unit != "°C" {
				t.Errorf("device 100: %+v", reports[0])
			}
			if r := reports[3]; r.Instance != 503 || r.Err == "" || len(r.Objects) != 0 {
				t.Errorf("dead device: %+v, want instance 503 with an error and no objects", r)
			}
			continue
		}
		for _, want := range []string{"100", "501", "502", "analog-input:1", "AHU 1 AI-1", "trend-log:1", "VAV 2 AI-1", "4 devices answered"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("table lacks %q:\n%s", want, stdout.String())
			}
		}
		// The dead device's row, then its error on the next line.
		if _, after, ok := strings.Cut(stdout.String(), "\n503 "); !ok || !strings.Contains(strings.SplitN(after, "\n", 3)[1], "error:") {
			t.Errorf("table does not report device 503 with its error:\n%s", stdout.String())
		}
		if !strings.Contains(stderr.String(), "device 503: 0 objects, error:") {
			t.Errorf("progress does not report the dead device:\n%s", stderr.String())
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
	if err := yaml.Load(b, &doc); err != nil || len(doc.Devices) != 3 { // not the dead one
		t.Fatalf("starter config: %v\n%s", err, b)
	}
	if doc.Devices[0].Name != "ahu-1-100" || doc.Devices[0].Points[0]["trend_log"] != "trend-log:1" {
		t.Errorf("starter config:\n%s", b)
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("discovery sent non-reads: %q", w)
	}
}

// TestDiscoverBACnetDeadTarget asks one device directly (--address) that
// never answers anything: the command returns after --wait, says no
// device answered, and writes no device to the starter config.
func TestDiscoverBACnetDeadTarget(t *testing.T) {
	dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		_, _, err := dead.ReadFromUDPAddrPort(buf) // hears the Who-Is, answers nothing
		got <- err
	}()
	out := filepath.Join(t.TempDir(), "bacnet.yaml")
	root := NewRoot()
	var stdout, stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetArgs([]string{"discover", "bacnet", "--local-address", "127.0.0.1:0", "--address", dead.LocalAddr().String(),
		"--wait", "300ms", "--timeout", "300ms", "--per-device", "2s", "--out", out})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if ctx.Err() != nil {
		t.Fatal("discovery of a dead target hung until the test's deadline")
	}
	// A Who-Is sent on loopback is queued at the target by the time the
	// command returns, so the read ends at once if there was one; the
	// deadline ends it (and the select the test) if there was none.
	if err := dead.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("the dead target received no Who-Is (%v): the test proves nothing", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the dead target's reader neither heard a Who-Is nor timed out")
	}
	if !strings.Contains(stdout.String(), "0 devices answered") {
		t.Errorf("output does not say no device answered:\n%s", stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Devices []any `yaml:"devices"`
	}
	if err := yaml.Load(b, &doc); err != nil || len(doc.Devices) != 0 {
		t.Errorf("starter config for a dead target: %v\n%s", err, b)
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
