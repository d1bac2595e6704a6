package opcua

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopcua/opcua/uacp"
)

// TestStartHoldsItsPort: the internal port Start picks for gopcua's
// server stays reserved while the server is built (seconds under load),
// so no other process can take it meanwhile, and when one takes it in the
// instant between letting it go and gopcua binding it, Start tries
// another port instead of failing. (Released before the build, as the
// public port was, the OPC UA tests failed on a busy machine with "bind:
// address already in use".)
func TestStartHoldsItsPort(t *testing.T) {
	var held []error
	var taken net.Listener
	hookReserved = func(port int) {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			l.Close()
		}
		held = append(held, err)
	}
	hookReleased = func(port int) {
		if taken != nil {
			return
		}
		// Another process takes the port first.
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Errorf("taking the released port %d: %v", port, err)
			return
		}
		taken = l
	}
	t.Cleanup(func() {
		hookReserved, hookReleased = nil, nil
		if taken != nil {
			taken.Close()
		}
	})
	s, err := Start(t.Context(), Options{})
	if err != nil {
		t.Fatalf("Start with its first port taken: %v", err)
	}
	defer s.Close()
	if len(held) != 2 {
		t.Fatalf("the server was built %d times, want 2 (the first port taken, then another)", len(held))
	}
	for i, err := range held {
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("build %d: another listener got the port while the server was built (%v); Start must hold it until the server binds", i+1, err)
		}
	}
	if s.backend == taken.Addr().String() {
		t.Fatalf("the server relays to %s, which another listener took", s.backend)
	}
	c, err := net.Dial("tcp", s.URL[len("opc.tcp://"):])
	if err != nil {
		t.Fatalf("the simulator does not listen at %s: %v", s.URL, err)
	}
	c.Close()
}

// TestCloseDropsConnections: a client connected when the simulator closes
// sees its connection end at once, as when a server restarts; gopcua's
// own Close leaves it open, and the client then waits on a server that is
// gone. The port is free again for a restart.
func TestCloseDropsConnections(t *testing.T) {
	s, err := Start(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := strings.TrimPrefix(s.URL, "opc.tcp://")
	// A client past the transport handshake, as every session is.
	c, err := uacp.Dial(t.Context(), s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The deadline only bounds a hang; the end comes at once.
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from a connection to the closed simulator: %v; want it ended", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the closed simulator's port is not free: %v", err)
	}
	l.Close()
}
