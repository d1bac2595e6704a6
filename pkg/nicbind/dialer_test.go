package nicbind

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers every A question on loopback UDP and TCP with answer,
// and reports the address each query came from.
type dnsServer struct {
	udp  net.PacketConn
	tcp  net.Listener
	from chan netip.Addr
}

func startDNS(t *testing.T, answer netip.Addr) *dnsServer {
	t.Helper()
	pc, ln := listenUDPAndTCP(t)
	s := &dnsServer{udp: pc, tcp: ln, from: make(chan netip.Addr, 16)}
	t.Cleanup(func() { pc.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.from <- addr.(*net.UDPAddr).AddrPort().Addr().Unmap()
			if out := reply(buf[:n], answer); out != nil {
				pc.WriteTo(out, addr)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.from <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}
	}()
	return s
}

// listenUDPAndTCP listens on loopback UDP and TCP on one port, as DNS
// needs: the UDP port is the kernel's choice, and the same number may be
// taken for TCP by another test or process meanwhile, so on EADDRINUSE
// both are closed and it starts again, a few times.
func listenUDPAndTCP(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	var err error
	for range 10 {
		var pc net.PacketConn
		pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var ln net.Listener
		ln, err = net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	t.Fatalf("listening on one loopback port for UDP and TCP: %v", err)
	return nil, nil
}

func (s *dnsServer) addr() string { return s.udp.LocalAddr().String() }

// reply answers query with one A record, or nil when it is no query.
func reply(query []byte, answer netip.Addr) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true})
	b.EnableCompression()
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	if q.Type == dnsmessage.TypeA {
		b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: answer.As4()})
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// TestDialerResolver: a lookup through the Dialer's resolver goes through
// the bound dialer (its Control function runs for the DNS socket), from the
// given local address and bound to the interface, over UDP and TCP; the
// dialer's own connections are bound the same way.
func TestDialerResolver(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	srv := startDNS(t, netip.MustParseAddr("192.0.2.55"))
	local := netip.MustParseAddr("127.0.0.2")
	d := Dialer("lo", local)
	var controls atomic.Int32
	bound := d.Control
	d.Control = func(network, address string, rc syscall.RawConn) error {
		controls.Add(1)
		return bound(network, address, rc)
	}

	// The resolver's own dial, as Go's resolver calls it with the address
	// from resolv.conf; here the test's server, so nothing leaves loopback.
	for _, network := range []string{"udp", "tcp"} {
		conn, err := d.Resolver.Dial(ctx, network, srv.addr())
		if err != nil {
			t.Fatalf("resolver dial over %s: %v", network, err)
		}
		dev, err := Device(conn.(syscall.Conn))
		la, _ := netip.ParseAddrPort(conn.LocalAddr().String())
		conn.Close()
		if err != nil || dev != "lo" || la.Addr() != local {
			t.Errorf("resolver's %s socket bound to %q from %s (%v), want lo from %s", network, dev, la, err, local)
		}
	}
	if n := controls.Load(); n != 2 {
		t.Errorf("the bound dialer's Control ran %d times for 2 resolver dials", n)
	}
	// The server notes the TCP connection when its Accept returns, in its
	// own goroutine, which may run after the dial here has returned (and
	// after the lookup below): wait for that note. The UDP dial sent
	// nothing, so it is the first one.
	select {
	case from := <-srv.from:
		if from != local {
			t.Errorf("the DNS server's TCP connection came from %s, want %s", from, local)
		}
	case <-ctx.Done():
		t.Fatal("the DNS server never accepted the resolver's TCP connection")
	}
	// A whole lookup, the server's address put in place of resolv.conf's.
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.Resolver.Dial(ctx, network, srv.addr())
	}}
	addrs, err := r.LookupHost(ctx, "ingest.test")
	if err != nil || !slices.Contains(addrs, "192.0.2.55") {
		t.Fatalf("LookupHost = %v, %v", addrs, err)
	}
	drain := len(srv.from)
	for range drain {
		if from := <-srv.from; from != local {
			t.Errorf("the DNS server was asked from %s, want %s", from, local)
		}
	}
	// Each query is noted before it is answered, so both are in by the
	// time the lookup has its answers.
	if drain < 2 {
		t.Errorf("the DNS server saw %d queries, want the lookup's A and AAAA queries", drain)
	}

	// The dialer's own connections.
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
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if dev, _ := Device(conn.(*net.TCPConn)); dev != "lo" || conn.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap() != local {
		t.Errorf("dialled connection bound to %q from %s, want lo from %s", dev, conn.LocalAddr(), local)
	}
}

// TestDialerLocalResolver: with the dialer bound to a NIC other than
// loopback, a DNS server on loopback (systemd-resolved's stub) is still
// reached, unbound: a socket bound to a NIC cannot reach loopback at all.
func TestDialerLocalResolver(t *testing.T) {
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	nic := ""
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback == 0 && ifc.Flags&net.FlagUp != 0 {
			nic = ifc.Name
			break
		}
	}
	if nic == "" {
		t.Skip("this machine has no interface but loopback to bind to")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	srv := startDNS(t, netip.MustParseAddr("192.0.2.56"))
	d := Dialer(nic, netip.Addr{})
	d.Timeout = 2 * time.Second
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.Resolver.Dial(ctx, network, srv.addr())
	}}
	addrs, err := r.LookupHost(ctx, "ingest.test")
	if err != nil || !slices.Contains(addrs, "192.0.2.56") {
		t.Fatalf("a lookup through the loopback resolver with the dialer bound to %s: %v, %v", nic, addrs, err)
	}
	conn, err := d.Resolver.Dial(ctx, "udp", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if dev, _ := Device(conn.(syscall.Conn)); dev != "" {
		t.Errorf("the socket to the loopback resolver is bound to %q, want unbound", dev)
	}
}
