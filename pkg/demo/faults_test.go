package demo

import (
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// TestAgentKilledAtRandomMomentsIntegration kills the agent (SIGKILL, a
// real child process) at 30 random moments while trend exports keep
// arriving and batches are being sealed and sent, and restarts it each
// time: every sample of every export is in the archive exactly once.
func TestAgentKilledAtRandomMomentsIntegration(t *testing.T) {
	s, f := newStack(t)
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	seed := rnd.Uint64()
	t.Logf("kill moments drawn from seed %d", seed)
	rnd = rand.New(rand.NewPCG(seed, 7))
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	for round := range 30 {
		f.write(t, round, 20+rnd.IntN(200))
		time.Sleep(time.Duration(rnd.IntN(600)) * time.Millisecond)
		if err := s.StopAgent(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := s.StartAgent(t.Context()); err != nil {
			t.Fatalf("restart %d: %v", round+1, err)
		}
	}
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
}

// TestIngestKilledUnderLoadIntegration kills the ingest (SIGKILL) five times
// at random moments while the agent uploads, and restarts it on the same
// address: the agent keeps its batches until they are acknowledged, so
// every sample arrives, and the claims make the retries of batches the
// dead ingest had stored but not acknowledged duplicates, not copies.
func TestIngestKilledUnderLoadIntegration(t *testing.T) {
	s, f := newStack(t)
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	n := 0
	for round := range 5 {
		for range 3 {
			f.write(t, n, 50+rnd.IntN(150))
			n++
			time.Sleep(time.Duration(rnd.IntN(300)) * time.Millisecond)
		}
		if err := s.StopIngest(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		f.write(t, n, 100) // arrives while the ingest is down
		n++
		time.Sleep(time.Duration(rnd.IntN(700)) * time.Millisecond)
		if err := s.StartIngest(t.Context()); err != nil {
			t.Fatalf("restart %d: %v", round+1, err)
		}
	}
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
}
