// Package nodepeer runs testdata/peers/bacnet_device.js, a BACnet device
// built on @bacnet-js/client (a stack written by others), for integration
// tests, and collects the services it logs receiving.
package nodepeer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/repotest"
)

// Peer is a running node BACnet device.
type Peer struct {
	// Addr is where it listens (for a peer bound to 0.0.0.0, 127.0.0.1
	// and its port).
	Addr netip.AddrPort

	mu       sync.Mutex
	services []string
	markers  map[int]bool
	nextMark int
	changed  chan struct{}
}

// markerBase is where the instance numbers of the log barrier's Who-Is
// requests start; no test device uses them.
const markerBase = 4_000_000

// syncWait bounds the waits for the peer's log (sync, WaitFor). They end
// as soon as the log shows what they wait for, so the bound costs nothing
// on a fast machine and only stops a peer that stopped.
const syncWait = 30 * time.Second

// reads are the services a read-only client may send.
var reads = []string{"whoIs", "whoHas", "readProperty", "readPropertyMultiple", "readRange"}

// Start runs the peer as device instance device, bound to iface: a
// loopback address ("127.0.0.2"; a random 127.x.y.z when empty) on port
// 47808, or "0.0.0.0" on a free port so it hears loopback broadcasts. It
// skips the test when node or the npm package is missing, unless CI is set.
// Flags are passed to the script, e.g. "--iam", "broadcast".
func Start(t testing.TB, iface string, device int, flags ...string) *Peer {
	t.Helper()
	dir := repotest.Peers(t)
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(dir, "node_modules", "@bacnet-js", "client"))
	}
	if err != nil {
		msg := fmt.Sprintf("node BACnet peer unavailable (install node and run npm ci --prefix testdata/peers): %v", err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// Another test's socket can take the port between the probe below and
	// node's bind (test packages run in parallel): node then reports
	// EADDRINUSE and never listens. Such a start is tried again, on a
	// fresh port or address.
	for attempt := 1; ; attempt++ {
		p, err := launch(t, dir, node, iface, device, flags)
		if err == nil {
			return p
		}
		if !errors.Is(err, errBind) || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("%v; starting it again", err)
	}
}

// errBind marks a peer that reported an error before it listened, such as
// EADDRINUSE from its bind.
var errBind = errors.New("the node BACnet peer failed to listen")

// freePort returns a UDP port that was free on loopback a moment ago, for
// a peer bound to 0.0.0.0. A variable, so a test can hand out a taken one.
var freePort = func() (int, error) {
	l, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.LocalAddr().(*net.UDPAddr).Port, nil
}

// launch starts one peer process and waits until it listens. A peer that
// failed is stopped before launch returns; one that listens is stopped
// when the test ends.
func launch(t testing.TB, dir, node, iface string, device int, flags []string) (*Peer, error) {
	port := 47808
	switch iface {
	case "":
		// A random loopback address: test packages run in parallel, and
		// the library binds with SO_REUSEADDR, so a fixed one could be shared.
		iface = fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(250), 2+rand.IntN(250))
	case "0.0.0.0":
		var err error
		if port, err = freePort(); err != nil {
			return nil, fmt.Errorf("finding a free port for the node BACnet peer: %w", err)
		}
	}
	args := append([]string{"bacnet_device.js", "--interface", iface, "--port", strconv.Itoa(port), "--device", strconv.Itoa(device)}, flags...)
	cmd := exec.Command(node, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TZ=UTC")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("starting the node BACnet peer: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the node BACnet peer: %w", err)
	}
	ip := netip.MustParseAddr(iface)
	if ip.IsUnspecified() {
		ip = netip.MustParseAddr("127.0.0.1")
	}
	p := &Peer{Addr: netip.AddrPortFrom(ip, uint16(port)), changed: make(chan struct{}, 1), markers: map[int]bool{}}
	ready := make(chan struct{})
	failed := make(chan string, 1) // an error the peer reported before it listened
	done := make(chan struct{})
	go func() {
		defer close(done)
		listening := false
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev struct {
				Event   string `json:"event"`
				Service string `json:"service"`
				Low     *int   `json:"low"`
				Error   string `json:"error"`
			}
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			switch ev.Event {
			case "listening":
				listening = true
				close(ready)
			case "error":
				if !listening {
					select {
					case failed <- ev.Error:
					default:
					}
				}
			case "service":
				p.mu.Lock()
				if ev.Service == "whoIs" && ev.Low != nil && *ev.Low >= markerBase {
					p.markers[*ev.Low] = true
				} else {
					p.services = append(p.services, ev.Service)
				}
				p.mu.Unlock()
				select {
				case p.changed <- struct{}{}:
				default:
				}
			}
		}
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = cmd.Wait()
	}
	select {
	case <-ready:
		t.Cleanup(stop)
		return p, nil
	case msg := <-failed:
		stop()
		return nil, fmt.Errorf("%w %s (%s)", errBind, p.Addr, msg)
	case <-done:
		stop()
		return nil, errors.New("the node BACnet peer exited before listening")
	case <-time.After(60 * time.Second): // node starts in a second, on a loaded machine in many
		stop()
		return nil, errors.New("the node BACnet peer did not start listening within 60s")
	}
}

// Services lists the services received, in order, once every datagram
// sent to the peer before the call is in its log (see sync).
func (p *Peer) Services() []string {
	if err := p.sync(); err != nil {
		return []string{err.Error()}
	}
	return p.logged()
}

func (p *Peer) logged() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.services)
}

// sync is a barrier: the peer logs on its own pipe, so a datagram it has
// received may not be in the log yet. sync sends it a Who-Is for a unique
// instance, from a socket of its own, and waits until that is logged: the
// peer handles datagrams in order, so everything sent before is logged too.
func (p *Peer) sync() error {
	p.mu.Lock()
	p.nextMark++
	mark := markerBase + p.nextMark
	p.mu.Unlock()
	conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(p.Addr))
	if err != nil {
		return fmt.Errorf("syncing with the peer's log: %w", err)
	}
	defer conn.Close()
	// Who-Is [mark, mark]: BVLC Original-Unicast, NPDU, unconfirmed Who-Is
	// with context tags 0 and 1 of three octets each.
	m := []byte{byte(mark >> 16), byte(mark >> 8), byte(mark)}
	frame := []byte{0x81, 0x0a, 0, 16, 0x01, 0x00, 0x10, 0x08, 0x0b, m[0], m[1], m[2], 0x1b, m[0], m[1], m[2]}
	// The bound only stops a peer that stopped: a loaded machine can leave
	// node (and the pipe it logs on) waiting for seconds.
	deadline := time.Now().Add(syncWait)
	for time.Now().Before(deadline) {
		if _, err := conn.Write(frame); err != nil {
			return fmt.Errorf("syncing with the peer's log: %w", err)
		}
		wait := time.After(200 * time.Millisecond)
		for {
			p.mu.Lock()
			ok := p.markers[mark]
			p.mu.Unlock()
			if ok {
				return nil
			}
			select {
			case <-p.changed:
				continue
			case <-wait:
			}
			break
		}
	}
	return fmt.Errorf("the peer's log did not catch up within %v: what it received is unknown", syncWait)
}

// Count returns how often service was received.
func (p *Peer) Count(service string) int {
	n := 0
	for _, s := range p.logged() {
		if s == service {
			n++
		}
	}
	return n
}

// Writes lists the received services that are not reads.
func (p *Peer) Writes() []string {
	var out []string
	for _, s := range p.Services() {
		if !slices.Contains(reads, s) {
			out = append(out, s)
		}
	}
	return out
}

// WaitFor waits until service was received n times, or fails after
// syncWait.
func (p *Peer) WaitFor(t testing.TB, service string, n int) {
	t.Helper()
	deadline := time.After(syncWait)
	for p.Count(service) < n {
		select {
		case <-p.changed:
		case <-deadline:
			t.Fatalf("the peer received %q %d times, want %d (got %v)", service, p.Count(service), n, p.logged())
		}
	}
}
