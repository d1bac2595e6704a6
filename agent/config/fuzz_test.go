package config

import (
	"strings"
	"testing"
)

// FuzzParse feeds the loader arbitrary YAML: it returns a configuration or
// an error, never panics, and an error names what it refused.
func FuzzParse(f *testing.F) {
	f.Add([]byte("site:\n  name: x\nuplink:\n  url: https://h:1\ndevices:\n  - name: a\n    driver: csvtrend\n    interval: 1m\n    points: [{ref: SAT, unit: °F, tags: [air]}]\n"))
	f.Add([]byte("devices:\n  - name: a\n    driver: modbus\n    settings: {host: 10.0.0.1, unit: 1}\n    points:\n      - {ref: hr/1/float32, scale: 0.1}\n"))
	f.Add([]byte("buffer:\n  max_bytes: 1GiB\npoll:\n  jitter: 0.5\n"))
	f.Add([]byte("a: &x [*x]\n"))
	// A network section fills local_address; BACnet devices sharing one are compared.
	f.Add([]byte("uplink: {url: https://h:1}\nnetwork:\n  control: {interface: eth0, address: 10.0.0.5}\n  uplink: {interface: eth1}\ndevices:\n  - {name: a, driver: bacnet, settings: {device_instance: 1, broadcast: 10.0.0.255:47808}, points: [{ref: ai:1}]}\n  - {name: b, driver: bacnet, settings: {device_instance: 2, max_per_network: 3}, points: [{ref: ai:1}]}\n  - {name: c, driver: opcua, settings: &s {local_address: \"\"}, points: [{ref: x}]}\n  - {name: d, driver: modbus, settings: *s, points: [{ref: x}]}\n"))
	// local_address through a merge key and an alias of a whole mapping.
	f.Add([]byte("uplink: {url: https://h:1}\nnetwork:\n  control: {interface: eth0, address: 10.0.0.5}\n  uplink: {interface: eth1}\ndevices:\n  - {name: a, driver: modbus, settings: &m {host: 10.0.0.9, local_address: 10.0.0.5}, points: [{ref: x}]}\n  - {name: b, driver: bacnet, settings: {<<: [*m], device_instance: 2}, points: [{ref: ai:1}]}\n  - {name: c, driver: opcua, settings: *m, points: [{ref: x}]}\n"))
	f.Add([]byte("devices: [{points: [{ref: 1}, {ref: 1}]}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml")
		if err == nil && c == nil {
			t.Fatal("no config and no error")
		}
		if err != nil && !strings.Contains(err.Error(), "fuzz.yaml") {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}
