package poll

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// group is the points of one device that share an interval: they are always
// due together.
type group struct {
	interval time.Duration
	points   []driver.Point
	// next is the nominal time of the group's next read, on the grid that
	// starts when the worker starts.
	next time.Time
	// busy is true while a read of the group is in flight.
	busy bool
	// late is set when the group fell due while every read the device
	// allows was in flight, so its read starts after its tick.
	late bool
}

// advance moves next to the first tick after now, skipping the ticks
// missed while the device was busy or down, and returns how many it
// skipped: the read that ends now serves one of the ticks up to now, and
// every other one passed without a read of its own.
func (g *group) advance(now time.Time) (skipped int) {
	if g.next.After(now) {
		return 0
	}
	passed := now.Sub(g.next)/g.interval + 1
	g.next = g.next.Add(passed * g.interval)
	return int(passed) - 1
}

// worker polls one device. Its fields below mu are owned by the goroutine
// running run; reads in flight only touch the driver, the sink and the
// logger, and hand their outcome back as a result.
type worker struct {
	dev       Device
	sink      Sink
	opts      Options
	log       *slog.Logger
	committer driver.Committer // nil unless the driver consumes its source
	// checkpointer is the driver when it also keeps a state the buffer
	// stores with its samples; restored is set once Restore was offered.
	checkpointer driver.Checkpointer
	restored     bool
	groups       []*group // by interval, shortest first
	shortest     time.Duration

	open      bool // Connect succeeded and Close has not been called since
	closed    bool // Close was the last call to the driver
	reconnect bool // the connection is lost: Close once the reads in flight are back
	failures  int  // consecutive failures
	downSince time.Time
	retryAt   time.Time
	// nominal and delay are the jitter drawn for the tick at nominal, kept
	// so the loop waking early (a read coming back) does not draw again.
	nominal time.Time
	delay   time.Duration
	// slow is set while reads take longer than their interval, so that
	// is logged once when it starts and once when it ends.
	slow bool

	index map[uint64]int // point id -> its place in stats.Points; fixed at start
	// windowWarned is set once a sample outside the ingest's time window
	// was logged (reads run in their own goroutines).
	windowWarned atomic.Bool

	mu    sync.Mutex
	stats DeviceStats
}

func newWorker(d Device, sink Sink, opts Options) *worker {
	w := &worker{
		dev:   d,
		sink:  sink,
		opts:  opts,
		log:   opts.Logger.With("device", d.Name),
		stats: DeviceStats{Name: d.Name},
		index: make(map[uint64]int, len(d.Points)),
	}
	for i, p := range d.Points {
		name := p.Name
		if name == "" {
			name = p.Ref
		}
		w.index[p.ID] = i
		w.stats.Points = append(w.stats.Points, PointStats{Name: name})
	}
	w.committer, _ = d.Driver.(driver.Committer)
	if w.committer != nil {
		w.checkpointer, _ = d.Driver.(driver.Checkpointer)
	}
	byInterval := make(map[time.Duration]*group)
	for _, p := range d.Points {
		iv := p.Interval
		if iv == 0 {
			iv = d.Interval
		}
		g := byInterval[iv]
		if g == nil {
			g = &group{interval: iv}
			byInterval[iv] = g
			w.groups = append(w.groups, g)
		}
		g.points = append(g.points, p)
	}
	slices.SortFunc(w.groups, func(a, b *group) int { return cmp.Compare(a.interval, b.interval) })
	w.shortest = w.groups[0].interval
	return w
}

// result is the outcome of one read, handed back to the worker's loop.
type result struct {
	groups  []*group
	err     error
	samples int
	bad     int
	got     []telemetry.Sample // for the per-point counts
	dropped bool               // the sink refused the samples
	// dropCounted is set when the sink counted the dropped samples in
	// its own persisted count (DropCounter).
	dropCounted bool
	commitErr   bool
	// took is how long the read took (busy retries included).
	took time.Duration
	// outOfRange counts samples left out for a time the ingest refuses.
	outOfRange int
}

// run is the worker's loop: it waits for the next tick or a read coming
// back, and returns once ctx is done, the reads in flight are back and the
// driver is closed.
func (w *worker) run(ctx context.Context) {
	start := time.Now()
	for _, g := range w.groups {
		g.next = start
	}
	results := make(chan result)
	inflight := 0
	timer := time.NewTimer(0)
	timer.Stop()
	defer timer.Stop()
	for {
		// Shutdown comes first: a tick that is due at the same moment
		// must not start a read after the context is done.
		if ctx.Err() != nil {
			w.shutdown(ctx, results, inflight)
			return
		}
		if w.reconnect && inflight == 0 {
			w.closeDriver()
			w.reconnect = false
		}
		wake, ok := w.nextWake(inflight)
		w.update(func(st *DeviceStats) { st.NextAttempt = wake })
		var tick <-chan time.Time
		if ok {
			timer.Reset(time.Until(wake))
			tick = timer.C
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
		case r := <-results:
			full := inflight >= w.dev.Concurrency
			inflight--
			w.handle(ctx, r)
			if full {
				w.markLate(time.Now())
			}
		case <-tick:
			if w.dispatch(ctx, results) {
				inflight++
			}
		}
	}
}

// shutdown waits for the reads in flight and closes the driver, unless
// Close was already its last call.
func (w *worker) shutdown(ctx context.Context, results <-chan result, inflight int) {
	for ; inflight > 0; inflight-- {
		w.handle(ctx, <-results)
	}
	if !w.closed {
		w.closeDriver()
	}
	w.update(func(st *DeviceStats) { st.NextAttempt = time.Time{} })
}

// nextWake returns when the loop should next connect or read, or false
// when it can only wait for the reads in flight.
func (w *worker) nextWake(inflight int) (time.Time, bool) {
	if w.reconnect || inflight >= w.dev.Concurrency {
		return time.Time{}, false
	}
	var nominal time.Time
	found := false
	for _, g := range w.groups {
		if !g.busy && (!found || g.next.Before(nominal)) {
			nominal, found = g.next, true
		}
	}
	if !found {
		return time.Time{}, false
	}
	if w.failures > 0 {
		// Failed points stay due; the backoff decides when they are tried.
		if w.retryAt.After(nominal) {
			return w.retryAt, true
		}
		return nominal, true
	}
	if !nominal.Equal(w.nominal) {
		w.nominal = nominal
		w.delay = 0
		if span := w.opts.Jitter * float64(w.shortest); span >= 1 {
			w.delay = time.Duration(rand.Int64N(int64(span)))
		}
	}
	return nominal.Add(w.delay), true
}

// dispatch connects the driver if needed and starts a read of every idle
// group that is due, in one Read call. It reports whether a read started.
func (w *worker) dispatch(ctx context.Context, results chan<- result) bool {
	if !w.open {
		if err := w.connect(ctx); err != nil {
			if ctx.Err() == nil {
				w.fail(err)
			}
			return false
		}
	}
	now := time.Now()
	var due []*group
	var points []driver.Point
	late := false
	for _, g := range w.groups {
		if !g.busy && !g.next.After(now) {
			g.busy = true
			due = append(due, g)
			points = append(points, g.points...)
			late = late || g.late
			g.late = false
		}
	}
	if len(due) == 0 {
		return false
	}
	if late {
		w.update(func(st *DeviceStats) { st.LateReads++ })
	}
	go func() { results <- w.poll(ctx, due, points) }()
	return true
}

// markLate marks the idle groups that fell due before now, when a read has
// just come back from a device whose every read slot was taken: they fell
// due while none was free. Not after a failure, where the backoff, not the
// other reads, decides when they are read.
func (w *worker) markLate(now time.Time) {
	if w.failures > 0 {
		return
	}
	for _, g := range w.groups {
		if !g.busy && g.next.Before(now) {
			g.late = true
		}
	}
}

// connect opens the driver; a failed Connect is followed by Close, so the
// next attempt starts clean.
func (w *worker) connect(ctx context.Context) error {
	if !w.restored {
		w.restored = true
		w.restore()
	}
	cctx, cancel := context.WithTimeout(ctx, w.dev.Timeout)
	defer cancel()
	w.closed = false
	if err := w.dev.Driver.Connect(cctx); err != nil {
		if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			err = fmt.Errorf("no answer within %s: %w", w.dev.Timeout, err)
		}
		w.closeDriver()
		return fmt.Errorf("connecting: %w", err)
	}
	w.open = true
	w.log.Debug("connected")
	return nil
}

// restore hands a Checkpointer the state the buffer stored with its last
// samples. A state that cannot be read or restored is logged: the driver
// then goes on from its own record, which at worst repeats some data.
func (w *worker) restore() {
	ss, ok := w.sink.(StateSink)
	if w.checkpointer == nil || !ok {
		return
	}
	state, found, err := ss.State(w.dev.Name)
	if err == nil && found {
		err = w.checkpointer.Restore(state)
	}
	if err != nil {
		w.log.Warn("could not restore the driver's place in its source from the buffer; it goes on from its own record", "err", err)
	}
}

// closeDriver closes the driver; an error there only matters to the logs.
func (w *worker) closeDriver() {
	if err := w.dev.Driver.Close(); err != nil {
		w.log.Warn("closing the driver failed", "err", err)
	}
	w.open, w.closed = false, true
}

// handle applies the outcome of a read to the worker's state and stats.
func (w *worker) handle(ctx context.Context, r result) {
	now := time.Now()
	for _, g := range r.groups {
		g.busy = false
	}
	switch {
	case r.err == nil:
		skipped := 0
		for _, g := range r.groups {
			skipped += g.advance(now)
		}
		w.succeed(now, r, skipped)
		if r.dropped && w.committer != nil && w.open {
			// The read was not committed, but the driver counts it as
			// read (a trend file stays pending, a trend log's mark is
			// staged): the next read's Commit would consume it unbuffered.
			// Close drops what is uncommitted, and the reconnect starts
			// again from the committed place, reading the data again.
			w.reconnect = true
		}
	case ctx.Err() != nil:
		// Shutdown interrupted the read: not the device's fault.
	case errors.Is(r.err, driver.ErrRefused):
		// A driver bug: retrying would be refused again, and backing off
		// would not help the device, so wait for the next tick.
		skipped := 0
		for _, g := range r.groups {
			skipped += g.advance(now)
		}
		w.log.Error("read refused by the read-only guard; this is a driver bug, please report it", "err", r.err)
		w.update(func(st *DeviceStats) {
			st.SkippedTicks += uint64(skipped)
			st.Failures++
			st.LastError, st.LastErrorAt = r.err.Error(), now
		})
	case errors.Is(r.err, driver.ErrConnLost):
		w.reconnect = w.open
		w.fail(r.err)
	default:
		w.fail(r.err)
	}
}

// succeed records a successful read, logging a recovery, and the start
// and end of a run of slow reads. skipped is how many ticks passed without
// a read of their own.
func (w *worker) succeed(now time.Time, r result, skipped int) {
	if w.failures > 0 {
		w.log.Info("device recovered", "failures", w.failures, "down_for", now.Sub(w.downSince))
	}
	w.failures = 0
	// A read slower than its interval makes the group miss its next tick;
	// the tick is skipped, not queued, so the device is never asked twice
	// at once (see the package doc).
	interval := r.groups[0].interval
	for _, g := range r.groups[1:] {
		interval = min(interval, g.interval)
	}
	slow := r.took > interval
	switch {
	case slow && !w.slow:
		w.log.Warn("device answers more slowly than its points' interval; ticks that pass during a read are skipped, not queued",
			"took", r.took, "interval", interval)
	case !slow && w.slow:
		w.log.Info("device answers within its points' interval again", "took", r.took, "interval", interval)
	}
	w.slow = slow
	w.update(func(st *DeviceStats) {
		st.Up = true
		st.SkippedTicks += uint64(skipped)
		if slow {
			st.SlowReads++
		}
		st.LastOK = now
		st.Reads++
		st.ConsecutiveFailures = 0
		st.Samples += uint64(r.samples)
		st.BadSamples += uint64(r.bad)
		for _, smp := range r.got {
			i, ok := w.index[smp.PointID]
			if !ok {
				continue
			}
			p := &st.Points[i]
			p.Samples++
			if smp.Status != telemetry.StatusOK {
				p.BadSamples++
			}
			if t := time.UnixMilli(smp.Time); !t.Before(p.LastTime) {
				p.LastTime, p.LastValue, p.LastStatus = t, smp.Value, smp.Status.String()
			}
		}
		if r.dropped {
			st.DroppedReads++
			st.DroppedSamples += uint64(r.samples)
			if r.dropCounted {
				st.DroppedCountedBySink += uint64(r.samples)
			}
		}
		if r.commitErr {
			st.CommitErrors++
		}
		st.OutOfRangeSamples += uint64(r.outOfRange)
	})
}

// fail records a failed connect or read and schedules the next attempt.
// Only the first failure of a run of them is logged above debug level.
func (w *worker) fail(err error) {
	now := time.Now()
	w.failures++
	wait := w.backoff(w.failures)
	w.retryAt = now.Add(wait)
	if w.failures == 1 {
		w.downSince = now
		w.log.Warn("device down", "err", err, "retry_in", wait)
	} else {
		w.log.Debug("device still down", "err", err, "failures", w.failures, "retry_in", wait)
	}
	w.update(func(st *DeviceStats) {
		st.Up = false
		st.Failures++
		st.ConsecutiveFailures = w.failures
		st.LastError, st.LastErrorAt = err.Error(), now
	})
}

// backoff returns the wait after n consecutive failures: BackoffBase
// doubling per failure up to BackoffMax, shortened by a random fraction
// below Jitter so devices that failed together do not retry together.
func (w *worker) backoff(n int) time.Duration {
	d := w.opts.BackoffBase
	for i := 1; i < n && d < w.opts.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, w.opts.BackoffMax)
	if span := w.opts.Jitter * float64(d); span >= 1 {
		d -= time.Duration(rand.Int64N(int64(span)))
	}
	return d
}

// poll reads points, stores the samples and commits the driver; it runs in
// its own goroutine and touches no worker state.
func (w *worker) poll(ctx context.Context, groups []*group, points []driver.Point) result {
	r := result{groups: groups}
	began := time.Now()
	samples, err := w.read(ctx, points)
	r.took = time.Since(began)
	if err != nil {
		r.err = err
		return r
	}
	samples, r.outOfRange = w.inWindow(samples)
	r.samples, r.got = len(samples), samples
	for _, s := range samples {
		if s.Status != telemetry.StatusOK {
			r.bad++
		}
	}
	// A Checkpointer's state keeps a read after a crash from repeating
	// data; any other Committer reads the same data again, which its mark
	// recognises. (A Checkpointer's reads are never the same twice: live
	// values come with them, so marking them would only cost.)
	var mark, state []byte
	switch {
	case w.checkpointer != nil:
		state = w.checkpointer.Checkpoint()
	case w.committer != nil:
		mark = markOf(samples)
	}
	if !w.store(ctx, samples, mark, state) {
		r.dropped = true
		r.dropCounted = w.countDropped(ctx, len(samples))
		return r
	}
	if w.committer != nil {
		// Like Append, Commit finishes during shutdown: the samples are
		// durable, and not committing would read them a second time.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.dev.Timeout)
		err := w.committer.Commit(cctx)
		cancel()
		if err != nil {
			w.log.Error("commit failed; the same data will be read again", "err", err)
			r.commitErr = true
		}
	}
	return r
}

// The window of sample times the ingest accepts by default is 15 minutes
// ahead of its clock and ten years back (ingest/server DefaultMaxSkew and
// DefaultMaxAge); one sample outside it makes the ingest refuse the whole
// batch, every other device's samples with it. The agent keeps a margin
// inside that window.
const (
	maxFuture = 10 * time.Minute
	maxPast   = 10*365*24*time.Hour - 7*24*time.Hour
)

// inWindow leaves out the samples whose time the ingest would refuse: a
// device with a wrong clock, an OPC UA source timestamp from years ago, a
// trend export in the wrong time zone or with a mistyped year. They are
// counted, and the first one of a device is logged at warn level.
func (w *worker) inWindow(samples []telemetry.Sample) ([]telemetry.Sample, int) {
	now := time.Now()
	lo, hi := now.Add(-maxPast).UnixMilli(), now.Add(maxFuture).UnixMilli()
	bad := 0
	for _, s := range samples {
		if s.Time < lo || s.Time > hi {
			bad++
		}
	}
	if bad == 0 {
		return samples, 0
	}
	out := make([]telemetry.Sample, 0, len(samples)-bad)
	for _, s := range samples {
		if s.Time >= lo && s.Time <= hi {
			out = append(out, s)
			continue
		}
		if w.windowWarned.CompareAndSwap(false, true) {
			name := ""
			if i, ok := w.index[s.PointID]; ok {
				name = w.dev.Points[i].Ref
			}
			w.log.Warn("leaving out samples whose time the ingest would refuse (check the device's clock or time zone); counted as out_of_range",
				"point", name, "sample_time", time.UnixMilli(s.Time).UTC().Format(time.RFC3339), "window_from", time.UnixMilli(lo).UTC().Format(time.RFC3339),
				"window_to", time.UnixMilli(hi).UTC().Format(time.RFC3339))
		}
	}
	return out, bad
}

// read calls the driver's Read, pausing and reading again while the device
// answers busy.
func (w *worker) read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	for attempt := 0; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, w.dev.Timeout)
		samples, err := w.dev.Driver.Read(rctx, points)
		timedOut := rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
		cancel()
		if err == nil {
			return samples, nil
		}
		if timedOut {
			err = fmt.Errorf("no answer within %s: %w", w.dev.Timeout, err)
		}
		if !errors.Is(err, driver.ErrBusy) || attempt >= w.opts.BusyRetries {
			return nil, fmt.Errorf("reading %d points: %w", len(points), err)
		}
		w.log.Debug("device busy, reading again", "err", err, "retry_in", w.opts.BusyPause)
		if !sleep(ctx, w.opts.BusyPause) {
			return nil, fmt.Errorf("reading %d points: %w", len(points), ctx.Err())
		}
	}
}

// store appends samples to the sink, trying AppendAttempts times, and
// reports whether they are durable. Each Append runs under its own timeout,
// not ctx, so a read that finished before shutdown is still stored; the
// pauses between attempts end at shutdown. With a mark and a OnceSink the
// samples are stored with the mark, and samples whose mark the sink holds
// already count as durable: they are (see OnceSink). A Checkpointer's state
// goes with them into a StateSink.
func (w *worker) store(ctx context.Context, samples []telemetry.Sample, mark, state []byte) bool {
	if len(samples) == 0 {
		return true
	}
	once, _ := w.sink.(OnceSink)
	withState, _ := w.sink.(StateSink)
	pause := w.opts.AppendPause
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.AppendTimeout)
		var err error
		switch {
		case withState != nil && state != nil:
			err = withState.AppendState(actx, w.dev.Name, state, samples)
		case once != nil && mark != nil:
			var dup bool
			if dup, err = once.AppendOnce(actx, mark, samples); err == nil && dup {
				w.log.Warn("read the same data again that was buffered before the agent stopped without committing it; committing it now, not storing it twice",
					"samples", len(samples))
			}
		default:
			err = w.sink.Append(actx, samples)
		}
		cancel()
		if err == nil {
			return true
		}
		if attempt >= w.opts.AppendAttempts || !sleep(ctx, pause) {
			w.log.Error("dropping a read: the buffer refused its samples",
				"err", err, "samples", len(samples), "attempts", attempt)
			return false
		}
		w.log.Warn("buffer append failed, trying again", "err", err, "attempt", attempt, "retry_in", pause)
		pause *= 2
	}
}

// countDropped hands the count of a dropped read to a DropCounter sink and
// reports whether it took it; if not, Health reports the samples.
func (w *worker) countDropped(ctx context.Context, samples int) bool {
	dc, ok := w.sink.(DropCounter)
	if !ok || samples == 0 {
		return false
	}
	// Like Append, not cut short by shutdown: the count must not be lost.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.AppendTimeout)
	defer cancel()
	if err := dc.CountDropped(cctx, samples); err != nil {
		w.log.Error("the buffer could not count the dropped read either; it is reported from memory until the agent restarts",
			"err", err, "samples", samples)
		return false
	}
	return true
}

// markOf names samples for OnceSink: a SHA-256 over every field of every
// sample, in order. Two reads with the same mark returned the same data
// (the same points, times, values and statuses), so storing the second
// would only duplicate the first.
func markOf(samples []telemetry.Sample) []byte {
	h := sha256.New()
	var rec [25]byte
	for _, s := range samples {
		binary.BigEndian.PutUint64(rec[0:], s.PointID)
		binary.BigEndian.PutUint64(rec[8:], uint64(s.Time))
		binary.BigEndian.PutUint64(rec[16:], math.Float64bits(s.Value))
		rec[24] = byte(s.Status)
		h.Write(rec[:])
	}
	return h.Sum(nil)
}

// sleep waits d, or less if ctx ends first; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// snapshot copies the worker's stats.
func (w *worker) snapshot() DeviceStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.stats
	st.Points = slices.Clone(st.Points)
	return st
}

// update changes the worker's stats under its lock.
func (w *worker) update(f func(st *DeviceStats)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.stats)
}
