package buffer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// The kill test re-executes the test binary as a child that appends (and
// seals, and acknowledges) in a loop until the parent SIGKILLs it; the
// parent then checks the file. The env vars tell the child what to do.
const (
	envChildPath  = "SIGHTGLASS_BUFFER_KILL_CHILD"
	envChildRound = "SIGHTGLASS_BUFFER_KILL_ROUND"

	killRounds   = 4
	childWorkers = 4
	appendSize   = 25
)

// appendID names one Append call of the kill test; its samples are
// derived from it (see killSamples).
type appendID struct{ round, worker, index int }

func (a appendID) String() string { return fmt.Sprintf("%d/%d/%d", a.round, a.worker, a.index) }

func killSamples(a appendID) []telemetry.Sample {
	return mkSamples(((a.round*childWorkers+a.worker)*1_000_000+a.index)*appendSize, appendSize)
}

func TestKillDurability(t *testing.T) {
	if path := os.Getenv(envChildPath); path != "" {
		round, _ := strconv.Atoi(os.Getenv(envChildRound))
		killChild(path, round)
		return
	}
	if testing.Short() {
		t.Skip("spawns child processes; skipped with -short")
	}
	path := tempPath(t)

	acked := map[appendID]bool{}      // Append returned nil
	ackIntent := map[appendID]bool{}  // in a batch the child was about to Ack
	seqContent := map[uint64]string{} // seq -> appends, from every intent ever printed
	for round := range killRounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillDurability$")
		cmd.Env = append(os.Environ(), envChildPath+"="+path, envChildRound+"="+strconv.Itoa(round))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a varying number of acknowledged appends, so the kill
		// lands at different points of the append/seal/ack cycle.
		killAfter, n, killed := 300+round*137, 0, false
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				break // a partial last line is ignored: the child died writing it
			}
			f := strings.Fields(line)
			switch {
			case len(f) == 4 && f[0] == "ack":
				a := appendID{round: round, worker: atoi(t, f[2]), index: atoi(t, f[3])}
				acked[a] = true
				n++
			case len(f) >= 2 && f[0] == "acking":
				seq := uint64(atoi(t, f[1]))
				content := strings.Join(f[2:], " ")
				if prev, ok := seqContent[seq]; ok && prev != content {
					t.Fatalf("sequence %d reused: first %s, now %s", seq, prev, content)
				}
				seqContent[seq] = content
				for _, s := range f[2:] {
					ackIntent[parseAppendID(t, s)] = true
				}
			}
			if n >= killAfter && !killed {
				if err := cmd.Process.Kill(); err != nil { // SIGKILL
					t.Fatal(err)
				}
				killed = true
			}
		}
		err = cmd.Wait()
		if !killed {
			t.Fatalf("round %d: child exited on its own after %d acknowledged appends: %v", round, n, err)
		}
		t.Logf("round %d: killed after %d acknowledged appends", round, n)
	}

	// Everything left in the file: seal the rest, then read every batch.
	b := openT(t, path, Options{NoSync: true})
	defer b.Close()
	st := b.Stats()
	if st.DroppedSamples != 0 {
		t.Fatalf("dropped %d samples under the default cap", st.DroppedSamples)
	}
	for {
		_, ok, err := b.Seal(context.Background(), 1_000_000, fakeSeal)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
	}
	found := map[appendID]int{}
	for after := uint64(0); ; {
		s, ok, err := b.Next(after)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		after = s.Seq
		_, samples, err := fakeOpen(s.Data)
		if err != nil {
			t.Fatal(err)
		}
		for len(samples) > 0 {
			a, ok := appendOf(samples[0])
			if !ok || len(samples) < appendSize || !sameSamples(samples[:appendSize], killSamples(a)) {
				t.Fatalf("batch %d holds samples that are not a whole append: %v", s.Seq, samples[0])
			}
			found[a]++
			samples = samples[appendSize:]
		}
	}
	// The last acknowledged index of each worker in each round: an append
	// stored but never acknowledged must be the one in flight at the kill.
	last := map[[2]int]int{}
	for a := range acked {
		k := [2]int{a.round, a.worker}
		if i, ok := last[k]; !ok || a.index > i {
			last[k] = a.index
		}
	}
	for a, n := range found {
		if n > 1 {
			t.Errorf("append %s stored %d times", a, n)
		}
		if i, ok := last[[2]int{a.round, a.worker}]; !acked[a] && (!ok || a.index != i+1) {
			t.Errorf("append %s stored but neither acknowledged nor in flight at the kill", a)
		}
	}
	lost := 0
	for a := range acked {
		if found[a] == 0 && !ackIntent[a] {
			lost++
			if lost < 10 {
				t.Errorf("acknowledged append %s is gone", a)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged appends lost", lost)
	}
	t.Logf("%d appends acknowledged, %d acknowledged by the uplink before a kill, %d still stored", len(acked), len(ackIntent), len(found))
}

// appendOf finds the append a kill-test sample came from.
func appendOf(s telemetry.Sample) (appendID, bool) {
	// mkSamples: PointID = k*c + 1 with c odd, so k = (PointID-1) * c⁻¹.
	k := int((s.PointID - 1) * inverseGolden)
	if k%appendSize != 0 {
		return appendID{}, false
	}
	k /= appendSize
	a := appendID{index: k % 1_000_000}
	k /= 1_000_000
	a.worker, a.round = k%childWorkers, k/childWorkers
	return a, true
}

// inverseGolden is the multiplicative inverse of mkSamples' constant mod 2^64.
var inverseGolden = func() uint64 {
	const c = 0x9e3779b97f4a7c15
	x := uint64(c) // Newton's iteration: each step doubles the correct low bits
	for range 6 {
		x *= 2 - c*x
	}
	return x
}()

func parseAppendID(t *testing.T, s string) appendID {
	t.Helper()
	p := strings.Split(s, "/")
	if len(p) != 3 {
		t.Fatalf("bad append id %q", s)
	}
	return appendID{atoi(t, p[0]), atoi(t, p[1]), atoi(t, p[2])}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// killChild is the child process: workers append until killed, printing
// "ack <round> <worker> <index>" after each Append returns; an uplink
// loop seals and acknowledges, printing "acking <seq> <appends...>" before
// each Ack. Lines are single writes, smaller than a pipe's atomic write.
func killChild(path string, round int) {
	b, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	say := func(s string) {
		mu.Lock()
		os.Stdout.WriteString(s)
		mu.Unlock()
	}
	ctx := context.Background()
	for w := range childWorkers {
		go func() {
			for i := 0; ; i++ {
				a := appendID{round, w, i}
				if err := b.Append(ctx, killSamples(a)); err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(2)
				}
				say(fmt.Sprintf("ack %d %d %d\n", round, w, i))
			}
		}()
	}
	for i := 0; ; i++ {
		if _, _, err := b.Seal(ctx, 4*appendSize, fakeSeal); err != nil {
			fmt.Fprintln(os.Stderr, "child seal:", err)
			os.Exit(2)
		}
		// Acknowledge every other batch, so sealed batches also pile up.
		if i%2 == 1 {
			continue
		}
		s, ok, err := b.Next(0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child next:", err)
			os.Exit(2)
		}
		if !ok {
			time.Sleep(time.Millisecond) // pacing only: do not spin while workers append
			continue
		}
		_, samples, err := fakeOpen(s.Data)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child decode:", err)
			os.Exit(2)
		}
		var line strings.Builder
		fmt.Fprintf(&line, "acking %d", s.Seq)
		for j := 0; j < len(samples); j += appendSize {
			a, _ := appendOf(samples[j])
			fmt.Fprintf(&line, " %s", a)
		}
		say(line.String() + "\n")
		if err := b.Ack(s.Seq); err != nil {
			fmt.Fprintln(os.Stderr, "child ack:", err)
			os.Exit(2)
		}
	}
}
