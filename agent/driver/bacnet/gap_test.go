package bacnet

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// logCount is a slog handler counting records by level and message.
type logCount struct {
	mu sync.Mutex
	n  map[string]int
}

func (l *logCount) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCount) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logCount) WithGroup(string) slog.Handler            { return l }
func (l *logCount) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	l.n[r.Level.String()+" "+r.Message]++
	return nil
}

// count returns how many records of level start with prefix.
func (l *logCount) count(level slog.Level, prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for k, v := range l.n {
		if strings.HasPrefix(k, level.String()+" "+prefix) {
			n += v
		}
	}
	return n
}

// trendDevice is a simulated device whose trend-log:1 has logged
// analog-input:1 every interval for the last minute, from a whole second.
func trendDevice(instance uint32, name string, interval time.Duration) (*bacnetsim.Device, *bacnetsim.Object) {
	dev := bacnetsim.NewDevice(instance, name, 1, 0, 0, true)
	tl := dev.Objects[1]
	tl.Log.Interval = interval
	tl.Log.Start = time.Now().Add(-time.Minute).Truncate(time.Second)
	return dev, tl
}

// fakeClock is a driver's clock that moves only when a test says: the
// gaps a test opens are exactly as long as it says however loaded the
// machine is. It starts half a minute in the past (and 25ms past a whole
// second, between a trend log's records), so what a trend log logged by
// the real clock covers every fake time.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Now().Add(-30 * time.Second).Truncate(time.Second).Add(25 * time.Millisecond)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logged counts the records of log strictly between from and to (Unix ms)
// for which keep is true (nil: all).
func logged(log *bacnetsim.TrendLog, from, to int64, keep func(seq uint64) bool) int {
	n := 0
	for seq := uint64(1); ; seq++ {
		at := log.Start.Add(time.Duration(seq-1) * log.Interval).UnixMilli()
		if at >= to {
			return n
		}
		if at > from && (keep == nil || keep(seq)) {
			n++
		}
	}
}

// openDriver builds and connects a driver, closed when the test ends.
func openDriver(t *testing.T, dev driver.Device) *Driver {
	t.Helper()
	d, err := New(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	return d.(*Driver)
}

// TestBackfillGapKept: the trend log fails while live reads go on. The
// live mark advances anyway, the gap is kept apart and asked for again
// only with backoff (logged once, and once on recovery); when the trend log
// answers, exactly the gap is filled, not the time live reads covered.
func TestBackfillGapKept(t *testing.T) {
	dev, tl := trendDevice(13, "logged", 50*time.Millisecond)
	sim := startSim(t, bacnetsim.Config{Local: dev})
	logs := &logCount{}
	points := []driver.Point{{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}}
	settings := yamlText(simSettings(sim, 13, "backfill_after: 300ms\n"))
	clock := newFakeClock()
	drv := openDriver(t, driver.Device{Name: "logged", Settings: settings, Points: points, Logger: slog.New(logs), DataDir: t.TempDir()})
	drv.now = clock.now
	drv.cfg.backfillRetry = time.Hour
	readRanges := func() int { return confirmed(sim, bacnet.ServiceReadRange) }
	read := func(what string) []telemetry.Sample {
		t.Helper()
		s, err := drv.Read(t.Context(), points)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(s) == 0 || s[0].Status != telemetry.StatusOK {
			t.Fatalf("%s: live sample %+v", what, s)
		}
		if err := drv.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s
	}
	const failed = "trend-log backfill failed"
	t1 := read("first read")[0].Time
	clock.advance(500 * time.Millisecond) // a gap of ten records
	var saved *bacnetsim.TrendLog
	sim.Update(func() { saved, tl.Log = tl.Log, nil }) // ReadRange now fails
	second := read("read with the trend log failing")
	t2 := second[0].Time
	if len(second) != 1 || readRanges() != 1 || logs.count(slog.LevelWarn, failed) != 1 {
		t.Fatalf("the failing backfill: %d samples, %d ReadRange, %d warnings; want 1, 1, 1", len(second), readRanges(), logs.count(slog.LevelWarn, failed))
	}
	var cp stateFile
	if err := json.Unmarshal(drv.Checkpoint(), &cp); err != nil {
		t.Fatal(err)
	}
	if m := cp.Marks["analog-input:1"]; m.Last != t2 || len(m.Gaps) != 1 || m.Gaps[0] != (gap{From: t1, To: t2}) {
		t.Fatalf("checkpoint %+v: want the live mark at %d and the gap %d..%d", m, t2, t1, t2)
	}
	gapState := drv.Checkpoint()
	// Live reads go on, each within backfill_after of the last: the gap is
	// not asked for again before its backoff, and no new gap opens.
	for range 3 {
		clock.advance(150 * time.Millisecond)
		if s := read("live read while backing off"); len(s) != 1 {
			t.Fatalf("%d samples while backing off", len(s))
		}
	}
	if n := readRanges(); n != 1 {
		t.Fatalf("%d ReadRange requests while backing off, want the first only", n)
	}
	drv.cfg.backfillRetry = 0 // the backoff has passed
	read("retry that fails again")
	if n, w := readRanges(), logs.count(slog.LevelWarn, failed); n != 2 || w != 1 {
		t.Fatalf("after the retry: %d ReadRange, %d warnings; want 2 and still 1", n, w)
	}
	sim.Update(func() { tl.Log = saved })
	recovered := read("read with the trend log back")
	checkGap := func(what string, samples []telemetry.Sample) {
		t.Helper()
		if want := logged(saved, t1, t2, nil); len(samples) != 1+want {
			t.Fatalf("%s: %d samples; want the live one and the %d records of the gap", what, len(samples), want)
		}
		for _, s := range samples[1:] {
			if s.Time <= t1 || s.Time >= t2 {
				t.Errorf("%s: backfilled %d outside the gap %d..%d: live reads covered it", what, s.Time, t1, t2)
			}
		}
	}
	checkGap("recovered", recovered)
	if n := logs.count(slog.LevelInfo, "trend-log backfill works again"); n != 1 {
		t.Errorf("%d recovery logs, want 1", n)
	}
	var after stateFile
	if err := json.Unmarshal(drv.Checkpoint(), &after); err != nil || len(after.Marks["analog-input:1"].Gaps) != 0 {
		t.Errorf("checkpoint after the gap was filled: %s (%v)", drv.Checkpoint(), err)
	}
	if s := read("next read"); len(s) != 1 {
		t.Errorf("the read after the recovery returned %d samples; the gap was filled already", len(s))
	}

	// A restarted agent handed the checkpoint of the failing read asks
	// for that gap, and only it.
	d2, err := New(driver.Device{Name: "restarted", Settings: settings, Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	d2.(*Driver).now = clock.now
	// The agent restores before the first Connect.
	if err := d2.(driver.Checkpointer).Restore(gapState); err != nil {
		t.Fatal(err)
	}
	if err := d2.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	restarted, err := d2.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	// The restart itself is a gap since the checkpoint's mark: keep only
	// the samples up to it.
	var inOld []telemetry.Sample
	for _, s := range restarted[1:] {
		if s.Time < t2 {
			inOld = append(inOld, s)
		}
	}
	checkGap("restored", append(restarted[:1:1], inOld...))
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("non-reads reached the device: %q", w)
	}
}

// TestBackfillStateVersions: the state of older agents (a bare map of
// marks) still loads, the current one round-trips, and states that make
// no sense are refused.
func TestBackfillStateVersions(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]mark
		err      string
	}{
		{"version 1", `{"analog-input:1":1000,"binary-value:2":2000}`, map[string]mark{"analog-input:1": {Last: 1000}, "binary-value:2": {Last: 2000}}, ""},
		{"version 2", `{"version":2,"marks":{"analog-input:1":{"last":3000,"gaps":[{"from":1000,"to":2000}]}}}`,
			map[string]mark{"analog-input:1": {Last: 3000, Gaps: []gap{{1000, 2000}}}}, ""},
		{"future version", `{"version":3,"marks":{}}`, nil, "version 3"},
		{"gap after the mark", `{"version":2,"marks":{"analog-input:1":{"last":1000,"gaps":[{"from":1000,"to":2000}]}}}`, nil, "not before"},
		{"empty gap", `{"version":2,"marks":{"analog-input:1":{"last":3000,"gaps":[{"from":2000,"to":2000}]}}}`, nil, "not before"},
		{"not json", `{"analog-input:1":`, nil, "unexpected end"},
		{"wrong shape", `{"analog-input:1":"yesterday"}`, nil, "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newBackfillState("", "x")
			err := s.restore([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("restore: %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, want := range tt.want {
				got := s.mark(k)
				if got.Last != want.Last || len(got.Gaps) != len(want.Gaps) || (len(want.Gaps) > 0 && got.Gaps[0] != want.Gaps[0]) {
					t.Errorf("%s: %+v, want %+v", k, got, want)
				}
			}
			// What it checkpoints loads again unchanged.
			s2 := newBackfillState("", "x")
			if err := s2.restore(s.checkpoint()); err != nil || !bytes.Equal(s2.checkpoint(), s.checkpoint()) {
				t.Errorf("round trip: %s -> %s (%v)", s.checkpoint(), s2.checkpoint(), err)
			}
		})
	}
}

// TestBackfillAfterDefault: without backfill_after, a gap opens only after
// twice the point's interval (at least 2m): its own, else the device's
// (driver.Device.Interval), else the spacing seen between its reads.
func TestBackfillAfterDefault(t *testing.T) {
	var set config
	set.backfillAfter = 30 * time.Second
	tests := []struct {
		name     string
		c        config
		interval time.Duration
		observed time.Duration
		want     time.Duration
	}{
		{"fast point", config{}, 10 * time.Second, 0, 2 * time.Minute},
		{"15 min point", config{}, 15 * time.Minute, 0, 30 * time.Minute},
		{"device interval, nothing seen yet", config{}, 0, 0, 2 * time.Minute},
		{"device interval of 15 min seen", config{}, 0, 15 * time.Minute, 30 * time.Minute},
		{"own interval wins over what was seen", config{}, 5 * time.Minute, 15 * time.Minute, 10 * time.Minute},
		{"set explicitly", set, 15 * time.Minute, 0, 30 * time.Second},
		{"device interval from the agent", config{interval: 10 * time.Minute}, 0, 0, 20 * time.Minute},
		{"device interval wins over what was seen", config{interval: 10 * time.Minute}, 0, time.Minute, 20 * time.Minute},
		{"own interval wins over the device's", config{interval: 10 * time.Minute}, 5 * time.Minute, 0, 10 * time.Minute},
	}
	for _, tt := range tests {
		if got := tt.c.backfillAfterFor(driver.Point{Interval: tt.interval}, tt.observed); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	// Spacings: one span alone (maybe an outage) does not count; the
	// shorter of the last two does.
	s := newBackfillState("", "x")
	for _, step := range []struct{ span, want time.Duration }{{time.Hour, 0}, {15 * time.Minute, 15 * time.Minute}, {16 * time.Minute, 15 * time.Minute}, {2 * time.Hour, 16 * time.Minute}} {
		s.observe("p", step.span)
		if got := s.spacing("p"); got != step.want {
			t.Errorf("after a span of %v: spacing %v, want %v", step.span, got, step.want)
		}
	}
}

// TestBackfillSkipsBadRecord: a trend log page with malformed records
// (every other one here) loses only those: the others are backfilled, the
// gap counts as filled, and the skip is logged.
func TestBackfillSkipsBadRecord(t *testing.T) {
	dev, tl := trendDevice(14, "buggy", 50*time.Millisecond)
	sim := startSim(t, bacnetsim.Config{Local: dev})
	logs := &logCount{}
	points := []driver.Point{{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}}
	d := openDriver(t, driver.Device{Name: "buggy", Settings: yamlText(simSettings(sim, 14, "backfill_after: 300ms\n")), Points: points, Logger: slog.New(logs)})
	clock := newFakeClock()
	d.now = clock.now
	first, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	clock.advance(500 * time.Millisecond) // ten records
	bad := func(seq uint64) bool { return seq%2 == 1 }
	sim.Update(func() { tl.Log.Corrupt = bad })
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	good := func(seq uint64) bool { return !bad(seq) }
	if n, want := len(samples)-1, logged(tl.Log, first[0].Time, samples[0].Time, good); n != want || want == 0 {
		t.Fatalf("%d backfilled; want the good half of the gap's records, %d", n, want)
	}
	for _, s := range samples[1:] {
		if s.Time <= first[0].Time || s.Time >= samples[0].Time {
			t.Errorf("backfilled %d outside the gap", s.Time)
		}
	}
	var cp stateFile
	if err := json.Unmarshal(d.Checkpoint(), &cp); err != nil || len(cp.Marks["analog-input:1"].Gaps) != 0 {
		t.Errorf("checkpoint %s (%v): the gap should count as filled", d.Checkpoint(), err)
	}
	if logs.count(slog.LevelWarn, "trend-log records that do not decode") == 0 {
		t.Error("the skipped records were not logged")
	}
}

// TestBackfillBackoff: a failing backfill is asked again after the base
// wait, doubling per failure, never more than an hour apart; a success
// makes it due at once.
func TestBackfillBackoff(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		failures int
		wait     time.Duration
	}{{1, time.Minute}, {2, 2 * time.Minute}, {3, 4 * time.Minute}, {7, time.Hour}, {40, time.Hour}}
	for _, tt := range tests {
		s := newBackfillState("", "x")
		for range tt.failures {
			s.outcome("p", t0, true)
		}
		if s.due("p", t0.Add(tt.wait-time.Second), time.Minute) || !s.due("p", t0.Add(tt.wait), time.Minute) {
			t.Errorf("after %d failures: want due exactly %v later", tt.failures, tt.wait)
		}
		if !s.due("p", t0.Add(-time.Hour), time.Minute) {
			t.Errorf("after %d failures: not due with the clock stepped back an hour; it would wait for the clock to pass the failure again", tt.failures)
		}
		if before := s.outcome("p", t0, false); before != tt.failures || !s.due("p", t0, time.Minute) {
			t.Errorf("after a success (%d failures before): not due at once", before)
		}
	}
}

// TestBackfillGapFailsAlone: a gap whose trend-log page does not decode
// at all fails, and is kept; the later gap is filled all the same.
func TestBackfillGapFailsAlone(t *testing.T) {
	dev, tl := trendDevice(15, "holes", 50*time.Millisecond)
	from := tl.Log.Start.Add(10*time.Second + 25*time.Millisecond)
	broken, later := gap{From: from.UnixMilli(), To: from.Add(time.Second).UnixMilli()}, gap{From: from.Add(20 * time.Second).UnixMilli(), To: from.Add(21 * time.Second).UnixMilli()}
	// Every record a page from the broken gap's start returns (200 of
	// them: 10s) is malformed; those of the later gap are not.
	tl.Log.Corrupt = func(seq uint64) bool {
		at := tl.Log.Start.Add(time.Duration(seq-1) * tl.Log.Interval)
		return !at.Before(from.Add(-time.Second)) && at.Before(from.Add(15*time.Second))
	}
	sim := startSim(t, bacnetsim.Config{Local: dev})
	p := driver.Point{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}
	drv := openDriver(t, driver.Device{Name: "holes", Settings: yamlText(simSettings(sim, 15, "")), Points: []driver.Point{p}})
	c, d, _, err := drv.session(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got, kept, err := drv.fillGaps(t.Context(), c, d, p, bacnet.ObjectID{Type: bacnet.ObjectTrendLog, Instance: 1}, []gap{broken, later})
	if err == nil || !strings.Contains(err.Error(), "no record of the page decodes") {
		t.Errorf("error %v; want the broken gap's", err)
	}
	if len(kept) != 1 || kept[0] != broken {
		t.Errorf("kept %+v; want the broken gap only, %+v", kept, broken)
	}
	if want := logged(tl.Log, later.From, later.To, nil); len(got) != want || want == 0 {
		t.Fatalf("%d samples; want the later gap's %d", len(got), want)
	}
	for _, s := range got {
		if s.Time <= later.From || s.Time >= later.To {
			t.Errorf("sample at %d outside the later gap %+v", s.Time, later)
		}
	}
}

// TestBackfillStateFile: Commit replaces the state file whole through a
// temporary file of its own (a leftover of a fixed name, here one that
// cannot be written, does not stop it), owner-only, and leaves no
// temporary file behind.
func TestBackfillStateFile(t *testing.T) {
	dir := t.TempDir()
	s := newBackfillState(dir, "ahu/1")
	if err := os.MkdirAll(s.path+".tmp", 0o700); err != nil {
		t.Fatal(err)
	}
	for i, last := range []int64{1000, 2000} {
		s.stage("analog-input:1", mark{Last: last})
		if err := s.commit(); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	reread := newBackfillState(dir, "ahu/1")
	if err := reread.load(); err != nil || reread.mark("analog-input:1").Last != 2000 {
		t.Errorf("reloaded mark %+v (%v), want the last committed, 2000", reread.mark("analog-input:1"), err)
	}
	entries, err := os.ReadDir(filepath.Dir(s.path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if p := filepath.Join(filepath.Dir(s.path), e.Name()); p != s.path && p != s.path+".tmp" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// TestBackfillClockStepsBack: the clock steps back an hour while a gap is
// owed. The gap is filled once, not at every poll (a mark read before the
// committed one was never committed), the mark stays where it was until
// the clock passes it, and the step is logged once.
func TestBackfillClockStepsBack(t *testing.T) {
	dev, tl := trendDevice(16, "drifting", 50*time.Millisecond)
	sim := startSim(t, bacnetsim.Config{Local: dev})
	logs := &logCount{}
	points := []driver.Point{{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}}
	clock := newFakeClock()
	drv := openDriver(t, driver.Device{Name: "drifting", Settings: yamlText(simSettings(sim, 16, "backfill_after: 300ms\n")), Points: points, Logger: slog.New(logs), DataDir: t.TempDir()})
	drv.now = clock.now
	drv.cfg.backfillRetry = 0
	read := func(what string) []telemetry.Sample {
		t.Helper()
		s, err := drv.Read(t.Context(), points)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if err := drv.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s
	}
	t1 := read("first read")[0].Time
	var saved *bacnetsim.TrendLog
	sim.Update(func() { saved, tl.Log = tl.Log, nil })
	clock.advance(time.Second)
	t2 := read("the trend log failing")[0].Time
	sim.Update(func() { tl.Log = saved })
	clock.advance(-time.Hour)
	if got, want := len(read("the clock stepped back"))-1, logged(saved, t1, t2, nil); got != want || want == 0 {
		t.Fatalf("backfilled %d after the clock stepped back; want the gap's %d", got, want)
	}
	for poll := range 3 {
		clock.advance(time.Second)
		if n := len(read("later")); n != 1 {
			t.Errorf("poll %d after the gap was filled returned %d samples; want the live one only", poll, n)
		}
	}
	var cp stateFile
	if err := json.Unmarshal(drv.Checkpoint(), &cp); err != nil || cp.Marks["analog-input:1"].Last != t2 || len(cp.Marks["analog-input:1"].Gaps) != 0 {
		t.Errorf("checkpoint %s (%v); want the mark at %d and no gap", drv.Checkpoint(), err, t2)
	}
	if n := logs.count(slog.LevelWarn, "the clock is behind"); n != 1 {
		t.Errorf("%d warnings of the clock stepping back, want 1", n)
	}
	clock.advance(time.Hour)
	read("the clock caught up")
	if n := logs.count(slog.LevelInfo, "the clock has caught up"); n != 1 {
		t.Errorf("%d logs of the clock catching up, want 1", n)
	}
}

// TestBackfillClockStepsBackPerPoint: the clock steps back behind one
// point's mark but not another's, and the points are read at their own
// intervals, in separate Reads. The step is logged once, and the clock is
// said to have caught up only once it passed every mark, not at each Read
// of the point it is not behind (the two lines alternated every poll).
func TestBackfillClockStepsBackPerPoint(t *testing.T) {
	dev, _ := trendDevice(17, "drifting, per point", 50*time.Millisecond)
	sim := startSim(t, bacnetsim.Config{Local: dev})
	logs := &logCount{}
	ahead := driver.Point{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}
	other := driver.Point{ID: 2, Ref: "analog-input:1/present-value", Settings: yamlText("trend_log: trend-log:1")}
	clock := newFakeClock()
	drv := openDriver(t, driver.Device{Name: "drifting", Settings: yamlText(simSettings(sim, 17, "backfill_after: 1h\n")),
		Points: []driver.Point{ahead, other}, Logger: slog.New(logs), DataDir: t.TempDir()})
	drv.now = clock.now
	read := func(p driver.Point) {
		t.Helper()
		s, err := drv.Read(t.Context(), []driver.Point{p})
		if err != nil || len(s) != 1 || s[0].Status != telemetry.StatusOK {
			t.Fatalf("reading %s: %v, %v", p.Ref, s, err)
		}
		if err := drv.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	read(other)
	clock.advance(10 * time.Minute)
	read(ahead)
	clock.advance(-5 * time.Minute) // behind ahead's mark, not other's
	for range 3 {
		read(ahead)
		clock.advance(time.Second)
		read(other)
		clock.advance(time.Second)
	}
	if n := logs.count(slog.LevelWarn, "the clock is behind"); n != 1 {
		t.Errorf("%d warnings of the clock stepping back, want 1", n)
	}
	if n := logs.count(slog.LevelInfo, "the clock has caught up"); n != 0 {
		t.Errorf("%d logs of the clock catching up while it is still behind a mark, want none", n)
	}
	clock.advance(5 * time.Minute) // past every mark
	read(other)
	read(ahead)
	if n := logs.count(slog.LevelInfo, "the clock has caught up"); n != 1 {
		t.Errorf("%d logs of the clock catching up, want 1", n)
	}
	if n := logs.count(slog.LevelWarn, "the clock is behind"); n != 1 {
		t.Errorf("%d warnings of the clock stepping back in all, want 1", n)
	}
}
