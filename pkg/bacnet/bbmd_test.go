package bacnet_test

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
)

// fakeBBMD accepts foreign device registrations and forwards
// Distribute-Broadcast-To-Network to one subnet (the simulator) as a
// Forwarded-NPDU, as a BBMD on another subnet would.
type fakeBBMD struct {
	conn      *net.UDPConn
	mu        sync.Mutex
	functions []uint8
}

func startBBMD(t *testing.T, subnet netip.AddrPort) *fakeBBMD {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBBMD{conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			m, err := bacnet.DecodeBVLC(buf[:n])
			if err != nil {
				continue
			}
			b.mu.Lock()
			b.functions = append(b.functions, m.Function)
			b.mu.Unlock()
			switch m.Function {
			case bacnet.BVLCRegisterForeignDevice:
				c.WriteToUDPAddrPort(bacnet.AppendBVLC(nil, bacnet.BVLCResult, []byte{0, 0}), from)
			case bacnet.BVLCDistributeBroadcast:
				c.WriteToUDPAddrPort(bacnet.AppendForwarded(nil, from, m.NPDU), subnet)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return b
}

func (b *fakeBBMD) seen() []uint8 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]uint8(nil), b.functions...)
}

// TestForeignDevice registers with a BBMD and discovers a device on the
// BBMD's subnet through it; the device answers the originator directly.
func TestForeignDevice(t *testing.T) {
	sim := startSim(t, bacnetsim.Config{Local: bacnetsim.NewDevice(300, "far", 1, 0, 0, false)})
	bbmd := startBBMD(t, sim.Addr())
	c := newClient(t, bacnet.Config{BBMD: bbmd.conn.LocalAddr().String(), ForeignTTL: time.Minute})
	devs, err := c.WhoIs(t.Context(), nil, 0, -1, -1, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || devs[0].Instance != 300 || devs[0].Addr.IP != sim.Addr() {
		t.Fatalf("found %+v, want device 300 at %s", devs, sim.Addr())
	}
	got := bbmd.seen()
	if len(got) != 2 || got[0] != bacnet.BVLCRegisterForeignDevice || got[1] != bacnet.BVLCDistributeBroadcast {
		t.Fatalf("bbmd saw functions %v, want registration then distribute-broadcast", got)
	}
	if _, err := c.ReadProperty(t.Context(), devs[0], ai1, bacnet.Prop(bacnet.PropPresentValue)); err != nil {
		t.Fatal(err)
	}
}

func TestForeignDeviceRefused(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 64)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err == nil && n > 0 {
			c.WriteToUDPAddrPort(bacnet.AppendBVLC(nil, bacnet.BVLCResult, []byte{0, 0x30}), from) // registration NAK
		}
	}()
	// A long timeout: the refusal must arrive within it, or New takes the
	// BBMD for one that is down and succeeds.
	_, err = bacnet.New(t.Context(), bacnet.Config{Local: "127.0.0.1:0", BBMD: c.LocalAddr().String(), Timeout: 30 * time.Second})
	if err == nil {
		t.Fatal("registration with a BBMD that refused it succeeded")
	}
}

func TestWhoHas(t *testing.T) {
	sim := routedSim(t)
	c := newClient(t, bacnet.Config{Broadcast: sim.Addr().String()})
	byName, err := c.WhoHas(t.Context(), bacnet.GlobalNetwork, -1, -1, bacnet.ObjectID{}, "mstp-1 AI-2", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(byName) != 1 || byName[0].Device.Instance != 501 || byName[0].Object.Instance != 2 {
		t.Fatalf("by name: %+v", byName)
	}
	byID, err := c.WhoHas(t.Context(), bacnet.GlobalNetwork, 100, 501, ai1, "", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(byID) != 2 {
		t.Fatalf("by id within 100..501: %+v, want devices 100 and 501", byID)
	}
}

// TestForeignDeviceBBMDDown opens a client whose BBMD does not answer
// yet: the client works (unicast reads need no BBMD) and keeps trying.
func TestForeignDeviceBBMDDown(t *testing.T) {
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	sim := startSim(t, bacnetsim.Config{Local: bacnetsim.NewDevice(301, "near", 1, 0, 0, false)})
	c := newClient(t, bacnet.Config{BBMD: silent.LocalAddr().String(), Timeout: 100 * time.Millisecond, Retries: -1})
	dev := find(t, c, sim, 301)
	// The short timeout is for the registration New waits out; the read
	// gets a long one of its own, as a loaded machine under -race can take
	// longer than 100ms over a loopback answer.
	dev.Timeout = time.Minute
	if _, err := c.ReadProperty(t.Context(), dev, ai1, bacnet.Prop(bacnet.PropPresentValue)); err != nil {
		t.Fatal(err)
	}
}

// TestForeignDeviceResultFromElsewhere: only the configured BBMD answers a
// registration. A BVLC-Result from any other sender (here a refusal that
// arrives first) is ignored, and the BBMD's own acceptance counts.
func TestForeignDeviceResultFromElsewhere(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	bbmd, impostor := listen(), listen()
	go func() {
		buf := make([]byte, 64)
		n, from, err := bbmd.ReadFromUDPAddrPort(buf)
		if err != nil || n == 0 {
			return
		}
		// The impostor's refusal is sent (and queued at the client) before
		// the BBMD's acceptance.
		impostor.WriteToUDPAddrPort(bacnet.AppendBVLC(nil, bacnet.BVLCResult, []byte{0, 0x30}), from)
		bbmd.WriteToUDPAddrPort(bacnet.AppendBVLC(nil, bacnet.BVLCResult, []byte{0, 0}), from)
	}()
	c, err := bacnet.New(t.Context(), bacnet.Config{Local: "127.0.0.1:0", BBMD: bbmd.LocalAddr().String(), Timeout: 30 * time.Second, Retries: -1})
	if err != nil {
		t.Fatalf("registration failed on a result the BBMD did not send: %v", err)
	}
	c.Close()
}
