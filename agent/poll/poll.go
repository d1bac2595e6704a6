// Package poll schedules the reads of building devices: one worker per
// device, per-point intervals, jitter, a timeout per read and exponential
// backoff for a failing device, so that one dead controller never delays the
// others.
//
// # Schedule
//
// Each point is read every Point.Interval (the device's Interval when zero).
// Points of one device run on a common grid that starts when Run starts, so
// points whose ticks fall together (a 1 s and a 5 s point every fifth
// second) are read in one Driver.Read call, which lets the driver's planner
// coalesce them into as few requests as the protocol allows. A tick that
// passes while the device is still busy with an earlier read, or down, is
// skipped, not queued: the next read happens at the next tick, the device is
// never asked twice at once (unless Concurrency allows), and the skipped
// ticks and slow reads are counted in DeviceStats.
//
// With Options.Jitter > 0 every read, the first included, is delayed by a
// random amount below Jitter × the device's shortest point interval, so that
// two hundred devices configured alike do not all fire at the same instant.
// The grid does not drift: jitter delays a tick, it never moves the next one.
//
// # Failures
//
// Errors are told apart by kind (see package driver):
//
//   - driver.ErrBusy: pause Options.BusyPause and read again on the same
//     connection, up to Options.BusyRetries times; a device still busy after
//     that counts as a failure (below), without reconnecting.
//   - driver.ErrConnLost, or Connect failing: Close the driver, back off,
//     Connect again.
//   - driver.ErrRefused: the read-only guard refused a request, which is a
//     driver bug. Logged at error level every time, counted, and not retried
//     before the points' next tick; the device is not marked down for it.
//   - anything else, a read timing out included: count it and back off,
//     keeping the connection (a driver that knows its connection is broken
//     says so with ErrConnLost).
//
// A failing device is retried after BackoffBase, doubling per consecutive
// failure up to BackoffMax, each wait shortened by a random fraction below
// Jitter. No sample is invented while a device is down: its points are simply
// not written, and the device's health shows in Stats and Health. The
// transition to down is logged once at warn level with the error, the
// retries only at debug level, and the recovery once at info level with the
// number of failures and the time the device was down.
//
// # Delivery
//
// The samples of a successful read go to the Sink in one Append. When Append
// returns nil the samples are durable, and only then is a driver that
// implements driver.Committer committed. When Append fails the scheduler
// retries it (Options.AppendAttempts in all, pausing Options.AppendPause,
// doubling), then drops the read with an error log and counts the dropped
// samples in Stats, and in the Sink's own persisted count when it is a
// DropCounter; a Committer is not committed, so it reads the same data
// again. A crash between Append and Commit also makes a Committer read its
// data again; when the Sink is a OnceSink, that second read is recognised
// by its mark and committed without being stored twice. A failing buffer is serious, but holding the read back would stall
// the device's polling and grow memory without bound. An Append is not
// interrupted by shutdown (it runs under its own Options.AppendTimeout), so
// a read that finished just before shutdown is still stored.
//
// # Lifecycle
//
// New validates and does no I/O. Run connects each driver at its first
// tick, polls until its context is done, waits for the reads in flight, and
// returns after every worker has closed its driver. A driver's calls
// alternate: every Connect, successful or not, is followed by exactly one
// Close before the next Connect, and the last call is always Close (a driver
// never connected is closed at shutdown too). Drivers must honour the
// context of Connect and Read; the scheduler cannot abandon a call that
// ignores it.
package poll

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Defaults for the zero values of Device and Options.
const (
	DefaultTimeout        = 10 * time.Second
	DefaultBackoffBase    = time.Second
	DefaultBackoffMax     = 5 * time.Minute
	DefaultBusyPause      = 500 * time.Millisecond
	DefaultBusyRetries    = 2
	DefaultAppendAttempts = 3
	DefaultAppendPause    = time.Second
	DefaultAppendTimeout  = 10 * time.Second
)

// Sink receives the samples of every successful read; in the agent it is
// the bbolt buffer. Append returning nil means the samples are durable.
// Append may be called from several workers at once.
type Sink interface {
	Append(ctx context.Context, samples []telemetry.Sample) error
}

// OnceSink is a Sink that can store the samples of a read together with a
// mark naming them, in one transaction, and stores nothing (dup true) when
// it holds the mark already. The scheduler uses it for drivers that
// implement driver.Committer but not driver.Checkpointer (whose state does
// the same job, see StateSink): if the agent dies after the Append and
// before the Commit, the driver reads the same data again at the next
// start, and that read is then committed without its samples being stored
// a second time. The agent's buffer implements it.
type OnceSink interface {
	AppendOnce(ctx context.Context, mark []byte, samples []telemetry.Sample) (dup bool, err error)
}

// DropCounter is a Sink that keeps a persisted count of lost samples (the
// agent's buffer, whose count goes upstream in every batch header and
// survives restarts). When the Sink refuses a read AppendAttempts times, the
// scheduler drops it and hands its sample count to CountDropped; nil means
// the Sink counted them, and Health then leaves them out, so they are
// reported once. On an error they stay in Health.
type DropCounter interface {
	CountDropped(ctx context.Context, samples int) error
}

// StateSink is a Sink that also keeps a driver.Checkpointer's state:
// AppendState stores it under key (the device's name) in the same
// transaction as the read's samples, and State returns the last one stored,
// which the scheduler hands to the driver's Restore before its first
// Connect. The agent's buffer implements it.
type StateSink interface {
	Sink
	AppendState(ctx context.Context, key string, state []byte, samples []telemetry.Sample) error
	State(key string) ([]byte, bool, error)
}

// Device is one device to poll.
type Device struct {
	// Name identifies the device in logs and Stats; unique, not empty.
	Name string
	// Driver reads the device. The scheduler owns it from Run on: it
	// connects, reads and closes it.
	Driver driver.Driver
	// Points are read by this device's driver; at least one. Every ID must
	// be non-zero and unique across all devices.
	Points []driver.Point
	// Interval is the read interval of points whose own Interval is zero;
	// it must be positive.
	Interval time.Duration
	// Timeout bounds each Connect and each Read; zero means DefaultTimeout,
	// or Interval when that is shorter. It may not exceed Interval.
	Timeout time.Duration
	// Concurrency is how many reads may be in flight on the device at once;
	// zero means 1, which serialises all reads of the device, as small
	// controllers need. More than 1 is only for drivers that allow
	// concurrent Read calls, and never for a driver.Committer, whose Commit
	// refers to "the last Read".
	Concurrency int
}

// Options tune the scheduler; the zero value is usable.
type Options struct {
	// Jitter, between 0 and 1, spreads reads: each read is delayed by a
	// random duration below Jitter × the device's shortest point interval,
	// and each backoff wait is shortened by a random fraction below Jitter.
	// Zero means no jitter; 0.1 to 0.5 suits a building of many devices.
	Jitter float64
	// BackoffBase is the wait after a device's first consecutive failure;
	// it doubles with each further failure. Zero means DefaultBackoffBase.
	BackoffBase time.Duration
	// BackoffMax caps the backoff wait. Zero means DefaultBackoffMax.
	BackoffMax time.Duration
	// BusyPause is the pause before reading again a device that answered
	// busy. Zero means DefaultBusyPause.
	BusyPause time.Duration
	// BusyRetries is how many times a busy device is read again before the
	// read counts as failed. Zero means DefaultBusyRetries.
	BusyRetries int
	// AppendAttempts is how many times the samples of one read are offered
	// to the Sink before they are dropped. Zero means DefaultAppendAttempts.
	AppendAttempts int
	// AppendPause is the pause after the first failed Append, doubling
	// after each further one. Zero means DefaultAppendPause.
	AppendPause time.Duration
	// AppendTimeout bounds each Append. Zero means DefaultAppendTimeout.
	AppendTimeout time.Duration
	// Logger receives the scheduler's logs; each worker tags its own with
	// device=NAME. Nil discards them.
	Logger *slog.Logger
}

// DeviceStats is the health of one device, as Stats reports it.
type DeviceStats struct {
	Name string
	// Up is true after a successful read and until the next failure; false
	// before the first read.
	Up bool
	// LastOK is the time of the last successful read.
	LastOK time.Time
	// LastError and LastErrorAt describe the last failed connect or read.
	LastError   string
	LastErrorAt time.Time
	// Reads counts successful reads; Failures counts failed connects and
	// reads, refusals by the read-only guard included.
	Reads, Failures uint64
	// ConsecutiveFailures counts the failures since the last successful
	// read; it sets the backoff.
	ConsecutiveFailures int
	// Samples counts the samples read; BadSamples those among them whose
	// status is not ok.
	Samples, BadSamples uint64
	// DroppedReads and DroppedSamples count reads (and their samples) lost
	// because the Sink refused them AppendAttempts times.
	DroppedReads, DroppedSamples uint64
	// DroppedCountedBySink is the part of DroppedSamples the Sink added to
	// its own persisted count (DropCounter).
	DroppedCountedBySink uint64
	// SkippedTicks counts the ticks of the device's point groups that
	// passed without a read of their own: the device was still busy with
	// the read before (a slow device), or down. For each group, the ticks
	// up to its last successful read are its reads plus its skipped ticks.
	SkippedTicks uint64
	// SlowReads counts successful reads that took longer than the shortest
	// interval of the points they read, so a tick passed during them.
	SlowReads uint64
	// LateReads counts reads that started after their tick because the
	// device's every read slot (Concurrency) was taken by a read of other
	// points when it came.
	LateReads uint64
	// CommitErrors counts failed Commit calls (the source is read again).
	CommitErrors uint64
	// OutOfRangeSamples counts samples left out because their time is
	// outside what the ingest accepts (a device clock or time zone wrong).
	OutOfRangeSamples uint64
	// NextAttempt is when the device is next connected or read; zero while
	// every read it may run is in flight.
	NextAttempt time.Time
	// Counters are the driver's own counts (requests, refusals by its
	// read-only guard), when it reports any (driver.Reporter).
	Counters []driver.Counter `json:",omitempty"`
	// Points are the device's points in configuration order, each with
	// its counts and last sample. The status socket is local: names are
	// shown here, never upstream.
	Points []PointStats `json:",omitempty"`
}

// PointStats is the health of one point.
type PointStats struct {
	Name string
	// Samples counts the samples read; BadSamples those whose status is
	// not ok.
	Samples, BadSamples uint64
	// LastTime, LastValue and LastStatus are the last sample read.
	LastTime   time.Time `json:",omitzero"`
	LastValue  float64
	LastStatus string `json:",omitempty"`
}

// Health sums the scheduler's state for the agent's health report (the
// batch header).
type Health struct {
	// PollErrors counts failed connects and reads since Run started.
	PollErrors uint64
	// DevicesUp and DevicesDown count devices by DeviceStats.Up.
	DevicesUp, DevicesDown uint32
	// DroppedSamples counts samples read but lost because the Sink refused
	// them, leaving out those a DropCounter Sink counted itself (the
	// buffer reports those, with its own cap drops).
	DroppedSamples uint64
}

// Scheduler polls a fixed set of devices. Build it with New, start it with
// Run; Stats and Health may be called at any time, from any goroutine.
type Scheduler struct {
	workers []*worker
	started atomic.Bool
}

// New validates devs and opts and returns a scheduler; it does no I/O. All
// configuration problems are reported together.
func New(devs []Device, sink Sink, opts Options) (*Scheduler, error) {
	var errs []error
	if sink == nil {
		errs = append(errs, errors.New("no sink: samples would have nowhere to go"))
	}
	opts, oerrs := opts.withDefaults()
	errs = append(errs, oerrs...)

	names := make(map[string]bool, len(devs))
	ids := make(map[uint64]string)
	s := &Scheduler{}
	for i, d := range devs {
		d, derrs := d.withDefaults(i, names, ids)
		errs = append(errs, derrs...)
		if len(derrs) == 0 {
			s.workers = append(s.workers, newWorker(d, sink, opts))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("configuring the poller: %w", errors.Join(errs...))
	}
	return s, nil
}

func (o Options) withDefaults() (Options, []error) {
	var errs []error
	if math.IsNaN(o.Jitter) || o.Jitter < 0 || o.Jitter > 1 {
		errs = append(errs, fmt.Errorf("jitter %v: want a fraction between 0 and 1", o.Jitter))
	}
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"backoff base", &o.BackoffBase, DefaultBackoffBase},
		{"backoff max", &o.BackoffMax, DefaultBackoffMax},
		{"busy pause", &o.BusyPause, DefaultBusyPause},
		{"append pause", &o.AppendPause, DefaultAppendPause},
		{"append timeout", &o.AppendTimeout, DefaultAppendTimeout},
	} {
		if *f.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s: want zero (default) or positive", f.name, *f.v))
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if o.BackoffMax < o.BackoffBase {
		errs = append(errs, fmt.Errorf("backoff max %s is below backoff base %s", o.BackoffMax, o.BackoffBase))
	}
	if o.BusyRetries < 0 {
		errs = append(errs, fmt.Errorf("busy retries %d: want zero (default) or positive", o.BusyRetries))
	}
	if o.BusyRetries == 0 {
		o.BusyRetries = DefaultBusyRetries
	}
	if o.AppendAttempts < 0 {
		errs = append(errs, fmt.Errorf("append attempts %d: want zero (default) or positive", o.AppendAttempts))
	}
	if o.AppendAttempts == 0 {
		o.AppendAttempts = DefaultAppendAttempts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, errs
}

// withDefaults checks device i and fills its zero values. names and ids
// collect the device names and point ids seen so far.
func (d Device) withDefaults(i int, names map[string]bool, ids map[uint64]string) (Device, []error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("device %q: %s", d.Name, fmt.Sprintf(format, args...)))
	}
	switch {
	case d.Name == "":
		errs = append(errs, fmt.Errorf("device #%d: empty name", i+1))
	case names[d.Name]:
		bad("name given twice")
	}
	names[d.Name] = true
	if d.Driver == nil {
		bad("no driver")
	}
	if d.Interval <= 0 {
		bad("interval %s: want a positive duration", d.Interval)
	}
	switch {
	case d.Timeout < 0:
		bad("timeout %s: want zero (default) or positive", d.Timeout)
	case d.Timeout == 0:
		d.Timeout = min(DefaultTimeout, d.Interval)
	case d.Timeout > d.Interval:
		bad("timeout %s exceeds interval %s: shorten the timeout or lengthen the interval", d.Timeout, d.Interval)
	}
	switch {
	case d.Concurrency < 0:
		bad("concurrency %d: want zero (default 1) or positive", d.Concurrency)
	case d.Concurrency == 0:
		d.Concurrency = 1
	}
	if _, ok := d.Driver.(driver.Committer); ok && d.Concurrency > 1 {
		bad("concurrency %d: a driver that commits what it read needs concurrency 1", d.Concurrency)
	}
	if len(d.Points) == 0 {
		bad("no points to read")
	}
	for _, p := range d.Points {
		switch {
		case p.ID == 0:
			bad("point %q has no id", p.Ref)
		case ids[p.ID] != "":
			bad("point %q: id %d already used by device %q", p.Ref, p.ID, ids[p.ID])
		default:
			ids[p.ID] = d.Name
		}
		if p.Interval < 0 {
			bad("point %q: interval %s: want zero (the device's) or positive", p.Ref, p.Interval)
		}
	}
	// The caller keeps its slice; the scheduler keeps its own.
	d.Points = append([]driver.Point(nil), d.Points...)
	return d, errs
}

// Run polls every device until ctx is done, then waits for the reads in
// flight, closes every driver and returns nil. It may be called once.
func (s *Scheduler) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("running the poller: already started; build a new Scheduler with New")
	}
	// A worker handles its device's failures itself: none of them is a
	// reason to stop the others, so workers return no error and a
	// WaitGroup joins them.
	var wg sync.WaitGroup
	for _, w := range s.workers {
		wg.Go(func() { w.run(ctx) })
	}
	wg.Wait()
	return nil
}

// Stats returns the health of every device, in the order given to New.
func (s *Scheduler) Stats() []DeviceStats {
	out := make([]DeviceStats, len(s.workers))
	for i, w := range s.workers {
		out[i] = w.snapshot()
		if r, ok := w.dev.Driver.(driver.Reporter); ok {
			out[i].Counters = r.Counters()
		}
	}
	return out
}

// Health sums Stats for the agent's health report.
func (s *Scheduler) Health() Health {
	var h Health
	for _, w := range s.workers {
		st := w.snapshot()
		h.PollErrors += st.Failures
		h.DroppedSamples += st.DroppedSamples - st.DroppedCountedBySink
		if st.Up {
			h.DevicesUp++
		} else {
			h.DevicesDown++
		}
	}
	return h
}
