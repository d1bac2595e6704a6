package subprocess

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// fakeInfo is the named fake driver as the agent would see it: wrapped,
// its validating instance built in-process.
func fakeInfo(name string) driver.Info {
	for _, info := range hostedForTest() {
		if info.Name == name {
			return info
		}
	}
	panic("no hosted test driver " + name)
}

// newProxyT wraps the named fake and builds a proxy for points, with short
// timeouts so failures show quickly.
func newProxyT(t *testing.T, name string, settings string, points []driver.Point, logs *drivertest.LogBuffer) driver.Driver {
	t.Helper()
	if logs == nil {
		logs = &drivertest.LogBuffer{}
	}
	info := Wrap(fakeInfo(name), selfCommand, Options{Grace: 300 * time.Millisecond, CloseTimeout: 2 * time.Second})
	if info.Name != name {
		t.Fatalf("Wrap renamed %q to %q", name, info.Name)
	}
	d, err := info.New(driver.Device{Name: "dev-" + name, Settings: drivertest.YAML(settings), Points: points, Logger: logs.Logger(), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func connect(t *testing.T, d driver.Driver) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatalf("Connect: %v", err)
	}
}

func readT(t *testing.T, d driver.Driver, points []driver.Point) ([]telemetry.Sample, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	return d.Read(ctx, points)
}

// TestConformance runs the SDK's kit against the fake behind the proxy: the
// proxy keeps every part of the driver contract.
func TestConformance(t *testing.T) {
	for _, name := range []string{"fake", "fakecommit", "plain"} {
		t.Run(name, func(t *testing.T) {
			drivertest.Run(t, drivertest.Harness{New: func(t *testing.T) (driver.Driver, []driver.Point) {
				points := []driver.Point{{ID: 1, Ref: "a"}, {ID: 2, Ref: "b"}}
				return newProxyT(t, name, "", points, nil), points
			}})
		})
	}
}

// TestCapabilities checks that a proxy implements exactly the optional
// interfaces of the driver it stands for.
func TestCapabilities(t *testing.T) {
	tests := []struct {
		name             string
		discover, commit bool
	}{
		{"plain", false, false},
		{"fake", true, false},
		{"fakecommit", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newProxyT(t, tt.name, "", nil, nil)
			if _, ok := d.(driver.Discoverer); ok != tt.discover {
				t.Errorf("Discoverer = %v, want %v", ok, tt.discover)
			}
			if _, ok := d.(driver.Committer); ok != tt.commit {
				t.Errorf("Committer = %v, want %v", ok, tt.commit)
			}
		})
	}
}

// TestRoundTrip carries settings, points and samples across, bit for bit.
func TestRoundTrip(t *testing.T) {
	points := []driver.Point{
		{ID: 7, Ref: "a", Name: "A", Tags: []string{"x"}, Settings: drivertest.YAML("offset: 0.5")},
		{ID: 9, Ref: "nan"},
		{ID: 11, Ref: "commits"},
	}
	d := newProxyT(t, "fakecommit", "scale: 2", points, nil)
	connect(t, d)
	samples, err := readT(t, d, points)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 3 {
		t.Fatalf("%d samples, want 3: %+v", len(samples), samples)
	}
	want := telemetry.Sample{PointID: 7, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli(), Value: 14.5, Status: telemetry.StatusOK}
	if samples[0] != want {
		t.Errorf("sample %+v, want %+v (device scale 2 × ID 7 + point offset 0.5)", samples[0], want)
	}
	if b := math.Float64bits(samples[1].Value); b != nanBits {
		t.Errorf("NaN arrived as %#x, want %#x bit for bit", b, uint64(nanBits))
	}
	// A point that is not one the device was built with goes whole, its
	// settings included.
	other := []driver.Point{{ID: 100, Ref: "new", Settings: drivertest.YAML("offset: 1")}}
	samples, err = readT(t, d, other)
	if err != nil || len(samples) != 1 || samples[0].Value != 201 {
		t.Errorf("Read(unconfigured point) = %+v, %v; want one sample of 2×100+1", samples, err)
	}
	c := d.(driver.Committer)
	for range 2 {
		if err := c.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	samples, err = readT(t, d, points[2:])
	if err != nil || len(samples) != 1 || samples[0].Value != 2 {
		t.Errorf("after 2 Commits, Read = %+v, %v; want the count 2", samples, err)
	}
	found, err := d.(driver.Discoverer).Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 2 || found[0].Ref != "d1" || found[0].Unit != "°C" || found[0].Interval != 30*time.Second || strings.Join(found[0].Tags, ",") != "zone,temp" || found[1].Settings != nil {
		t.Fatalf("Discover = %+v", found)
	}
	var ps fakePointSettings
	if err := found[0].Settings.Decode(&ps); err != nil || ps.Offset != 0.25 {
		t.Errorf("discovered settings decode to %+v, %v; want offset 0.25", ps, err)
	}
	var bad struct{}
	if err := found[0].Settings.Decode(&bad); err == nil {
		t.Error("discovered settings decode unknown keys without an error; want strict decoding")
	}
}

// TestValidatesInProcess checks that New refuses bad settings itself,
// without starting a child, and starts none before Connect.
func TestValidatesInProcess(t *testing.T) {
	var started atomic.Int32
	cmd := func() (*exec.Cmd, error) { started.Add(1); return selfCommand() }
	info := Wrap(fakeInfo("fake"), cmd, Options{})
	if _, err := info.New(driver.Device{Name: "bad", Settings: drivertest.YAML("scale: 1\nbogus: 2\n")}); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("New with an unknown key: %v; want the driver's error naming it", err)
	}
	d, err := info.New(driver.Device{Name: "good", Settings: drivertest.YAML("scale: 1\n")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if n := started.Load(); n != 0 {
		t.Errorf("New started %d children; want none before Connect", n)
	}
	if _, err := d.Read(t.Context(), nil); err == nil {
		t.Error("Read before Connect succeeded; want an error")
	}
}

// TestErrorKinds checks that the sentinels an error wraps in the child
// still match errors.Is in the parent, message kept.
func TestErrorKinds(t *testing.T) {
	tests := []struct {
		ref     string
		timeout time.Duration
		want    error
		text    string
	}{
		{ref: "busy", want: driver.ErrBusy, text: "device says later"},
		{ref: "lost", want: driver.ErrConnLost, text: "socket reset"},
		{ref: "refused", want: driver.ErrRefused, text: "write attempt"},
		{ref: "slow", timeout: 100 * time.Millisecond, want: context.DeadlineExceeded, text: "reading slowly"},
		// Cancelled, not timed out: the child is told and its driver's
		// error says so.
		{ref: "slow", timeout: -100 * time.Millisecond, want: context.Canceled, text: "reading slowly"},
	}
	points := []driver.Point{{ID: 1, Ref: "busy"}, {ID: 2, Ref: "lost"}, {ID: 3, Ref: "refused"}, {ID: 4, Ref: "slow"}, {ID: 5, Ref: "slow"}}
	d := newProxyT(t, "fake", "", points, nil)
	connect(t, d)
	for i, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			switch {
			case tt.timeout > 0:
				ctx, cancel = context.WithTimeout(t.Context(), tt.timeout)
			case tt.timeout < 0:
				stop := time.AfterFunc(-tt.timeout, cancel)
				defer stop.Stop()
			}
			defer cancel()
			_, err := d.Read(ctx, points[i:i+1])
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
				t.Errorf("Read = %v; want an error wrapping %v saying %q", err, tt.want, tt.text)
			}
			for _, other := range []error{driver.ErrBusy, driver.ErrConnLost, driver.ErrRefused} {
				if other != tt.want && errors.Is(err, other) {
					t.Errorf("Read = %v also wraps %v", err, other)
				}
			}
		})
	}
	// None of those killed the child: it reads on.
	if _, err := readT(t, d, []driver.Point{{ID: 9, Ref: "ok"}}); err != nil {
		t.Errorf("Read after the errors: %v", err)
	}
	// Connect's errors keep their kind too.
	lost := newProxyT(t, "fake", "connect_error: lost", nil, nil)
	if err := lost.Connect(t.Context()); !errors.Is(err, driver.ErrConnLost) || !strings.Contains(err.Error(), "no route") {
		t.Errorf("Connect = %v; want the child's error wrapping ErrConnLost", err)
	}
}

// TestChildDies kills the child in each way a device could make it die:
// the call in flight and the next fail with ErrConnLost naming the exit
// and the child's last words, and Connect starts a fresh child.
func TestChildDies(t *testing.T) {
	tests := []struct {
		ref  string
		want []string
	}{
		{"panic", []string{"exit status 2", "panic: fake driver: boom"}},
		{"exit", []string{"exit status 3"}},
		// "fatal error: runtime: out of memory"; under -race the race
		// runtime reports the failed mapping in its own words.
		{"alloc", []string{"exit status 2", "fatal error"}},
		{"hang", []string{"signal: killed", "killed as hung", "context deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			points := []driver.Point{{ID: 1, Ref: "pid"}, {ID: 2, Ref: tt.ref}}
			var logs drivertest.LogBuffer
			d := newProxyT(t, "fake", "", points, &logs)
			connect(t, d)
			first, err := readT(t, d, points[:1])
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			began := time.Now()
			_, err = d.Read(ctx, points[1:])
			if took := time.Since(began); took > 5*time.Second {
				t.Errorf("the failed Read took %s", took)
			}
			if !errors.Is(err, driver.ErrConnLost) {
				t.Fatalf("Read = %v; want ErrConnLost", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Read error %q does not say %q", err, w)
				}
			}
			if _, again := readT(t, d, points[:1]); !errors.Is(again, driver.ErrConnLost) {
				t.Errorf("the next Read = %v; want the same ErrConnLost until Connect", again)
			}
			if !strings.Contains(logs.String(), "driver host died") {
				t.Errorf("the death was not logged:\n%s", logs.String())
			}
			// The poller closes and connects again: a new child.
			if err := d.Close(); err != nil {
				t.Errorf("Close after the death: %v", err)
			}
			connect(t, d)
			second, err := readT(t, d, points[:1])
			if err != nil {
				t.Fatalf("Read from the new child: %v", err)
			}
			if second[0].Value == first[0].Value {
				t.Errorf("the child after Connect has the dead one's pid %v", first[0].Value)
			}
		})
	}
}

// TestConnectAfterDeathWithoutClose checks that Connect alone replaces a
// dead child (the poller closes first, but the contract does not need it).
func TestConnectAfterDeathWithoutClose(t *testing.T) {
	points := []driver.Point{{ID: 1, Ref: "exit"}, {ID: 2, Ref: "ok"}}
	d := newProxyT(t, "fake", "", points, nil)
	connect(t, d)
	if _, err := readT(t, d, points[:1]); !errors.Is(err, driver.ErrConnLost) {
		t.Fatalf("Read = %v; want ErrConnLost", err)
	}
	connect(t, d)
	if _, err := readT(t, d, points[1:]); err != nil {
		t.Errorf("Read after Connect: %v", err)
	}
}

// TestLogsRelayed checks the child's records arrive in the device's log
// with their level and attributes, and that writes to the child's stdout
// cannot break the protocol.
func TestLogsRelayed(t *testing.T) {
	var logs drivertest.LogBuffer
	points := []driver.Point{{ID: 1, Ref: "log"}, {ID: 2, Ref: "stdout"}}
	d := newProxyT(t, "fake", "", points, &logs)
	connect(t, d)
	if _, err := readT(t, d, points); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, want := range []string{`level=WARN msg="fake driver noticed something" register=40001 reason=test ratio=0.5`, "a library printing to stdout"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "driver host died") {
		t.Errorf("a clean Close was logged as a death:\n%s", out)
	}
}

// TestRefusesOtherCalls sends the child a frame of a call type it does not
// serve, as a write would have to be: it is refused with ErrRefused and the
// child serves on.
func TestRefusesOtherCalls(t *testing.T) {
	points := []driver.Point{{ID: 1, Ref: "ok"}}
	d := newProxyT(t, "fake", "", points, nil)
	connect(t, d)
	c, err := d.(*discoverProxy).current()
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []byte{'W', 0, ansOK} {
		_, err := c.call(t.Context(), typ, func(e *enc) error { e.str("ns=2;s=AHU1.Setpoint"); return nil }, ansOK)
		if !errors.Is(err, driver.ErrRefused) {
			t.Errorf("call %q = %v; want ErrRefused", typ, err)
		}
	}
	if _, err := readT(t, d, points); err != nil {
		t.Errorf("Read after the refusals: %v", err)
	}
}

// TestChildDiesWithAgent kills a stand-in agent (this binary, see
// TestMain) with SIGKILL, as the OOM killer or a crash would: its driver
// host must not outlive it. It also checks the child's oom_score_adj.
func TestChildDiesWithAgent(t *testing.T) {
	agent := exec.Command(os.Args[0])
	agent.Env = append(os.Environ(), agentEnv+"=1")
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = agent.Process.Kill(); _ = agent.Wait() }()
	var pid int
	line, err := bufio.NewReader(out).ReadString('\n')
	if _, serr := fmt.Sscanf(line, "child %d", &pid); err != nil || serr != nil {
		t.Fatalf("the stand-in agent said %q, %v", line, err)
	}
	adj, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil || strings.TrimSpace(string(adj)) != "1000" {
		t.Errorf("the child's oom_score_adj is %q (%v); want 1000 so the OOM killer picks it before the agent", adj, err)
	}
	if err := agent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = agent.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("driver host %d outlived its agent by 5s", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid runs: it exists and is not a zombie (whoever
// reaps orphans here may not do so at once).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// TestConcurrentReads reads from several goroutines at once, as a device
// with concurrency above 1 does, and closes while reads are in flight.
func TestConcurrentReads(t *testing.T) {
	points := []driver.Point{{ID: 1, Ref: "a"}, {ID: 2, Ref: "b"}, {ID: 3, Ref: "slow"}}
	d := newProxyT(t, "fake", "scale: 3", points, nil)
	connect(t, d)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				samples, err := readT(t, d, points[g%2:g%2+1])
				if err == nil && (len(samples) != 1 || samples[0].Value != 3*float64(g%2+1)) {
					err = fmt.Errorf("goroutine %d read %+v", g, samples)
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A read that waits on the device when Close comes: it ends, and
	// Close returns well within its timeout.
	done := make(chan error, 1)
	go func() {
		_, err := d.Read(context.Background(), points[2:])
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	began := time.Now()
	if err := d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("the read in flight at Close succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read in flight at Close never returned")
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("Close took %s", took)
	}
}

// opaqueSettings can only decode into one Go type, like the OPC UA
// driver's settings handed over by Explore: they cannot cross.
type opaqueSettings struct{}

func (opaqueSettings) Decode(v any) error {
	return fmt.Errorf("opaque settings cannot decode into %T", v)
}

// TestSettingsThatCannotCross checks that settings which cannot be carried
// are an error where they are given: at New for the device's, at Read for
// a point's, and the child serves on.
func TestSettingsThatCannotCross(t *testing.T) {
	info := Wrap(driver.Info{Name: "fake", New: func(dev driver.Device) (driver.Driver, error) {
		return &plainDriver{&fake{offsets: map[uint64]float64{}}}, nil
	}}, selfCommand, Options{})
	if _, err := info.New(driver.Device{Name: "d", Settings: opaqueSettings{}}); err == nil || !strings.Contains(err.Error(), "carrying settings") {
		t.Errorf("New with opaque device settings = %v; want an error saying they cannot be carried", err)
	}
	points := []driver.Point{{ID: 1, Ref: "a"}}
	d := newProxyT(t, "fake", "", points, nil)
	connect(t, d)
	if _, err := readT(t, d, []driver.Point{{ID: 2, Ref: "b", Settings: opaqueSettings{}}}); err == nil || !strings.Contains(err.Error(), `point "b"`) {
		t.Errorf("Read of a point with opaque settings = %v; want an error naming it", err)
	}
	if _, err := readT(t, d, points); err != nil {
		t.Errorf("Read after: %v", err)
	}
}

// TestChildIgnoresGroupSignals sends the child what a terminal's Ctrl-C or
// systemd's stop sends the agent's whole group: it keeps serving, so the
// agent closes its devices itself.
func TestChildIgnoresGroupSignals(t *testing.T) {
	points := []driver.Point{{ID: 1, Ref: "pid"}}
	d := newProxyT(t, "fake", "", points, nil)
	connect(t, d)
	first, err := readT(t, d, points)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(first[0].Value)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	again, err := readT(t, d, points)
	if err != nil || again[0].Value != first[0].Value {
		t.Errorf("after SIGINT, SIGTERM and SIGHUP: %+v, %v; want the same child serving", again, err)
	}
}

// TestHungCallsAreBounded checks that a child hung in Connect or in Close
// costs the agent a bounded wait and the child its life.
func TestHungCallsAreBounded(t *testing.T) {
	t.Run("Connect", func(t *testing.T) {
		d := newProxyT(t, "fake", "connect_error: hang", nil, nil)
		// The child is started first, so the deadline is all the hung
		// Connect's: a child slower to start than the deadline (this
		// binary under -race on a loaded machine) spent it starting,
		// answered ready within the grace, and the Connect call then
		// failed on its spent context before reaching the child: a bare
		// deadline error, nothing hung, nothing killed.
		if _, err := d.(*discoverProxy).ensure(t.Context()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		began := time.Now()
		err := d.Connect(ctx)
		if !errors.Is(err, driver.ErrConnLost) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "killed as hung") {
			t.Errorf("Connect = %v; want ErrConnLost and the deadline, the child killed", err)
		}
		if took := time.Since(began); took > 3*time.Second {
			t.Errorf("Connect took %s; want the deadline plus the grace", took)
		}
	})
	t.Run("Close", func(t *testing.T) {
		points := []driver.Point{{ID: 1, Ref: "pid"}}
		d := newProxyT(t, "fake", "close_hangs: true", points, nil)
		connect(t, d)
		samples, err := readT(t, d, points)
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		_ = d.Close() // an error or not: bounded is what matters
		if took := time.Since(began); took > 6*time.Second {
			t.Errorf("Close took %s; want at most its timeout (2s) plus the grace, twice", took)
		}
		if pid := int(samples[0].Value); alive(pid) {
			t.Errorf("the child %d hung in Close still runs", pid)
		}
	})
}

// TestCountersOfARefusedRead: a read the child's guard refused comes back
// as an error, and its counters still reach the proxy, so status shows the
// refusal.
func TestCountersOfARefusedRead(t *testing.T) {
	d, err := Wrap(hostedForTest()[3], selfCommand, Options{}).New(driver.Device{Name: "meter", Points: []driver.Point{{ID: 1, Ref: "refused"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Read(t.Context(), []driver.Point{{ID: 1, Ref: "refused"}}); !errors.Is(err, driver.ErrRefused) {
		t.Fatalf("Read = %v, want ErrRefused", err)
	}
	got := d.(driver.Reporter).Counters()
	want := []driver.Counter{{Name: "requests", Value: 1}, {Name: driver.GuardRefusals, Value: 1}}
	if !slices.Equal(got, want) {
		t.Errorf("counters after a refused read = %v, want %v", got, want)
	}
}

// endedAfterCheck is a context that ended just after the proxy checked
// it: Done is closed from the start, but the first Err says it runs.
type endedAfterCheck struct {
	context.Context
	done    chan struct{}
	checked atomic.Bool
}

func newEndedAfterCheck() *endedAfterCheck {
	c := &endedAfterCheck{Context: context.Background(), done: make(chan struct{})}
	close(c.done)
	return c
}

func (c *endedAfterCheck) Done() <-chan struct{} { return c.done }

func (c *endedAfterCheck) Err() error {
	if !c.checked.Swap(true) {
		return nil
	}
	return context.Canceled
}

// TestCallAsContextEnds: a call whose context ends right after the
// proxy checked it is still sent, with the cancellation after it, so the
// child answers and lives on. Sending and giving up on the context were
// one select, which picks at random when both are ready: half the time
// the call stayed unsent, and the child that never saw it was killed as
// hung after the grace.
func TestCallAsContextEnds(t *testing.T) {
	points := []driver.Point{{ID: 1, Ref: "pid"}, {ID: 2, Ref: "slow"}}
	d := newProxyT(t, "fake", "", points, nil)
	connect(t, d)
	first, err := readT(t, d, points[:1])
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		_, err := d.Read(newEndedAfterCheck(), points[1:])
		// The child answers: its driver saw the cancellation (before or
		// while it read).
		if !errors.Is(err, context.Canceled) || errors.Is(err, driver.ErrConnLost) {
			t.Fatalf("Read %d = %v; want the child's driver cancelled, not the child killed", i, err)
		}
	}
	again, err := readT(t, d, points[:1])
	if err != nil || again[0].Value != first[0].Value {
		t.Errorf("after the cancelled reads: %+v, %v; want the same child serving", again, err)
	}
}
