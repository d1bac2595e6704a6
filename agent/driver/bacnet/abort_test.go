package bacnet

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestAbortedBatchesAreSplit reads devices whose answers are shorter than
// the planner's first guess: one that sends only two segments (with and
// without the max-segments-accepted property that says so) and one that
// cannot segment, asked for long object names. An abort is the device's
// answer, not an outage: every point is read, the device is not looked for
// again, and the next polls plan requests the device can answer.
func TestAbortedBatchesAreSplit(t *testing.T) {
	twoSegs := func(hide bool) *bacnetsim.Device {
		d := bacnetsim.NewDevice(41, "two-segments", 300, 0, 0, false)
		d.MaxAPDU, d.MaxSegments, d.NoMaxSegmentsAccepted = 480, 2, hide
		return d
	}
	var analogs, namesToo []driver.Point
	for i := range 300 {
		analogs = append(analogs, driver.Point{ID: uint64(i + 1), Ref: fmt.Sprintf("analog-input:%d", i+1)})
	}
	for i := range 40 {
		namesToo = append(namesToo, driver.Point{ID: uint64(2*i + 1), Ref: fmt.Sprintf("analog-input:%d", i+1)},
			driver.Point{ID: uint64(2*i + 2), Ref: fmt.Sprintf("analog-input:%d/object-name", i+1)})
	}
	unsegmented := bacnetsim.NewDevice(41, "a device whose names are long, unsegmented", 40, 0, 0, false)
	unsegmented.MaxAPDU, unsegmented.Segmentation = 480, bacnet.NoSegmentation
	// A name longer than the device's whole APDU: that object's name is
	// read alone (and lost), its present value and the others are not.
	tiny := bacnetsim.NewDevice(41, "tiny", 3, 0, 0, false)
	tiny.MaxAPDU, tiny.Segmentation = 128, bacnet.NoSegmentation
	tiny.Objects[0].Name = strings.Repeat("a name too long for the device ", 5)
	tinyPoints := []driver.Point{{ID: 1, Ref: "analog-input:1"}, {ID: 2, Ref: "analog-input:1/object-name"},
		{ID: 3, Ref: "analog-input:2"}, {ID: 4, Ref: "analog-input:2/object-name"}, {ID: 5, Ref: "analog-input:3"}}
	tests := []struct {
		name   string
		dev    *bacnetsim.Device
		points []driver.Point
		// aborts is whether the first poll meets aborts (the device does
		// not say what it can send); steady, whether every poll does (one
		// object's answer is too long on its own).
		aborts, steady bool
	}{
		{"two segments, property says so", twoSegs(false), analogs, false, false},
		{"two segments, no property", twoSegs(true), analogs, true, false},
		{"unsegmented, long names", unsegmented, namesToo, true, false},
		{"one object too long alone", tiny, tinyPoints, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim := startSim(t, bacnetsim.Config{Local: tt.dev})
			drv := newDriver(t, simSettings(sim, 41, ""), tt.points)
			if err := drv.Connect(t.Context()); err != nil {
				t.Fatal(err)
			}
			count := func() (aborts, whoIs int) {
				for _, r := range sim.Requests() {
					if r.PDU == bacnet.PDUUnconfirmedRequest && r.Service == bacnet.ServiceWhoIs {
						whoIs++
					}
				}
				return sim.Aborts(), whoIs
			}
			_, whoIsBefore := count()
			for poll := range 3 {
				abortsBefore, _ := count()
				samples, err := drv.Read(t.Context(), tt.points)
				if err != nil {
					t.Fatalf("poll %d: %v", poll, err)
				}
				for i, s := range samples {
					want := telemetry.StatusOK
					if strings.HasSuffix(tt.points[i].Ref, "/object-name") {
						// Read, but text is no number: a fault, not a comm failure.
						want = telemetry.StatusFault
					}
					if s.Status != want {
						t.Fatalf("poll %d: %s: status %v, want %v", poll, tt.points[i].Ref, s.Status, want)
					}
				}
				aborts, whoIs := count()
				if whoIs != whoIsBefore {
					t.Errorf("poll %d sent Who-Is %d times: an abort is not a lost device", poll, whoIs-whoIsBefore)
				}
				switch met := aborts - abortsBefore; {
				case (poll == 0 && tt.aborts || tt.steady) && met == 0:
					t.Errorf("poll %d met no abort: the test does not exercise the split", poll)
				case (poll > 0 || !tt.aborts) && !tt.steady && met != 0:
					t.Errorf("poll %d met %d aborts; the plan should fit what the device showed it can send", poll, met)
				}
			}
			// The aborts show in the driver's counters, as the device sent them.
			counted := map[string]uint64{}
			for _, c := range drv.Counters() {
				counted[c.Name] = c.Value
			}
			if got, ok := counted["aborts"]; !ok || got != uint64(sim.Aborts()) {
				t.Errorf("aborts counter %d (present %v); the device sent %d", got, ok, sim.Aborts())
			}
			if w := sim.Writes(); len(w) > 0 {
				t.Errorf("non-reads reached the device: %q", w)
			}
		})
	}
}

// TestErrorKinds tells a device that answered (Error, Reject, Abort) from
// one that did not, the aborts that mean "ask for less" from those that
// mean "busy, come back later", and which make a point's sample a comm
// failure.
func TestErrorKinds(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("read-property-multiple of 3 objects: %w", err) }
	abort := func(reason uint8) error { return wrap(&bacnet.AbortError{Reason: reason, Server: true}) }
	tests := []struct {
		name                           string
		err                            error
		transport, tooLong, busy, comm bool
	}{
		{"timeout", wrap(bacnet.ErrTimeout), true, false, false, true},
		{"error", wrap(&bacnet.Error{Class: bacnet.ErrorClassObject, Code: bacnet.ErrorCodeUnknownObject}), false, false, false, false},
		{"reject", wrap(&bacnet.RejectError{Reason: 9}), false, false, false, false},
		// Some devices answer a request they cannot handle with
		// Abort(other) every time: not busy, read in smaller pieces.
		{"abort other", abort(bacnet.AbortOther), false, false, false, false},
		{"abort invalid-apdu-in-this-state", abort(2), false, false, false, false},
		{"abort of a reason the standard does not list", abort(70), false, false, false, false},
		{"abort preempted", abort(bacnet.AbortPreempted), false, false, true, true},
		{"abort application-exceeded-reply-time", abort(bacnet.AbortExceededReplyTime), false, false, true, true},
		{"abort out-of-resources", abort(bacnet.AbortOutOfResources), false, false, true, true},
		{"abort tsm-timeout", abort(bacnet.AbortTSMTimeout), false, false, true, true},
		{"abort buffer-overflow", abort(bacnet.AbortBufferOverflow), false, true, false, false},
		{"abort segmentation-not-supported", abort(bacnet.AbortSegmentationNotSupported), false, true, false, false},
		{"abort apdu-too-long", abort(bacnet.AbortApduTooLong), false, true, false, false},
		{"no error", nil, true, false, false, false},
	}
	for _, tt := range tests {
		if got := isTransport(tt.err); got != tt.transport {
			t.Errorf("%s: isTransport %v, want %v", tt.name, got, tt.transport)
		}
		if got := isTooLong(tt.err); got != tt.tooLong {
			t.Errorf("%s: isTooLong %v, want %v", tt.name, got, tt.tooLong)
		}
		if got := isBusy(tt.err); got != tt.busy {
			t.Errorf("%s: isBusy %v, want %v", tt.name, got, tt.busy)
		}
		if got := isCommFailure(tt.err); got != tt.comm {
			t.Errorf("%s: isCommFailure %v, want %v", tt.name, got, tt.comm)
		}
	}
}

// withAnalogValues adds ten analog values to a trendDevice and returns
// the points to read: analog-input:1 with its trend log, and the ten.
func withAnalogValues(dev *bacnetsim.Device) []driver.Point {
	points := []driver.Point{{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}}
	for i := range 10 {
		dev.Objects = append(dev.Objects, &bacnetsim.Object{ID: bacnet.ObjectID{Type: bacnet.ObjectAnalogValue, Instance: uint32(i + 1)}})
		points = append(points, driver.Point{ID: uint64(i + 2), Ref: fmt.Sprintf("analog-value:%d", i+1)})
	}
	return points
}

// clockedDriver connects a driver of points to sim's device instance on a
// fake clock, with a backfill_after of 500ms.
func clockedDriver(t *testing.T, sim *bacnetsim.Server, instance uint32, points []driver.Point) (*Driver, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	drv := newDriver(t, simSettings(sim, instance, "backfill_after: 500ms\n"), points)
	drv.now = clock.now
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	return drv, clock
}

// TestBusyAbort reads a device that aborts every request as busy for a
// while, by RPM and (a device without it) by ReadProperty. Its points are
// comm failures, not faults; the aborted RPM is not split into a request
// per point; the device is not looked for again (it answered); and the
// busy time is owed by the trend log: once the device answers again, the
// gap since the last good read is backfilled.
func TestBusyAbort(t *testing.T) {
	reasons := []uint8{bacnet.AbortPreempted, bacnet.AbortExceededReplyTime, bacnet.AbortOutOfResources, bacnet.AbortTSMTimeout}
	for _, noRPM := range []bool{false, true} {
		for _, reason := range reasons {
			t.Run(fmt.Sprintf("rpm %v, reason %d", !noRPM, reason), func(t *testing.T) {
				dev, tl := trendDevice(61, "busy", 50*time.Millisecond)
				dev.NoRPM = noRPM
				points := withAnalogValues(dev)
				sim := startSim(t, bacnetsim.Config{Local: dev})
				drv, clock := clockedDriver(t, sim, 61, points)
				good, err := drv.Read(t.Context(), points)
				if err != nil || len(good) != len(points) {
					t.Fatalf("first read: %d samples, %v", len(good), err)
				}
				sim.Update(func() { dev.Busy, dev.BusyReason = true, reason })
				for poll := range 2 {
					clock.advance(400 * time.Millisecond)
					sim.Reset()
					samples, err := drv.Read(t.Context(), points)
					if err != nil {
						t.Fatalf("busy poll %d: %v; a busy device answered, the read did not fail", poll, err)
					}
					for i, s := range samples {
						if s.Status != telemetry.StatusCommFailure {
							t.Errorf("busy poll %d: %s: status %v, want comm failure", poll, points[i].Ref, s.Status)
						}
					}
					var rp, rpm, whoIs int
					for _, r := range sim.Requests() {
						switch {
						case r.PDU == bacnet.PDUUnconfirmedRequest && r.Service == bacnet.ServiceWhoIs:
							whoIs++
						case r.PDU == bacnet.PDUConfirmedRequest && r.Service == bacnet.ServiceReadProperty:
							rp++
						case r.PDU == bacnet.PDUConfirmedRequest && r.Service == bacnet.ServiceReadPropertyMultiple:
							rpm++
						}
					}
					wantRP, wantRPM := 0, 1
					if noRPM {
						// One request per point is all a device without RPM
						// gets: the value, whose abort ends the point's read.
						wantRP, wantRPM = len(points), 0
					}
					if rp != wantRP || rpm != wantRPM || whoIs != 0 {
						t.Errorf("busy poll %d sent %d ReadProperty, %d RPM, %d Who-Is; want %d, %d, 0", poll, rp, rpm, whoIs, wantRP, wantRPM)
					}
				}
				var cp stateFile
				if err := json.Unmarshal(drv.Checkpoint(), &cp); err != nil || cp.Marks["analog-input:1"].Last != good[0].Time {
					t.Errorf("checkpoint %s (%v) after the busy polls: want the mark at the last good read, %d", drv.Checkpoint(), err, good[0].Time)
				}
				if noRPM {
					return // such a device has no ReadRange either
				}
				sim.Update(func() { dev.Busy = false })
				clock.advance(400 * time.Millisecond)
				back, err := drv.Read(t.Context(), points)
				if err != nil {
					t.Fatal(err)
				}
				want := logged(tl.Log, good[0].Time, back[0].Time, nil)
				if len(back) != len(points)+want || want == 0 {
					t.Errorf("the read after the busy time returned %d samples; want %d live and the %d records logged since the last good read", len(back), len(points), want)
				}
				if w := sim.Writes(); len(w) > 0 {
					t.Errorf("non-reads reached the device: %q", w)
				}
			})
		}
	}
}

// TestAbortOtherReadPointByPoint reads a device that answers every
// ReadPropertyMultiple of more than one object with Abort(other), for
// ever, as some devices answer a request too large for them. That is no
// busy device: the batch is read point by point, every sample comes
// through, the device is not looked for again, and the backfill mark
// moves with the live reads (nothing is owed).
func TestAbortOtherReadPointByPoint(t *testing.T) {
	dev, _ := trendDevice(62, "aborts large RPMs", 50*time.Millisecond)
	dev.AbortRPMOver = 1
	points := withAnalogValues(dev)
	sim := startSim(t, bacnetsim.Config{Local: dev})
	drv, clock := clockedDriver(t, sim, 62, points)
	sim.Reset()
	for poll := range 3 {
		clock.advance(400 * time.Millisecond)
		aborts := sim.Aborts()
		samples, err := drv.Read(t.Context(), points)
		if err != nil {
			t.Fatalf("poll %d: %v", poll, err)
		}
		if len(samples) != len(points) {
			t.Fatalf("poll %d: %d samples, want %d (no gap, nothing to backfill)", poll, len(samples), len(points))
		}
		for i, s := range samples {
			if s.Status != telemetry.StatusOK {
				t.Errorf("poll %d: %s: status %v, want ok", poll, points[i].Ref, s.Status)
			}
		}
		if sim.Aborts() == aborts {
			t.Errorf("poll %d met no abort: the test does not exercise Abort(other)", poll)
		}
		var cp stateFile
		if err := json.Unmarshal(drv.Checkpoint(), &cp); err != nil || cp.Marks["analog-input:1"].Last != samples[0].Time {
			t.Errorf("poll %d: checkpoint %s (%v); want the mark at the live read, %d", poll, drv.Checkpoint(), err, samples[0].Time)
		}
	}
	if n := confirmed(sim, bacnet.ServiceReadProperty); n < len(points) {
		t.Errorf("%d ReadProperty requests in three polls; want each point read alone", n)
	}
	for _, r := range sim.Requests() {
		if r.PDU == bacnet.PDUUnconfirmedRequest && r.Service == bacnet.ServiceWhoIs {
			t.Errorf("Who-Is sent: an abort is not a lost device")
			break
		}
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("non-reads reached the device: %q", w)
	}
}

// TestAnswerBudget: aborts met concurrently in one poll do not compound
// (each lowers to half its own batch, not half the budget); a budget that
// held for an hour is tried one step larger, a step that holds is kept, a
// step that is aborted goes back to the proven size and the next try
// waits twice as long; past the plan's own bound the budget is dropped. A
// step holds only once a batch longer than the proven size is answered:
// polls of short batches leave it on trial.
func TestAnswerBudget(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	const ceiling = 5000
	type step struct {
		at    time.Duration
		lower int // > 0: an abort of a batch of twice this; 0: a poll that held
		// answered is the longest batch a poll that held answered.
		answered int
		want     int
	}
	const all = ceiling // a poll whose batches were as long as the budget allowed
	tests := []struct {
		name  string
		steps []step
	}{
		{"steps", []step{
			{0, 1000, 0, 1000},
			{0, 1500, 0, 1000},
			{0, 400, 0, 400},
			{30 * time.Minute, 0, all, 400},
			{time.Hour, 0, all, 800},                     // held an hour: one step up
			{time.Hour + time.Minute, 0, all, 800},       // the step held
			{2*time.Hour + time.Minute, 0, all, 1600},    // and the next, an hour on
			{2*time.Hour + 2*time.Minute, 800, 0, 800},   // aborted: back to what held
			{3*time.Hour + 2*time.Minute, 0, all, 800},   // the next try waits two hours
			{4*time.Hour + 2*time.Minute, 0, all, 1600},  // ... and holds
			{4*time.Hour + 3*time.Minute, 0, all, 1600},  //
			{5*time.Hour + 3*time.Minute, 0, all, 3200},  //
			{5*time.Hour + 4*time.Minute, 0, all, 3200},  // held
			{7*time.Hour + 4*time.Minute, 0, all, 0},     // 6400 is past the plan's bound: nothing to learn
			{7*time.Hour + 5*time.Minute, 2000, 0, 2000}, // the device aborts again: learned afresh
			{7*time.Hour + 6*time.Minute, 0, all, 2000},  //
			{9*time.Hour + 4*time.Minute, 0, all, 2000},  // a failed try: two hours, not one
			{9*time.Hour + 5*time.Minute, 0, all, 4000},  //
			{9*time.Hour + 6*time.Minute, 100, 0, 100},   // a small batch aborted while trying: its half
			{200 * time.Hour, 0, all, 200},               //
			{200*time.Hour + time.Second, 100, 0, 100},   // the step aborted: back
			{10000 * time.Hour, 0, all, 200},             // much later, tried again
			{10000*time.Hour + time.Minute, 0, all, 200}, //
			{10000*time.Hour + 2*time.Minute, -1, 0, 1},  // never below one octet
		}},
		{"polls that prove nothing", []step{
			{0, 400, 0, 400},
			{time.Hour, 0, 300, 800},                    // the step starts
			{time.Hour + time.Minute, 0, 400, 800},      // no batch longer than 400: on trial
			{2*time.Hour + time.Minute, 0, 0, 800},      // still: no next step on an untested one
			{2*time.Hour + 2*time.Minute, 400, 0, 400},  // aborted: a failed try
			{3*time.Hour + 2*time.Minute, 0, all, 400},  // so the next waits two hours
			{4*time.Hour + 2*time.Minute, 0, 400, 800},  //
			{4*time.Hour + 3*time.Minute, 0, 401, 800},  // longer than proven: held
			{5*time.Hour + 2*time.Minute, 0, all, 800},  // the next an hour from then
			{5*time.Hour + 3*time.Minute, 0, all, 1600}, //
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b answerBudget
			for i, s := range tt.steps {
				now := t0.Add(s.at)
				if s.lower != 0 {
					b.lower(max(s.lower, 0), now)
				} else {
					b.held(now, ceiling, s.answered)
				}
				if got := b.get(); got != s.want {
					t.Fatalf("step %d (%v, lower %d, answered %d): budget %d, want %d", i, s.at, s.lower, s.answered, got, s.want)
				}
			}
		})
	}
}

// limited is a driver of 300 points on a fake clock, reading a device
// that sends only two segments and does not say so: its first poll meets
// aborts and learns an answer budget.
type limited struct {
	sim    *bacnetsim.Server
	dev    *bacnetsim.Device
	drv    *Driver
	clock  *fakeClock
	points []driver.Point
	// learned is the budget the first poll learned.
	learned int
}

func newLimited(t *testing.T, instance uint32) *limited {
	t.Helper()
	l := &limited{dev: bacnetsim.NewDevice(instance, "limited", 300, 0, 0, false), clock: newFakeClock()}
	l.dev.MaxAPDU, l.dev.MaxSegments, l.dev.NoMaxSegmentsAccepted = 480, 2, true
	for i := range 300 {
		l.points = append(l.points, driver.Point{ID: uint64(i + 1), Ref: fmt.Sprintf("analog-input:%d", i+1)})
	}
	l.sim = startSim(t, bacnetsim.Config{Local: l.dev})
	l.drv = newDriver(t, simSettings(l.sim, instance, ""), l.points)
	l.drv.now = l.clock.now
	if err := l.drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	if l.poll(t, "first poll", nil, telemetry.StatusOK) == 0 {
		t.Fatal("the first poll met no abort: the test does not exercise the budget")
	}
	l.learned = l.drv.budget.get()
	return l
}

// poll reads points (nil: all of them), checks every sample has status
// want, and returns the aborts the poll met.
func (l *limited) poll(t *testing.T, what string, points []driver.Point, want telemetry.Status) int {
	t.Helper()
	if points == nil {
		points = l.points
	}
	before := l.sim.Aborts()
	samples, err := l.drv.Read(t.Context(), points)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	for _, s := range samples {
		if s.Status != want {
			t.Fatalf("%s: sample %+v, want status %v", what, s, want)
		}
	}
	return l.sim.Aborts() - before
}

// trial returns the size the budget's step on trial was proven at (0: no
// step on trial) and how long the budget holds before the next step.
func (l *limited) trial() (proven int, wait time.Duration) {
	l.drv.budget.mu.Lock()
	defer l.drv.budget.mu.Unlock()
	return l.drv.budget.proven, l.drv.budget.wait
}

// busy makes the device abort every request as out of resources (or not).
func (l *limited) busy(on bool) {
	l.sim.Update(func() { l.dev.Busy, l.dev.BusyReason = on, bacnet.AbortOutOfResources })
}

// TestAnswerBudgetRecovers: a device that could send only two segments
// for a while (it does not say how many) and then its full answers again:
// an hour after the aborts, the driver plans longer requests, and after a
// few hours it plans as if nothing had been learned; while the device
// still aborts, a try costs one poll's aborts, not every poll's.
func TestAnswerBudgetRecovers(t *testing.T) {
	l := newLimited(t, 42)
	poll := func(what string) int { t.Helper(); return l.poll(t, what, nil, telemetry.StatusOK) }
	if n := poll("the next poll"); n != 0 || l.learned == 0 {
		t.Fatalf("the next poll met %d aborts (budget %d); want none", n, l.learned)
	}
	l.clock.advance(time.Hour)
	if n := poll("an hour on"); n != 0 || l.drv.budget.get() <= l.learned {
		t.Fatalf("an hour on: %d aborts, budget %d; want none, and a budget above the %d learned", n, l.drv.budget.get(), l.learned)
	}
	l.clock.advance(time.Minute)
	if n := poll("the try, the device still limited"); n == 0 {
		t.Errorf("no abort from longer requests to a device still limited (budget %d)", l.drv.budget.get())
	}
	for _, wait := range []time.Duration{time.Minute, time.Hour} {
		l.clock.advance(wait)
		if n := poll("after the failed try"); n != 0 {
			t.Errorf("%v after the failed try: %d aborts; the next try waits two hours", wait, n)
		}
	}
	l.sim.Update(func() { l.dev.MaxSegments = 32 })
	for range 10 {
		l.clock.advance(2 * time.Hour)
		if n := poll("the device sends long answers again"); n != 0 {
			t.Fatalf("%d aborts from a device that is no longer limited", n)
		}
	}
	if b := l.drv.budget.get(); b != 0 {
		t.Errorf("budget %d after 20 hours of full answers; want it dropped (learned %d)", b, l.learned)
	}
	if w := l.sim.Writes(); len(w) > 0 {
		t.Errorf("non-reads reached the device: %q", w)
	}
}

// TestAnswerBudgetStepNeedsProof: a step of the budget being tried is not
// taken as holding by a poll that proved nothing of it: one of a few
// points, whose batches are no longer than the size already proven, or
// one the device was too busy to answer. The step stays on trial, and
// when the device then aborts it, it counts as a failed try (the next
// waits twice as long), not as a new limit.
func TestAnswerBudgetStepNeedsProof(t *testing.T) {
	tests := []struct {
		name string
		// unproven is the poll that proves nothing.
		unproven func(t *testing.T, l *limited)
	}{
		{"a poll of a few points", func(t *testing.T, l *limited) {
			l.poll(t, "a poll of three points", l.points[:3], telemetry.StatusOK)
		}},
		{"a busy poll", func(t *testing.T, l *limited) {
			l.busy(true)
			defer l.busy(false)
			l.poll(t, "a busy poll", nil, telemetry.StatusCommFailure)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimited(t, 43)
			l.clock.advance(time.Hour)
			if n := l.poll(t, "an hour on", nil, telemetry.StatusOK); n != 0 {
				t.Fatalf("an hour on: %d aborts; want none", n)
			}
			if proven, _ := l.trial(); proven != l.learned || l.drv.budget.get() <= l.learned {
				t.Fatalf("an hour on: budget %d proven at %d; want a step above the %d learned on trial", l.drv.budget.get(), proven, l.learned)
			}
			l.clock.advance(time.Minute)
			tt.unproven(t, l)
			if proven, _ := l.trial(); proven != l.learned {
				t.Errorf("after a poll that proved nothing the step is taken as holding (proven %d, want still %d on trial)", proven, l.learned)
			}
			l.clock.advance(time.Minute)
			if n := l.poll(t, "the step, the device still limited", nil, telemetry.StatusOK); n == 0 {
				t.Fatalf("no abort from the step's longer requests to a device still limited (budget %d)", l.drv.budget.get())
			}
			if proven, wait := l.trial(); proven != 0 || wait != 2*budgetProbeAfter {
				t.Errorf("the step aborted: proven %d, next try after %v; want a failed try (0, %v)", proven, wait, 2*budgetProbeAfter)
			}
			if w := l.sim.Writes(); len(w) > 0 {
				t.Errorf("non-reads reached the device: %q", w)
			}
		})
	}
}

// TestAnswerBudgetNoStepWhileBusy: a budget due for a step up is not
// stepped in a poll the device was too busy to answer (longer requests to
// an overloaded device prove nothing and load it more), but at the next
// poll it answers.
func TestAnswerBudgetNoStepWhileBusy(t *testing.T) {
	l := newLimited(t, 44)
	l.clock.advance(time.Hour)
	l.busy(true)
	l.poll(t, "a busy poll an hour on", nil, telemetry.StatusCommFailure)
	if proven, _ := l.trial(); proven != 0 || l.drv.budget.get() != l.learned {
		t.Errorf("a busy poll stepped the budget to %d (proven %d); want the %d learned, no step", l.drv.budget.get(), proven, l.learned)
	}
	l.busy(false)
	l.clock.advance(time.Minute)
	l.poll(t, "the device answers again", nil, telemetry.StatusOK)
	if proven, _ := l.trial(); proven != l.learned || l.drv.budget.get() <= l.learned {
		t.Errorf("the device answered again: budget %d proven at %d; want a step above the %d learned", l.drv.budget.get(), proven, l.learned)
	}
}

// TestDiscoverRateLimited: discovery inside the agent (discover: true) is
// paced like the CLI's, at DefaultDiscoverRate requests a second. The
// check is a lower bound, which pacing guarantees however fast the
// simulator answers.
func TestDiscoverRateLimited(t *testing.T) {
	d := bacnetsim.NewDevice(51, "paced", 2, 1, 0, false)
	d.NoRPM = true // every property its own request
	sim := startSim(t, bacnetsim.Config{Local: d})
	drv := newDriver(t, simSettings(sim, 51, ""), nil)
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	sim.Reset()
	start := time.Now()
	found, err := drv.Discover(t.Context())
	if err != nil || len(found) != 3 {
		t.Fatalf("%d points, %v", len(found), err)
	}
	took := time.Since(start)
	n := confirmed(sim, bacnet.ServiceReadProperty)
	if min := time.Duration(n-1) * time.Second / DefaultDiscoverRate; took < min {
		t.Errorf("%d requests in %v; at %d a second they take at least %v", n, took, DefaultDiscoverRate, min)
	}
}

// TestSettle drives settle alone, on a reader built for it as any caller
// would: it reports a batch of several objects aborted as too long (and
// lowers the budget, reading the batch in halves), and nothing else as
// such: not one object too long alone, read property by property, nor
// Abort(other), read point by point, nor a busy abort, whose points are
// comm failures without a request more.
func TestSettle(t *testing.T) {
	abort := func(reason uint8) error { return &bacnet.AbortError{Reason: reason, Server: true} }
	tests := []struct {
		name    string
		objects int
		err     error
		tooLong bool
		budget  bool // lowered to half the batch
		state   string
		rpm, rp int
	}{
		{"answered", 6, nil, false, false, "unread", 0, 0},
		{"too long", 6, abort(bacnet.AbortBufferOverflow), true, true, "read", 2, 0},
		{"one object too long alone", 1, abort(bacnet.AbortApduTooLong), false, false, "read", 0, 2},
		{"abort other", 6, abort(bacnet.AbortOther), false, false, "read", 0, 12},
		{"busy", 6, abort(bacnet.AbortOutOfResources), false, false, "comm failure", 0, 0},
	}
	sim := startSim(t, bacnetsim.Config{Local: bacnetsim.NewDevice(45, "settled", 6, 0, 0, false)})
	drv := newDriver(t, simSettings(sim, 45, ""), nil)
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	c, dev, _, err := drv.session(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var points []point
			for i := range tt.objects {
				p, err := parsePoint(driver.Point{Ref: fmt.Sprintf("analog-input:%d", i+1)})
				if err != nil {
					t.Fatal(err)
				}
				points = append(points, p)
			}
			valid := slices.Repeat([]bool{true}, len(points))
			batches := plan(dev, 0, points, valid, roleValue, roleFlags)
			if len(batches) != 1 {
				t.Fatalf("%d batches planned, want one", len(batches))
			}
			var budget answerBudget
			rd := reader{c: c, dev: dev, budget: &budget, log: slog.New(slog.DiscardHandler), now: time.Now()}
			res := make([]result, len(points))
			sim.Reset()
			tooLong, err := rd.settle(t.Context(), points, batches[0], tt.err, res)
			if err != nil {
				t.Fatal(err)
			}
			if tooLong != tt.tooLong {
				t.Errorf("settle reported too long %v, want %v", tooLong, tt.tooLong)
			}
			if want := map[bool]int{true: batches[0].ack / 2}[tt.budget]; budget.get() != want {
				t.Errorf("budget %d, want %d", budget.get(), want)
			}
			for i, r := range res {
				state := "unread"
				switch {
				case r.commFailed:
					state = "comm failure"
				case r.hasValue && r.hasFlags:
					state = "read"
				}
				if state != tt.state {
					t.Errorf("point %d: %s (%+v), want %s", i, state, r, tt.state)
				}
			}
			if rpm, rp := confirmed(sim, bacnet.ServiceReadPropertyMultiple), confirmed(sim, bacnet.ServiceReadProperty); rpm != tt.rpm || rp != tt.rp {
				t.Errorf("%d RPM and %d ReadProperty sent, want %d and %d", rpm, rp, tt.rpm, tt.rp)
			}
		})
	}
}
