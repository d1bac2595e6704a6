package uplink

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// closeListener tells, per client address, when the server side of a
// connection was closed.
type closeListener struct {
	net.Listener
	mu     sync.Mutex
	closed map[string]chan struct{}
}

func (l *closeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	ch := make(chan struct{})
	l.mu.Lock()
	l.closed[c.RemoteAddr().String()] = ch
	l.mu.Unlock()
	return &closeConn{Conn: c, closed: sync.OnceFunc(func() { close(ch) })}, nil
}

func (l *closeListener) closedCh(addr string) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed[addr]
}

type closeConn struct {
	net.Conn
	closed func()
}

func (c *closeConn) Close() error {
	c.closed()
	return c.Conn.Close()
}

// TestCertificateRotatedWhileBusy: after a rotation, a new request goes over
// a new connection with the new certificate even while a request is in
// flight on the old HTTP/2 connection (which is never idle, so closing idle
// connections alone leaves it in use); the old request finishes, and then
// the old connection is closed.
func TestCertificateRotatedWhileBusy(t *testing.T) {
	ca := newTestCA(t, "sightglass test CA")
	certs := []tls.Certificate{ca.issue(t, "agent-old", false), ca.issue(t, "agent-new", false)}
	var current atomic.Int32

	type seen struct{ cn, addr string }
	var mu sync.Mutex
	var requests []seen
	started, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, seen{r.TLS.PeerCertificates[0].Subject.CommonName, r.RemoteAddr})
		mu.Unlock()
		if r.Header.Get("Content-Length") == "4" { // the "slow" request
			close(started)
			<-release
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "stored"})
	})
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &closeListener{Listener: raw, closed: map[string]chan struct{}{}}
	srv := startIngest(t, h, ca.issue(t, "ingest", true), ca.pool, ln, nil)

	u, err := New(Config{
		URL:   srv.URL,
		Cert:  func() (*tls.Certificate, error) { return &certs[current.Load()], nil },
		Roots: ca.pool,
		Proxy: noProxy,
	}, newMemSource())
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)

	slow := make(chan error, 1)
	go func() {
		st, _, err := u.SendCatalog(context.Background(), []byte("slow"))
		if err == nil && st != http.StatusOK {
			t.Errorf("slow request: status %d", st)
		}
		slow <- err
	}()
	<-started

	current.Store(1)
	u.CertificateRotated()
	if st, _, err := u.SendCatalog(context.Background(), []byte("fast!")); err != nil || st != http.StatusOK {
		t.Fatalf("request after the rotation: %d, %v", st, err)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("the request in flight during the rotation failed: %v", err)
	}

	mu.Lock()
	got := append([]seen(nil), requests...)
	mu.Unlock()
	if len(got) != 2 || got[0].cn != "agent-old" || got[1].cn != "agent-new" {
		t.Fatalf("ingest saw %+v, want agent-old then agent-new", got)
	}
	if got[0].addr == got[1].addr {
		t.Errorf("the request after the rotation rode on the old connection %s", got[0].addr)
	}
	select {
	case <-ln.closedCh(got[0].addr):
	case <-time.After(10 * time.Second):
		t.Errorf("the old certificate's connection %s is still open after its last request", got[0].addr)
	}
	select {
	case <-ln.closedCh(got[1].addr):
		t.Errorf("the new connection %s was closed", got[1].addr)
	default:
	}
}
