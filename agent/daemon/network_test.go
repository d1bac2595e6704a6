package daemon

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/config"
	bacnetdrv "github.com/sightglass-bms/sightglass/agent/driver/bacnet"
	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/anon"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// networkConfig is an agent config with a network section whose control
// address is control (loopback in these tests) and the given devices.
func networkConfig(t *testing.T, control, devices string) *config.Config {
	t.Helper()
	return loadConfigWith(t, "network:\n  control: {interface: lo, address: "+control+"}\n  uplink: {interface: up0}\n", devices)
}

// settingsRecorder is a driver that keeps the settings it was built with.
type settingsRecorder struct {
	fakeDriver
	settings map[string]any
}

// TestBuildDevicesBindsToControlAddress checks that with a network
// section every control-side driver is built with the control address as
// its local_address when the device sets none, and keeps its own when it
// does. The recording drivers carry the real drivers' names, so a renamed
// driver that config no longer recognises fails here.
func TestBuildDevicesBindsToControlAddress(t *testing.T) {
	built := map[string]*settingsRecorder{}
	record := func(name string) driver.Info {
		return driver.Info{Name: name, New: func(dev driver.Device) (driver.Driver, error) {
			r := &settingsRecorder{}
			if err := dev.Settings.Decode(&r.settings); err != nil {
				return nil, err
			}
			built[dev.Name] = r
			return r, nil
		}}
	}
	reg, err := driver.NewRegistry(record(modbus.Name), record(opcua.Name), record(bacnetdrv.Name))
	if err != nil {
		t.Fatal(err)
	}
	cfg := networkConfig(t, "127.0.0.2", `  - name: meter
    driver: modbus
    settings: {host: 127.0.0.1}
    points: [{ref: hr/0}]
  - name: scada
    driver: opcua
    settings: {endpoint: "opc.tcp://127.0.0.1:4840"}
    points: [{ref: "ns=2;s=X"}]
  - name: vav
    driver: bacnet
    settings: {device_instance: 7, address: 127.0.0.1}
    points: [{ref: analog-input:0}]
  - name: own
    driver: bacnet
    settings: {device_instance: 8, address: 127.0.0.1, local_address: "127.0.0.2:47809"}
    points: [{ref: analog-input:0}]
`)
	var s anon.Secret
	devs, err := BuildDevices(t.Context(), cfg, reg, anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 4 {
		t.Fatalf("built %d devices, want 4", len(devs))
	}
	for name, want := range map[string]string{"meter": "127.0.0.2", "scada": "127.0.0.2", "vav": "127.0.0.2:47808", "own": "127.0.0.2:47809"} {
		r := built[name]
		if r == nil {
			t.Errorf("device %s was not built", name)
			continue
		}
		if got := r.settings["local_address"]; got != want {
			t.Errorf("device %s built with local_address %v, want %s (settings %v)", name, got, want, r.settings)
		}
	}
}

// TestModbusDialsFromControlAddress builds the real Modbus driver from a
// config whose device has no local_address and checks on the wire that its
// connection comes from the control address (127.0.0.2 here; the kernel
// would pick 127.0.0.1 for a loopback destination if nothing bound it).
func TestModbusDialsFromControlAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	from := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		from <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	reg, err := driver.NewRegistry(modbus.Info())
	if err != nil {
		t.Fatal(err)
	}
	cfg := networkConfig(t, "127.0.0.2", "  - name: meter\n    driver: modbus\n    settings: {host: \""+ln.Addr().String()+"\"}\n    points: [{ref: hr/0}]\n")
	var s anon.Secret
	devs, err := BuildDevices(t.Context(), cfg, reg, anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer devs[0].Driver.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := devs[0].Driver.Connect(ctx); err != nil {
		t.Fatalf("connecting (binding 127.0.0.2 to lo needs Linux 5.7 or CAP_NET_RAW): %v", err)
	}
	select {
	case got := <-from:
		if got != "127.0.0.2" {
			t.Errorf("the Modbus connection came from %s, want the control address 127.0.0.2", got)
		}
	case <-ctx.Done():
		t.Fatal("the device saw no connection")
	}
}
