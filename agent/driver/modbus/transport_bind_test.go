package modbus

import (
	"net"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// TestTransportBoundToNIC: a transport with a local address dials bound to
// the interface holding it (lo for 127.0.0.2), one without is not bound.
func TestTransportBoundToNIC(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// No Accept: the kernel completes the handshake into the backlog.
	for _, tt := range []struct{ local, want string }{{"127.0.0.2", "lo"}, {"", ""}} {
		tr, err := NewTransport(TransportOptions{Address: ln.Addr().String(), LocalAddr: tt.local})
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Connect(t.Context()); err != nil {
			t.Fatal(err)
		}
		dev, err := nicbind.Device(tr.conn.(*net.TCPConn))
		tr.Close()
		if err != nil || dev != tt.want {
			t.Errorf("local %q: connection bound to %q, %v; want %q", tt.local, dev, err, tt.want)
		}
	}
}
