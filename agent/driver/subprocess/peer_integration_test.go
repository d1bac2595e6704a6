package subprocess

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	"github.com/sightglass-bms/sightglass/pkg/repotest"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// nodePeer runs testdata/peers/opcua_server.js (node-opcua, a server
// someone else wrote), which prints "READY <port> …" once it listens and
// "SERVICE <name>" for every request it receives.
type nodePeer struct {
	url string

	mu       sync.Mutex
	services []string
}

func startNodePeer(t *testing.T) *nodePeer {
	t.Helper()
	peers := repotest.Peers(t)
	node, err := exec.LookPath("node")
	missing := ""
	if err != nil {
		missing = "node is not on PATH"
	} else if _, err := os.Stat(filepath.Join(peers, "node_modules", "node-opcua")); err != nil {
		missing = "node-opcua is not installed (npm ci --prefix testdata/peers)"
	}
	if missing != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("OPC UA peer unavailable under CI: %s", missing)
		}
		t.Skipf("OPC UA peer unavailable: %s", missing)
	}
	cmd := exec.Command(node, filepath.Join(peers, "opcua_server.js"), "--port", "0", "--pki", t.TempDir(), "--zones", "4", "--exit-with-stdin")
	cmd.Dir = peers
	stdin, err := cmd.StdinPipe() // the peer ends when this closes
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &nodePeer{}
	ready := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.HasPrefix(line, "SERVICE "):
				p.mu.Lock()
				p.services = append(p.services, strings.TrimSuffix(strings.TrimPrefix(line, "SERVICE "), "Request"))
				p.mu.Unlock()
			case strings.HasPrefix(line, "READY "):
				ready <- strings.Fields(line)[1]
			}
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		<-done
	})
	select {
	case port := <-ready:
		p.url = "opc.tcp://127.0.0.1:" + port
	case <-done:
		t.Fatal("the node-opcua peer exited before listening")
	case <-time.After(90 * time.Second):
		t.Fatal("the node-opcua peer did not listen within 90s")
	}
	return p
}

func (p *nodePeer) Services() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.services)
}

// TestNodeOPCUAIntegration reads node-opcua through the driver in a child
// over Basic256Sha256 SignAndEncrypt, polled and subscribed, discovers, and
// finds that the server received only reads.
func TestNodeOPCUAIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node-opcua server (not with -short)")
	}
	peer := startNodePeer(t)
	var points []driver.Point
	for i, id := range []string{"AHU1.SupplyAirTemp", "AHU1.FanSpeed", "Plant.ChillerPower", "Zones.Zone1.Temp"} {
		points = append(points, driver.Point{ID: uint64(i + 1), Ref: "ns=2;s=" + id})
	}
	points[1].Settings = drivertest.YAML("mode: subscribe\nsampling_interval: 100ms")
	settings := drivertest.YAML(fmt.Sprintf("endpoint: %s\nsecurity_policy: Basic256Sha256\nsecurity_mode: SignAndEncrypt\npki_dir: %s\npublishing_interval: 100ms\n", peer.url, t.TempDir()))
	d, err := Wrap(opcua.Info(), selfCommand, Options{}).New(driver.Device{Name: "node-peer", Settings: settings, Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// The deadline only bounds a hang (a child started, a secure session
	// opened, under -race on a loaded machine).
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	polled := []driver.Point{points[0], points[2], points[3]}
	samples, err := d.Read(ctx, polled)
	if err != nil {
		t.Fatal(err)
	}
	good := 0
	for _, s := range samples {
		if s.Status == telemetry.StatusOK {
			good++
		}
	}
	if good != len(polled) {
		t.Errorf("%d good samples of %d polled: %+v", good, len(polled), samples)
	}
	// The subscribed point reports what arrived since the last Read.
	var sub []telemetry.Sample
	for deadline := time.Now().Add(60 * time.Second); len(sub) == 0 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if sub, err = d.Read(ctx, points[1:2]); err != nil {
			t.Fatal(err)
		}
	}
	if len(sub) == 0 {
		t.Error("the subscribed point delivered nothing in 60 s")
	}
	found, err := d.(driver.Discoverer).Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(found, func(p driver.Point) bool { return p.Ref == points[0].Ref }) {
		t.Errorf("Discover did not find %s among %d points", points[0].Ref, len(found))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// The peer's log comes through a pipe, behind its answers: wait for
	// the session's end before looking.
	for deadline := time.Now().Add(60 * time.Second); !slices.Contains(peer.Services(), "CloseSession") && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	services := peer.Services()
	for _, s := range services {
		if !slices.Contains(readServices, s) {
			t.Errorf("node-opcua received %s: not a read", s)
		}
	}
	for _, want := range []string{"CreateSession", "Read", "CreateMonitoredItems", "Browse"} {
		if !slices.Contains(services, want) {
			t.Errorf("node-opcua never received %s: %v", want, services)
		}
	}
}
