package config

import (
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
