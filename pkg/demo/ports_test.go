package demo

import (
	"errors"
	"net"
	"net/url"
	"syscall"
	"testing"
)

// TestStackHoldsIngestPorts: while the ingest is not running, from Init
// and from StopIngest until StartIngest, the stack holds the ports the
// ingest's configuration names, so another process (a test of another
// package binding 127.0.0.1:0) cannot take one and make the ingest fail
// to start; a connection to a held port is refused, as to an ingest that
// is down.
func TestStackHoldsIngestPorts(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	s := &Stack{Bin: binDir, Dir: t.TempDir()}
	if err := s.Init(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	dash, err := url.Parse(s.DashboardURL)
	if err != nil {
		t.Fatal(err)
	}
	held := func(when string) {
		t.Helper()
		for _, addr := range []string{s.ingestAddr, dash.Host} {
			if ln, err := net.Listen("tcp", addr); err == nil {
				ln.Close()
				t.Errorf("%s another listener could take %s, an address of the ingest", when, addr)
			}
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Errorf("%s a connection to %s was accepted, with the ingest not running", when, addr)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s dialing %s: %v, want connection refused", when, addr, err)
			}
		}
	}
	held("after Init")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := s.StartIngest(t.Context()); err != nil {
			t.Fatalf("the ingest did not start on the ports the stack held: %v", err)
		}
		if err := s.StopIngest(sig); err != nil && sig == syscall.SIGTERM {
			t.Fatal(err)
		}
		held("after StopIngest(" + sig.String() + ")")
	}
	if err := s.StartIngest(t.Context()); err != nil {
		t.Fatalf("the ingest did not start again: %v", err)
	}
}
