package modbus_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	"github.com/sightglass-bms/sightglass/pkg/repotest"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// pyPeer is testdata/peers/modbus_server.py running under pymodbus: a
// Modbus server someone else wrote, recording every request it receives.
type pyPeer struct {
	addr string
	mu   sync.Mutex
	reqs []pyRequest
}

type pyRequest struct {
	Unit    int `json:"unit"`
	FC      int `json:"fc"`
	Address int `json:"address"`
	Count   int `json:"count"`
	MEI     int `json:"mei"`
}

func (r pyRequest) read() bool { return r.FC >= 1 && r.FC <= 4 || r.FC == 43 && r.MEI == 14 }

func (p *pyPeer) requests() []pyRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pyRequest(nil), p.reqs...)
}

func (p *pyPeer) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reqs = nil
}

func (p *pyPeer) writes() []string {
	var out []string
	for _, r := range p.requests() {
		if !r.read() {
			out = append(out, fmt.Sprintf("function %d to unit %d", r.FC, r.Unit))
		}
	}
	return out
}

// waitRequests waits until the peer printed n requests: it prints each
// before answering, but the pipe may lag the answer (by seconds, when a
// loaded machine leaves the python process waiting). The deadline only
// bounds a peer that never prints them.
func (p *pyPeer) waitRequests(t *testing.T, n int) []pyRequest {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := p.requests()
		if len(r) >= n || time.Now().After(deadline) {
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startPyPeer starts the pymodbus peer, skipping (or failing under CI)
// when pymodbus is missing.
func startPyPeer(t *testing.T) *pyPeer {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the pymodbus peer")
	}
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import pymodbus").Run(); err != nil {
		msg := fmt.Sprintf("pymodbus is not installed for %s (apt-get install python3-pymodbus): %v", python, err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cmd := exec.Command(python, filepath.Join(repotest.Root(t), "testdata", "peers", "modbus_server.py"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	p := &pyPeer{}
	ready := make(chan string, 1)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if port, ok := strings.CutPrefix(line, "LISTENING "); ok {
				ready <- port
				continue
			}
			var r pyRequest
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				continue
			}
			p.mu.Lock()
			p.reqs = append(p.reqs, r)
			p.mu.Unlock()
		}
		io.Copy(io.Discard, stdout)
		cmd.Wait()
	}()
	select {
	case port := <-ready:
		p.addr = net.JoinHostPort("127.0.0.1", port)
	case <-done:
		t.Fatal("the pymodbus peer exited before listening")
	case <-time.After(60 * time.Second): // python starts in a second, on a loaded machine in many
		t.Fatal("the pymodbus peer did not start listening in 60s")
	}
	return p
}

func TestPymodbusIntegration(t *testing.T) {
	peer := startPyPeer(t)

	t.Run("recorder sees writes", func(t *testing.T) {
		// Proves the peer's record can fail the read-only checks below:
		// a raw write frame, sent without the driver, is recorded.
		peer.reset()
		c, err := net.Dial("tcp", peer.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{0, 1, 0, 0, 0, 6, 1, 6, 0, 50, 0, 7}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
			t.Fatal(err)
		}
		peer.waitRequests(t, 1)
		if w := peer.writes(); len(w) != 1 {
			t.Fatalf("peer recorded writes %v, want the one raw write", w)
		}
	})

	t.Run("read", func(t *testing.T) {
		peer.reset()
		points := []driver.Point{
			point(1, "hr/0/float32", ""),
			point(2, "hr/2/float32", "order: CDAB"),
			point(3, "40005/int16", ""),
			point(4, "hr/5", "scale: 0.1"),
			point(5, "hr/6/uint32", ""),
			point(6, "hr/8/bit0", ""),
			point(7, "hr/8/bits4-7", ""),
			point(8, "hr/100/float32", ""),
			point(9, "30001/float32", ""),
			point(10, "ir/10", ""),
			point(11, "coil/3", ""),
			point(12, "di/7", ""),
			point(13, "di/6", ""),
		}
		want := []float64{21.5, -3.25, -10, 123.4, 100000, 1, 10, 50, 230.1, 42, 1, 1, 0}
		d := newDriver(t, peer.addr, "", points...)
		for range 2 {
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range samples {
				if s.Status != telemetry.StatusOK || math.Abs(s.Value-want[i]) > 1e-4 {
					t.Errorf("%s: %+v, want %v", points[i].Ref, s, want[i])
				}
			}
		}
		// Per poll: hr 0-8 and hr 100-101 (too far apart to bridge), ir
		// 0-10, coil 3, di 6-7.
		reqs := peer.waitRequests(t, 10)
		if len(reqs) != 10 {
			t.Errorf("%d requests for two polls, want 10: %+v", len(reqs), reqs)
		}
		if w := peer.writes(); len(w) > 0 {
			t.Errorf("writes reached pymodbus: %v", w)
		}
	})

	t.Run("learns holes", func(t *testing.T) {
		peer.reset()
		// Unit 2 maps 0-9 and 20-29 only: the bridged read 5..24 fails.
		points := []driver.Point{point(1, "u2/hr/5", ""), point(2, "u2/hr/24", ""), point(3, "u2/hr/15", "")}
		d := newDriver(t, peer.addr, "", points...)
		first, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		// The block 5..24, refused; 5; 15..24, refused; 15, refused; 24.
		n1 := len(peer.waitRequests(t, 5))
		peer.reset()
		second, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		for _, samples := range [][]telemetry.Sample{first, second} {
			if samples[0].Value != 5 || samples[0].Status != telemetry.StatusOK ||
				samples[1].Value != 24 || samples[1].Status != telemetry.StatusOK ||
				samples[2].Status != telemetry.StatusFault {
				t.Errorf("samples %+v: want 5 and 24 ok, register 15 faulted", samples)
			}
		}
		reqs := peer.waitRequests(t, 2)
		if n1 != 5 {
			t.Errorf("first read sent %d requests, want 5: split the refused block until the hole is found", n1)
		}
		// Learned: the hole at 15 is not asked again before its retry (10
		// minutes on), 5 and 24 in two reads.
		if len(reqs) != 2 {
			t.Errorf("second read sent %+v, want two reads (the hole learned)", reqs)
		}
		for _, r := range reqs {
			if r.Address <= 15 && 15 < r.Address+r.Count {
				t.Errorf("second read asked for the hole again: %+v", r)
			}
		}
	})

	t.Run("discover and unknown unit", func(t *testing.T) {
		peer.reset()
		// The timeout is waited out once, for the missing unit below; a
		// shorter one made the dial to the python peer time out on a
		// loaded machine.
		d := newDriver(t, peer.addr, "profile: eastron-sdm630\nrequest_timeout: 3s")
		found, err := d.Discover(t.Context())
		if err != nil || len(found) == 0 {
			t.Fatalf("Discover: %d points, %v", len(found), err)
		}
		id, err := modbus.NewGuard(nil).ReadDeviceID(t.Context(), transportTo(t, peer.addr), 1)
		if err != nil || id.Vendor != "pymodbus" || id.ProductName != "pymodbus peer" {
			t.Errorf("ReadDeviceID = %+v, %v", id, err)
		}
		// Unit 9 does not exist: pymodbus drops its requests unanswered.
		p := point(1, "u9/hr/0", "")
		samples, err := d.Read(t.Context(), []driver.Point{p})
		if !errors.Is(err, driver.ErrConnLost) {
			t.Errorf("Read of a missing unit only: %+v, %v; want no unit answered", samples, err)
		}
		if w := peer.writes(); len(w) > 0 {
			t.Errorf("writes reached pymodbus: %v", w)
		}
	})

	t.Run("scan", func(t *testing.T) {
		peer.reset()
		// Unit 3 is absent: pymodbus drops its requests, and the scan
		// waits out one timeout for it. Units 1 and 2 must answer each
		// probe within the same timeout, which a loaded machine can make
		// the python peer miss if it is short.
		reports, err := modbus.Scan(t.Context(), modbus.ScanOptions{Address: peer.addr, Units: []byte{1, 2, 3}, Timeout: 3 * time.Second, Rate: 500})
		if err != nil {
			t.Fatal(err)
		}
		if len(reports) != 3 || !reports[0].Present || !reports[1].Present || reports[2].Present {
			t.Fatalf("reports %+v: want units 1 and 2 present, 3 absent", reports)
		}
		if reports[0].Identity == nil || reports[0].Identity.Vendor != "pymodbus" || len(reports[0].Probes) != 4 {
			t.Errorf("unit 1: %+v", reports[0])
		}
		if w := peer.writes(); len(w) > 0 {
			t.Errorf("writes reached pymodbus: %v", w)
		}
	})

	t.Run("guard", func(t *testing.T) {
		peer.reset()
		g := modbus.NewGuard(nil)
		c := g.Client(t.Context(), transportTo(t, peer.addr), 1)
		if _, err := c.WriteSingleRegister(50, 7); !errors.Is(err, driver.ErrRefused) {
			t.Fatalf("write: %v, want ErrRefused", err)
		}
		if _, err := c.ReadHoldingRegisters(0, 1); err != nil {
			t.Fatal(err)
		}
		reqs := peer.waitRequests(t, 1)
		if len(reqs) != 1 || reqs[0].FC != 3 {
			t.Errorf("peer received %+v, want only the read", reqs)
		}
	})
}

func transportTo(t *testing.T, addr string) *modbus.Transport {
	t.Helper()
	tr, err := modbus.NewTransport(modbus.TransportOptions{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// TestConformancePymodbusIntegration runs the SDK's kit against the
// pymodbus peer, whose record of every request proves no write arrives.
func TestConformancePymodbusIntegration(t *testing.T) {
	peer := startPyPeer(t)
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			peer.reset()
			points := []driver.Point{point(1, "hr/0/float32", ""), point(2, "30001/float32", ""), point(3, "u2/hr/5", ""), point(4, "di/7", "")}
			d, err := modbus.New(driver.Device{Name: "py", Settings: yamlSettings("host: " + peer.addr + "\nprofile: eastron-sdm630"), Points: points, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			return d, points
		},
		Writes: func() []string { return peer.writes() },
	})
}
