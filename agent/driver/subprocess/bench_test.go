package subprocess

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// BenchmarkOPCUARead10000 polls 10,000 nodes of the simulator
// (MaxNodesPerRead 1000, security None) with the OPC UA driver in-process
// and in a driver host, so the difference is the cost of the process
// boundary per poll. In the child it reports the child's peak resident set
// (VmHWM, MB-child-peak-RSS): what an OPC UA device adds to the agent's
// memory now that it lives in its own process.
func BenchmarkOPCUARead10000(b *testing.B) {
	const nodes = 10_000
	sim, err := simopcua.Start(b.Context(), simopcua.Options{MaxNodesPerRead: 1000, Zones: nodes / 2})
	if err != nil {
		b.Fatal(err)
	}
	defer sim.Close()
	vars := sim.Variables()
	if len(vars) < nodes {
		b.Fatalf("simulator has %d variables, want %d", len(vars), nodes)
	}
	points := make([]driver.Point, nodes)
	for i := range points {
		points[i] = driver.Point{ID: uint64(i + 1), Ref: vars[i]}
	}
	for _, tt := range []struct {
		name string
		info driver.Info
	}{
		{"in-process", opcua.Info()},
		{"driver-host", Wrap(opcua.Info(), selfCommand, Options{})},
	} {
		b.Run(tt.name, func(b *testing.B) {
			settings := drivertest.YAML(fmt.Sprintf("endpoint: %s\nsecurity_policy: None\nsecurity_mode: None\npki_dir: %s\n", sim.URL, b.TempDir()))
			d, err := tt.info.New(driver.Device{Name: "bench", Settings: settings, Points: points})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			if err := d.Connect(b.Context()); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				samples, err := d.Read(b.Context(), points)
				if err != nil {
					b.Fatal(err)
				}
				if len(samples) != nodes {
					b.Fatalf("%d samples for %d points", len(samples), nodes)
				}
			}
			b.StopTimer()
			if p, ok := d.(*discoverProxy); ok {
				c, err := p.current()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(statusKB(b, c.pid, "VmHWM"))/1024, "MB-child-peak-RSS")
			}
		})
	}
}

// statusKB reads a kB field of /proc/<pid>/status.
func statusKB(b *testing.B, pid int, field string) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				b.Fatal(err)
			}
			return kb
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
