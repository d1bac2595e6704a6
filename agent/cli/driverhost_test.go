package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestMain lets this test binary be the driver host: Registry's OPC UA
// devices re-execute the running binary as `driver-host`, which under go
// test is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == "driver-host" {
		root := NewRoot()
		root.SetArgs([]string{"driver-host"})
		if err := root.ExecuteContext(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "driver-host:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRegistryRunsOPCUAInDriverHost builds an OPC UA device the way `run`
// does, through Registry, and reads the simulator: the driver runs in a
// `driver-host` child of this process, and data arrives.
func TestRegistryRunsOPCUAInDriverHost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an OPC UA server and a driver host (not with -short)")
	}
	sim, err := simopcua.Start(t.Context(), simopcua.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	reg, err := Registry()
	if err != nil {
		t.Fatal(err)
	}
	info, ok := reg.Lookup("opcua")
	if !ok {
		t.Fatalf("no opcua in %v", reg.Names())
	}
	ref := sim.Variables()[0]
	points := []driver.Point{{ID: 1, Ref: ref}}
	settings := drivertest.YAML(fmt.Sprintf("endpoint: %s\nsecurity_policy: None\nsecurity_mode: None\n", sim.URL))
	d, err := info.New(driver.Device{Name: "scada", Settings: settings, Points: points, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(driver.Discoverer); !ok {
		t.Error("the registry's OPC UA driver cannot discover")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	samples, err := d.Read(ctx, points)
	if err != nil || len(samples) != 1 || samples[0].Status != telemetry.StatusOK {
		t.Fatalf("Read = %+v, %v; want one good sample", samples, err)
	}
	if hosts := driverHosts(t); len(hosts) != 1 {
		t.Errorf("%d driver-host children of this process (%v); want the one the device runs in", len(hosts), hosts)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if hosts := driverHosts(t); len(hosts) != 0 {
		t.Errorf("driver-host children after Close: %v", hosts)
	}
}

// driverHosts lists this process's children running driver-host.
func driverHosts(t *testing.T) []string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, pid := range strings.Fields(string(b)) {
			cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			if strings.Contains(string(cmdline), "driver-host") {
				hosts = append(hosts, pid)
			}
		}
	}
	return hosts
}
