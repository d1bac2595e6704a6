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
