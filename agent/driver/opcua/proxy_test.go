package opcua

import (
	"net"
	"strings"
	"sync"
	"testing"
)

// cutProxy is a TCP proxy on loopback between the driver and a server,
// whose Cut drops every connection at once and refuses new ones until
// Restore: a network cut, with the server (and its history) running on.
// Blackhole keeps the connections open but loses every byte on them, as a
// pulled cable or a dead host does (no reset ever arrives).
type cutProxy struct {
	ln     net.Listener
	target string

	mu   sync.Mutex
	cut  bool
	hole bool
	// accepted counts the connections the proxy took.
	accepted int
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

// startProxy proxies to the opc.tcp URL target (on loopback) until the
// test ends.
func startProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	addr := strings.TrimPrefix(target, "opc.tcp://")
	if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
		t.Fatalf("proxy target %q: want opc.tcp:// on loopback", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: addr, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// URL is the proxy's endpoint.
func (p *cutProxy) URL() string { return "opc.tcp://" + p.ln.Addr().String() }

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // the listener closed
		}
		p.mu.Lock()
		cut := p.cut
		p.accepted++
		p.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// pipe copies from src to dst until either end closes, then closes both;
// while blackholed it drops what it reads.
func (p *cutProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		hole := p.hole
		p.mu.Unlock()
		if n > 0 && !hole {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// Cut drops every connection and refuses new ones until Restore.
func (p *cutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections (and bytes) through again.
func (p *cutProxy) Restore() {
	p.mu.Lock()
	p.cut, p.hole = false, false
	p.mu.Unlock()
}

// Accepted is how many connections the proxy took so far.
func (p *cutProxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Blackhole loses every byte on the open connections from now until
// Restore, and lets new connections through.
func (p *cutProxy) Blackhole() {
	p.mu.Lock()
	p.hole = true
	p.mu.Unlock()
}
