package opcua

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

func TestMapStatus(t *testing.T) {
	tests := []struct {
		code ua.StatusCode
		want telemetry.Status
	}{
		{ua.StatusOK, telemetry.StatusOK},
		{ua.StatusOK | 0x400, telemetry.StatusOK}, // info bits
		{ua.StatusGoodLocalOverride, telemetry.StatusOverridden},
		{ua.StatusUncertainLastUsableValue, telemetry.StatusStale},
		{ua.StatusUncertain, telemetry.StatusStale},
		{ua.StatusBadNodeIDUnknown, telemetry.StatusFault},
		{ua.StatusBadSensorFailure, telemetry.StatusFault},
		{ua.StatusBadOutOfService, telemetry.StatusOutOfService},
		{ua.StatusBadNoCommunication, telemetry.StatusCommFailure},
		{ua.StatusBadWaitingForInitialData, telemetry.StatusCommFailure},
		{ua.StatusBad, telemetry.StatusFault},
		{0xC0000000, telemetry.StatusFault}, // reserved severity
	}
	for _, tt := range tests {
		if got := mapStatus(tt.code); got != tt.want {
			t.Errorf("mapStatus(0x%08X) = %v, want %v", uint32(tt.code), got, tt.want)
		}
	}
}

func TestSettings(t *testing.T) {
	tests := []struct {
		name, yaml, dataDir, want string
	}{
		{"minimal secure", "endpoint: opc.tcp://127.0.0.1:4840", "/var/lib/sg", ""},
		{"no endpoint", "security_policy: Basic256Sha256", "/d", "settings.endpoint: required"},
		{"bad scheme", "endpoint: http://x:1", "/d", "not an opc.tcp"},
		{"none needs both", "endpoint: opc.tcp://h:1\nsecurity_policy: None", "/d", "security_mode: None too"},
		{"none mixed", "endpoint: opc.tcp://h:1\nsecurity_policy: Basic256Sha256\nsecurity_mode: None", "/d", "None goes with None only"},
		{"unknown policy", "endpoint: opc.tcp://h:1\nsecurity_policy: Basic128Rsa15", "/d", "security_policy"},
		{"no pki dir", "endpoint: opc.tcp://h:1", "", "settings.pki_dir: required"},
		{"password in clear", "endpoint: opc.tcp://h:1\nsecurity_policy: None\nsecurity_mode: None\nauth: {type: username, username: u, password: p}", "/d", "in clear"},
		{"username without name", "endpoint: opc.tcp://h:1\nauth: {type: username, password: p}", "/d", "auth.username: required"},
		{"certificate without key", "endpoint: opc.tcp://h:1\nauth: {type: certificate, certificate: c.der}", "/d", "private_key are required"},
		{"anonymous with password", "endpoint: opc.tcp://h:1\nauth: {password: p}", "/d", "auth.type is anonymous"},
		{"unknown key", "endpoint: opc.tcp://h:1\nfoo: 1", "/d", "foo"},
		{"bad reconnect", "endpoint: opc.tcp://h:1\nreconnect_min: 5s\nreconnect_max: 1s", "/d", "below reconnect_min"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseSettings(yamlSettings(tt.yaml), tt.dataDir)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestPointSettings(t *testing.T) {
	tests := []struct {
		name, ref, yaml, want string
	}{
		{"poll", "ns=2;s=A", "", ""},
		{"numeric id", "i=2258", "", ""},
		{"bad ref", "AHU1.SAT", "", "not an OPC UA node id"},
		{"subscribe", "ns=2;s=A", "mode: subscribe\nsampling_interval: 500ms\ndeadband: 0.5\nqueue_size: 4", ""},
		{"deadband needs subscribe", "ns=2;s=A", "deadband: 0.5", "need mode: subscribe"},
		{"percent over 100", "ns=2;s=A", "mode: subscribe\ndeadband: 150\ndeadband_type: percent", "above 100"},
		{"bad mode", "ns=2;s=A", "mode: push", "want poll or subscribe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parsePoint(driver.Point{Ref: tt.ref, Settings: yamlSettings(tt.yaml)})
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	for n := 1; n <= 12; n++ {
		want := min(time.Second<<(n-1), 30*time.Second)
		for range 50 {
			got := backoff(time.Second, 30*time.Second, n)
			if got < want/2 || got > want {
				t.Fatalf("backoff(n=%d) = %s, want within [%s, %s]", n, got, want/2, want)
			}
		}
	}
}

// TestIdentity checks the application-instance certificate: made once with
// a 0600 key, reused afterwards, and refused when the key is readable by
// others.
func TestIdentity(t *testing.T) {
	dir := t.TempDir()
	a, err := loadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "own", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	b, err := loadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.cert) != string(b.cert) || !a.key.Equal(b.key) {
		t.Error("second load made a new identity; want the one on disk")
	}
	if !strings.HasPrefix(a.uri, "urn:sightglass-bms:agent:") {
		t.Errorf("application URI %q", a.uri)
	}
	if err := os.Chmod(filepath.Join(dir, "own", "key.pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadIdentity(dir); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("world-readable key: err = %v", err)
	}
}

// TestServerCertificateChanged pins the simulator's certificate on first
// use, then meets a server with another certificate on the same endpoint:
// the connection stops with ErrServerCertChanged before any session is
// created on the impostor. A certificate given in the settings is held to
// the same rule.
func TestServerCertificateChanged(t *testing.T) {
	a := startSim(t, simopcua.Options{Secure: true})
	pki := t.TempDir()
	settings := yamlSettings("endpoint: " + a.URL + "\nsecurity_policy: Basic256Sha256\nsecurity_mode: SignAndEncrypt\npki_dir: " + pki + "\n")
	points := simPoints(a, 2)
	d, err := New(driver.Device{Name: "a", Settings: settings, Points: points})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("Connect to the first server: %v", err)
	}
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatalf("Read: %v", err)
	}
	d.Close()
	a.Close()

	port := a.URL[strings.LastIndex(a.URL, ":")+1:]
	var p int
	for _, c := range port {
		p = p*10 + int(c-'0')
	}
	b := startSim(t, simopcua.Options{Secure: true, Port: p})
	d2, err := New(driver.Device{Name: "b", Settings: settings, Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	err = d2.Connect(t.Context())
	if !errors.Is(err, ErrServerCertChanged) {
		t.Fatalf("Connect to a server with another certificate = %v, want ErrServerCertChanged", err)
	}
	if errors.Is(err, driver.ErrConnLost) {
		t.Error("a changed certificate must not look like a lost connection the poller retries")
	}
	if !strings.Contains(err.Error(), "remove that file") {
		t.Errorf("error does not say what to do: %v", err)
	}
	for _, s := range b.Services() {
		if s == "CreateSession" || s == "ActivateSession" {
			t.Fatalf("the impostor saw %s: %q", s, b.Services())
		}
	}

	// The installer gives the first server's certificate: the second is
	// still refused, and the first one's is accepted.
	given := filepath.Join(t.TempDir(), "server.der")
	if err := os.WriteFile(given, a.Cert, 0o644); err != nil {
		t.Fatal(err)
	}
	pinned := yamlSettings(string(settings) + "server_certificate: " + given + "\n")
	d3, err := New(driver.Device{Name: "c", Settings: pinned, Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if err := d3.Connect(t.Context()); !errors.Is(err, ErrServerCertChanged) || !strings.Contains(err.Error(), "server_certificate") {
		t.Fatalf("given certificate vs another server = %v", err)
	}
}

// TestNodeIDUnknown removes a node while the driver reads: its point turns
// faulty, the others stay good, and the read does not fail.
func TestNodeIDUnknown(t *testing.T) {
	sim := startSim(t, simopcua.Options{MaxNodesPerRead: 3})
	points := simPoints(sim, 7)
	var logs logBuffer
	d, err := New(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL), Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	sim.Remove(points[4].Ref)
	for range 2 { // the fault is logged once, not per read
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		if len(samples) != len(points) {
			t.Fatalf("%d samples for %d points", len(samples), len(points))
		}
		for i, s := range samples {
			want := telemetry.StatusOK
			if i == 4 {
				want = telemetry.StatusFault
			}
			if s.Status != want || s.PointID != points[i].ID {
				t.Errorf("sample %d = %+v, want status %v for point %d", i, s, want, points[i].ID)
			}
		}
		// The next Read's values get times a millisecond on at least:
		// within the same one (two quick Reads on a fast machine), a
		// point's sample would repeat its time and be left out.
		time.Sleep(2 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "OPC UA point is faulty"); n != 1 {
		t.Errorf("fault logged %d times, want once:\n%s", n, logs.String())
	}
}

// TestTooManyOperations lets the driver believe a limit above the server's
// real one: the refused read is split and the poll still succeeds.
func TestTooManyOperations(t *testing.T) {
	sim := startSim(t, simopcua.Options{MaxNodesPerRead: 2})
	points := simPoints(sim, 9)
	d, err := newDriver(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL), Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.maxNodes = 8 // as if the server had stated 8
	d.mu.Unlock()
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != len(points) {
		t.Fatalf("%d samples for %d points", len(samples), len(points))
	}
	if d.maxNodes != 2 {
		t.Errorf("maxNodes = %d after BadTooManyOperations, want 2", d.maxNodes)
	}
}

// TestConnectAfterFailedConnect is the poller's cycle when the server is
// down at start: Connect fails, Close, later Connect again, which must
// work once the server is up; and after Close of an open session, Read
// fails until Connect opens a new one.
func TestConnectAfterFailedConnect(t *testing.T) {
	port := freePort(t) // nothing listens there now
	url := fmt.Sprintf("opc.tcp://%s:%d", testHost, port)
	d, err := New(driver.Device{Name: "late", Settings: noneSettings(t, url)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); !errors.Is(err, driver.ErrConnLost) {
		t.Fatalf("Connect with no server = %v, want ErrConnLost", err)
	}
	d.Close()
	sim := startSim(t, simopcua.Options{Port: port})
	points := simPoints(sim, 2)
	if !waitFor(t.Context(), 60*time.Second, func() bool { return d.Connect(t.Context()) == nil }) {
		t.Fatal("Connect after a failed Connect and Close never succeeded")
	}
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatal(err)
	}
	sessions := d.(*Driver).Sessions()
	d.Close()
	if _, err := d.Read(t.Context(), points); !errors.Is(err, driver.ErrConnLost) {
		t.Fatalf("Read after Close = %v, want ErrConnLost (Connect first)", err)
	}
	if got := d.(*Driver).Sessions(); got != sessions {
		t.Fatalf("Read after Close opened a session (%d, was %d)", got, sessions)
	}
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("Connect after Close: %v", err)
	}
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatal(err)
	}
}

// TestDiscoverBrowseStart limits discovery to one folder of the building.
func TestDiscoverBrowseStart(t *testing.T) {
	sim := startSim(t, simopcua.Options{})
	d, err := New(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL, fmt.Sprintf("browse_start: ns=%d;s=Plant", sim.NS))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	found, err := d.(driver.Discoverer).Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 3 {
		t.Fatalf("found %d points under Plant, want 3: %+v", len(found), found)
	}
	for _, p := range found {
		if !strings.HasPrefix(p.Ref, fmt.Sprintf("ns=%d;s=Plant.", sim.NS)) || p.Unit == "" {
			t.Errorf("point %+v: want a Plant variable with a unit", p)
		}
	}
}

func TestLocalAddress(t *testing.T) {
	for _, tt := range []struct {
		local   string
		wantErr string
	}{{"", ""}, {"127.0.0.1", ""}, {"::1", ""}, {"127.0.0.1:4840", "not an IP address"}, {"control-nic", "not an IP address"}} {
		t.Run(tt.local, func(t *testing.T) {
			c, err := parseSettings(yamlSettings("endpoint: opc.tcp://127.0.0.1:4840\nsecurity_policy: None\nsecurity_mode: None\nlocal_address: \""+tt.local+"\"\n"), t.TempDir())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "local_address") {
					t.Fatalf("err = %v, want %q naming local_address", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tt.local == "") != (c.localAddr == nil) || (c.localAddr != nil && !c.localAddr.Equal(net.ParseIP(tt.local))) {
				t.Errorf("localAddr = %v", c.localAddr)
			}
		})
	}
}

// TestDialsFromLocalAddress checks that the connection leaves from the
// configured address: a listener that only records who connects sees
// 127.0.0.2, not the kernel's choice (127.0.0.1).
func TestDialsFromLocalAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	from := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		from <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	d, err := New(driver.Device{Name: "dev", Settings: yamlSettings("endpoint: opc.tcp://" + ln.Addr().String() + "\nsecurity_policy: None\nsecurity_mode: None\nlocal_address: 127.0.0.2\nrequest_timeout: 1s\n"), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_ = d.Connect(t.Context()) // the listener speaks no OPC UA: only the dial matters
	select {
	case ip := <-from:
		if ip != "127.0.0.2" {
			t.Errorf("connected from %s, want 127.0.0.2", ip)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection arrived")
	}
}
