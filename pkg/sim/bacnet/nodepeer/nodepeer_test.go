package nodepeer

import (
	"net"
	"testing"
)

// TestStartRetriesTakenPortIntegration hands the first start of a peer
// bound to 0.0.0.0 a port another socket holds, as a test running in
// parallel can take the probed port before node binds it: node reports
// EADDRINUSE, and Start tries again on a fresh port instead of waiting
// for a peer that will never listen.
func TestStartRetriesTakenPortIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.LocalAddr().(*net.UDPAddr).Port
	real := freePort
	calls := 0
	freePort = func() (int, error) {
		calls++
		if calls == 1 {
			return takenPort, nil
		}
		return real()
	}
	t.Cleanup(func() { freePort = real })
	p := Start(t, "0.0.0.0", 4343)
	if calls != 2 || int(p.Addr.Port()) == takenPort {
		t.Fatalf("peer at %s after %d port probes; want a second probe's port, not the taken %d", p.Addr, calls, takenPort)
	}
	// It is a working peer: the log barrier reaches it.
	if got := p.Services(); len(got) != 0 {
		t.Errorf("a peer nobody asked logged %v", got)
	}
}
