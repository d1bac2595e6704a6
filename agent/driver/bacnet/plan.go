package bacnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// result is what a read found for one point.
type result struct {
	value      bacnet.Value
	hasValue   bool
	err        error // the property itself could not be read
	flags      bacnet.BitString
	hasFlags   bool
	reliable   bool // reliability read and no-fault-detected, or not read
	commFailed bool
}

// sample maps a result to a value and status: a fault (the flag or a
// reliability other than no-fault-detected) outranks out-of-service,
// which outranks overridden, which outranks in-alarm: a value in alarm is
// still what the device measured, only outside its limits.
func (r result) sample() (float64, telemetry.Status) {
	switch {
	case r.commFailed:
		return 0, telemetry.StatusCommFailure
	case r.err != nil || !r.hasValue:
		return 0, telemetry.StatusFault
	}
	v, ok := r.value.Float()
	switch {
	case !ok || math.IsNaN(v) || math.IsInf(v, 0):
		// Devices report NaN for a failed sensor; a sample carries numbers.
		return 0, telemetry.StatusFault
	case !r.reliable || (r.hasFlags && r.flags.Bit(1)):
		return v, telemetry.StatusFault
	case r.hasFlags && r.flags.Bit(3):
		return v, telemetry.StatusOutOfService
	case r.hasFlags && r.flags.Bit(2):
		return v, telemetry.StatusOverridden
	case r.hasFlags && r.flags.Bit(0):
		return v, telemetry.StatusInAlarm
	}
	return v, telemetry.StatusOK
}

// Size estimates for planning. A request's object costs its id and the
// list brackets, each property its tag; an answer's property costs its tag,
// the value brackets and a value (status flags, a real, an enumeration).
const (
	reqObject  = 7
	reqProp    = 2
	ackObject  = 7
	ackProp    = 12
	apduHeader = 5
	// maxPlanSegments bounds the segments an answer is planned to need,
	// below what devices typically buffer (and what we accept); a device's
	// max-segments-accepted lowers it.
	maxPlanSegments = 8
)

// answerBudget is the longest answer, in the planner's estimated octets,
// that a device has shown it can send: lowered whenever the device aborts a
// batch as too long for it, so the next polls plan requests it answers at
// the first try. Zero means nothing learned.
//
// An abort may be passing (a device short of buffers while it runs a
// schedule), so the budget is not lowered for good: once it has held for
// budgetProbeAfter without an abort, it is tried one step larger (doubled;
// past what the plan allows anyway, dropped). A step holds once the device
// answers, in a poll it was not busy in, a batch longer than the size it
// had proven; then it is kept, and the next is tried after
// budgetProbeAfter again. A step the device aborts goes back to the size
// it had proven, and the next try waits twice as long (at most
// budgetMaxWait), so a device whose limit is real costs one aborted
// request a day at most.
type answerBudget struct {
	mu     sync.Mutex
	octets int // 0: nothing learned
	// proven is the size before the step being tried; 0 when none is.
	proven int
	// wait is how long the budget holds before the next step up, from
	// changed, when it last changed.
	wait    time.Duration
	changed time.Time
}

const (
	budgetProbeAfter = time.Hour
	budgetMaxWait    = 24 * time.Hour
)

func (b *answerBudget) get() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.octets
}

// lower makes the budget at most n octets after an abort at now and
// reports whether it went down. Aborts met concurrently in one poll do not
// compound: each lowers to half its own batch, not half the budget.
func (b *answerBudget) lower(n int, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	n = max(n, 1)
	if b.proven > 0 {
		// The step was too far: back to what held, and wait longer.
		b.octets, b.proven = min(b.proven, n), 0
		b.wait, b.changed = min(2*b.wait, budgetMaxWait), now
		return true
	}
	if b.octets != 0 && b.octets <= n {
		return false
	}
	b.octets, b.wait, b.changed = n, budgetProbeAfter, now
	return true
}

// held records a poll at now whose batches the device answered without
// an abort for length (none busy), the longest of them answered octets,
// and tries the next step up when it is due: it reports whether it did.
// ceiling is the longest answer the plan makes without a budget.
//
// A step being tried holds only once a batch longer than the size it was
// proven at is answered: a poll of a few points, or one whose longer
// batches failed otherwise, proves nothing, and the step stays on trial.
func (b *answerBudget) held(now time.Time, ceiling, answered int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proven > 0 {
		if answered <= b.proven {
			return false
		}
		// The step held: the next is tried at the first pace again, from
		// now.
		b.proven, b.wait, b.changed = 0, budgetProbeAfter, now
	}
	if b.octets == 0 || now.Sub(b.changed) < b.wait {
		return false
	}
	b.proven = b.octets
	b.octets = 2 * b.octets
	if b.octets >= ceiling {
		b.octets = 0
	}
	b.changed = now
	return true
}

// batch is one ReadPropertyMultiple request: object specs and, for each
// property asked, the point and role it answers.
type batch struct {
	specs []bacnet.ReadAccessSpec
	slots [][]slot // per spec, per property
	ack   int      // the answer's estimated octets
}

// halves splits a batch of several objects in two.
func (b batch) halves() [2]batch {
	mid := len(b.specs) / 2
	part := func(lo, hi int) batch {
		return batch{specs: b.specs[lo:hi], slots: b.slots[lo:hi], ack: b.ack * (hi - lo) / len(b.specs)}
	}
	return [2]batch{part(0, mid), part(mid, len(b.specs))}
}

type slot struct {
	point int
	role  uint8 // roleValue, roleFlags, roleReliability
	ref   bacnet.PropertyRef
}

const (
	roleValue uint8 = iota
	roleFlags
	roleReliability
)

// plan groups the points' reads into requests that fit the device: the
// request within its max APDU, the answer within its max APDU times the
// segments it can send (one when it cannot segment, at most its
// max-segments-accepted) and within budget, what it has shown it can send
// (0: nothing learned).
func plan(dev bacnet.Device, budget int, points []point, valid []bool, roles ...uint8) []batch {
	maxReq := dev.MaxAPDU - apduHeader
	maxAck := answerCeiling(dev)
	if budget > 0 {
		maxAck = min(maxAck, budget)
	}
	// One spec per object, in first-seen order, so the points of one
	// object share its brackets.
	type objReads struct {
		spec  bacnet.ReadAccessSpec
		slots []slot
		seen  map[bacnet.PropertyRef]bool
	}
	var order []bacnet.ObjectID
	byObj := map[bacnet.ObjectID]*objReads{}
	for i, p := range points {
		if !valid[i] {
			continue
		}
		o := byObj[p.obj]
		if o == nil {
			o = &objReads{spec: bacnet.ReadAccessSpec{Object: p.obj}, seen: map[bacnet.PropertyRef]bool{}}
			byObj[p.obj] = o
			order = append(order, p.obj)
		}
		for role, ref := range []bacnet.PropertyRef{p.prop, bacnet.Prop(bacnet.PropStatusFlags), bacnet.Prop(bacnet.PropReliability)} {
			if !slices.Contains(roles, uint8(role)) {
				continue
			}
			// Duplicates are asked once, but every point gets its slot.
			if !o.seen[ref] {
				o.seen[ref] = true
				o.spec.Properties = append(o.spec.Properties, ref)
			}
			o.slots = append(o.slots, slot{point: i, role: uint8(role), ref: ref})
		}
	}
	var out []batch
	var cur batch
	reqSize, ackSize := 0, 0
	for _, id := range order {
		o := byObj[id]
		rs := reqObject + reqProp*len(o.spec.Properties)
		as := ackObject + ackProp*len(o.spec.Properties)
		if len(cur.specs) > 0 && (reqSize+rs > maxReq || ackSize+as > maxAck) {
			cur.ack = ackSize
			out = append(out, cur)
			cur, reqSize, ackSize = batch{}, 0, 0
		}
		cur.specs = append(cur.specs, o.spec)
		cur.slots = append(cur.slots, o.slots)
		reqSize += rs
		ackSize += as
	}
	if len(cur.specs) > 0 {
		cur.ack = ackSize
		out = append(out, cur)
	}
	return out
}

// answerCeiling is the longest answer plan makes for dev without a budget.
func answerCeiling(dev bacnet.Device) int {
	if !dev.Segmentation.CanTransmit() {
		return dev.MaxAPDU - apduHeader
	}
	segs := maxPlanSegments
	if dev.MaxSegments > 0 {
		segs = min(segs, dev.MaxSegments)
	}
	return (dev.MaxAPDU - apduHeader) * segs
}

// reader is one Read's view of a device: where to send, what the device
// has shown it can answer, and the results being filled in.
type reader struct {
	c      *bacnet.Client
	dev    bacnet.Device
	budget *answerBudget
	log    *slog.Logger
	// now is the Read's time, for the budget's clock.
	now time.Time
}

// readAll reads every valid point. It returns per-point results, whether
// the device rejected RPM (and ReadProperty was used instead), and an error
// only when no read got through at all (the device is gone).
func (rd reader) readAll(ctx context.Context, rpm bool, points []point, valid []bool) ([]result, bool, error) {
	c, dev := rd.c, rd.dev
	res := make([]result, len(points))
	for i := range res {
		res[i].reliable = true
	}
	fellBack := false
	var failed, tried int
	if rpm {
		// Status flags say fault whenever reliability is not
		// no-fault-detected, so reliability is asked only of the points
		// whose flags say fault (or that have no flags): a second, small
		// round instead of a third of every request.
		batches := plan(dev, rd.budget.get(), points, valid, roleValue, roleFlags)
		errs := runBatches(ctx, c, dev, batches, res)
		for _, err := range errs {
			if isRPMUnsupported(err) {
				fellBack, rpm = true, false
				break
			}
		}
		if !fellBack {
			// What the poll proved of the budget: the longest answer the
			// device sent whole, and whether it was too busy to tell.
			tooLong, busy, answered := false, false, 0
			for bi, err := range errs {
				tried++
				// A busy device is there: it counts as answering.
				if err != nil && (isTransport(err) || ctx.Err() != nil) {
					failed++
				}
				if err == nil {
					answered = max(answered, batches[bi].ack)
				}
				busy = busy || isBusy(err)
				long, err := rd.settle(ctx, points, batches[bi], err, res)
				if err != nil {
					return nil, fellBack, err
				}
				tooLong = tooLong || long
			}
			if !tooLong && !busy && failed < tried && ctx.Err() == nil && rd.budget.held(rd.now, answerCeiling(dev), answered) {
				rd.log.Info("the device answered without aborting for a while; trying longer requests again",
					"instance", dev.Instance, "answer_budget", rd.budget.get())
			}
			suspect := make([]bool, len(points))
			any := false
			for i := range res {
				r := &res[i]
				suspect[i] = valid[i] && r.hasValue && !r.commFailed && (!r.hasFlags || r.flags.Bit(1))
				any = any || suspect[i]
			}
			if any {
				// Best effort: the flags already gave the status.
				_ = runBatches(ctx, c, dev, plan(dev, rd.budget.get(), points, suspect, roleReliability), res)
			}
		}
	}
	if !rpm {
		for i := range res {
			res[i] = result{reliable: true}
		}
		tried, failed = 0, 0
		for i, p := range points {
			if !valid[i] {
				continue
			}
			tried++
			if err := readSingle(ctx, c, dev, p, &res[i]); err != nil {
				if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
					return nil, fellBack, err
				}
				if isTransport(err) {
					failed++
				}
				res[i].commFailed = isCommFailure(err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fellBack, err
	}
	if tried > 0 && failed == tried {
		// Not ErrConnLost: there is no connection to rebuild, and the agent
		// backs off a device that fails this way all the same.
		return nil, fellBack, fmt.Errorf("device %d answered none of %d requests: %w", dev.Instance, tried, bacnet.ErrTimeout)
	}
	return res, fellBack, nil
}

// settle deals with a batch's outcome. A batch the device aborted as too
// long for it is read again in halves, down to ReadProperty per property,
// and lowers the device's answer budget; one that failed with an Error or
// any other answer (many devices answer a whole RPM with one Error when
// one of its objects is missing, some a large one with Abort(other)) is
// read point by point, so the others are not lost with it. One the device
// aborted as busy, or that got no answer, is a comm failure of its points:
// splitting it would send an overloaded device a request per point, each
// aborted in turn. It reports whether the batch, of several objects, was
// aborted as too long (the budget was tested and lowered), and returns an
// error only when ctx ends.
func (rd reader) settle(ctx context.Context, points []point, b batch, err error, res []result) (tooLong bool, _ error) {
	switch {
	case err == nil:
		return false, nil
	case isCommFailure(err) || ctx.Err() != nil:
		markFailed(res, b, err)
		return false, nil
	case !isTooLong(err) || len(b.specs) == 1:
		// One object too long alone says nothing of the device's buffers:
		// its properties are asked one at a time, the budget is kept.
		return false, readEach(ctx, rd.c, rd.dev, points, b, res)
	}
	if rd.budget.lower(b.ack/2, rd.now) {
		rd.log.Info("device aborted an answer as too long for it; planning shorter requests",
			"instance", rd.dev.Instance, "answer_budget", rd.budget.get(), "err", err)
	}
	halves := b.halves()
	errs := runBatches(ctx, rd.c, rd.dev, halves[:], res)
	for i, h := range halves {
		if _, err := rd.settle(ctx, points, h, errs[i], res); err != nil {
			return true, err
		}
	}
	return true, nil
}

// isTooLong reports an Abort saying the answer would be longer than the
// device can send: buffer-overflow, segmentation-not-supported or
// apdu-too-long (ANSI/ASHRAE 135 clause 21, BACnetAbortReason).
func isTooLong(err error) bool {
	var a *bacnet.AbortError
	if !errors.As(err, &a) {
		return false
	}
	switch a.Reason {
	case bacnet.AbortBufferOverflow, bacnet.AbortSegmentationNotSupported, bacnet.AbortApduTooLong:
		return true
	}
	return false
}

// runBatches sends the batches, up to 8 at a time (the client bounds
// what is outstanding per device and network; this only avoids a goroutine
// per batch in huge polls), and returns each one's error. A device
// refusing RPM itself stops the rest.
func runBatches(ctx context.Context, c *bacnet.Client, dev bacnet.Device, batches []batch, res []result) []error {
	errs := make([]error, len(batches))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for bi, b := range batches {
		g.Go(func() error {
			errs[bi] = readBatch(gctx, c, dev, b, res)
			if isRPMUnsupported(errs[bi]) {
				return errs[bi]
			}
			return nil
		})
	}
	_ = g.Wait()
	return errs
}

// isRPMUnsupported reports a device's refusal of the service itself.
func isRPMUnsupported(err error) bool {
	var r *bacnet.RejectError
	var e *bacnet.Error
	return errors.As(err, &r) && r.Reason == 9 ||
		errors.As(err, &e) && e.Class == bacnet.ErrorClassServices && e.Code == bacnet.ErrorCodeServiceRequestDenied
}

// isTransport reports a failure to reach the device, as opposed to the
// device answering: with an Error, a Reject or an Abort, each of which
// says the device is there.
func isTransport(err error) bool {
	var e *bacnet.Error
	var r *bacnet.RejectError
	var a *bacnet.AbortError
	return !errors.As(err, &e) && !errors.As(err, &r) && !errors.As(err, &a)
}

// isBusy reports an Abort saying the device could not answer now:
// preempted by a higher-priority task, its application exceeded its reply
// time, out of resources, or its transaction timed out. Asking again in
// smaller pieces only loads it more. Abort(other) and reasons this list
// does not know are not busy: some devices answer a request they cannot
// handle (too large, a property they do not batch) with Abort(other) every
// time, and only asking for less gets their data through.
func isBusy(err error) bool {
	var a *bacnet.AbortError
	if !errors.As(err, &a) {
		return false
	}
	switch a.Reason {
	case bacnet.AbortPreempted, bacnet.AbortExceededReplyTime, bacnet.AbortOutOfResources, bacnet.AbortTSMTimeout:
		return true
	}
	return false
}

// isCommFailure reports a read that says nothing of the point: the device
// was not reached, or was too busy to answer. Its samples are comm
// failures, and its time is owed by the trend log (the backfill mark does
// not advance over it).
func isCommFailure(err error) bool { return err != nil && (isTransport(err) || isBusy(err)) }

func markFailed(res []result, b batch, err error) {
	for _, slots := range b.slots {
		for _, s := range slots {
			if isCommFailure(err) {
				res[s.point].commFailed = true
			} else if s.role == roleValue {
				res[s.point].err = err
			}
		}
	}
}

// readEach reads the points of a failed batch by ReadProperty.
func readEach(ctx context.Context, c *bacnet.Client, dev bacnet.Device, points []point, b batch, res []result) error {
	seen := map[int]bool{}
	for _, slots := range b.slots {
		for _, s := range slots {
			if seen[s.point] {
				continue
			}
			seen[s.point] = true
			res[s.point] = result{reliable: true}
			if err := readSingle(ctx, c, dev, points[s.point], &res[s.point]); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				res[s.point].commFailed = isCommFailure(err)
			}
		}
	}
	return nil
}

func readBatch(ctx context.Context, c *bacnet.Client, dev bacnet.Device, b batch, res []result) error {
	out, err := c.ReadPropertyMultiple(ctx, dev, b.specs)
	if err != nil {
		return err
	}
	for si, spec := range b.specs {
		var obj *bacnet.ObjectResult
		for k := range out {
			if out[k].Object == spec.Object {
				obj = &out[k]
				break
			}
		}
		for _, s := range b.slots[si] {
			if obj == nil {
				if s.role == roleValue {
					res[s.point].err = fmt.Errorf("object %v missing from the answer", spec.Object)
				}
				continue
			}
			apply(&res[s.point], s.role, find(obj.Results, s.ref))
		}
	}
	return nil
}

func find(rs []bacnet.PropertyResult, ref bacnet.PropertyRef) *bacnet.PropertyResult {
	for i := range rs {
		if rs[i].Property == ref {
			return &rs[i]
		}
	}
	return nil
}

// apply records one property's answer in a point's result.
func apply(r *result, role uint8, pr *bacnet.PropertyResult) {
	switch role {
	case roleValue:
		switch {
		case pr == nil:
			r.err = errors.New("property missing from the answer")
		case pr.Err != nil:
			r.err = pr.Err
		case len(pr.Values) == 1:
			r.value, r.hasValue = pr.Values[0], true
		default:
			r.err = fmt.Errorf("property has %d values, want one", len(pr.Values))
		}
	case roleFlags:
		if pr != nil && pr.Err == nil && len(pr.Values) == 1 && pr.Values[0].Kind == bacnet.KindBitString {
			r.flags, r.hasFlags = pr.Values[0].Bits, true
		}
	case roleReliability:
		// Objects without reliability answer unknown-property: reliable.
		if pr != nil && pr.Err == nil && len(pr.Values) == 1 && pr.Values[0].Kind == bacnet.KindEnumerated {
			r.reliable = pr.Values[0].Uint == 0
		}
	}
}

// readSingle reads one point by ReadProperty: its property, its status
// flags, and its reliability only when the flags say fault (to save
// requests on slow devices).
func readSingle(ctx context.Context, c *bacnet.Client, dev bacnet.Device, p point, r *result) error {
	v, err := c.ReadProperty(ctx, dev, p.obj, p.prop)
	apply(r, roleValue, propResult(p.prop, v, err))
	if err != nil {
		return err
	}
	v, err = c.ReadProperty(ctx, dev, p.obj, bacnet.Prop(bacnet.PropStatusFlags))
	apply(r, roleFlags, propResult(bacnet.Prop(bacnet.PropStatusFlags), v, err))
	if isCommFailure(err) {
		return err
	}
	if r.hasFlags && r.flags.Bit(1) {
		v, err = c.ReadProperty(ctx, dev, p.obj, bacnet.Prop(bacnet.PropReliability))
		apply(r, roleReliability, propResult(bacnet.Prop(bacnet.PropReliability), v, err))
		if isCommFailure(err) {
			return err
		}
	}
	return nil
}

func propResult(ref bacnet.PropertyRef, v []bacnet.Value, err error) *bacnet.PropertyResult {
	pr := &bacnet.PropertyResult{Property: ref, Values: v}
	if err != nil {
		var e *bacnet.Error
		if !errors.As(err, &e) {
			e = &bacnet.Error{}
		}
		pr.Err = e
	}
	return pr
}
