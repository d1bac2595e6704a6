package modbus_test

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// devicesOf decodes a devices section through the agent's config types,
// so settings reach the driver exactly as in the agent, lines included.
func devicesOf(t *testing.T, text string) []driver.Device {
	t.Helper()
	var doc struct {
		Devices []config.Device `yaml:"devices"`
	}
	if err := yaml.Load([]byte(text), &doc, yaml.WithKnownFields()); err != nil {
		t.Fatal(err)
	}
	var devs []driver.Device
	for i := range doc.Devices {
		d := &doc.Devices[i]
		dev := driver.Device{Name: d.Name, Settings: d.DeviceSettings()}
		for j := range d.Points {
			p := &d.Points[j]
			dev.Points = append(dev.Points, driver.Point{ID: uint64(j + 1), Ref: p.Ref, Name: p.Name, Settings: p.PointSettings(d.Name)})
		}
		devs = append(devs, dev)
	}
	return devs
}

// TestSampleConfig: the embedded example builds drivers.
func TestSampleConfig(t *testing.T) {
	devs := devicesOf(t, modbus.SampleConfig)
	if len(devs) < 2 {
		t.Fatalf("sample.yaml has %d devices", len(devs))
	}
	for _, dev := range devs {
		if _, err := modbus.New(dev); err != nil {
			t.Errorf("sample device %s: %v", dev.Name, err)
		}
	}
}

// TestConfigErrorsNameTheLine: through the agent's config, a bad point
// key or value names the point and its line.
func TestConfigErrorsNameTheLine(t *testing.T) {
	devs := devicesOf(t, `devices:
  - name: m
    driver: modbus
    settings: {host: 127.0.0.1}
    points:
      - {ref: hr/0}
      - {ref: hr/1, scale: 2, oder: CDAB}
      - {ref: hr/2/float32, order: XYZW}
`)
	_, err := modbus.New(devs[0])
	if err == nil {
		t.Fatal("bad points accepted")
	}
	for _, want := range []string{`point 2 "hr/1"`, "line 7", "oder", `point 3 "hr/2/float32"`, "line 8", "XYZW"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
