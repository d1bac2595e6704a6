package modbus_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestLearnedLimitsSurviveRestart: what one driver learned from a strict
// device, the next driver for it (after an agent restart) knows without
// asking: its first poll sends no request the device refuses.
func TestLearnedLimitsSurviveRestart(t *testing.T) {
	u := modbussim.NewUnit().Strict(true).MaxRead(8)
	for _, a := range []uint16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 22} {
		u.SetRegisters(modbussim.Holding, a, a)
	}
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: u})
	var points []driver.Point
	for i, a := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 20, 22} {
		points = append(points, point(uint64(i+1), fmt.Sprintf("hr/%d", a), ""))
	}
	dataDir := t.TempDir()
	build := func(host string) *modbus.Driver {
		return connect(t, driver.Device{Name: "meter/1", Settings: yamlSettings("host: " + host), Points: points, DataDir: dataDir})
	}
	refused := func() int {
		n := 0
		for _, r := range sim.Requests() {
			_, ok := u.Register(modbussim.Holding, r.Address)
			if !ok || r.Quantity > 8 || (r.Address <= 15 && 15 < r.Address+r.Quantity) {
				n++
			}
		}
		return n
	}
	first := build(sim.Addr())
	for range 6 { // learn the hole at 15, the gaps and the size limit 8
		if _, err := first.Read(t.Context(), points); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dataDir, "modbus", "meter_1.json")
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("no learned limits kept: %v", err)
	}
	first.Close()

	sim.ResetRequests()
	second := build(sim.Addr())
	samples, err := second.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range samples {
		want := telemetry.StatusOK
		if points[i].Ref == "hr/15" {
			want = telemetry.StatusFault
		}
		if s.Status != want {
			t.Errorf("%s after restart: %+v", points[i].Ref, s)
		}
	}
	if n := refused(); n > 0 {
		t.Errorf("after a restart the first poll sent %d requests the device refuses: %+v", n, sim.Requests())
	}

	// A file whose every limit is over a week old is learned afresh.
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var f any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if n := age(f, 8*24*time.Hour); n < 3 {
		t.Fatalf("the learned file gives %d times, want the file's, the area's and the hole's:\n%s", n, data)
	}
	data, _ = json.Marshal(f)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	second.Close()
	sim.ResetRequests()
	third := build(sim.Addr())
	if _, err := third.Read(t.Context(), points); err != nil {
		t.Fatal(err)
	}
	if refused() == 0 {
		t.Error("a stale learned file was trusted: the first poll asked nothing the device refuses")
	}
}

// age moves every "learned" time in a decoded JSON document back by d,
// and returns how many it moved.
func age(v any, d time.Duration) int {
	n := 0
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "learned" {
				tm, err := time.Parse(time.RFC3339Nano, s)
				if err == nil {
					v[k] = tm.Add(-d).Format(time.RFC3339Nano)
					n++
				}
				continue
			}
			n += age(x, d)
		}
	case []any:
		for _, x := range v {
			n += age(x, d)
		}
	}
	return n
}

// TestUnsupportedTableSurvivesRestart: a table the unit answered "illegal
// function" for is kept in the learned file even when nothing else was
// learned in that read, so the next driver does not ask it again.
func TestUnsupportedTableSurvivesRestart(t *testing.T) {
	u := modbussim.NewUnit().SetRegisters(modbussim.Holding, 0, 7).Lacks(modbussim.Input)
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: u})
	points := []driver.Point{point(1, "hr/0", ""), point(2, "ir/0", "")}
	dataDir := t.TempDir()
	for run := range 2 {
		sim.ResetRequests()
		d := connect(t, driver.Device{Name: "meter", Settings: yamlSettings("host: " + sim.Addr()), Points: points, DataDir: dataDir})
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		if samples[0].Status != telemetry.StatusOK || samples[0].Value != 7 || samples[1].Status != telemetry.StatusFault {
			t.Errorf("run %d: samples %+v, want hr/0 = 7 and ir/0 faulted", run, samples)
		}
		asked := 0
		for _, r := range sim.Requests() {
			if r.Function == modbussim.Input {
				asked++
			}
		}
		if want := 1 - run; asked != want {
			t.Errorf("run %d: the missing table was asked %d times, want %d", run, asked, want)
		}
		d.Close()
	}
}
