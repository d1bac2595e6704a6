package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/pkg/anon"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// fakeDriver discovers two points, or fails to connect when down.
type fakeDriver struct{ down bool }

func (f *fakeDriver) Connect(context.Context) error {
	if f.down {
		return errors.New("connection refused")
	}
	return nil
}
func (f *fakeDriver) Read(context.Context, []driver.Point) ([]telemetry.Sample, error) {
	return nil, nil
}
func (f *fakeDriver) Close() error { return nil }

// profileSettings stands for the settings a driver's discovery attaches.
type profileSettings struct{}

func (profileSettings) Decode(any) error { return nil }

func (f *fakeDriver) Discover(context.Context) ([]driver.Point, error) {
	return []driver.Point{
		{Ref: "sat", Name: "Supply air", Unit: "°F", Description: "from the device", Kind: "analog-input", Settings: profileSettings{}},
		{Ref: "rat", Name: "Return air", Unit: "°F", Kind: "analog-input"},
	}, nil
}

func loadConfig(t *testing.T, devices string) *config.Config {
	t.Helper()
	return loadConfigWith(t, "", devices)
}

// loadConfigWith is loadConfig with more top-level sections before the
// devices.
func loadConfigWith(t *testing.T, sections, devices string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.yaml")
	body := "site:\n  name: x\ndata_dir: " + dir + "\n" + sections + "uplink:\n  url: https://127.0.0.1:1\ndevices:\n" + devices
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func registry(t *testing.T) *driver.Registry {
	t.Helper()
	reg, err := driver.NewRegistry(
		driver.Info{Name: "up", New: func(driver.Device) (driver.Driver, error) { return &fakeDriver{}, nil }},
		driver.Info{Name: "down", New: func(driver.Device) (driver.Driver, error) { return &fakeDriver{down: true}, nil }},
	)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func TestBuildDevicesMergesDiscovery(t *testing.T) {
	cfg := loadConfig(t, "  - name: ahu\n    driver: up\n    interval: 1m\n    discover: true\n    points:\n      - ref: sat\n        name: SAT renamed\n")
	var s anon.Secret
	devs, err := BuildDevices(context.Background(), cfg, registry(t), anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || len(devs[0].Points) != 2 {
		t.Fatalf("devices %+v", devs)
	}
	sat := devs[0].Points[0]
	if sat.Name != "SAT renamed" || sat.Unit != "°F" || sat.Description != "from the device" {
		t.Errorf("configured point after merge: %+v", sat)
	}
	if _, ok := sat.Settings.(profileSettings); !ok {
		t.Errorf("a renamed point lost the settings discovery found: %T", sat.Settings)
	}
}

// TestBuildDevicesTakesTheDevicesWords checks that a configured point the
// installer did not name or type gets the name and kind the device gives,
// while the installer's own words win.
func TestBuildDevicesTakesTheDevicesWords(t *testing.T) {
	cfg := loadConfig(t, "  - name: ahu\n    driver: up\n    interval: 1m\n    discover: true\n    points:\n      - ref: sat\n      - {ref: rat, name: RAT, kind: temperature, description: ceiling plenum}\n")
	var s anon.Secret
	devs, err := BuildDevices(context.Background(), cfg, registry(t), anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]driver.Point{}
	for _, p := range devs[0].Points {
		got[p.Ref] = p
	}
	if p := got["sat"]; p.Name != "Supply air" || p.Kind != "analog-input" {
		t.Errorf("unnamed configured point %+v, want the device's name and kind", p)
	}
	if p := got["rat"]; p.Name != "RAT" || p.Kind != "temperature" || p.Description != "ceiling plenum" {
		t.Errorf("named configured point %+v, want the installer's name, kind and description", p)
	}
}

func TestBuildDevicesSurvivesADeviceDown(t *testing.T) {
	cfg := loadConfig(t, `  - name: dead
    driver: down
    interval: 1m
    discover: true
  - name: half
    driver: down
    interval: 1m
    discover: true
    points: [{ref: sat}]
  - name: ahu
    driver: up
    interval: 1m
    discover: true
`)
	var s anon.Secret
	devs, undiscovered, err := buildDevices(context.Background(), cfg, registry(t), anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("a device down at start-up kept the agent from starting: %v", err)
	}
	if strings.Join(undiscovered, ",") != "dead,half" {
		t.Errorf("undiscovered %v, want the two devices that were down, to try again", undiscovered)
	}
	names := map[string]int{}
	for _, d := range devs {
		names[d.Name] = len(d.Points)
	}
	if _, ok := names["dead"]; ok || names["half"] != 1 || names["ahu"] != 2 {
		t.Errorf("devices built: %v", names)
	}
}

func TestCatalogPolicy(t *testing.T) {
	cfg := loadConfig(t, "  - name: ahu\n    driver: up\n    interval: 1m\n    points:\n      - {ref: sat, name: Supply air, unit: °F, kind: analog, tags: [air]}\n")
	var s anon.Secret
	devs, err := BuildDevices(context.Background(), cfg, registry(t), anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	full := Catalog(devs, config.CatalogFull)
	if len(full) != 1 || full[0].Name != "Supply air" || full[0].Unit != "°F" || full[0].Kind != "analog" || len(full[0].Tags) != 2 || full[0].Tags[1] != "device:ahu" {
		t.Errorf("full catalogue %+v", full)
	}
	tags := Catalog(devs, config.CatalogTagsOnly)
	if len(tags) != 1 || tags[0].Name != "" || tags[0].Description != "" || len(tags[0].Tags) != 1 || tags[0].Unit != "°F" || tags[0].Kind != "analog" {
		t.Errorf("tags-only catalogue %+v", tags)
	}
	if none := Catalog(devs, config.CatalogNone); none != nil {
		t.Errorf("none catalogue %+v", none)
	}
	if len(devs[0].Points[0].Tags) != 1 {
		t.Error("building the catalogue changed the point's own tags")
	}
}
