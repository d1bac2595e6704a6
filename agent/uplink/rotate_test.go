package uplink

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
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
	started, hold := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, seen{r.TLS.PeerCertificates[0].Subject.CommonName, r.RemoteAddr})
		mu.Unlock()
		if r.Header.Get("Content-Length") == "4" { // the "slow" request
			close(started)
			<-hold
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "stored"})
	})
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &closeListener{Listener: raw, closed: map[string]chan struct{}{}}
	srv := startIngest(t, h, ca.issue(t, "ingest", true), ca.pool, ln, nil)
	// Released at the latest as the test ends, before the server's Close
	// (cleanups run last in, first out), so a failure below does not leave
	// the handler waiting and Close waiting for it.
	t.Cleanup(release)

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
			err = fmt.Errorf("status %d", st) // not t.Errorf: this may outlive a failed test
		}
		slow <- err
	}()
	select {
	case <-started:
	case err := <-slow: // without this the test would hang on started
		t.Fatalf("the slow request ended before the ingest had it: %v", err)
	}

	current.Store(1)
	u.CertificateRotated()
	if st, _, err := u.SendCatalog(context.Background(), []byte("fast!")); err != nil || st != http.StatusOK {
		t.Fatalf("request after the rotation: %d, %v", st, err)
	}
	release()
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

// TestCallBeforeRunWaitsForIt: the agent starts Run and the catalogue
// sender side by side, so a call may come before Run is under way; it
// waits for Run and goes through instead of being refused as if the
// uplink had stopped (the renewal or catalogue would then wait a whole
// retry). A call after Run has returned still fails.
func TestCallBeforeRunWaitsForIt(t *testing.T) {
	e := newTestEnv(t)
	e.ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v1/catalog" {
			return false
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "stored"})
		return true
	}
	reached := make(chan struct{}, 10)
	e.cfg.Proxy = func(*http.Request) (*url.URL, error) { // the transport asks this first
		reached <- struct{}{}
		return nil, nil
	}
	u, err := New(e.cfg, e.src)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		status int
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		st, _, err := u.SendCatalog(t.Context(), []byte(`{"points":[]}`))
		done <- answer{st, err}
	}()
	// Nothing may reach the transport before Run; a broken uplink does so
	// (and fails) within this window, a correct one never does.
	select {
	case <-reached:
		t.Fatal("a call made before Run went to the transport before Run started")
	case a := <-done:
		t.Fatalf("a call made before Run returned %d, %v without waiting for Run", a.status, a.err)
	case <-time.After(200 * time.Millisecond):
	}
	stop := run(t, u)
	if a := <-done; a.err != nil || a.status != http.StatusOK {
		t.Fatalf("the call made before Run: %d, %v; want it sent once Run started", a.status, a.err)
	}
	stop()
	if _, _, err := u.SendCatalog(t.Context(), []byte(`{"points":[]}`)); err == nil || !strings.Contains(err.Error(), "uplink stopped") {
		t.Errorf("a call after Run returned: %v, want it refused because the uplink stopped", err)
	}
}
