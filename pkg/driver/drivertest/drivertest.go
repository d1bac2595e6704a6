// Package drivertest is the conformance kit every driver passes. It checks
// the contract of package driver that no single driver's tests would think
// to check: samples carry only the IDs they were given, a cancelled context
// is honoured, Close releases and Connect reconnects, discovery returns anonymous points, Commit
// is harmless when there is nothing to commit, and no write ever reaches
// the wire. For a driver.Checkpointer it also checks that a state taken
// from one instance makes a new one continue where the first stopped (it
// reports the state back and returns nothing the first had returned), and
// that states no Checkpoint made (noise, truncated, nested, huge) neither
// panic nor break the driver. A Checkpointer's harness should configure a
// point with history (a trend log), or Checkpoint has nothing to carry.
//
// A driver author calls Run from a test in the driver's package with a
// Harness whose New builds a fresh driver against a simulator (or, for a
// file-based driver, a fresh copy of its fixtures) and returns the points
// to read, IDs set:
//
//	func TestConformance(t *testing.T) {
//		var peer *recorder // the driver's recording simulator
//		drivertest.Run(t, drivertest.Harness{
//			New: func(t *testing.T) (driver.Driver, []driver.Point) {
//				peer = newRecorder(t) // listens on 127.0.0.1:0, records every request
//				d, err := New(driver.Device{Name: "sim", Settings: settingsFor(peer.Addr())})
//				if err != nil {
//					t.Fatal(err)
//				}
//				return d, []driver.Point{{ID: 1, Ref: "40001"}, {ID: 2, Ref: "40002"}}
//			},
//			Writes: func() []string { return peer.Writes() },
//		})
//	}
//
// New is called once per sub-test, so every sub-test starts from a fresh
// driver and a fresh peer; Writes must report what the peer built by the
// latest New received. The points New returns must all be readable, and
// points[0] must be readable on its own.
package drivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Harness tells Run how to build the driver under test.
type Harness struct {
	// New builds a fresh driver and the points to read from it (IDs set,
	// non-zero and distinct). Called once per sub-test; it should register
	// any clean-up with t.Cleanup. Required.
	New func(t *testing.T) (driver.Driver, []driver.Point)
	// Writes, if set, returns every write request the recording peer
	// received since the latest New: protocol drivers give their recording
	// simulator here, file drivers a check that no source file's bytes
	// changed. Run fails if it returns anything. When nil, the write checks
	// are skipped (and say so).
	Writes func() []string
}

// Run runs the conformance suite against the driver h builds.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("drivertest: Harness.New is required")
	}
	k := kit{h: h}
	t.Run("Read", k.read)
	t.Run("ReadSubset", k.readSubset)
	t.Run("ReadNoPoints", k.readNoPoints)
	t.Run("ReadCancelled", k.readCancelled)
	t.Run("Close", k.close)
	t.Run("Discover", k.discover)
	t.Run("Commit", k.commit)
	t.Run("NoWrites", k.noWrites)
	t.Run("Counters", k.counters)
	t.Run("Checkpoint", k.checkpoint)
}

type kit struct{ h Harness }

// fresh builds a driver, checks the points New returned and connects.
func (k kit) fresh(t *testing.T) (driver.Driver, []driver.Point) {
	t.Helper()
	d, points := k.h.New(t)
	if d == nil {
		t.Fatal("Harness.New returned a nil driver")
	}
	t.Cleanup(func() { _ = d.Close() })
	if len(points) == 0 {
		t.Fatal("Harness.New returned no points: give at least one readable point")
	}
	ids := map[uint64]bool{}
	for _, p := range points {
		if p.ID == 0 || ids[p.ID] {
			t.Fatalf("Harness.New returned point %q with ID %d: IDs must be non-zero and distinct", p.Ref, p.ID)
		}
		ids[p.ID] = true
	}
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	return d, points
}

// checkWrites fails the test if the peer received a write.
func (k kit) checkWrites(t *testing.T) {
	t.Helper()
	if k.h.Writes == nil {
		return
	}
	if w := k.h.Writes(); len(w) > 0 {
		t.Errorf("writes reached the wire, but drivers are read-only: %q", w)
	}
}

// checkSamples checks samples against the points they were read for and
// returns how many each point got.
func checkSamples(t *testing.T, samples []telemetry.Sample, points []driver.Point) map[uint64]int {
	t.Helper()
	given := map[uint64]string{}
	for _, p := range points {
		given[p.ID] = p.Ref
	}
	got := map[uint64]int{}
	reported := 0
	for i, s := range samples {
		var problems []string
		if s.PointID == 0 {
			problems = append(problems, "point ID 0")
		} else if _, ok := given[s.PointID]; !ok {
			problems = append(problems, fmt.Sprintf("point ID %d that Read was not given", s.PointID))
		}
		if s.Status > telemetry.MaxStatus {
			problems = append(problems, fmt.Sprintf("undefined status %d", s.Status))
		}
		if s.Time == 0 {
			problems = append(problems, "zero time")
		}
		if len(problems) > 0 {
			// Cap the noise: one broken rule usually breaks every sample.
			if reported < 5 {
				t.Errorf("sample %d %+v: %v", i, s, problems)
			}
			reported++
			continue
		}
		got[s.PointID]++
	}
	if reported > 5 {
		t.Errorf("... and %d more bad samples", reported-5)
	}
	return got
}

// snapshot copies what Read must not change in the points it is given.
// pointCopy is the comparable part of a driver.Point, tags joined.
type pointCopy struct {
	id                          uint64
	ref, name, unit, desc, tags string
	interval                    time.Duration
}

func snapshot(points []driver.Point) []pointCopy {
	out := make([]pointCopy, len(points))
	for i, p := range points {
		out[i] = pointCopy{id: p.ID, ref: p.Ref, name: p.Name, unit: p.Unit, desc: p.Description, tags: strings.Join(p.Tags, "\x00"), interval: p.Interval}
	}
	return out
}

func (k kit) read(t *testing.T) {
	d, points := k.fresh(t)
	before := snapshot(points)
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if !slices.Equal(snapshot(points), before) {
		t.Error("Read modified the points it was given")
	}
	if got := checkSamples(t, samples, points); len(got) == 0 {
		t.Errorf("Read returned no valid sample for %d points (%d samples)", len(points), len(samples))
	}
	k.checkWrites(t)
}

func (k kit) readSubset(t *testing.T) {
	d, points := k.fresh(t)
	one := points[:1]
	samples, err := d.Read(t.Context(), one)
	if err != nil {
		t.Fatalf("Read(points[:1]): %v", err)
	}
	if got := checkSamples(t, samples, one); got[one[0].ID] == 0 {
		t.Errorf("Read(points[:1]) returned no sample of point %q", one[0].Ref)
	}
	k.checkWrites(t)
}

func (k kit) readNoPoints(t *testing.T) {
	d, points := k.fresh(t)
	samples, err := d.Read(t.Context(), nil)
	if err != nil || len(samples) > 0 {
		t.Errorf("Read(no points) = %d samples, %v; want none and no error", len(samples), err)
	}
	// An empty read must lose nothing a later read would return.
	samples, err = d.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("Read after an empty Read: %v", err)
	}
	if got := checkSamples(t, samples, points); len(got) == 0 {
		t.Error("Read after an empty Read returned no sample: the empty Read lost data")
	}
	k.checkWrites(t)
}

func (k kit) readCancelled(t *testing.T) {
	d, points := k.fresh(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// No timer: a driver that ignores ctx and blocks fails by the test
	// binary's timeout, and one that does the read anyway fails below.
	samples, err := d.Read(ctx, points)
	switch {
	case err != nil && !errors.Is(err, context.Canceled):
		t.Errorf("Read(cancelled) error %v does not wrap context.Canceled", err)
	case err == nil && len(samples) > 0:
		t.Errorf("Read(cancelled) returned %d samples; want an error wrapping context.Canceled, or nothing", len(samples))
	}
	// A cancelled read must neither consume nor break anything.
	samples, err = d.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("Read after a cancelled Read: %v", err)
	}
	if got := checkSamples(t, samples, points); len(got) == 0 {
		t.Error("Read after a cancelled Read returned no sample: the cancelled Read lost data")
	}
	k.checkWrites(t)
}

// close checks the reconnect contract of package driver: Close releases
// the connection (twice is harmless), a Read after Close fails rather than
// quietly opening a connection nobody will close, and Connect after Close
// opens it again, since the poller reconnects a device by Close and
// Connect on the same driver after a lost connection or a failed Connect.
func (k kit) close(t *testing.T) {
	d, points := k.fresh(t)
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v; want nil (Close is idempotent)", err)
	}
	if samples, err := d.Read(t.Context(), points); err == nil {
		t.Errorf("Read after Close = %d samples, nil error; want an error (Connect first)", len(samples))
	}
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("Connect after Close: %v; want the driver to connect again (the poller reconnects this way)", err)
	}
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("Read after reconnecting: %v", err)
	}
	if got := checkSamples(t, samples, points); len(got) == 0 {
		t.Errorf("Read after reconnecting returned no valid sample for %d points", len(points))
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close after reconnecting: %v", err)
	}
	k.checkWrites(t)
}

func (k kit) discover(t *testing.T) {
	d, points := k.fresh(t)
	disc, ok := d.(driver.Discoverer)
	if !ok {
		t.Skip("driver does not implement driver.Discoverer")
	}
	found, err := disc.Discover(t.Context())
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if len(found) == 0 {
		t.Error("Discover found no point, but New's points are readable")
	}
	refs := map[string]bool{}
	for _, p := range found {
		switch {
		case p.Ref == "":
			t.Errorf("Discover returned a point with an empty Ref: %+v", p)
		case p.ID != 0:
			t.Errorf("Discover returned point %q with ID %d: IDs are the agent's to compute, leave them zero", p.Ref, p.ID)
		case refs[p.Ref]:
			t.Errorf("Discover returned Ref %q twice: the agent would derive the same ID for both", p.Ref)
		}
		refs[p.Ref] = true
	}
	// Discovery is a look, not a read: it must not consume anything.
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("Read after Discover: %v", err)
	}
	if got := checkSamples(t, samples, points); len(got) == 0 {
		t.Error("Read after Discover returned no sample: discovery consumed or broke something")
	}
	k.checkWrites(t)
}

func (k kit) commit(t *testing.T) {
	d, points := k.fresh(t)
	c, ok := d.(driver.Committer)
	if !ok {
		t.Skip("driver does not implement driver.Committer")
	}
	if err := c.Commit(t.Context()); err != nil {
		t.Fatalf("Commit with nothing read: %v", err)
	}
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("Read after an empty Commit: %v", err)
	}
	if got := checkSamples(t, samples, points); len(got) == 0 {
		t.Error("Read after an empty Commit returned no sample: the empty Commit consumed something")
	}
	if err := c.Commit(t.Context()); err != nil {
		t.Fatalf("Commit after Read: %v", err)
	}
	if err := c.Commit(t.Context()); err != nil {
		t.Fatalf("second Commit: %v", err)
	}
	k.checkWrites(t)
}

// noWrites drives everything a driver offers, then asks the peer.
func (k kit) noWrites(t *testing.T) {
	if k.h.Writes == nil {
		t.Skip("Harness.Writes is nil: nothing records what reaches the wire; give a recording peer")
	}
	d, points := k.fresh(t)
	if disc, ok := d.(driver.Discoverer); ok {
		if _, err := disc.Discover(t.Context()); err != nil {
			t.Fatalf("Discover: %v", err)
		}
	}
	for i := range 3 {
		if _, err := d.Read(t.Context(), points); err != nil {
			t.Fatalf("Read %d: %v", i+1, err)
		}
		if c, ok := d.(driver.Committer); ok {
			if err := c.Commit(t.Context()); err != nil {
				t.Fatalf("Commit %d: %v", i+1, err)
			}
		}
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	k.checkWrites(t)
}

// counters checks a driver.Reporter: Counters answers before Connect,
// while connected and after Close; names are non-empty and distinct and,
// when there are any, include driver.GuardRefusals; values never go down;
// and the guard refused nothing while the kit read.
func (k kit) counters(t *testing.T) {
	d, points := k.h.New(t)
	if d == nil {
		t.Fatal("Harness.New returned a nil driver")
	}
	t.Cleanup(func() { _ = d.Close() })
	r, ok := d.(driver.Reporter)
	if !ok {
		t.Skip("driver does not implement driver.Reporter")
	}
	check := func(when string, prev map[string]uint64) map[string]uint64 {
		t.Helper()
		got := map[string]uint64{}
		for _, c := range r.Counters() {
			if c.Name == "" {
				t.Errorf("%s: a counter without a name: %+v", when, c)
			}
			if _, dup := got[c.Name]; dup {
				t.Errorf("%s: counter %q twice", when, c.Name)
			}
			got[c.Name] = c.Value
			if c.Value < prev[c.Name] {
				t.Errorf("%s: counter %q went down from %d to %d", when, c.Name, prev[c.Name], c.Value)
			}
		}
		// None at all is a wrapper whose inner driver keeps no counts, or
		// one that learns them with the first read.
		if _, ok := got[driver.GuardRefusals]; !ok && len(got) > 0 {
			t.Errorf("%s: no %q counter in %v", when, driver.GuardRefusals, got)
		}
		return got
	}
	seen := check("before Connect", nil)
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	for i := range 2 {
		if _, err := d.Read(t.Context(), points); err != nil {
			t.Fatalf("Read %d: %v", i+1, err)
		}
		seen = check(fmt.Sprintf("after read %d", i+1), seen)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	seen = check("after Close", seen)
	if n := seen[driver.GuardRefusals]; n != 0 {
		t.Errorf("the guard refused %d requests while the kit only read", n)
	}
}

// checkpoint checks a driver.Checkpointer: it must be a Committer, a
// state taken from one instance must make a fresh one continue where the
// first stopped, and a garbage state must neither panic nor break it.
func (k kit) checkpoint(t *testing.T) {
	d, _ := k.fresh(t)
	if _, ok := d.(driver.Checkpointer); !ok {
		t.Skip("driver does not implement driver.Checkpointer")
	}
	if _, ok := d.(driver.Committer); !ok {
		t.Error("a Checkpointer must be a Committer: the poller stores its state only for drivers that consume their source")
	}
	_ = d.Close()
	t.Run("Resume", k.resume)
	t.Run("Garbage", k.garbage)
}

// sampleKey is a sample as its point's Ref names it, so samples of two
// instances (whose harness may number points alike or not) compare.
type sampleKey struct {
	ref    string
	time   int64
	value  float64
	status telemetry.Status
}

func keys(samples []telemetry.Sample, points []driver.Point) map[sampleKey]bool {
	ref := map[uint64]string{}
	for _, p := range points {
		ref[p.ID] = p.Ref
	}
	out := map[sampleKey]bool{}
	for _, s := range samples {
		out[sampleKey{ref[s.PointID], s.Time, s.Value, s.Status}] = true
	}
	return out
}

// repeats counts the samples of got that first already returned and that
// are older than since: a live reading taken after since is new whatever
// its value, but an old one returned again is a repeat.
func repeats(first map[sampleKey]bool, got []telemetry.Sample, points []driver.Point, since int64) int {
	n := 0
	for k := range keys(got, points) {
		if k.time < since && first[k] {
			n++
		}
	}
	return n
}

// resume reads from one instance and takes its Checkpoint, as the poller
// stores it with that Read's samples; then the agent dies before Commit.
// A new instance given that state through Restore (before Connect, as the
// poller does) must report it back from Checkpoint until it reads, and must
// not return again what the first instance returned. A third instance,
// built without Restore, shows whether the harness's source has a history
// at all: when it repeats nothing either, only the state's round trip was
// checked, and the test says so.
func (k kit) resume(t *testing.T) {
	d1, points1 := k.fresh(t)
	first, err := d1.Read(t.Context(), points1)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	state := d1.(driver.Checkpointer).Checkpoint()
	if err := d1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	k.checkWrites(t)
	if state == nil {
		t.Skip("Checkpoint after a Read is nil: nothing to restore, so resuming cannot be checked")
	}
	seen := keys(first, points1)

	// Without Restore: does a fresh instance repeat what the first read?
	d3, points3 := k.h.New(t)
	t.Cleanup(func() { _ = d3.Close() })
	if err := d3.Connect(t.Context()); err != nil {
		t.Fatalf("Connect (instance without Restore): %v", err)
	}
	since := time.Now().UnixMilli()
	again, err := d3.Read(t.Context(), points3)
	if err != nil {
		t.Fatalf("Read (instance without Restore): %v", err)
	}
	withoutRestore := repeats(seen, again, points3, since)
	_ = d3.Close()
	k.checkWrites(t)

	d2, points2 := k.h.New(t)
	t.Cleanup(func() { _ = d2.Close() })
	c2, ok := d2.(driver.Checkpointer)
	if !ok {
		t.Fatal("Harness.New built a Checkpointer once and then a driver that is not")
	}
	if err := c2.Restore(state); err != nil {
		t.Fatalf("Restore of the state another instance left: %v", err)
	}
	if got := c2.Checkpoint(); !bytes.Equal(got, state) {
		t.Errorf("Checkpoint right after Restore = %q, want the state restored, %q: Restore was not taken (or Checkpoint does not report it)", got, state)
	}
	if err := d2.Connect(t.Context()); err != nil {
		t.Fatalf("Connect after Restore: %v", err)
	}
	since = time.Now().UnixMilli()
	resumed, err := d2.Read(t.Context(), points2)
	if err != nil {
		t.Fatalf("Read after Restore: %v", err)
	}
	checkSamples(t, resumed, points2)
	if n := repeats(seen, resumed, points2, since); n > 0 {
		t.Errorf("after Restore, Read returned %d samples the first instance had returned before its Checkpoint: Restore was not honoured, and the agent would store them twice", n)
	}
	if withoutRestore == 0 {
		t.Logf("an instance without Restore repeats none of the first instance's %d samples either: the harness's source has no history to resume, so only the state's round trip was checked", len(first))
	}
	k.checkWrites(t)
}

// garbage gives Restore states no Checkpoint made: Restore may refuse them
// with an error or ignore them (and log), but must not panic, and the
// driver must read as before.
func (k kit) garbage(t *testing.T) {
	d, points := k.fresh(t)
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatalf("Read: %v", err)
	}
	good := d.(driver.Checkpointer).Checkpoint()
	_ = d.Close()

	noise := make([]byte, 512)
	rng := rand.New(rand.NewPCG(1, 2)) // fixed: a failure must repeat
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	type garbageCase struct {
		name  string
		state []byte
	}
	tests := []garbageCase{
		{"empty", []byte{}},
		{"text", []byte("not a checkpoint")},
		{"binary noise", noise},
		{"NUL and 0xFF", []byte("\x00\xff\x00\xff")},
		{"JSON null", []byte("null")},
		{"JSON of another shape", []byte(`[1,"two",{"three":[3]}]`)},
		{"JSON of other types", []byte(`{"a":"b","c":[1],"d":{"e":null},"f":-1e308}`)},
		{"deeply nested", []byte(strings.Repeat("[", 100_000))},
		{"one MiB", bytes.Repeat([]byte("9"), 1<<20)},
	}
	if len(good) > 0 {
		flipped := bytes.Clone(good)
		for i := range flipped {
			flipped[i] ^= 0x55
		}
		tests = append(tests,
			garbageCase{"truncated", good[:len(good)/2]},
			garbageCase{"every byte flipped", flipped},
			garbageCase{"doubled", append(bytes.Clone(good), good...)},
		)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, points := k.h.New(t)
			t.Cleanup(func() { _ = d.Close() })
			c := d.(driver.Checkpointer)
			if err := restoreSafely(c, tt.state); err != nil && errors.Is(err, errPanicked) {
				t.Fatalf("Restore(%s) %v: refuse a bad state with an error, or ignore it and log", tt.name, err)
			}
			if err := d.Connect(t.Context()); err != nil {
				t.Fatalf("Connect after Restore(%s): %v: a bad state must not break the driver", tt.name, err)
			}
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				t.Fatalf("Read after Restore(%s): %v: a bad state must not break the driver", tt.name, err)
			}
			if got := checkSamples(t, samples, points); len(got) == 0 {
				t.Errorf("Read after Restore(%s) returned no valid sample: a bad state must not break the driver", tt.name)
			}
			_ = c.Checkpoint()
			k.checkWrites(t)
		})
	}
}

var errPanicked = errors.New("panicked")

// restoreSafely calls Restore and turns a panic into an error, so the kit
// names the state that caused it instead of dying.
func restoreSafely(c driver.Checkpointer, state []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errPanicked, r)
		}
	}()
	return c.Restore(state)
}
