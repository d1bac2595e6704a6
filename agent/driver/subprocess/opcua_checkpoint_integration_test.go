package subprocess

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/agent/poll"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// hostedOPCUA builds the OPC UA driver in a driver host for points, as
// the agent does, with backfill_max window.
func hostedOPCUA(t *testing.T, sim *simopcua.Server, points []driver.Point, window time.Duration, logs *drivertest.LogBuffer) driver.Driver {
	t.Helper()
	settings := fmt.Sprintf("endpoint: %s\nsecurity_policy: None\nsecurity_mode: None\npki_dir: %s\nreconnect_min: 50ms\nreconnect_max: 200ms\nbackfill_max: %s\n", sim.URL, t.TempDir(), window)
	d, err := Wrap(opcua.Info(), selfCommand, Options{Grace: time.Second}).New(driver.Device{Name: "plant", Settings: drivertest.YAML(settings), Points: points, Logger: logs.Logger(), DataDir: t.TempDir(), Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// historySim starts our simulator with a minute of history logged every
// 100 ms, and returns it with two points: its history variable (ID 1,
// history: true) and a plain one.
func historySim(t *testing.T) (*simopcua.Server, []driver.Point) {
	t.Helper()
	sim, err := simopcua.Start(t.Context(), simopcua.Options{Epoch: time.Now().Add(-time.Minute), HistoryInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim, []driver.Point{
		{ID: 1, Ref: fmt.Sprintf("ns=%d;s=%s", sim.NS, simopcua.HistoryNode), Settings: drivertest.YAML("history: true")},
		{ID: 2, Ref: fmt.Sprintf("ns=%d;s=AHU1.FanSpeed", sim.NS)},
	}
}

// readHosted reads points under a poller's deadline.
func readHosted(t *testing.T, d driver.Driver, points []driver.Point) []telemetry.Sample {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	samples, err := d.Read(ctx, points)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return samples
}

// timesOf returns the times of point id's samples.
func timesOf(samples []telemetry.Sample, id uint64) []int64 {
	var out []int64
	for _, s := range samples {
		if s.PointID == id {
			out = append(out, s.Time)
		}
	}
	return out
}

// TestOPCUACheckpointIntegration is issue 5's restart through the driver
// host, against our simulator with history: one host reads (the 20 s
// window of the history point's log), its checkpoint is committed, and the
// host stops, as at an agent restart. A new host restored with that state
// backfills from the committed time: only the few values logged since,
// none it already returned. A third host without the state reads the
// whole window again, which is what the agent did before, and shows the
// test can fail. The server receives nothing but reads.
func TestOPCUACheckpointIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an OPC UA server and driver hosts (not with -short)")
	}
	sim, points := historySim(t)
	const window = 20 * time.Second
	var logs drivertest.LogBuffer

	first := hostedOPCUA(t, sim, points, window, &logs)
	var err error
	cp, ok := first.(driver.Checkpointer)
	if !ok {
		t.Fatalf("the hosted OPC UA driver of a device with history is a %T, not a driver.Checkpointer", first)
	}
	com, ok := first.(driver.Committer)
	if !ok {
		t.Fatal("the hosted OPC UA driver of a device with history is not a Committer")
	}
	connectCtx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	err = first.Connect(connectCtx)
	cancel()
	if err != nil {
		t.Fatalf("Connect: %v\n%s", err, logs.String())
	}
	got1 := readHosted(t, first, points)
	before := timesOf(got1, 1)
	if len(before) < int(window/(100*time.Millisecond))-10 {
		t.Fatalf("the first host returned %d samples of the history point, want its %s window (~%d)\n%s", len(before), window, window/(100*time.Millisecond), logs.String())
	}
	state := cp.Checkpoint()
	if state == nil {
		t.Fatal("Checkpoint after a Read with history is nil")
	}
	if err := com.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Points map[string]struct {
			Last int64 `json:"last"`
		} `json:"points"`
	}
	if err := json.Unmarshal(state, &st); err != nil {
		t.Fatalf("the checkpoint %q: %v", state, err)
	}
	committed := st.Points[points[0].Ref].Last
	if committed != slices.Max(before) {
		t.Errorf("the checkpoint's mark is %d, want the newest time returned, %d", committed, slices.Max(before))
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the agent is down: ~10 values are logged meanwhile

	second := hostedOPCUA(t, sim, points, window, &logs)
	if err := second.(driver.Checkpointer).Restore(state); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	connectCtx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	err = second.Connect(connectCtx)
	cancel()
	if err != nil {
		t.Fatalf("Connect after Restore: %v\n%s", err, logs.String())
	}
	var after []int64
	for range 2 { // the gap fits in the first Read; a second shows nothing more comes
		after = append(after, timesOf(readHosted(t, second, points), 1)...)
	}
	returned := map[int64]bool{}
	for _, ms := range before {
		returned[ms] = true
	}
	for _, ms := range after {
		if returned[ms] || ms <= committed {
			t.Errorf("the restored host returned the history point at %d again (committed up to %d)", ms, committed)
		}
	}
	slices.Sort(after)
	if len(after) == 0 || len(after) > 30 {
		t.Fatalf("the restored host returned %d samples of the history point, want the ~10 logged while it was down and its live ones, not the %s window\n%s", len(after), window, logs.String())
	}
	if gap := after[0] - committed; gap > 100 {
		t.Errorf("the restored host's backfill starts %d ms after the committed time, want the next logged value (within 100 ms)", gap)
	}
	t.Logf("first host: %d samples of the history point; restored host: %d, from %d ms after the committed time", len(before), len(after), after[0]-committed)

	// Without the state, a host reads the window again: what the agent
	// did at every restart before it carried the checkpoint.
	third := hostedOPCUA(t, sim, points, window, &logs)
	connectCtx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	err = third.Connect(connectCtx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	again := 0
	for _, ms := range timesOf(readHosted(t, third, points), 1) {
		if returned[ms] {
			again++
		}
	}
	if again < len(before)/2 {
		t.Errorf("a host without the state returned %d of the first host's %d samples again; the test's history is too short to tell a restore from none", again, len(before))
	}
	if bad := notReadServices(sim.Services()); len(bad) > 0 {
		t.Errorf("the server received %q, which are not reads", bad)
	}
}

// notReadServices returns the services in got that are not reads.
func notReadServices(got []string) []string {
	var out []string
	for _, s := range got {
		if !slices.Contains(readServices, s) {
			out = append(out, s)
		}
	}
	return out
}

// TestOPCUAConformanceIntegration runs the driver kit against the OPC UA
// driver in a driver host, with a history point over one simulated
// history that every instance the kit builds reads from the same
// simulator: the kit's Checkpoint checks (resume, garbage states) pass
// through the protocol as they do in-process, and the recording simulator
// receives nothing but reads. (One simulator for all: building gopcua's
// server takes seconds under -race, and with one per instance the test
// took 130-230 s on a loaded machine.)
func TestOPCUAConformanceIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts OPC UA servers and driver hosts (not with -short)")
	}
	s, err := simopcua.Start(t.Context(), simopcua.Options{MaxNodesPerRead: 2, Epoch: time.Now().Add(-time.Minute), HistoryInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			points := []driver.Point{
				{ID: 1, Ref: fmt.Sprintf("ns=%d;s=AHU1.FanSpeed", s.NS)},
				{ID: 2, Ref: fmt.Sprintf("ns=%d;s=%s", s.NS, simopcua.HistoryNode), Settings: drivertest.YAML("history: true")},
				{ID: 3, Ref: s.Variables()[0]},
			}
			return hostedOPCUA(t, s, points, 20*time.Second, &drivertest.LogBuffer{}), points
		},
		Writes: func() []string { return notReadServices(s.Services()) },
	})
}

// stateSink is the agent's buffer as the poller sees it (poll.StateSink):
// it keeps every sample appended and the state stored with the last ones.
type stateSink struct {
	mu      sync.Mutex
	samples []telemetry.Sample
	states  map[string][]byte
	appends int
}

func (s *stateSink) Append(_ context.Context, samples []telemetry.Sample) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, samples...)
	s.appends++
	return nil
}

func (s *stateSink) AppendState(ctx context.Context, key string, state []byte, samples []telemetry.Sample) error {
	s.mu.Lock()
	if s.states == nil {
		s.states = map[string][]byte{}
	}
	s.states[key] = bytes.Clone(state)
	s.mu.Unlock()
	return s.Append(ctx, samples)
}

func (s *stateSink) State(key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.states[key]
	return bytes.Clone(b), ok, nil
}

func (s *stateSink) snapshot() ([]telemetry.Sample, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.samples), s.appends
}

// TestOPCUARestartUnderPollerIntegration runs the hosted OPC UA driver
// under the agent's real poller twice over one buffer, as an agent that
// is stopped and started again: the second run's poller restores the
// state stored with the first run's last samples before its first
// Connect, and the buffer ends up with every logged value of the history
// point once, the restart's gap included, and none twice.
func TestOPCUARestartUnderPollerIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an OPC UA server and driver hosts (not with -short)")
	}
	sim, points := historySim(t)
	const window = 20 * time.Second
	out := &stateSink{}
	var logs drivertest.LogBuffer
	run := func(name string, reads int) {
		t.Helper()
		d := hostedOPCUA(t, sim, points, window, &logs)
		sched, err := poll.New([]poll.Device{{Name: "plant", Driver: d, Points: points, Interval: time.Second, Timeout: time.Second}}, out,
			poll.Options{BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond, Logger: logs.Logger()})
		if err != nil {
			t.Fatal(err)
		}
		_, before := out.snapshot()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- sched.Run(ctx) }()
		deadline := time.Now().Add(20 * time.Second)
		for _, n := out.snapshot(); n < before+reads && time.Now().Before(deadline); _, n = out.snapshot() {
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: poller: %v", name, err)
		}
		if _, n := out.snapshot(); n < before+reads {
			t.Fatalf("%s: %d reads stored in 20 s, want %d\n%s", name, n-before, reads, logs.String())
		}
	}
	run("first run", 3)
	if _, ok, _ := out.State("plant"); !ok {
		t.Fatal("the poller stored no state with the hosted driver's samples")
	}
	first, _ := out.snapshot()
	time.Sleep(time.Second) // the agent is down
	run("after the restart", 3)
	all, _ := out.snapshot()

	times := timesOf(all, 1)
	seen := map[int64]int{}
	for _, ms := range times {
		seen[ms]++
	}
	for ms, n := range seen {
		if n > 1 {
			t.Errorf("the history point's sample at %d is in the buffer %d times", ms, n)
		}
	}
	// Between polls the server logs values live polling does not fetch,
	// by design; but the restart's gap, from the newest time the first
	// run stored to the second run's first live sample, is backfilled:
	// every value logged in it is in the buffer.
	lastBefore := slices.Max(timesOf(first, 1))
	firstAfter := timesOf(all[len(first):], 1)[0] // a Read's live sample leads
	gap, missing := 0, 0
	for ms := lastBefore - lastBefore%100 + 100; ms < firstAfter; ms += 100 {
		gap++
		if seen[ms] == 0 {
			missing++
		}
	}
	if gap < 5 || missing > 0 {
		t.Errorf("of the %d values logged in the restart's gap (%d to %d), %d are missing from the buffer", gap, lastBefore, firstAfter, missing)
	}
	t.Logf("history point: %d samples stored by the first run, %d in all, none twice", len(timesOf(first, 1)), len(times))
}
