package subprocess

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// readServices are the OPC UA services a reader sends (see the opcua
// driver's guard).
var readServices = []string{
	"GetEndpoints", "FindServers", "CreateSession", "ActivateSession", "CloseSession",
	"Browse", "BrowseNext", "TranslateBrowsePathsToNodeIDs", "TranslateBrowsePathsToNodeIds", "Read", "HistoryRead",
	"CreateSubscription", "ModifySubscription", "SetPublishingMode", "Publish", "Republish",
	"TransferSubscriptions", "DeleteSubscriptions", "CreateMonitoredItems", "ModifyMonitoredItems",
	"SetMonitoringMode", "DeleteMonitoredItems",
}

// TestOPCUAIntegration runs the real OPC UA driver in a child against our
// simulator (gopcua's server, recording every service it receives), over
// Basic256Sha256 SignAndEncrypt as the demo does: data flows through the
// child, discovery too, a killed child (as the OOM killer would) costs one
// reconnect, a deliberate write frame is refused, and the server receives
// nothing but reads.
func TestOPCUAIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an OPC UA server and driver hosts (not with -short)")
	}
	sim, err := simopcua.Start(t.Context(), simopcua.Options{Secure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	vars := sim.Variables()
	var points []driver.Point
	for i, v := range vars[:4] {
		points = append(points, driver.Point{ID: uint64(i + 1), Ref: v, Name: v})
	}
	points[3].Settings = drivertest.YAML("mode: subscribe")
	settings := fmt.Sprintf("endpoint: %s\npki_dir: %s\nreconnect_min: 50ms\nreconnect_max: 200ms\n", sim.URL, t.TempDir())
	var logs drivertest.LogBuffer
	info := Wrap(opcua.Info(), selfCommand, Options{Grace: time.Second})
	d, err := info.New(driver.Device{Name: "ahu", Settings: drivertest.YAML(settings), Points: points, Logger: logs.Logger(), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	disc, ok := d.(driver.Discoverer)
	if !ok {
		t.Fatal("the wrapped OPC UA driver is not a Discoverer")
	}
	if _, ok := d.(driver.Committer); ok {
		t.Error("the wrapped OPC UA driver is a Committer; the driver is not")
	}
	read := func(what string) []telemetry.Sample {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		samples, err := d.Read(ctx, points[:3])
		if err != nil {
			t.Fatalf("%s: Read: %v", what, err)
		}
		ok := 0
		for _, s := range samples {
			if s.Status == telemetry.StatusOK && s.PointID >= 1 && s.PointID <= 3 {
				ok++
			}
		}
		if ok != 3 {
			t.Fatalf("%s: %d good samples of 3: %+v", what, ok, samples)
		}
		return samples
	}
	counter := func(name string) uint64 {
		t.Helper()
		for _, c := range d.(driver.Reporter).Counters() {
			if c.Name == name {
				return c.Value
			}
		}
		t.Fatalf("no counter %q in %+v", name, d.(driver.Reporter).Counters())
		return 0
	}
	connect(t, d)
	read("first read")
	firstRequests := counter("requests")
	if firstRequests == 0 || counter(driver.GuardRefusals) != 0 || counter("sessions_created") != 1 {
		t.Errorf("after the first read the child's driver reports %+v; want requests, no refusal, one session", d.(driver.Reporter).Counters())
	}
	found, err := disc.Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]bool{}
	for _, p := range found {
		refs[p.Ref] = true
	}
	if len(found) == 0 || !refs[vars[0]] {
		t.Errorf("Discover found %d points, not %s", len(found), vars[0])
	}

	// A deliberate write, as a frame of a call the host does not serve.
	c, err := d.(*discoverProxy).current()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.call(t.Context(), 'W', func(e *enc) error { e.str(vars[0]); e.float(99); return nil }, ansOK); !errors.Is(err, driver.ErrRefused) {
		t.Errorf("write frame = %v; want ErrRefused", err)
	}

	// The kernel's OOM killer takes the child: the next read reports a
	// lost connection, and a Connect brings a new child and the data back.
	if err := syscall.Kill(c.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.dead:
	case <-time.After(60 * time.Second): // only bounds a hang
		t.Fatal("the killed child was not noticed in 60 s")
	}
	if _, err := d.Read(t.Context(), points[:3]); !errors.Is(err, driver.ErrConnLost) || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Read after the kill = %v; want ErrConnLost naming the signal", err)
	}
	if err := d.Close(); err != nil {
		t.Error(err)
	}
	connect(t, d)
	read("after the new child connected")
	// The new child counts from zero; the proxy adds the old one's counts.
	if got := counter("requests"); got <= firstRequests {
		t.Errorf("requests = %d after a second child's read, want more than the first child's %d", got, firstRequests)
	}
	if got := counter("sessions_created"); got != 2 {
		t.Errorf("sessions_created = %d over two children, want 2", got)
	}
	if err := d.Close(); err != nil {
		t.Error(err)
	}

	services := sim.Services()
	for _, s := range services {
		if !slices.Contains(readServices, s) {
			t.Errorf("the server received %s: not a read", s)
		}
	}
	if n := count(services, "CreateSession"); n != 2 {
		t.Errorf("%d CreateSession requests; want 2 (one per child)", n)
	}
	if !slices.Contains(services, "CreateMonitoredItems") || !slices.Contains(services, "Browse") {
		t.Errorf("the server saw %v; want the subscription and the browse too", services)
	}
	if !strings.Contains(logs.String(), "driver host died") {
		t.Errorf("the kill was not logged:\n%s", logs.String())
	}
}

func count(ss []string, s string) int {
	n := 0
	for _, x := range ss {
		if x == s {
			n++
		}
	}
	return n
}
