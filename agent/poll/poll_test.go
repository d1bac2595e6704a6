package poll

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// call is one call a fakeDriver received.
type call struct {
	kind string        // connect, read or close
	at   time.Duration // since the fake driver was made
	refs []string      // the points of a read
}

func (c call) String() string {
	if c.kind == "read" {
		return fmt.Sprintf("read@%s[%s]", c.at, strings.Join(c.refs, "+"))
	}
	return fmt.Sprintf("%s@%s", c.kind, c.at)
}

// fakeDriver records its calls; connect and read script the device (nil
// means success: one ok sample per point).
type fakeDriver struct {
	start   time.Time
	connect func(n int) error
	read    func(ctx context.Context, n int, points []driver.Point) ([]telemetry.Sample, error)

	mu                    sync.Mutex
	calls                 []call
	connects, reads       int
	inflight, maxInflight int
}

func newFake() *fakeDriver { return &fakeDriver{start: time.Now()} }

func (f *fakeDriver) record(kind string, points []driver.Point) {
	c := call{kind: kind, at: time.Since(f.start)}
	for _, p := range points {
		c.refs = append(c.refs, p.Ref)
	}
	f.calls = append(f.calls, c)
}

func (f *fakeDriver) Connect(ctx context.Context) error {
	f.mu.Lock()
	n := f.connects
	f.connects++
	f.record("connect", nil)
	f.mu.Unlock()
	if f.connect != nil {
		return f.connect(n)
	}
	return nil
}

func (f *fakeDriver) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	f.mu.Lock()
	n := f.reads
	f.reads++
	f.record("read", points)
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	if f.read != nil {
		return f.read(ctx, n, points)
	}
	return okSamples(points), nil
}

func (f *fakeDriver) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("close", nil)
	return nil
}

// history returns the calls received so far, as strings.
func (f *fakeDriver) history(kinds ...string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if len(kinds) == 0 || c.kind == kinds[0] {
			out = append(out, c.String())
		}
	}
	return out
}

func okSamples(points []driver.Point) []telemetry.Sample {
	out := make([]telemetry.Sample, len(points))
	for i, p := range points {
		out[i] = telemetry.Sample{PointID: p.ID, Time: time.Now().UnixMilli(), Value: 1}
	}
	return out
}

// hang blocks until ctx ends, like a device that never answers.
func hang(ctx context.Context, _ int, _ []driver.Point) ([]telemetry.Sample, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// failFirst fails reads whose number is in fail with err.
func failFirst(err error, fail ...int) func(context.Context, int, []driver.Point) ([]telemetry.Sample, error) {
	return func(_ context.Context, n int, points []driver.Point) ([]telemetry.Sample, error) {
		for _, f := range fail {
			if n == f {
				return nil, err
			}
		}
		return okSamples(points), nil
	}
}

// events is an ordered record shared by a sink and a committer.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, s)
}

func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.log...)
}

// memSink keeps what it is given; fail scripts refusals by attempt number.
type memSink struct {
	fail   func(n int) bool
	events *events

	mu      sync.Mutex
	n       int
	samples []telemetry.Sample
}

func (s *memSink) Append(ctx context.Context, samples []telemetry.Sample) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.n
	s.n++
	if s.fail != nil && s.fail(n) {
		if s.events != nil {
			s.events.add("append-fail")
		}
		return errors.New("bbolt: disk full")
	}
	if s.events != nil {
		s.events.add("append-ok")
	}
	s.samples = append(s.samples, samples...)
	return nil
}

// committingDriver is a fakeDriver that consumes its source.
type committingDriver struct {
	*fakeDriver
	events *events
}

func (c committingDriver) Commit(ctx context.Context) error {
	c.events.add("commit")
	return nil
}

// logBuffer collects JSON log records.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// records returns the records whose message is msg (all when msg is empty).
func (b *logBuffer) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if msg == "" || r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

func (b *logBuffer) levels(t *testing.T, level string) int {
	n := 0
	for _, r := range b.records(t, "") {
		if r["level"] == level {
			n++
		}
	}
	return n
}

func point(id uint64, ref string, interval time.Duration) driver.Point {
	return driver.Point{ID: id, Ref: ref, Name: ref, Interval: interval}
}

// start runs s in the background; stop cancels it, fails the test unless
// Run returns nil, and returns once it has.
func start(t *testing.T, s *Scheduler) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// runFor runs s for d of fake time.
func runFor(t *testing.T, s *Scheduler, d time.Duration) {
	stop := start(t, s)
	time.Sleep(d)
	stop()
}

func mustNew(t *testing.T, devs []Device, sink Sink, opts Options) *Scheduler {
	t.Helper()
	s, err := New(devs, sink, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}

func TestPointIntervalsAndCoalescing(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration // the device's
		points   []driver.Point
		run      time.Duration
		want     []string // read calls
	}{
		{
			name:     "1s point and 5s point from the device interval",
			interval: 5 * time.Second,
			points:   []driver.Point{point(1, "a", time.Second), point(2, "b", 0)},
			run:      9500 * time.Millisecond,
			want: []string{
				"read@0s[a+b]", "read@1s[a]", "read@2s[a]", "read@3s[a]", "read@4s[a]",
				"read@5s[a+b]", "read@6s[a]", "read@7s[a]", "read@8s[a]", "read@9s[a]",
			},
		},
		{
			name:     "2s and 3s points meet every 6s",
			interval: 10 * time.Second,
			points:   []driver.Point{point(1, "b", 3*time.Second), point(2, "a", 2*time.Second), point(3, "c", 2*time.Second)},
			run:      11500 * time.Millisecond,
			want: []string{
				"read@0s[a+c+b]", "read@2s[a+c]", "read@3s[b]", "read@4s[a+c]", "read@6s[a+c+b]",
				"read@8s[a+c]", "read@9s[b]", "read@10s[a+c]",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fd := newFake()
				sink := &memSink{}
				s := mustNew(t, []Device{{Name: "ahu-1", Driver: fd, Points: tt.points, Interval: tt.interval}}, sink, Options{})
				runFor(t, s, tt.run)
				equal(t, "reads", fd.history("read"), tt.want)
				st := s.Stats()[0]
				var wantSamples int
				for _, r := range tt.want {
					wantSamples += strings.Count(r, "+") + 1
				}
				if st.Reads != uint64(len(tt.want)) || st.Samples != uint64(wantSamples) || len(sink.samples) != wantSamples {
					t.Errorf("stats reads %d samples %d, sink %d; want %d reads, %d samples",
						st.Reads, st.Samples, len(sink.samples), len(tt.want), wantSamples)
				}
				// Per point: each counted as often as its name appears in the reads.
				if len(st.Points) != len(tt.points) {
					t.Fatalf("%d point stats for %d points", len(st.Points), len(tt.points))
				}
				var perPoint uint64
				for i, ps := range st.Points {
					want := 0
					for _, r := range tt.want {
						refs := strings.Split(strings.TrimSuffix(r[strings.Index(r, "[")+1:], "]"), "+")
						if slices.Contains(refs, tt.points[i].Ref) {
							want++
						}
					}
					if ps.Name != tt.points[i].Ref || ps.Samples != uint64(want) || ps.LastTime.IsZero() || ps.LastStatus != "ok" {
						t.Errorf("point %s: %+v, want %d samples", tt.points[i].Ref, ps, want)
					}
					perPoint += ps.Samples
				}
				if perPoint != st.Samples {
					t.Errorf("points sum to %d samples, the device counted %d", perPoint, st.Samples)
				}
			})
		})
	}
}

func TestDeadDeviceBacksOffWithoutDelayingOthers(t *testing.T) {
	opts := Options{BackoffBase: time.Second, BackoffMax: 8 * time.Second}
	tests := []struct {
		name         string
		dead         func(*fakeDriver)
		kind         string   // the dead device's calls to check
		want         []string // its attempts
		wantFailures int
		wantErr      string
		wantNext     time.Duration // when the dead device is tried next
	}{
		{
			name: "connect fails",
			dead: func(f *fakeDriver) {
				f.connect = func(int) error { return errors.New("dial tcp 10.0.0.9:502: connection refused") }
			},
			kind: "connect",
			// Waits 1, 2, 4, 8 and then the 8 s cap.
			want:         []string{"connect@0s", "connect@1s", "connect@3s", "connect@7s", "connect@15s", "connect@23s", "connect@31s"},
			wantFailures: 7,
			wantErr:      "connecting: dial tcp 10.0.0.9:502: connection refused",
			wantNext:     39 * time.Second,
		},
		{
			name: "read hangs until the timeout",
			dead: func(f *fakeDriver) { f.read = hang },
			kind: "read",
			// Each attempt fails 500ms after it starts, then waits 1, 2, 4, 8, 8 s.
			want:         []string{"read@0s[x]", "read@1.5s[x]", "read@4s[x]", "read@8.5s[x]", "read@17s[x]", "read@25.5s[x]"},
			wantFailures: 6,
			wantErr:      "reading 1 points: no answer within 500ms: context deadline exceeded",
			wantNext:     34 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				begin := time.Now()
				dead, healthy := newFake(), newFake()
				tt.dead(dead)
				s := mustNew(t, []Device{
					{Name: "dead", Driver: dead, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second, Timeout: 500 * time.Millisecond},
					{Name: "healthy", Driver: healthy, Points: []driver.Point{point(2, "y", 0)}, Interval: time.Second},
				}, &memSink{}, opts)
				stop := start(t, s)
				time.Sleep(31500 * time.Millisecond)
				synctest.Wait()
				stats, health := s.Stats(), s.Health()
				stop()

				equal(t, "dead device attempts", dead.history(tt.kind), tt.want)
				var want []string
				for i := range 32 {
					want = append(want, fmt.Sprintf("read@%s[y]", time.Duration(i)*time.Second))
				}
				equal(t, "healthy device reads", healthy.history("read"), want)

				d, h := stats[0], stats[1]
				if d.Up || d.ConsecutiveFailures != tt.wantFailures || d.Failures != uint64(tt.wantFailures) ||
					d.LastError != tt.wantErr || !d.NextAttempt.Equal(begin.Add(tt.wantNext)) || d.Reads != 0 {
					t.Errorf("dead device stats = %+v", d)
				}
				if !h.Up || h.Reads != 32 || h.Failures != 0 || !h.NextAttempt.Equal(begin.Add(32*time.Second)) {
					t.Errorf("healthy device stats = %+v", h)
				}
				if want := (Health{PollErrors: uint64(tt.wantFailures), DevicesUp: 1, DevicesDown: 1}); health != want {
					t.Errorf("Health() = %+v, want %+v", health, want)
				}
			})
		})
	}
}

func TestErrorKinds(t *testing.T) {
	busy := fmt.Errorf("modbus exception 6 (slave device busy): %w", driver.ErrBusy)
	lost := fmt.Errorf("reading from 10.0.0.9:502: EOF: %w", driver.ErrConnLost)
	refused := fmt.Errorf("function code 6: %w", driver.ErrRefused)
	tests := []struct {
		name          string
		connect       func(int) error
		read          func(context.Context, int, []driver.Point) ([]telemetry.Sample, error)
		want          []string
		wantFailures  uint64
		wantErrorLogs int
	}{
		{
			name: "busy once: pause and read again on the same connection",
			read: failFirst(busy, 0),
			want: []string{"connect@0s", "read@0s[x]", "read@200ms[x]", "read@10s[x]", "close@10.5s"},
		},
		{
			name:         "busy beyond the retries: back off without reconnecting",
			read:         failFirst(busy, 0, 1, 2),
			want:         []string{"connect@0s", "read@0s[x]", "read@200ms[x]", "read@400ms[x]", "read@1.4s[x]", "read@10s[x]", "close@10.5s"},
			wantFailures: 1,
		},
		{
			name:         "connection lost: close, back off, connect again",
			read:         failFirst(lost, 0),
			want:         []string{"connect@0s", "read@0s[x]", "close@0s", "connect@1s", "read@1s[x]", "read@10s[x]", "close@10.5s"},
			wantFailures: 1,
		},
		{
			name: "connect fails: close, back off, connect again",
			connect: func(n int) error {
				if n == 0 {
					return errors.New("dial tcp 10.0.0.9:502: no route to host")
				}
				return nil
			},
			want:         []string{"connect@0s", "close@0s", "connect@1s", "read@1s[x]", "read@10s[x]", "close@10.5s"},
			wantFailures: 1,
		},
		{
			name:          "refused by the guard: error log, no retry before the next tick",
			read:          failFirst(refused, 0),
			want:          []string{"connect@0s", "read@0s[x]", "read@10s[x]", "close@10.5s"},
			wantFailures:  1,
			wantErrorLogs: 1,
		},
		{
			name:         "other error: back off, keep the connection",
			read:         failFirst(errors.New("bad frame"), 0),
			want:         []string{"connect@0s", "read@0s[x]", "read@1s[x]", "read@10s[x]", "close@10.5s"},
			wantFailures: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fd := newFake()
				fd.connect, fd.read = tt.connect, tt.read
				var logs logBuffer
				s := mustNew(t, []Device{{Name: "vav-3", Driver: fd, Points: []driver.Point{point(1, "x", 0)}, Interval: 10 * time.Second, Timeout: time.Second}},
					&memSink{}, Options{BackoffBase: time.Second, BusyPause: 200 * time.Millisecond, BusyRetries: 2, Logger: logs.logger()})
				runFor(t, s, 10500*time.Millisecond)
				equal(t, "calls", fd.history(), tt.want)
				st := s.Stats()[0]
				if st.Failures != tt.wantFailures || !st.Up {
					t.Errorf("stats = %+v, want %d failures and up", st, tt.wantFailures)
				}
				if n := logs.levels(t, "ERROR"); n != tt.wantErrorLogs {
					t.Errorf("%d error logs, want %d: %v", n, tt.wantErrorLogs, logs.records(t, ""))
				}
			})
		})
	}
}

func TestCommitOnlyAfterAppend(t *testing.T) {
	tests := []struct {
		name        string
		fail        func(n int) bool
		want        []string
		wantDropped uint64
	}{
		{
			name: "sink accepts",
			want: []string{"append-ok", "commit", "append-ok", "commit", "append-ok", "commit"},
		},
		{
			name: "sink refuses once then accepts",
			fail: func(n int) bool { return n == 0 },
			want: []string{"append-fail", "append-ok", "commit", "append-ok", "commit", "append-ok", "commit"},
		},
		{
			name: "sink down: every read dropped, never committed",
			fail: func(int) bool { return true },
			want: []string{
				"append-fail", "append-fail", "append-fail",
				"append-fail", "append-fail", "append-fail",
				"append-fail", "append-fail", "append-fail",
			},
			wantDropped: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ev := &events{}
				fd := newFake()
				var logs logBuffer
				s := mustNew(t, []Device{{Name: "trend-export", Driver: committingDriver{fd, ev}, Points: []driver.Point{point(1, "x", 0), point(2, "y", 0)}, Interval: time.Second}},
					&memSink{fail: tt.fail, events: ev}, Options{AppendPause: 100 * time.Millisecond, Logger: logs.logger()})
				runFor(t, s, 2500*time.Millisecond)
				equal(t, "sink and commit events", ev.get(), tt.want)
				st := s.Stats()[0]
				if st.Reads != 3 || st.DroppedReads != tt.wantDropped || st.DroppedSamples != 2*tt.wantDropped {
					t.Errorf("stats = %+v, want 3 reads, %d dropped", st, tt.wantDropped)
				}
				if h := s.Health(); h.DroppedSamples != 2*tt.wantDropped || h.PollErrors != 0 {
					t.Errorf("Health() = %+v", h)
				}
				if got := len(logs.records(t, "dropping a read: the buffer refused its samples")); got != int(tt.wantDropped) {
					t.Errorf("%d drop logs, want %d", got, tt.wantDropped)
				}
			})
		})
	}
}

func TestConcurrency(t *testing.T) {
	tests := []struct {
		concurrency int
		want        int // reads in flight at most
	}{
		{0, 1}, // the default
		{1, 1},
		{2, 2},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.concurrency), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fd := newFake()
				// Each read takes 1.2 s, longer than the 1 s point's interval.
				fd.read = func(ctx context.Context, _ int, points []driver.Point) ([]telemetry.Sample, error) {
					if !sleep(ctx, 1200*time.Millisecond) {
						return nil, ctx.Err()
					}
					return okSamples(points), nil
				}
				s := mustNew(t, []Device{{
					Name: "plc", Driver: fd, Interval: 2 * time.Second, Concurrency: tt.concurrency,
					Points: []driver.Point{point(1, "a", time.Second), point(2, "b", 1500*time.Millisecond)},
				}}, &memSink{}, Options{})
				runFor(t, s, 10*time.Second)
				if fd.maxInflight != tt.want {
					t.Errorf("at most %d reads in flight, want %d; reads %v", fd.maxInflight, tt.want, fd.history("read"))
				}
				if st := s.Stats()[0]; st.Failures != 0 || st.Reads < 5 {
					t.Errorf("stats = %+v", st)
				}
			})
		})
	}
}

func TestShutdownClosesEveryDriver(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(*fakeDriver)
		runFor    time.Duration // zero: cancelled before Run
		wantCalls int           // at least
	}{
		{"healthy", func(*fakeDriver) {}, 2500 * time.Millisecond, 5},
		{"in backoff after failed connects", func(f *fakeDriver) {
			f.connect = func(int) error { return errors.New("refused") }
		}, 2500 * time.Millisecond, 4},
		{"read in flight", func(f *fakeDriver) { f.read = hang }, 200 * time.Millisecond, 2},
		{"connection keeps dropping", func(f *fakeDriver) {
			f.read = func(context.Context, int, []driver.Point) ([]telemetry.Sample, error) { return nil, driver.ErrConnLost }
		}, 3500 * time.Millisecond, 6},
		{"never connected", func(*fakeDriver) {}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fd, other := newFake(), newFake()
				tt.setup(fd)
				s := mustNew(t, []Device{
					{Name: "under-test", Driver: fd, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second},
					{Name: "other", Driver: other, Points: []driver.Point{point(2, "y", 0)}, Interval: time.Second},
				}, &memSink{}, Options{})
				if tt.runFor == 0 {
					ctx, cancel := context.WithCancel(t.Context())
					cancel()
					if err := s.Run(ctx); err != nil {
						t.Fatalf("Run: %v", err)
					}
				} else {
					runFor(t, s, tt.runFor)
				}
				for _, f := range []*fakeDriver{fd, other} {
					checkLifecycle(t, f)
				}
				if calls := fd.history(); len(calls) < tt.wantCalls {
					t.Errorf("calls %v, want at least %d", calls, tt.wantCalls)
				}
				for _, st := range s.Stats() {
					if !st.NextAttempt.IsZero() {
						t.Errorf("%s: next attempt %v after shutdown", st.Name, st.NextAttempt)
					}
				}
				if err := s.Run(t.Context()); err == nil {
					t.Error("second Run succeeded")
				}
			})
		})
	}
}

// checkLifecycle checks the driver lifecycle the scheduler promises: no
// Connect or Read on an open-then-unclosed driver out of turn, Close never
// twice in a row, and Close last.
func checkLifecycle(t *testing.T, f *fakeDriver) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	open, last := false, ""
	for _, c := range f.calls {
		switch c.kind {
		case "connect":
			if open {
				t.Errorf("connect while connected: %v", f.calls)
			}
			open = true
		case "read":
			if !open {
				t.Errorf("read while not connected: %v", f.calls)
			}
		case "close":
			if last == "close" {
				t.Errorf("close twice in a row: %v", f.calls)
			}
			open = false
		}
		last = c.kind
	}
	if last != "close" {
		t.Errorf("last call %q, want close: %v", last, f.calls)
	}
}

func TestJitter(t *testing.T) {
	t.Run("reads spread within the bound", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			const n = 50
			interval := 10 * time.Second
			var devs []Device
			var fakes []*fakeDriver
			for i := range n {
				fd := newFake()
				fakes = append(fakes, fd)
				devs = append(devs, Device{Name: fmt.Sprint("dev-", i), Driver: fd, Points: []driver.Point{point(uint64(i+1), "x", 0)}, Interval: interval})
			}
			s := mustNew(t, devs, &memSink{}, Options{Jitter: 0.5})
			runFor(t, s, 25*time.Second)
			firsts := map[time.Duration]bool{}
			for _, fd := range fakes {
				var reads []time.Duration
				for _, c := range fd.calls {
					if c.kind == "read" {
						reads = append(reads, c.at)
					}
				}
				if len(reads) != 3 {
					t.Fatalf("reads at %v, want 3", reads)
				}
				for k, at := range reads {
					// Tick k is at k×10s, delayed by less than 0.5×10s.
					if lo := time.Duration(k) * interval; at < lo || at >= lo+interval/2 {
						t.Errorf("read %d at %s, want within [%s, %s)", k, at, lo, lo+interval/2)
					}
				}
				firsts[reads[0]] = true
			}
			if len(firsts) < n/2 {
				t.Errorf("first reads at only %d distinct times among %d devices", len(firsts), n)
			}
		})
	})
	t.Run("backoff waits shortened within the bound", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			fd := newFake()
			fd.connect = func(int) error { return errors.New("refused") }
			s := mustNew(t, []Device{{Name: "dead", Driver: fd, Points: []driver.Point{point(1, "x", 0)}, Interval: 100 * time.Millisecond}},
				&memSink{}, Options{Jitter: 0.5, BackoffBase: time.Second, BackoffMax: 4 * time.Second})
			runFor(t, s, 30*time.Second)
			var at []time.Duration
			for _, c := range fd.calls {
				if c.kind == "connect" {
					at = append(at, c.at)
				}
			}
			if len(at) < 7 {
				t.Fatalf("connects at %v, want at least 7", at)
			}
			if at[0] >= 50*time.Millisecond {
				t.Errorf("first connect at %s, want before 50ms", at[0])
			}
			distinct := map[time.Duration]bool{}
			for i := 1; i < len(at); i++ {
				full := min(time.Second<<(i-1), 4*time.Second)
				gap := at[i] - at[i-1]
				if gap <= full/2 || gap > full {
					t.Errorf("wait %d = %s, want within (%s, %s]", i, gap, full/2, full)
				}
				if full == 4*time.Second {
					distinct[gap] = true
				}
			}
			if len(distinct) < 2 {
				t.Errorf("capped waits all equal: %v", at)
			}
		})
	})
}

func TestDownAndRecoveryLoggedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fd := newFake()
		// Reads 0-2 fail (at 0, 1 and 3 s), then a later read (at 12 s) fails once.
		fd.read = failFirst(errors.New("bad frame"), 0, 1, 2, 8)
		var logs logBuffer
		s := mustNew(t, []Device{{Name: "chiller-2", Driver: fd, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second}},
			&memSink{}, Options{BackoffBase: time.Second, Logger: logs.logger()})
		runFor(t, s, 14500*time.Millisecond)

		equal(t, "reads", fd.history("read"), []string{
			"read@0s[x]", "read@1s[x]", "read@3s[x]", "read@7s[x]", "read@8s[x]", "read@9s[x]",
			"read@10s[x]", "read@11s[x]", "read@12s[x]", "read@13s[x]", "read@14s[x]",
		})
		var got []string
		for _, r := range logs.records(t, "") {
			if r["level"] == "DEBUG" && r["msg"] != "device still down" {
				continue
			}
			line := fmt.Sprintf("%s %s", r["level"], r["msg"])
			if r["msg"] == "device recovered" {
				line += fmt.Sprintf(" failures=%v down_for=%s", r["failures"], time.Duration(r["down_for"].(float64)))
			}
			if r["device"] != "chiller-2" {
				t.Errorf("record without device tag: %v", r)
			}
			got = append(got, line)
		}
		equal(t, "logs", got, []string{
			"WARN device down",
			"DEBUG device still down",
			"DEBUG device still down",
			"INFO device recovered failures=3 down_for=7s",
			"WARN device down",
			"INFO device recovered failures=1 down_for=1s",
		})
	})
}

func TestNewRefusesBadConfiguration(t *testing.T) {
	fd := &fakeDriver{}
	committer := committingDriver{fd, &events{}}
	good := func() Device {
		return Device{Name: "d", Driver: fd, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second}
	}
	with := func(f func(*Device)) []Device {
		d := good()
		f(&d)
		return []Device{d}
	}
	tests := []struct {
		name string
		devs []Device
		sink Sink
		opts Options
		want []string // each must appear in the error; none means valid
	}{
		{"valid", []Device{good()}, &memSink{}, Options{}, nil},
		{"valid with no devices", nil, &memSink{}, Options{}, nil},
		{"no sink", []Device{good()}, nil, Options{}, []string{"no sink"}},
		{"empty name", with(func(d *Device) { d.Name = "" }), &memSink{}, Options{}, []string{"device #1: empty name"}},
		{"duplicate name", []Device{good(), with(func(d *Device) { d.Points = []driver.Point{point(2, "x", 0)} })[0]}, &memSink{}, Options{},
			[]string{`device "d": name given twice`}},
		{"no driver", with(func(d *Device) { d.Driver = nil }), &memSink{}, Options{}, []string{"no driver"}},
		{"zero interval", with(func(d *Device) { d.Interval = 0 }), &memSink{}, Options{}, []string{"interval 0s: want a positive duration"}},
		{"timeout over interval", with(func(d *Device) { d.Timeout = 2 * time.Second }), &memSink{}, Options{}, []string{"timeout 2s exceeds interval 1s"}},
		{"negative timeout", with(func(d *Device) { d.Timeout = -1 }), &memSink{}, Options{}, []string{"timeout -1ns"}},
		{"negative concurrency", with(func(d *Device) { d.Concurrency = -1 }), &memSink{}, Options{}, []string{"concurrency -1"}},
		{"committer with concurrency", with(func(d *Device) { d.Driver, d.Concurrency = committer, 2 }), &memSink{}, Options{}, []string{"needs concurrency 1"}},
		{"no points", with(func(d *Device) { d.Points = nil }), &memSink{}, Options{}, []string{"no points"}},
		{"point without id", with(func(d *Device) { d.Points = []driver.Point{point(0, "x", 0)} }), &memSink{}, Options{}, []string{`point "x" has no id`}},
		{"point id twice", []Device{good(), {Name: "e", Driver: fd, Points: []driver.Point{point(1, "z", 0)}, Interval: time.Second}}, &memSink{}, Options{},
			[]string{`device "e": point "z": id 1 already used by device "d"`}},
		{"negative point interval", with(func(d *Device) { d.Points[0].Interval = -time.Second }), &memSink{}, Options{}, []string{`point "x": interval -1s`}},
		{"jitter over 1", []Device{good()}, &memSink{}, Options{Jitter: 1.5}, []string{"jitter 1.5"}},
		{"backoff max below base", []Device{good()}, &memSink{}, Options{BackoffBase: time.Minute, BackoffMax: time.Second}, []string{"backoff max 1s is below backoff base 1m0s"}},
		{"negative retries", []Device{good()}, &memSink{}, Options{BusyRetries: -1, AppendAttempts: -1}, []string{"busy retries -1", "append attempts -1"}},
		{"every problem at once", []Device{{}}, nil, Options{Jitter: -1}, []string{"no sink", "jitter -1", "empty name", "no driver", "interval 0s", "no points"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.devs, tt.sink, tt.opts)
			if len(tt.want) == 0 {
				if err != nil || s == nil {
					t.Fatalf("New = %v, %v; want a scheduler", s, err)
				}
				return
			}
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	s := mustNew(t, []Device{
		{Name: "slow", Driver: &fakeDriver{}, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Minute},
		{Name: "fast", Driver: &fakeDriver{}, Points: []driver.Point{point(2, "y", 0)}, Interval: 2 * time.Second},
	}, &memSink{}, Options{})
	for i, want := range []time.Duration{DefaultTimeout, 2 * time.Second} {
		w := s.workers[i]
		if w.dev.Timeout != want || w.dev.Concurrency != 1 {
			t.Errorf("%s: timeout %s concurrency %d, want %s and 1", w.dev.Name, w.dev.Timeout, w.dev.Concurrency, want)
		}
		if w.opts.BackoffBase != DefaultBackoffBase || w.opts.BackoffMax != DefaultBackoffMax || w.opts.AppendAttempts != DefaultAppendAttempts {
			t.Errorf("options defaults not applied: %+v", w.opts)
		}
	}
	// Backoff without jitter: 1s doubling to the 5 min cap.
	w := s.workers[0]
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 9: 256 * time.Second, 10: 5 * time.Minute, 1000: 5 * time.Minute} {
		if got := w.backoff(n); got != want {
			t.Errorf("backoff(%d) = %s, want %s", n, got, want)
		}
	}
}

// ctxSink refuses an Append whose context is already done, as bbolt's
// caller would.
type ctxSink struct{ memSink }

func (s *ctxSink) Append(ctx context.Context, samples []telemetry.Sample) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.memSink.Append(ctx, samples)
}

func TestReadFinishedAtShutdownIsStoredAndCommitted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ev := &events{}
		fd := newFake()
		// A read that completes even though shutdown starts while it runs.
		fd.read = func(_ context.Context, _ int, points []driver.Point) ([]telemetry.Sample, error) {
			time.Sleep(500 * time.Millisecond)
			return okSamples(points), nil
		}
		sink := &ctxSink{memSink{events: ev}}
		s := mustNew(t, []Device{{Name: "trend-export", Driver: committingDriver{fd, ev}, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second}},
			sink, Options{})
		runFor(t, s, 200*time.Millisecond)
		equal(t, "sink and commit events", ev.get(), []string{"append-ok", "commit"})
		if len(sink.samples) != 1 {
			t.Errorf("sink holds %d samples, want 1", len(sink.samples))
		}
		checkLifecycle(t, fd)
	})
}

// onceSink is a memSink that is also a OnceSink.
type onceSink struct {
	memSink
	marks map[string]bool
}

func (s *onceSink) AppendOnce(ctx context.Context, mark []byte, samples []telemetry.Sample) (bool, error) {
	s.mu.Lock()
	if s.marks[string(mark)] {
		s.mu.Unlock()
		s.events.add("append-dup")
		return true, nil
	}
	s.marks[string(mark)] = true
	s.mu.Unlock()
	return false, s.Append(ctx, samples)
}

// TestCommitterReadAgainIsNotStoredTwice: a Committer returning the data
// of its last Read again (as after a crash between Append and Commit) is
// committed, and its samples are not stored a second time; a plain Sink
// stores them again (at least once), and a non-Committer is never marked.
func TestCommitterReadAgainIsNotStoredTwice(t *testing.T) {
	// Reads 0 and 1 return the same data; read 2 returns new data.
	read := func(_ context.Context, n int, points []driver.Point) ([]telemetry.Sample, error) {
		out := make([]telemetry.Sample, len(points))
		for i, p := range points {
			out[i] = telemetry.Sample{PointID: p.ID, Time: 946_684_000_000 + int64(max(n, 1))*1000, Value: float64(i)} // before synctest's 2000-01-01 clock
		}
		return out, nil
	}
	tests := []struct {
		name        string
		committer   bool
		once        bool
		want        []string
		wantSamples int
	}{
		{"committer, OnceSink", true, true, []string{"append-ok", "commit", "append-dup", "commit", "append-ok", "commit"}, 4},
		{"committer, plain Sink", true, false, []string{"append-ok", "commit", "append-ok", "commit", "append-ok", "commit"}, 6},
		{"not a committer, OnceSink", false, true, []string{"append-ok", "append-ok", "append-ok"}, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ev := &events{}
				fd := newFake()
				fd.read = read
				var logs logBuffer
				var drv driver.Driver = fd
				if tt.committer {
					drv = committingDriver{fd, ev}
				}
				var sink Sink = &memSink{events: ev}
				mem := sink.(*memSink)
				if tt.once {
					once := &onceSink{memSink: memSink{events: ev}, marks: map[string]bool{}}
					sink, mem = once, &once.memSink
				}
				s := mustNew(t, []Device{{Name: "trend-export", Driver: drv, Points: []driver.Point{point(1, "x", 0), point(2, "y", 0)}, Interval: time.Second}},
					sink, Options{Logger: logs.logger()})
				runFor(t, s, 2500*time.Millisecond)
				equal(t, "sink and commit events", ev.get(), tt.want)
				mem.mu.Lock()
				defer mem.mu.Unlock()
				if len(mem.samples) != tt.wantSamples {
					t.Errorf("sink holds %d samples, want %d", len(mem.samples), tt.wantSamples)
				}
				wantLogs := 0
				if tt.committer && tt.once {
					wantLogs = 1
				}
				if got := len(logs.records(t, "read the same data again that was buffered before the agent stopped without committing it; committing it now, not storing it twice")); got != wantLogs {
					t.Errorf("%d logs of the second read, want %d", got, wantLogs)
				}
			})
		})
	}
}

// reportingDriver is a fakeDriver that reports counts.
type reportingDriver struct{ *fakeDriver }

func (r reportingDriver) Counters() []driver.Counter {
	return []driver.Counter{{Name: "requests", Value: uint64(len(r.history("read")))}, {Name: driver.GuardRefusals, Value: 0}}
}

// TestStatsCarryDriverCounters: a driver.Reporter's counts appear in its
// device's Stats, read when Stats is asked for; other drivers have none.
func TestStatsCarryDriverCounters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rep, plain := reportingDriver{newFake()}, newFake()
		var logs logBuffer
		s := mustNew(t, []Device{
			{Name: "meter", Driver: rep, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second},
			{Name: "trends", Driver: plain, Points: []driver.Point{point(2, "y", 0)}, Interval: time.Second},
		}, &memSink{}, Options{Logger: logs.logger()})
		runFor(t, s, 2500*time.Millisecond)
		st := s.Stats()
		if len(st[0].Counters) != 2 || st[0].Counters[0] != (driver.Counter{Name: "requests", Value: 3}) {
			t.Errorf("meter counters = %+v, want 3 requests (one per read)", st[0].Counters)
		}
		if st[1].Counters != nil {
			t.Errorf("a driver without counts has counters %+v", st[1].Counters)
		}
	})
}

// stateSink is a memSink that keeps states too.
type stateSink struct {
	memSink
	states map[string][]byte
}

func (s *stateSink) AppendState(ctx context.Context, key string, state []byte, samples []telemetry.Sample) error {
	err := s.Append(ctx, samples)
	if err == nil {
		s.mu.Lock()
		s.states[key] = state
		s.mu.Unlock()
		s.events.add("state " + string(state))
	}
	return err
}

func (s *stateSink) State(key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.states[key]
	return st, ok, nil
}

// checkpointingDriver is a committingDriver that keeps a place: the number
// of reads it made, on top of what it was restored to.
type checkpointingDriver struct {
	committingDriver
	mu       *sync.Mutex
	place    *int
	restored *[]string
}

func (c checkpointingDriver) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	samples, err := c.committingDriver.Read(ctx, points)
	c.mu.Lock()
	*c.place++
	for i := range samples {
		samples[i].Value = float64(*c.place) // each place reads other data
	}
	c.mu.Unlock()
	return samples, err
}

func (c checkpointingDriver) Checkpoint() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []byte(fmt.Sprint(*c.place))
}

func (c checkpointingDriver) Restore(state []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.restored = append(*c.restored, string(state))
	_, err := fmt.Sscan(string(state), c.place)
	c.events.add("restore " + string(state))
	return err
}

// TestCheckpointerStateGoesWithItsSamples: each read's state is stored with
// its samples, and a scheduler started again over the same sink (the
// agent after a crash) restores the last one before its first Connect.
func TestCheckpointerStateGoesWithItsSamples(t *testing.T) {
	ev := &events{}
	sink := &stateSink{memSink: memSink{events: ev}, states: map[string][]byte{}}
	var restored []string
	run := func() {
		synctest.Test(t, func(t *testing.T) {
			fd := newFake()
			var logs logBuffer
			var mu sync.Mutex
			place := 0
			drv := checkpointingDriver{committingDriver{fd, ev}, &mu, &place, &restored}
			s := mustNew(t, []Device{{Name: "vav-1", Driver: drv, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second}},
				sink, Options{Logger: logs.logger()})
			runFor(t, s, 2500*time.Millisecond)
		})
	}
	run()
	run()
	if len(restored) != 1 || restored[0] != "3" {
		t.Errorf("restored %v; want the first run's last state, 3, once", restored)
	}
	want := []string{"append-ok", "state 1", "commit", "append-ok", "state 2", "commit", "append-ok", "state 3", "commit",
		"restore 3", "append-ok", "state 4", "commit", "append-ok", "state 5", "commit", "append-ok", "state 6", "commit"}
	equal(t, "events", ev.get(), want)
}

// TestDroppedReadOfACommitterIsReadAgain: when the buffer refuses a
// Committer's read, the driver still counts it as read (a trend file stays
// pending), so the scheduler closes and reconnects it before the next read
// instead of letting the next Commit consume the dropped data.
func TestDroppedReadOfACommitterIsReadAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ev := &events{}
		fd := newFake()
		var logs logBuffer
		s := mustNew(t, []Device{{Name: "trend-export", Driver: committingDriver{fd, ev}, Points: []driver.Point{point(1, "x", 0)}, Interval: time.Second}},
			&memSink{fail: func(n int) bool { return n < 3 }, events: ev}, Options{AppendPause: 10 * time.Millisecond, Logger: logs.logger()})
		runFor(t, s, 1500*time.Millisecond)
		equal(t, "sink and commit events", ev.get(), []string{"append-fail", "append-fail", "append-fail", "append-ok", "commit"})
		calls := fd.history()
		closeAt, readsAfter := -1, 0
		for i, c := range calls {
			if strings.HasPrefix(c, "close") && closeAt < 0 {
				closeAt = i
			}
			if closeAt >= 0 && strings.HasPrefix(c, "read") {
				readsAfter++
			}
		}
		if closeAt < 0 || readsAfter == 0 || !slices.ContainsFunc(calls[closeAt:], func(c string) bool { return strings.HasPrefix(c, "connect") }) {
			t.Errorf("driver calls %v: want a close and a reconnect between the dropped read and the next one", calls)
		}
	})
}

// TestSamplesOutsideTheIngestWindowAreLeftOut: a sample whose time the
// ingest would refuse (and with it the whole batch) is left out and
// counted, the device's other samples are stored, and one warning says so.
func TestSamplesOutsideTheIngestWindowAreLeftOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fd := newFake()
		fd.read = func(_ context.Context, _ int, points []driver.Point) ([]telemetry.Sample, error) {
			now := time.Now()
			return []telemetry.Sample{
				{PointID: points[0].ID, Time: now.UnixMilli(), Value: 1},
				{PointID: points[1].ID, Time: now.Add(time.Hour).UnixMilli(), Value: 2},            // a device clock an hour fast
				{PointID: points[1].ID, Time: now.AddDate(-11, 0, 0).UnixMilli(), Value: 3},        // a year mistyped
				{PointID: points[0].ID, Time: now.Add(-maxPast + time.Hour).UnixMilli(), Value: 4}, // old, but accepted
			}, nil
		}
		sink := &memSink{}
		var logs logBuffer
		s := mustNew(t, []Device{{Name: "ahu", Driver: fd, Points: []driver.Point{point(1, "x", 0), point(2, "y", 0)}, Interval: time.Second}},
			sink, Options{Logger: logs.logger()})
		runFor(t, s, 1500*time.Millisecond) // two reads
		sink.mu.Lock()
		stored := len(sink.samples)
		sink.mu.Unlock()
		if stored != 4 {
			t.Errorf("%d samples stored, want the 2 in the window of each of 2 reads", stored)
		}
		if st := s.Stats()[0]; st.OutOfRangeSamples != 4 || st.Samples != 4 {
			t.Errorf("stats = %d out of range, %d samples; want 4 and 4", st.OutOfRangeSamples, st.Samples)
		}
		if n := len(logs.records(t, "leaving out samples whose time the ingest would refuse (check the device's clock or time zone); counted as out_of_range")); n != 1 {
			t.Errorf("%d warnings, want 1", n)
		}
	})
}
