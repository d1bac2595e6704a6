package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const good = `
site:
  name: Main Street HQ
data_dir: /tmp/sg
uplink:
  url: https://127.0.0.1:8443
buffer:
  max_bytes: 64MiB
devices:
  - name: ahu7
    driver: csvtrend
    interval: 10s
    settings:
      path: /data/trends
      timezone: America/Chicago
    points:
      - ref: SAT
        unit: degF
        interval: 30s
      - {ref: MAT, register: 40001}
`

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(good), "/etc/sightglass/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Buffer.MaxBytes != 64<<20 {
		t.Errorf("max_bytes = %d", c.Buffer.MaxBytes)
	}
	if c.Buffer.Path != "/tmp/sg/buffer.db" || c.StatusSocket != "/tmp/sg/agent.sock" || c.Uplink.CertDir != "/tmp/sg/cert" {
		t.Errorf("defaults: %q %q %q", c.Buffer.Path, c.StatusSocket, c.Uplink.CertDir)
	}
	d := c.Devices[0]
	if d.Line != 10 || d.Timeout != 10*time.Second || d.Concurrency != 1 {
		t.Errorf("device = line %d timeout %s conc %d", d.Line, d.Timeout, d.Concurrency)
	}
	if p := d.Points[0]; p.Ref != "SAT" || p.Name != "SAT" || p.Unit != "degF" || p.Interval != 30*time.Second || p.Line != 17 {
		t.Errorf("point 0 = %+v", p)
	}
	var ds struct {
		Path     string `yaml:"path"`
		Timezone string `yaml:"timezone"`
	}
	if err := d.DeviceSettings().Decode(&ds); err != nil || ds.Path != "/data/trends" {
		t.Errorf("device settings = %+v, %v", ds, err)
	}
	var ps struct {
		Register int `yaml:"register"`
	}
	if err := d.Points[1].PointSettings(d.Name).Decode(&ps); err != nil || ps.Register != 40001 {
		t.Errorf("point settings = %+v, %v", ps, err)
	}
	var strict struct {
		Other int `yaml:"other"`
	}
	err = d.Points[1].PointSettings(d.Name).Decode(&strict)
	if err == nil || !strings.Contains(err.Error(), "line 20") || !strings.Contains(err.Error(), "register") {
		t.Errorf("unknown driver key: err = %v, want it to name register and line 20", err)
	}
}

func TestParseBad(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // every fragment must appear in the error
	}{
		{"unknown top-level key", "uplinks: {}\n", []string{"line 1", "uplinks"}},
		{"duplicate key", "data_dir: a\ndata_dir: b\n", []string{"line 2", "data_dir"}},
		{"bad duration", "uplink: {url: 'https://x', timeout: soon}\n", []string{"line 1", "soon"}},
		{"empty file", "", []string{"empty"}},
		{"every problem at once", `
uplink: {url: http://x, max_in_flight: 100}
log: {level: loud}
poll: {jitter: 2}
devices:
  - {name: "bad name!", driver: csvtrend, points: [{ref: a}]}
  - name: a
    driver: ""
    interval: 1ms
    points: [{ref: x}, {ref: x}, {name: noref}]
  - {name: a, driver: csvtrend, discover: true}
`, []string{
			"uplink.url", "https://", "uplink.max_in_flight", "log.level", "poll.jitter",
			`device "bad name!" (line 6): name`, `device "a" (line 7): driver: required`, "interval: 1ms",
			`ref: already listed at line 10`, "point at line 10: ref: required", `already used by the device at line 7`,
		}},
		{"no devices", "uplink: {url: 'https://x'}\n", []string{"devices: none configured"}},
		{"unknown device key", "uplink: {url: 'https://x'}\ndevices:\n  - {name: a, driver: d, pointz: []}\n", []string{"line 3", "pointz"}},
		{"bad size", "uplink: {url: 'https://x'}\nbuffer: {max_bytes: lots}\n", []string{"line 2", "lots"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "agent.yaml")
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.yaml")
	y := strings.Replace(good, "data_dir: /tmp/sg", "data_dir: data", 1)
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "data", "buffer.db"); c.Buffer.Path != want {
		t.Errorf("buffer path = %q, want %q", c.Buffer.Path, want)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "reading agent config") {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		ok   bool
	}{
		{"1048576", 1 << 20, true}, {"1MiB", 1 << 20, true}, {"1.5GB", 1_500_000_000, true},
		{"10 KB", 10_000, true}, {"2TiB", 2 << 40, true}, {"", 0, false}, {"1XB", 0, false}, {"-1", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// The shipped example must stay valid as the config grows.
func TestExampleConfigIsValid(t *testing.T) {
	if _, err := Load("../../configs/agent.example.yaml"); err != nil {
		t.Fatal(err)
	}
}
