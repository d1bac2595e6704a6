package nicbind

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
)

func TestOwner(t *testing.T) {
	tests := []struct {
		ip      string
		want    string
		wantErr string
	}{
		{"127.0.0.1", "lo", ""},
		{"127.0.0.2", "lo", ""}, // in lo's 127.0.0.0/8, not listed itself
		{"::1", "lo", ""},
		{"0.0.0.0", "", ""},
		{"::", "", ""},
		{"192.0.2.77", "", "no interface of this machine has that address"}, // TEST-NET-1: never assigned
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			got, err := Owner(netip.MustParseAddr(tt.ip))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Owner = %q, %v; want an error saying %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Owner = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestBoundSockets: a UDP socket and a dialled TCP connection made with
// ForAddress(127.0.0.1) are bound to lo, still work, and the next Control
// function runs; without an interface nothing is bound.
func TestBoundSockets(t *testing.T) {
	ctx := t.Context()
	nextRan := 0
	next := func(string, string, syscall.RawConn) error { nextRan++; return nil }
	ctl, err := ForAddress(netip.MustParseAddr("127.0.0.1"), next)
	if err != nil {
		t.Fatal(err)
	}

	lc := net.ListenConfig{Control: ctl}
	pc, err := lc.ListenPacket(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if dev, err := Device(pc.(*net.UDPConn)); err != nil || dev != "lo" {
		t.Fatalf("UDP socket bound to %q, %v; want lo", dev, err)
	}
	// It still receives on its address.
	peer, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("ReadFrom = %q, %v", buf[:n], err)
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Control: ctl}
	conn, err := d.DialContext(ctx, "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if dev, err := Device(conn.(*net.TCPConn)); err != nil || dev != "lo" {
		t.Fatalf("TCP connection bound to %q, %v; want lo", dev, err)
	}
	if nextRan != 2 {
		t.Errorf("next ran %d times, want 2", nextRan)
	}

	plain, err := (&net.ListenConfig{Control: Control("", nil)}).ListenPacket(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if dev, err := Device(plain.(*net.UDPConn)); err != nil || dev != "" {
		t.Fatalf("unbound socket reports %q, %v", dev, err)
	}
}

func TestControlUnknownInterface(t *testing.T) {
	lc := net.ListenConfig{Control: Control("nosuchnic0", nil)}
	pc, err := lc.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err == nil {
		pc.Close()
		t.Fatal("bound to an interface that does not exist")
	}
	if !strings.Contains(err.Error(), "nosuchnic0") {
		t.Errorf("error does not name the interface: %v", err)
	}
}

func TestProbe(t *testing.T) {
	if err := Probe("lo"); err != nil {
		t.Errorf("Probe(lo) = %v", err)
	}
	if err := Probe("nosuchnic0"); err == nil || !strings.Contains(err.Error(), "nosuchnic0") {
		t.Errorf("Probe of a missing interface = %v, want an error naming it", err)
	}
}

// TestDialerFrom: the dialer made from a config's strings dials from the
// address and binds to the named interface or, when none is named, to the
// one holding the address; no address binds nothing; a malformed address
// or one no interface holds is refused before anything is dialled.
func TestDialerFrom(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tests := []struct {
		name, ifname, local string
		wantDev, wantFrom   string // wantFrom "" means any
		wantErr, wantDial   string // error fragments of DialerFrom, of the dial
	}{
		{name: "kernel's choice", wantDev: ""},
		{name: "interface from the address", local: "127.0.0.2", wantDev: "lo", wantFrom: "127.0.0.2"},
		{name: "named interface", ifname: "lo", local: "127.0.0.2", wantDev: "lo", wantFrom: "127.0.0.2"},
		{name: "named interface, no address", ifname: "lo", wantDev: "lo"},
		{name: "mapped address", local: "::ffff:127.0.0.2", wantDev: "lo", wantFrom: "127.0.0.2"},
		{name: "unspecified address", local: "0.0.0.0", wantDev: ""},
		{name: "address with a port", local: "127.0.0.2:80", wantErr: "not an IP address"},
		{name: "a name", local: "uplink-nic", wantErr: "not an IP address"},
		{name: "address on no interface", local: "192.0.2.77", wantErr: "no interface of this machine has that address"},
		{name: "interface missing", ifname: "nosuchnic0", wantDial: "nosuchnic0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := DialerFrom(tt.ifname, tt.local)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DialerFrom(%q, %q) = %v, want an error saying %q", tt.ifname, tt.local, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Resolver == nil {
				t.Error("no resolver of its own: names would be looked up off the binding")
			}
			conn, err := d.DialContext(t.Context(), "tcp4", ln.Addr().String())
			if tt.wantDial != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantDial) {
					t.Errorf("dial = %v, want an error saying %q", err, tt.wantDial)
				}
				if conn != nil {
					conn.Close()
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			dev, err := Device(conn.(syscall.Conn))
			if err != nil || dev != tt.wantDev {
				t.Errorf("bound to %q (%v), want %q", dev, err, tt.wantDev)
			}
			from := conn.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()
			if tt.wantFrom != "" && from != tt.wantFrom {
				t.Errorf("dialled from %s, want %s", from, tt.wantFrom)
			}
		})
	}
}
