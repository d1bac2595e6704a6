package opcua

import (
	"fmt"
	"net"
	"os"
	"slices"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// yamlSettings and logBuffer are the kit's test fixtures.
type (
	yamlSettings = drivertest.YAML
	logBuffer    = drivertest.LogBuffer
)

// testHost is a loopback address of this test process's own, 127.x.y.z
// from its pid, where the tests' servers listen (unless a test chooses).
// Tests restart a server on the port it had, with seconds between (a
// node-opcua peer takes that long to start): on 127.0.0.1, another
// process on the machine that listens on a free port there (every test
// does) could take the port meanwhile, and the restart failed with
// "address already in use". No other process listens on this address.
var testHost = func() string {
	pid := os.Getpid() // at most 2^22 on Linux
	return fmt.Sprintf("127.%d.%d.%d", 1+(pid>>16)&0x3f, (pid>>8)&0xff, pid&0xff)
}()

// freePort returns a port on testHost nothing listens on now, for a
// server a test starts later.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(testHost, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startSim starts the in-process simulator for one test, on testHost
// unless o says otherwise.
func startSim(t testing.TB, o simopcua.Options) *simopcua.Server {
	t.Helper()
	if o.Host == "" {
		o.Host = testHost
	}
	s, err := simopcua.Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// noneSettings are settings for an unsecured session to url.
func noneSettings(t testing.TB, url string, extra ...string) yamlSettings {
	t.Helper()
	s := fmt.Sprintf("endpoint: %s\nsecurity_policy: None\nsecurity_mode: None\npki_dir: %s\nreconnect_min: 50ms\nreconnect_max: 200ms\n", url, t.TempDir())
	for _, e := range extra {
		s += e + "\n"
	}
	return yamlSettings(s)
}

// simPoints are points for the first n variables of the simulator.
func simPoints(s *simopcua.Server, n int) []driver.Point {
	vars := s.Variables()
	points := make([]driver.Point, 0, n)
	for i := 0; i < n && i < len(vars); i++ {
		points = append(points, driver.Point{ID: uint64(i + 1), Ref: vars[i], Name: vars[i]})
	}
	return points
}

// readServices are the services a read-only client may send.
var readServices = []string{
	"GetEndpoints", "FindServers", "CreateSession", "ActivateSession", "CloseSession",
	"Browse", "BrowseNext", "TranslateBrowsePathsToNodeIDs", "TranslateBrowsePathsToNodeIds", "Read", "HistoryRead",
	"CreateSubscription", "ModifySubscription", "SetPublishingMode", "Publish", "Republish",
	"TransferSubscriptions", "DeleteSubscriptions", "CreateMonitoredItems", "ModifyMonitoredItems",
	"SetMonitoringMode", "DeleteMonitoredItems",
}

// notReads returns the services in got that are not reads.
func notReads(got []string) []string {
	var out []string
	for _, s := range got {
		if !slices.Contains(readServices, s) {
			out = append(out, s)
		}
	}
	return out
}

// connected builds a driver for points with settings and connects it; the
// test's clean-up closes it. Its log collects in the returned buffer.
func connected(t *testing.T, settings yamlSettings, points []driver.Point) (*Driver, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	d, err := newDriver(driver.Device{Name: "dev", Settings: settings, Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("Connect: %v\n%s", err, logs.String())
	}
	return d, logs
}
