package opcua

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/repotest"
)

// peer is a node-opcua server (testdata/peers/opcua_server.js) in a child
// process, with the log of every service it received.
type peer struct {
	URL   string
	Port  string
	cmd   *exec.Cmd
	stdin io.Closer
	done  chan struct{}

	mu       sync.Mutex
	services []string
}

// peerOptions configure a peer; a zero Port picks a free one.
type peerOptions struct {
	Port            string
	PKI             string
	MaxNodesPerRead int
	Zones           int  // zones with one variable each; default 4
	Steady          bool // add Plant.ChillerSetpoint, a value that never changes
}

// needPeer skips (or, under CI, fails) when node or node-opcua is missing.
func needPeer(t testing.TB) (node, script string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a node-opcua server; skipped under -short")
	}
	root := repotest.Root(t)
	script = filepath.Join(root, "testdata", "peers", "opcua_server.js")
	missing := ""
	node, err := exec.LookPath("node")
	if err != nil {
		missing = "node is not on PATH"
	} else if _, err := os.Stat(filepath.Join(root, "testdata", "peers", "node_modules", "node-opcua")); err != nil {
		missing = "node-opcua is not installed (npm ci --prefix testdata/peers)"
	}
	if missing != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("OPC UA peer unavailable under CI: %s", missing)
		}
		t.Skipf("OPC UA peer unavailable: %s", missing)
	}
	return node, script
}

// startPeer starts a node-opcua server for one test and waits until it
// listens; the test's clean-up stops it.
func startPeer(t testing.TB, o peerOptions) *peer {
	t.Helper()
	node, script := needPeer(t)
	if o.PKI == "" {
		o.PKI = t.TempDir()
	}
	p, err := launchPeer(node, script, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

// launchPeer starts the peer process and waits for its READY line.
func launchPeer(node, script string, o peerOptions) (*peer, error) {
	if o.Port == "" {
		o.Port = "0"
	}
	if o.MaxNodesPerRead == 0 {
		o.MaxNodesPerRead = 50
	}
	// Not CommandContext: the peer's life is the caller's, ended by stop.
	if o.Zones == 0 {
		o.Zones = 4
	}
	args := []string{script, "--host", testHost, "--port", o.Port, "--pki", o.PKI, "--max-nodes-per-read", fmt.Sprint(o.MaxNodesPerRead), "--zones", fmt.Sprint(o.Zones), "--exit-with-stdin"}
	if o.Steady {
		args = append(args, "--steady")
	}
	cmd := exec.Command(node, args...)
	cmd.Dir = filepath.Dir(script)
	// The peer ends when this pipe closes: with stop, or when the test
	// binary dies without running its clean-ups.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr := &logBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the node-opcua peer: %w", err)
	}
	p := &peer{cmd: cmd, done: make(chan struct{}), stdin: stdin}
	ready := make(chan string, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "SERVICE "):
				p.mu.Lock()
				p.services = append(p.services, strings.TrimSuffix(strings.TrimPrefix(line, "SERVICE "), "Request"))
				p.mu.Unlock()
			case strings.HasPrefix(line, "READY "):
				ready <- line
			}
		}
		cmd.Wait()
	}()
	select {
	case line := <-ready:
		f := strings.Fields(line)
		p.Port, p.URL = f[1], "opc.tcp://"+net.JoinHostPort(testHost, f[1])
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("the node-opcua peer exited before listening: %s", stderr.String())
	case <-time.After(90 * time.Second):
		p.stop()
		return nil, fmt.Errorf("the node-opcua peer did not listen within 90s: %s", stderr.String())
	}
}

// stop ends the peer, hard: a restart test wants the server gone.
func (p *peer) stop() {
	p.stdin.Close()
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// Services returns the services the peer received, by name, in order.
func (p *peer) Services() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.services...)
}

// count returns how often service appears in the log.
func (p *peer) count(service string) int {
	n := 0
	for _, s := range p.Services() {
		if s == service {
			n++
		}
	}
	return n
}

// sharedPeer is the one node-opcua server most tests share: it takes
// seconds to start.
var sharedPeer struct {
	once sync.Once
	p    *peer
	pki  string
	err  error
}

// shared returns the shared peer (MaxNodesPerRead 5, with the steady
// setpoint), starting it on first use; TestMain stops it.
func shared(t *testing.T) *peer {
	t.Helper()
	node, script := needPeer(t)
	sharedPeer.once.Do(func() {
		pki, err := os.MkdirTemp("", "opcua-peer-*")
		if err != nil {
			sharedPeer.err = err
			return
		}
		sharedPeer.pki = pki
		sharedPeer.p, sharedPeer.err = launchPeer(node, script, peerOptions{PKI: pki, MaxNodesPerRead: 5, Steady: true})
	})
	if sharedPeer.err != nil {
		t.Fatal(sharedPeer.err)
	}
	return sharedPeer.p
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedPeer.p != nil {
		sharedPeer.p.stop()
	}
	if sharedPeer.pki != "" {
		os.RemoveAll(sharedPeer.pki)
	}
	os.Exit(code)
}

// waitFor polls cond until it holds or d passes. d only bounds a hang:
// the tests give 60 s, since under -race on a loaded machine what takes a
// second here can take many, and a deadline that fires on a correct
// driver is a flaky test.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return cond()
}
