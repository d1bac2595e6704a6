package modbus_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
)

// yamlSettings is the kit's strict YAML settings.
type yamlSettings = drivertest.YAML

// point builds a configured point; extra is YAML of its own settings.
func point(id uint64, ref, extra string) driver.Point {
	p := driver.Point{ID: id, Ref: ref, Name: ref}
	if extra != "" {
		p.Settings = yamlSettings(extra)
	}
	return p
}

// startSim starts a simulator on loopback and stops it with the test.
func startSim(t testing.TB, opts modbussim.Options, units map[byte]*modbussim.Unit) *modbussim.Server {
	t.Helper()
	s, err := modbussim.Start(opts, units)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newDriver builds and connects a driver for addr with extra settings.
func newDriver(t testing.TB, addr, extra string, points ...driver.Point) *modbus.Driver {
	t.Helper()
	return connect(t, driver.Device{Name: "dev", Settings: yamlSettings(fmt.Sprintf("host: %s\n%s", addr, extra)), Points: points})
}

// connect builds and connects a driver for dev, closed with the test.
func connect(t testing.TB, dev driver.Device) *modbus.Driver {
	t.Helper()
	dev.Logger = testLogger(t)
	d, err := modbus.New(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	return d.(*modbus.Driver)
}

func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
