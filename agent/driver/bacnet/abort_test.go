package bacnet

import (
	"encoding/json"
	"fmt"
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
		{"abort other", abort(bacnet.AbortOther), false, false, true, true},
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

// TestBusyAbort reads a device that aborts every request as busy for a
// while, by RPM and (a device without it) by ReadProperty. Its points are
// comm failures, not faults; the aborted RPM is not split into a request
// per point; the device is not looked for again (it answered); and the
// busy time is owed by the trend log: once the device answers again, the
// gap since the last good read is backfilled.
func TestBusyAbort(t *testing.T) {
	reasons := []uint8{bacnet.AbortOther, bacnet.AbortPreempted, bacnet.AbortExceededReplyTime, bacnet.AbortOutOfResources, bacnet.AbortTSMTimeout}
	for _, noRPM := range []bool{false, true} {
		for _, reason := range reasons {
			t.Run(fmt.Sprintf("rpm %v, reason %d", !noRPM, reason), func(t *testing.T) {
				dev, tl := trendDevice(61, "busy", 50*time.Millisecond)
				dev.NoRPM = noRPM
				points := []driver.Point{{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}}
				for i := range 10 {
					dev.Objects = append(dev.Objects, &bacnetsim.Object{ID: bacnet.ObjectID{Type: bacnet.ObjectAnalogValue, Instance: uint32(i + 1)}})
					points = append(points, driver.Point{ID: uint64(i + 2), Ref: fmt.Sprintf("analog-value:%d", i+1)})
				}
				sim := startSim(t, bacnetsim.Config{Local: dev})
				clock := newFakeClock()
				drv := newDriver(t, simSettings(sim, 61, "backfill_after: 500ms\n"), points)
				drv.now = clock.now
				if err := drv.Connect(t.Context()); err != nil {
					t.Fatal(err)
				}
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

// TestAnswerBudget: aborts met concurrently in one poll do not compound
// (each lowers to half its own batch, not half the budget); a budget that
// held for an hour is tried one step larger, a step that holds is kept, a
// step that is aborted goes back to the proven size and the next try
// waits twice as long; past the plan's own bound the budget is dropped.
func TestAnswerBudget(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	const ceiling = 5000
	type step struct {
		at    time.Duration
		lower int // > 0: an abort of a batch of twice this; 0: a poll that held
		want  int
	}
	steps := []step{
		{0, 1000, 1000},
		{0, 1500, 1000},
		{0, 400, 400},
		{30 * time.Minute, 0, 400},
		{time.Hour, 0, 800},                       // held an hour: one step up
		{time.Hour + time.Minute, 0, 800},         // the step held
		{2*time.Hour + time.Minute, 0, 1600},      // and the next, an hour on
		{2*time.Hour + 2*time.Minute, 800, 800},   // aborted: back to what held
		{3*time.Hour + 2*time.Minute, 0, 800},     // the next try waits two hours
		{4*time.Hour + 2*time.Minute, 0, 1600},    // ... and holds
		{4*time.Hour + 3*time.Minute, 0, 1600},    //
		{5*time.Hour + 3*time.Minute, 0, 3200},    //
		{5*time.Hour + 4*time.Minute, 0, 3200},    // held
		{7*time.Hour + 4*time.Minute, 0, 0},       // 6400 is past the plan's bound: nothing to learn
		{7*time.Hour + 5*time.Minute, 2000, 2000}, // the device aborts again: learned afresh
		{7*time.Hour + 6*time.Minute, 0, 2000},    //
		{9*time.Hour + 4*time.Minute, 0, 2000},    // a failed try: two hours, not one
		{9*time.Hour + 5*time.Minute, 0, 4000},    //
		{9*time.Hour + 6*time.Minute, 100, 100},   // a small batch aborted while trying: its half
		{200 * time.Hour, 0, 200},                 //
		{200*time.Hour + time.Second, 100, 100},   // the step aborted: back
		{10000 * time.Hour, 0, 200},               // much later, tried again
		{10000*time.Hour + time.Minute, 0, 200},   //
		{10000*time.Hour + 2*time.Minute, -1, 1},  // never below one octet
	}
	var b answerBudget
	for i, s := range steps {
		now := t0.Add(s.at)
		if s.lower != 0 {
			b.lower(max(s.lower, 0), now)
		} else {
			b.held(now, ceiling)
		}
		if got := b.get(); got != s.want {
			t.Fatalf("step %d (%v, lower %d): budget %d, want %d", i, s.at, s.lower, got, s.want)
		}
	}
}

// TestAnswerBudgetRecovers: a device that could send only two segments
// for a while (it does not say how many) and then its full answers again:
// an hour after the aborts, the driver plans longer requests, and after a
// few hours it plans as if nothing had been learned; while the device
// still aborts, a try costs one poll's aborts, not every poll's.
func TestAnswerBudgetRecovers(t *testing.T) {
	dev := bacnetsim.NewDevice(42, "recovering", 300, 0, 0, false)
	dev.MaxAPDU, dev.MaxSegments, dev.NoMaxSegmentsAccepted = 480, 2, true
	var points []driver.Point
	for i := range 300 {
		points = append(points, driver.Point{ID: uint64(i + 1), Ref: fmt.Sprintf("analog-input:%d", i+1)})
	}
	sim := startSim(t, bacnetsim.Config{Local: dev})
	drv := newDriver(t, simSettings(sim, 42, ""), points)
	clock := newFakeClock()
	drv.now = clock.now
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	poll := func(what string) int {
		t.Helper()
		before := sim.Aborts()
		samples, err := drv.Read(t.Context(), points)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for _, s := range samples {
			if s.Status != telemetry.StatusOK {
				t.Fatalf("%s: sample %+v", what, s)
			}
		}
		return sim.Aborts() - before
	}
	if poll("first poll") == 0 {
		t.Fatal("the first poll met no abort: the test does not exercise the budget")
	}
	learned := drv.budget.get()
	if n := poll("the next poll"); n != 0 || learned == 0 {
		t.Fatalf("the next poll met %d aborts (budget %d); want none", n, learned)
	}
	clock.advance(time.Hour)
	if n := poll("an hour on"); n != 0 || drv.budget.get() <= learned {
		t.Fatalf("an hour on: %d aborts, budget %d; want none, and a budget above the %d learned", n, drv.budget.get(), learned)
	}
	clock.advance(time.Minute)
	if n := poll("the try, the device still limited"); n == 0 {
		t.Errorf("no abort from longer requests to a device still limited (budget %d)", drv.budget.get())
	}
	for _, wait := range []time.Duration{time.Minute, time.Hour} {
		clock.advance(wait)
		if n := poll("after the failed try"); n != 0 {
			t.Errorf("%v after the failed try: %d aborts; the next try waits two hours", wait, n)
		}
	}
	sim.Update(func() { dev.MaxSegments = 32 })
	for range 10 {
		clock.advance(2 * time.Hour)
		if n := poll("the device sends long answers again"); n != 0 {
			t.Fatalf("%d aborts from a device that is no longer limited", n)
		}
	}
	if b := drv.budget.get(); b != 0 {
		t.Errorf("budget %d after 20 hours of full answers; want it dropped (learned %d)", b, learned)
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
