package config

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// networkConfig is a minimal valid config around a network section and one
// device's settings.
func networkConfig(network, uplinkExtra, settings string) string {
	return `uplink:
  url: https://127.0.0.1:8443
` + uplinkExtra + network + `devices:
  - name: boiler
    driver: modbus
    settings:
` + settings + `    points:
      - {ref: "40001"}
`
}

const goodNetwork = `network:
  control:
    interface: eth0
    address: 192.168.10.5
  uplink:
    interface: eth1
`

func TestNetworkGood(t *testing.T) {
	c, err := Parse([]byte(networkConfig(goodNetwork, "", "      host: 192.168.10.40\n      local_address: 192.168.10.5\n")), "")
	if err != nil {
		t.Fatal(err)
	}
	n := c.Network
	if !n.Configured() || n.Line != 4 || n.Control.Line != 5 || n.Uplink.Line != 8 {
		t.Errorf("lines: network %d control %d uplink %d", n.Line, n.Control.Line, n.Uplink.Line)
	}
	if n.Control.Interface != "eth0" || n.Control.Address != "192.168.10.5" || n.Uplink.Interface != "eth1" || n.AllowForwarding {
		t.Errorf("network = %+v", n)
	}
}

func TestNetworkAbsent(t *testing.T) {
	c, err := Parse([]byte(networkConfig("", "", "      host: 10.0.0.1\n      local_address: 10.9.9.9\n")), "")
	if err != nil {
		t.Fatalf("a config without a network section must stay valid (demo, laptop): %v", err)
	}
	if c.Network.Configured() {
		t.Error("Configured() = true without a network section")
	}
}

func TestNetworkBad(t *testing.T) {
	tests := []struct {
		name                      string
		network, uplink, settings string
		want                      []string
	}{
		{"unknown key", "network:\n  control: {interface: eth0, address: 10.0.0.5, mask: 24}\n  uplink: {interface: eth1}\n", "", "      host: 10.0.0.1\n",
			[]string{"line 4", "mask"}},
		{"missing interfaces", "network:\n  allow_forwarding: true\n", "", "      host: 10.0.0.1\n",
			[]string{"network (line 4)", "control.interface (line 4)", "uplink.interface (line 4)", "control.address (line 4): required"}},
		{"same interface", "network:\n  control: {interface: eth0, address: 10.0.0.5}\n  uplink: {interface: eth0}\n", "", "      host: 10.0.0.1\n",
			[]string{"line 5", "both \"eth0\"", "two NICs"}},
		{"bad interface name", "network:\n  control: {interface: eth/0, address: 10.0.0.5}\n  uplink: {interface: averyveryverylongname}\n", "", "      host: 10.0.0.1\n",
			[]string{"control.interface (line 4)", "\"eth/0\"", "uplink.interface (line 5)"}},
		{"address with prefix", "network:\n  control: {interface: eth0, address: 10.0.0.5/24}\n  uplink: {interface: eth1}\n", "", "      host: 10.0.0.1\n",
			[]string{"control.address (line 4)", "not an IP address"}},
		{"unspecified address", "network:\n  control: {interface: eth0, address: 0.0.0.0}\n  uplink: {interface: eth1}\n", "", "      host: 10.0.0.1\n",
			[]string{"control.address (line 4)", "binds every NIC"}},
		{"uplink dials from control", goodNetwork, "  local_address: 192.168.10.5\n", "      host: 10.0.0.1\n",
			[]string{"uplink.local_address", "control NIC's address"}},
		{"device binds elsewhere", goodNetwork, "", "      host: 192.168.10.40\n      local_address: 172.16.0.9\n",
			[]string{"device \"boiler\" (line 10)", "settings.local_address (line 14)", "172.16.0.9", "network.control.address, line 5"}},
		{"device binds elsewhere with port", goodNetwork, "", "      local_address: 172.16.0.9:47808\n",
			[]string{"settings.local_address (line 13)", "172.16.0.9:47808"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(networkConfig(tt.network, tt.uplink, tt.settings)), "")
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestNetworkDeviceOnControlAddress(t *testing.T) {
	// The same address with a port (BACnet's IP:port) is on the NIC.
	if _, err := Parse([]byte(networkConfig(goodNetwork, "  local_address: 203.0.113.7\n", "      local_address: 192.168.10.5:47808\n")), ""); err != nil {
		t.Fatal(err)
	}
}

// devicesConfig is a config with goodNetwork (when network is true) and
// the given devices.
func devicesConfig(network bool, devices string) string {
	s := "uplink:\n  url: https://127.0.0.1:8443\n"
	if network {
		s += goodNetwork
	}
	return s + "devices:\n" + devices
}

func TestNetworkFillsLocalAddress(t *testing.T) {
	devices := `  - name: meter
    driver: modbus
    settings: {host: 192.168.10.40}
    points: [{ref: hr/0}]
  - name: scada
    driver: opcua
    settings: {endpoint: "opc.tcp://192.168.10.41:4840"}
    points: [{ref: "ns=2;s=X"}]
  - name: vav
    driver: bacnet
    settings: {device_instance: 7, address: 192.168.10.42}
    points: [{ref: analog-input:0}]
  - name: bare
    driver: modbus
    points: [{ref: hr/0}]
  - name: empty
    driver: opcua
    settings: &empty {endpoint: "opc.tcp://192.168.10.43:4840", local_address: ""}
    points: [{ref: "ns=2;s=X"}]
  - name: own
    driver: bacnet
    settings: &own {device_instance: 8, address: 192.168.10.44, local_address: "192.168.10.5:47809"}
    points: [{ref: analog-input:0}]
  - name: merged
    driver: bacnet
    settings: {<<: *own, device_instance: 9}
    points: [{ref: analog-input:0}]
  - name: aliased
    driver: bacnet
    settings: *own
    points: [{ref: analog-input:0}]
  - name: merged-empty
    driver: opcua
    settings: {<<: *empty, endpoint: "opc.tcp://192.168.10.45:4840"}
    points: [{ref: "ns=2;s=X"}]
  - name: nulled
    driver: modbus
    settings: {host: 192.168.10.46, local_address: ~}
    points: [{ref: hr/0}]
  - name: base
    driver: modbus
    settings: &base {host: 192.168.10.47}
    points: [{ref: hr/0}]
  - name: base-bacnet
    driver: bacnet
    settings: {<<: *base, device_instance: 11, address: 192.168.10.48}
    points: [{ref: analog-input:0}]
  - name: aliased-base
    driver: modbus
    settings: *base
    points: [{ref: hr/0}]
  - name: trend
    driver: csvtrend
    settings: {path: /srv/trends}
    points: [{ref: SAT}]
  - name: blank
    driver: modbus
    settings:
    points: [{ref: hr/0}]
  - name: nothing
    driver: opcua
    settings: &null ~
    points: [{ref: "ns=2;s=X"}]
  - name: aliased-null
    driver: bacnet
    settings: *null
    points: [{ref: analog-input:0}]
`
	tests := []struct {
		network bool
		device  string
		want    string
		filled  bool
	}{
		{true, "meter", "192.168.10.5", true},
		{true, "scada", "192.168.10.5", true},
		{true, "vav", "192.168.10.5:47808", true},
		{true, "bare", "192.168.10.5", true},
		{true, "empty", "192.168.10.5", true},
		{true, "own", "192.168.10.5:47809", false},
		// A local_address merged in (<<: *own) or aliased is the file's:
		// filling it would add a key that beats the merged one.
		{true, "merged", "192.168.10.5:47809", false},
		{true, "aliased", "192.168.10.5:47809", false},
		{true, "merged-empty", "192.168.10.5", true},
		{true, "nulled", "192.168.10.5", true},
		// Filling the anchored mapping does not decide for those that
		// merge it: each gets its driver's spelling.
		{true, "base", "192.168.10.5", true},
		{true, "base-bacnet", "192.168.10.5:47808", true},
		{true, "aliased-base", "192.168.10.5", true},
		{false, "merged", "192.168.10.5:47809", false},
		{false, "aliased-base", "", false},
		{true, "trend", "", false},
		{false, "meter", "", false},
		{false, "vav", "", false},
		// Settings that decode as none are filled like absent ones.
		{true, "blank", "192.168.10.5", true},
		{true, "nothing", "192.168.10.5", true},
		{true, "aliased-null", "192.168.10.5:47808", true},
		{false, "blank", "", false},
		{false, "aliased-null", "", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s network=%v", tt.device, tt.network), func(t *testing.T) {
			c, err := Parse([]byte(devicesConfig(tt.network, devices)), "")
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(c.Devices, func(d Device) bool { return d.Name == tt.device })
			d := &c.Devices[i]
			if got := d.LocalAddress(); got != tt.want || d.LocalAddressFilled != tt.filled {
				t.Errorf("local address %q (filled %v), want %q (filled %v)", got, d.LocalAddressFilled, tt.want, tt.filled)
			}
			// What the driver decodes is the same value.
			var s struct {
				LocalAddress string `yaml:"local_address"`
			}
			if err := d.Settings.Load(&s); d.Settings.Kind != 0 && err != nil {
				t.Fatal(err)
			}
			if s.LocalAddress != tt.want {
				t.Errorf("the driver decodes local_address %q, want %q", s.LocalAddress, tt.want)
			}
		})
	}
}

// TestNetworkMergedLocalAddressChecked: a local_address off the control
// NIC that a device gets through a merge key is refused like one written
// in its settings (it used to be overridden by a filled one, unseen).
func TestNetworkMergedLocalAddressChecked(t *testing.T) {
	devices := `  - name: a
    driver: modbus
    settings: &c {host: 192.168.10.40, local_address: 172.16.0.9}
    points: [{ref: hr/0}]
  - name: b
    driver: modbus
    settings: {<<: *c, host: 192.168.10.41}
    points: [{ref: hr/0}]
`
	_, err := Parse([]byte(devicesConfig(true, devices)), "")
	if err == nil {
		t.Fatal("Parse succeeded, want both devices' local_address refused")
	}
	for _, w := range []string{`device "a" (line 10)`, `device "b" (line 14)`, "settings.local_address (line 12): 172.16.0.9"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\ndoes not contain %q", err, w)
		}
	}
	if n := strings.Count(err.Error(), "172.16.0.9 is not the control NIC's address"); n != 2 {
		t.Errorf("error %q names the address %d times, want 2 (one per device)", err, n)
	}
}

func TestNetworkBACnetShared(t *testing.T) {
	bacnet := func(name, extra string) string {
		return "  - name: " + name + "\n    driver: bacnet\n    settings:\n      device_instance: 1\n      address: 192.168.10.40\n" + extra + "    points: [{ref: analog-input:0}]\n"
	}
	tests := []struct {
		name    string
		network bool
		devices string
		want    []string // empty: valid
	}{
		{"same settings", true, bacnet("a", "      broadcast: 192.168.10.255:47808\n") + bacnet("b", "      broadcast: 192.168.10.255:47808\n"), nil},
		{"different broadcast, filled address", true, bacnet("a", "      broadcast: 192.168.10.255:47808\n") + bacnet("b", "      broadcast: 192.168.11.255:47808\n"),
			[]string{`device "b" (line 17)`, `device "a" (line 10)`, "192.168.10.5:47808", "broadcast (line 22) 192.168.11.255:47808 here, 192.168.10.255:47808 there"}},
		{"different max_per_network", false, bacnet("a", "      local_address: 10.0.0.5:47808\n      max_per_network: 4\n") + bacnet("b", "      local_address: 10.0.0.5:47808\n"),
			[]string{`device "b"`, `device "a"`, "10.0.0.5:47808", "max_per_network unset here, 4 there"}},
		{"different bbmd", false, bacnet("a", "      local_address: 10.0.0.5:47808\n      bbmd: 10.1.0.1:47808\n") + bacnet("b", "      local_address: 10.0.0.5:47808\n      bbmd: 10.2.0.1:47808\n"),
			[]string{"bbmd (line", "10.2.0.1:47808 here, 10.1.0.1:47808 there"}},
		{"different local addresses", false, bacnet("a", "      local_address: 10.0.0.5:47808\n      max_per_network: 4\n") + bacnet("b", "      local_address: 10.0.0.5:47809\n"), nil},
		{"ephemeral ports are not shared", false, bacnet("a", "      local_address: 10.0.0.5:0\n      max_per_network: 4\n") + bacnet("b", "      local_address: 10.0.0.5:0\n"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(devicesConfig(tt.network, tt.devices)), "")
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("Parse succeeded, want the conflict named")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// TestNetworkSettingsNotMapping: settings that are not a mapping, written
// or through an alias, reach the driver as the file has them, with or
// without a network section, so the driver's decoding error says what is
// wrong; an aliased scalar wrapped in a merge mapping said only yaml's
// "map merge requires map".
func TestNetworkSettingsNotMapping(t *testing.T) {
	tests := []struct {
		name, anchored, settings string
		want                     string // in the driver's error
	}{
		{"scalar", "", "5", "cannot construct !!int `5`"},
		{"sequence", "", "[1, 2]", "cannot construct !!seq"},
		{"aliased scalar", "&x 5", "*x", "cannot construct !!int `5`"},
		{"aliased string", "&x eth0", "*x", "cannot construct !!str `eth0`"},
		{"aliased sequence", "&x [1, 2]", "*x", "cannot construct !!seq"},
	}
	for _, tt := range tests {
		for _, network := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s network=%v", tt.name, network), func(t *testing.T) {
				devices := ""
				if tt.anchored != "" {
					devices = "  - name: anchor\n    driver: csvtrend\n    settings: " + tt.anchored + "\n    points: [{ref: SAT}]\n"
				}
				devices += "  - name: meter\n    driver: modbus\n    settings: " + tt.settings + "\n    points: [{ref: hr/0}]\n"
				c, err := Parse([]byte(devicesConfig(network, devices)), "")
				if err != nil {
					t.Fatal(err)
				}
				d := &c.Devices[len(c.Devices)-1]
				if d.LocalAddressFilled {
					t.Error("settings that are not a mapping were filled")
				}
				var s struct {
					Host         string `yaml:"host"`
					LocalAddress string `yaml:"local_address"`
				}
				err = d.DeviceSettings().Decode(&s)
				if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "merge") {
					t.Errorf("the driver's decoding error is %v, want one saying %q (and nothing of a merge)", err, tt.want)
				}
			})
		}
	}
}
