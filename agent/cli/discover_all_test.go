package cli

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/nicbind"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
)

// TestDiscoverAll sweeps a loopback "subnet" (127.0.0.0/30, the control
// address 127.0.0.2) holding a simulated Modbus gateway and a simulated
// BACnet device, with the OPC UA port closed: both are found, the one file
// loads as agent config and builds every driver, the Modbus device is
// bound to the control address, and only reads reached the simulators.
func TestDiscoverAll(t *testing.T) {
	mb := startMeter(t)
	bn, err := bacnetsim.Start(t.Context(), bacnetsim.Config{Local: bacnetsim.NewDevice(100, "AHU 1", 2, 1, 1, true)})
	if err != nil {
		t.Fatal(err)
	}
	defer bn.Close()
	opcuaPort := refusingPort(t)
	_, mbPort, _ := net.SplitHostPort(mb.Addr())

	out := filepath.Join(t.TempDir(), "discovered.yaml")
	stdout, stderr, err := run(t, t.Context(), "discover", "all",
		"--control-address", "127.0.0.2", "--subnet", "127.0.0.0/30",
		"--modbus-port", mbPort, "--opcua-port", strconv.Itoa(opcuaPort), "--units", "1-2",
		"--broadcast", bn.Addr().String(), "--bacnet-port", "0",
		"--timeout", "2s", "--wait", "1s", "--rate", "1000", "--out", out, "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var rep AllReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	if units := rep.Modbus[mb.Addr()]; len(units) != 2 || !units[0].Present || units[0].Profile != "schneider-pm5300" || units[1].Present {
		t.Errorf("modbus report for %s: %+v", mb.Addr(), rep.Modbus)
	}
	if len(rep.BACnet) != 1 || rep.BACnet[0].Instance != 100 {
		t.Errorf("bacnet report: %+v", rep.BACnet)
	}
	if len(rep.OPCUA) != 0 {
		t.Errorf("opcua report with the port closed: %+v", rep.OPCUA)
	}

	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// The file is the installer's starting point: with the uplink added and
	// the network section filled in, it is a valid agent config.
	full := "uplink: {url: \"https://127.0.0.1:8443\"}\n" +
		"network:\n  control: {interface: lo, address: 127.0.0.2}\n  uplink: {interface: up0}\n" +
		strings.Replace(string(b), "# network:", "# (network as discovered):", 1)
	cfg, err := config.Parse([]byte(full), filepath.Join(t.TempDir(), "agent.yaml"))
	if err != nil {
		t.Fatalf("the discovered config does not load: %v\n%s", err, b)
	}
	var drivers []string
	reg, err := Registry()
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Devices {
		d := &cfg.Devices[i]
		drivers = append(drivers, d.Driver)
		info, _ := reg.Lookup(d.Driver)
		drv, err := info.New(driver.Device{Name: d.Name, Settings: d.DeviceSettings(), DataDir: t.TempDir()})
		if err != nil {
			t.Errorf("device %s: the driver refuses the discovered settings: %v\n%s", d.Name, err, b)
			continue
		}
		drv.Close()
		if d.Driver == "modbus" && !strings.Contains(string(b), "local_address: 127.0.0.2") {
			t.Errorf("the Modbus device is not bound to the control address:\n%s", b)
		}
	}
	slices.Sort(drivers)
	if !slices.Equal(drivers, []string{"bacnet", "modbus"}) {
		t.Errorf("devices of drivers %v, want one bacnet and one modbus:\n%s", drivers, b)
	}
	if w := mb.Writes(); len(w) > 0 {
		t.Errorf("discovery sent Modbus writes: %v", w)
	}
	if w := bn.Writes(); len(w) > 0 {
		t.Errorf("discovery sent BACnet non-reads: %v", w)
	}
}

// startMeter starts a simulated Modbus power meter (unit 1) on loopback.
func startMeter(t *testing.T) *modbussim.Server {
	t.Helper()
	profile, err := modbus.LoadProfile("schneider-pm5300")
	if err != nil {
		t.Fatal(err)
	}
	mb, err := modbussim.Start(modbussim.Options{Addr: "127.0.0.1:0"}, map[byte]*modbussim.Unit{1: modbussim.FromProfile(profile)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mb.Close() })
	return mb
}

func TestSweepHosts(t *testing.T) {
	tests := []struct {
		prefix string
		self   string
		want   []string
		err    string
	}{
		{"192.168.10.0/30", "192.168.10.1", []string{"192.168.10.2"}, ""},
		{"192.168.10.0/29", "192.168.10.5", []string{"192.168.10.1", "192.168.10.2", "192.168.10.3", "192.168.10.4", "192.168.10.6"}, ""},
		{"10.0.0.8/31", "10.0.0.8", []string{"10.0.0.9"}, ""},
		{"10.0.0.0/22", "10.0.0.1", nil, ""},
		{"10.0.0.0/21", "10.0.0.1", nil, "at most a /22"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			hosts, err := sweepHosts(netip.MustParsePrefix(tt.prefix), netip.MustParseAddr(tt.self))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if len(hosts) != 1022-1 {
					t.Errorf("%d hosts, want 1021", len(hosts))
				}
				return
			}
			var got []string
			for _, h := range hosts {
				got = append(got, h.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("hosts = %v, want %v", got, tt.want)
			}
		})
	}
	if b := broadcastOf(netip.MustParsePrefix("192.168.10.0/24")); b.String() != "192.168.10.255" {
		t.Errorf("broadcast of /24 = %s", b)
	}
}

// refusingPort returns a loopback TCP port that refuses connections for
// the rest of the test: a socket bound to 127.0.0.1 on it and never
// listening, without SO_REUSEADDR, so the kernel gives the port to no other
// socket on that address meanwhile. (A listener closed again would free the
// port for anything binding 127.0.0.1:0, which the sweep would then find.)
func refusingPort(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

func TestDiscoverAllFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "--control-address"},
		{[]string{"--control-address", "127.0.0.2", "--subnet", "10.0.0.0/24"}, "--subnet"},
		{[]string{"--control-address", "127.0.0.2", "--subnet", "127.0.0.0/30", "--skip", "ftp"}, "--skip"},
		{[]string{"--control-address", "127.0.0.2", "--subnet", "127.0.0.0/30", "--rate", "0"}, "--rate"},
		{[]string{"--control-address", "127.0.0.2", "--subnet", "127.0.0.0/30", "--units", "0-300"}, "--units"},
	}
	for _, tt := range tests {
		if _, _, err := run(t, t.Context(), append([]string{"discover", "all"}, tt.args...)...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want one naming %s", tt.args, err, tt.want)
		}
	}
}

// TestDiscoverAllLooksUpNICOnce: the interface holding the control address
// is looked up once per sweep, not once per probe, and every probe of the
// sweep (here 2 ports × 5 hosts) still dials from the control address on
// that NIC; a lookup that fails is reported once and nothing is dialled.
func TestDiscoverAllLooksUpNICOnce(t *testing.T) {
	mb := startMeter(t)
	_, port, _ := net.SplitHostPort(mb.Addr())
	mbPort, _ := strconv.Atoi(port)
	// OPC UA's port is closed: its sweep dials every host and finds none.
	opcPort := refusingPort(t)

	tests := []struct {
		name       string
		skip       []string
		lookupErr  error
		wantLookup int
		wantModbus bool
		wantErr    string
	}{
		{name: "modbus and opcua swept", wantLookup: 1, wantModbus: true},
		{name: "modbus only", skip: []string{"opcua"}, wantLookup: 1, wantModbus: true},
		{name: "no tcp sweep", skip: []string{"modbus", "opcua"}, wantLookup: 0},
		{name: "lookup fails", lookupErr: errors.New("no interface has 127.0.0.2"), wantLookup: 1, wantErr: "binding the probes to the control NIC: no interface has 127.0.0.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			lookups := 0
			o := allOptions{
				control: netip.MustParseAddr("127.0.0.2"), subnet: netip.MustParsePrefix("127.0.0.0/29"),
				modbusPort: mbPort, opcuaPort: opcPort, units: []byte{1},
				// Far above a loopback answer: a bound on a hang, not a
				// figure a loaded machine under -race must beat.
				timeout: 2 * time.Second, rate: 1000, dataDir: t.TempDir(),
				skip: map[string]bool{"bacnet": true}, log: slog.New(slog.DiscardHandler), progress: io.Discard,
				nicOf: func(a netip.Addr) (string, error) {
					mu.Lock()
					lookups++
					mu.Unlock()
					if tt.lookupErr != nil {
						return "", tt.lookupErr
					}
					return nicbind.Owner(a)
				},
			}
			for _, s := range tt.skip {
				o.skip[s] = true
			}
			rep, _, err := discoverAll(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			if lookups != tt.wantLookup {
				t.Errorf("interface looked up %d times in one sweep, want %d", lookups, tt.wantLookup)
			}
			if _, found := rep.Modbus[mb.Addr()]; found != tt.wantModbus {
				t.Errorf("modbus device at %s found: %v, want %v (report %+v)", mb.Addr(), found, tt.wantModbus, rep)
			}
			errs := strings.Join(rep.Errors, "\n")
			if tt.wantErr == "" && errs != "" || !strings.Contains(errs, tt.wantErr) {
				t.Errorf("report errors %q, want %q", errs, tt.wantErr)
			}
			if tt.wantErr != "" && len(rep.Errors) != 1 {
				t.Errorf("lookup failure reported %d times, want once: %q", len(rep.Errors), rep.Errors)
			}
			if w := mb.Writes(); len(w) > 0 {
				t.Errorf("discovery sent Modbus writes: %v", w)
			}
		})
	}
}
