package demo

import (
	"net"
	"net/url"
	"testing"
)

// TestInitHoldsIngestPorts: from Init until StartIngest the stack holds
// the ports it chose for the ingest's listeners, so another process (a
// test of another package binding 127.0.0.1:0) cannot take one while Init
// runs its ingest commands and make the ingest fail to start.
func TestInitHoldsIngestPorts(t *testing.T) {
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
	for _, addr := range []string{s.ingestAddr, dash.Host} {
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			t.Errorf("after Init another listener could take %s, an address of the ingest", addr)
		}
	}
	if err := s.StartIngest(t.Context()); err != nil {
		t.Fatalf("the ingest did not start on the ports Init held: %v", err)
	}
}
