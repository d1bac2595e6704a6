package uplink

import (
	"net"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// TestTransportBoundToUplinkNIC: with Config.Interface the uplink's
// connections are bound to that NIC; an interface that does not exist
// fails the dial with an error naming it; without one nothing is bound.
func TestTransportBoundToUplinkNIC(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// No Accept: the kernel completes the handshake into the backlog.
	for _, tt := range []struct{ iface, want, wantErr string }{
		{"lo", "lo", ""},
		{"", "", ""},
		{"nosuchnic0", "", "nosuchnic0"},
	} {
		conns := newConnTracker()
		conns.start()
		tr, err := newTransport(Config{Interface: tt.iface}, conns, nil)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tr.DialContext(t.Context(), "tcp", ln.Addr().String())
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("interface %q: dial = %v, want an error naming it", tt.iface, err)
			}
			if conn != nil {
				conn.Close()
			}
			continue
		}
		if err != nil {
			t.Fatalf("interface %q: %v", tt.iface, err)
		}
		tcp, ok := conn.(*trackedConn).Conn.(*net.TCPConn)
		if !ok {
			conn.Close()
			t.Fatalf("dialled a %T, not a TCP connection", conn.(*trackedConn).Conn)
		}
		dev, err := nicbind.Device(tcp)
		conn.Close()
		if err != nil || dev != tt.want {
			t.Errorf("interface %q: connection bound to %q, %v; want %q", tt.iface, dev, err, tt.want)
		}
	}
}

// TestUplinkStartsWithoutItsAddress: an uplink whose local address no NIC
// holds yet (DHCP late, a cable out) is built, and its dials fail, to be
// retried, instead of the agent failing to start.
func TestUplinkStartsWithoutItsAddress(t *testing.T) {
	dial, err := uplinkDial("", "192.0.2.77") // TEST-NET-1: on no interface here
	if err != nil {
		t.Fatalf("building the uplink's dialer: %v, want it built", err)
	}
	if _, err := dial(t.Context(), "tcp", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "192.0.2.77") {
		t.Errorf("dial = %v, want an error naming the missing address", err)
	}
	if _, err := uplinkDial("", "not-an-ip"); err == nil {
		t.Error("a local address that is no IP address was accepted")
	}
}
