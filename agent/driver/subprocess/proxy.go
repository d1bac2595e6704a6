// Package subprocess runs a driver in a child process, so that a device
// that crashes the driver's protocol library, or makes it allocate until
// the kernel runs out of memory, takes down that device and not the agent.
//
// Wrap turns a driver.Info into one with the same name whose drivers are
// proxies: New validates the settings with the real driver in-process (no
// network I/O, as the SDK requires) and closes it; Connect starts the child
// (`sightglass-agent driver-host`, the agent's own binary), sends it the
// device, and forwards Connect, Read, Close and, when the real driver has
// them, Discover, Commit and Checkpoint and Restore. The child builds the
// real driver from the unwrapped registry (Main, Serve).
//
// Checkpoints (driver.Checkpointer): the proxy is a Checkpointer exactly
// when the real driver is both a Checkpointer and a Committer (it knows
// from the driver New builds in-process, and the child's ready answer
// confirms it). Every samples answer carries the child's Checkpoint, so the
// proxy's Checkpoint is the state the last Read left, answered from memory
// without a call. Restore, which the poller calls before the first Connect
// (before any child runs), is kept and sent to each child the proxy starts
// before its Connect; once a Commit succeeds, the state of the read it
// committed replaces it. A child started after a crash or a reconnect thus
// goes on from the last committed place, and what an uncommitted read
// returned (the buffer refused it) is read again.
//
// Lifecycle: one child per Connect … Close. A child that exits (a crash,
// the OOM killer, a kill after it stopped answering) makes the call in
// flight and every later one fail with an error wrapping driver.ErrConnLost
// that names the exit status and the last lines it wrote to stderr; the
// poller then closes, backs off and connects, and that Connect starts a
// fresh child. There is no retry loop here: the poller's backoff spaces the
// restarts.
//
// The protocol (version Version) runs over the child's stdin and stdout:
// length-prefixed binary frames of at most MaxFrame bytes, every length
// checked against the bytes present (see wire.go and README.md).
package subprocess

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Command returns the command that runs the driver host (Main), not yet
// started; it is called at every Connect that needs a new child. The proxy
// sets the command's stdin, stdout, stderr, Pdeathsig and, with
// Options.MemoryLimit, its GOMEMLIMIT.
type Command func() (*exec.Cmd, error)

// Options tune the proxy. The zero value is ready to use.
type Options struct {
	// Grace is how long a child may still answer after a call's context
	// ended (it is told the deadline and cancellations, and a driver that
	// honours its context answers at once) before it is killed as hung.
	// Zero means 2s.
	Grace time.Duration
	// CloseTimeout bounds Close: the child closes its driver and exits
	// within it, or is killed. Zero means 5s.
	CloseTimeout time.Duration
	// MemoryLimit, when positive, is the child's soft memory limit in
	// bytes (GOMEMLIMIT): its garbage collector works harder near it. It
	// is not a cap: one huge allocation still goes through, and then the
	// kernel's OOM killer ends the child, which the proxy gives
	// oom_score_adj 1000 so that it is chosen before the agent.
	MemoryLimit int64
}

func (o Options) grace() time.Duration {
	if o.Grace > 0 {
		return o.Grace
	}
	return 2 * time.Second
}

func (o Options) closeTimeout() time.Duration {
	if o.CloseTimeout > 0 {
		return o.CloseTimeout
	}
	return 5 * time.Second
}

// Compile-time checks: each proxy type offers exactly what its inner
// driver offers.
var (
	_ driver.Driver     = (*proxy)(nil)
	_ driver.Discoverer = (*discoverProxy)(nil)
	_ driver.Committer  = (*commitProxy)(nil)
	_ driver.Discoverer = (*discoverCommitProxy)(nil)
	_ driver.Committer  = (*discoverCommitProxy)(nil)

	_ driver.Committer    = (*checkpointProxy)(nil)
	_ driver.Checkpointer = (*checkpointProxy)(nil)
	_ driver.Discoverer   = (*discoverCheckpointProxy)(nil)
	_ driver.Committer    = (*discoverCheckpointProxy)(nil)
	_ driver.Checkpointer = (*discoverCheckpointProxy)(nil)
)

// Wrap returns inner run in a child process that cmd starts. The returned
// Info has inner's name; the child must host inner under that name.
func Wrap(inner driver.Info, cmd Command, o Options) driver.Info {
	return driver.Info{Name: inner.Name, New: func(dev driver.Device) (driver.Driver, error) {
		return newProxy(inner, cmd, o, dev)
	}}
}

func newProxy(inner driver.Info, cmd Command, o Options, dev driver.Device) (driver.Driver, error) {
	// The real driver validates the settings here, in-process, with the
	// configuration's file and lines in its errors.
	d, err := inner.New(dev)
	if err != nil {
		return nil, err
	}
	_, canDiscover := d.(driver.Discoverer)
	_, canCommit := d.(driver.Committer)
	_, checkpoints := d.(driver.Checkpointer)
	if err := d.Close(); err != nil {
		return nil, fmt.Errorf("closing the %s driver after validating its settings: %w", inner.Name, err)
	}
	// The poller stores a checkpoint only for a driver that commits, so a
	// Checkpointer that does not commit is carried as what it is to the
	// poller: a plain driver.
	checkpoints = checkpoints && canCommit
	log := dev.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Encoded once: a setting that cannot be carried is an error now, at
	// start-up, rather than at every Connect.
	startBody, err := encodeStart(0, start{version: Version, driver: inner.Name, device: dev.Name, dataDir: dev.DataDir, level: minLevel(log), interval: dev.Interval, settings: dev.Settings, points: dev.Points})
	if err != nil {
		return nil, fmt.Errorf("%s driver in a child process: %w", inner.Name, err)
	}
	if len(startBody) > MaxFrame {
		return nil, fmt.Errorf("%s driver in a child process: the device's %d points take %d bytes, above the %d-byte frame limit: split the device", inner.Name, len(dev.Points), len(startBody), MaxFrame)
	}
	p := &proxy{
		name:      inner.Name,
		device:    dev.Name,
		log:       log,
		cmd:       cmd,
		o:         o,
		startBody: startBody,
		points:    dev.Points,
		index:     make(map[uint64]int, len(dev.Points)),
	}
	if canDiscover {
		p.caps |= capDiscoverer
	}
	if canCommit {
		p.caps |= capCommitter
	}
	if checkpoints {
		p.caps |= capCheckpointer
	}
	for i, pt := range dev.Points {
		p.index[pt.ID] = i
	}
	switch {
	case canDiscover && checkpoints:
		return &discoverCheckpointProxy{p}, nil
	case checkpoints:
		return &checkpointProxy{p}, nil
	case canDiscover && canCommit:
		return &discoverCommitProxy{p}, nil
	case canDiscover:
		return &discoverProxy{p}, nil
	case canCommit:
		return &commitProxy{p}, nil
	}
	return p, nil
}

// minLevel is the lowest level log records, so the child does not format
// debug records only for the parent to drop them.
func minLevel(log *slog.Logger) slog.Level {
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if log.Enabled(context.Background(), l) {
			return l
		}
	}
	return slog.LevelError
}

// proxy is the parent's side of one device's driver.
type proxy struct {
	name, device string
	log          *slog.Logger
	cmd          Command
	o            Options
	caps         uint64
	startBody    []byte
	points       []driver.Point
	index        map[uint64]int // point ID → index in points

	mu sync.Mutex // serialises starting and dropping the child
	c  *child     // nil before Connect and after Close

	// The driver's counts, as the child reported them with its last read,
	// on top of what the children before it had counted.
	countMu  sync.Mutex
	counts   []driver.Counter
	countsOf *child
	base     map[string]uint64

	// A Checkpointer's states (see the package doc): state is what the
	// last read left (or what Restore gave, until a read reports), and
	// committed what every new child is restored with before its Connect.
	stateMu   sync.Mutex
	state     []byte
	committed []byte
}

// Counters reports the counts of the child's driver (driver.Reporter) as
// of the last read, summed over every child this device has had, so a
// restarted child does not set them back; nil if the driver reports none.
func (p *proxy) Counters() []driver.Counter {
	p.countMu.Lock()
	defer p.countMu.Unlock()
	if len(p.counts) == 0 {
		return nil
	}
	out := make([]driver.Counter, len(p.counts))
	for i, c := range p.counts {
		out[i] = driver.Counter{Name: c.Name, Value: p.base[c.Name] + c.Value}
	}
	return out
}

// noteCounters keeps what child c reported; the first report of a new
// child moves the previous child's counts into the base.
func (p *proxy) noteCounters(c *child, cs []driver.Counter) {
	if cs == nil {
		return
	}
	p.countMu.Lock()
	defer p.countMu.Unlock()
	if p.countsOf != c {
		if p.base == nil {
			p.base = map[string]uint64{}
		}
		for _, old := range p.counts {
			p.base[old.Name] += old.Value
		}
		p.countsOf = c
	}
	p.counts = cs
}

var _ driver.Reporter = (*proxy)(nil)

type discoverProxy struct{ *proxy }
type commitProxy struct{ *proxy }
type discoverCommitProxy struct{ *proxy }
type checkpointProxy struct{ *proxy }
type discoverCheckpointProxy struct{ *proxy }

// Commit forwards to the child's driver.
func (p *checkpointProxy) Commit(ctx context.Context) error { return p.commit(ctx) }

// Checkpoint returns the state the last Read left (see the package doc).
func (p *checkpointProxy) Checkpoint() []byte { return p.checkpoint() }

// Restore keeps state for every child the proxy starts (see the package doc).
func (p *checkpointProxy) Restore(state []byte) error { return p.restore(state) }

// Discover forwards to the child's driver.
func (p *discoverCheckpointProxy) Discover(ctx context.Context) ([]driver.Point, error) {
	return p.discover(ctx)
}

// Commit forwards to the child's driver.
func (p *discoverCheckpointProxy) Commit(ctx context.Context) error { return p.commit(ctx) }

// Checkpoint returns the state the last Read left (see the package doc).
func (p *discoverCheckpointProxy) Checkpoint() []byte { return p.checkpoint() }

// Restore keeps state for every child the proxy starts (see the package doc).
func (p *discoverCheckpointProxy) Restore(state []byte) error { return p.restore(state) }

// Discover forwards to the child's driver.
func (p *discoverProxy) Discover(ctx context.Context) ([]driver.Point, error) {
	return p.discover(ctx)
}

// Commit forwards to the child's driver.
func (p *commitProxy) Commit(ctx context.Context) error { return p.commit(ctx) }

// Discover forwards to the child's driver.
func (p *discoverCommitProxy) Discover(ctx context.Context) ([]driver.Point, error) {
	return p.discover(ctx)
}

// Commit forwards to the child's driver.
func (p *discoverCommitProxy) Commit(ctx context.Context) error { return p.commit(ctx) }

// Connect starts a child unless one is running, then connects its driver.
func (p *proxy) Connect(ctx context.Context) error {
	c, err := p.ensure(ctx)
	if err != nil {
		return err
	}
	_, err = c.call(ctx, msgConnect, deadlineOnly(ctx), ansOK)
	return err
}

// Read forwards to the child's driver. Points the device was built with go
// by index; any other point goes whole.
func (p *proxy) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	c, err := p.current()
	if err != nil {
		return nil, err
	}
	a, err := c.call(ctx, msgRead, func(e *enc) error {
		e.deadline(ctx)
		e.uvarint(uint64(len(points)))
		for _, pt := range points {
			if i, ok := p.index[pt.ID]; ok && samePoint(pt, p.points[i]) {
				e.uvarint(uint64(i) + 1)
				continue
			}
			e.uvarint(0)
			b, err := encodeSettings(pt.Settings)
			if err != nil {
				return fmt.Errorf("point %q: %w", pt.Ref, err)
			}
			e.point(pt, b)
		}
		return nil
	}, ansSamples)
	if err != nil {
		return nil, err
	}
	if p.caps&capCheckpointer != 0 {
		p.stateMu.Lock()
		p.state = a.state
		p.stateMu.Unlock()
	}
	return a.samples, nil
}

func (p *proxy) discover(ctx context.Context) ([]driver.Point, error) {
	c, err := p.current()
	if err != nil {
		return nil, err
	}
	a, err := c.call(ctx, msgDiscover, deadlineOnly(ctx), ansPoints)
	if err != nil {
		return nil, err
	}
	return a.points, nil
}

func (p *proxy) commit(ctx context.Context) error {
	c, err := p.current()
	if err != nil {
		return err
	}
	if _, err := c.call(ctx, msgCommit, deadlineOnly(ctx), ansOK); err != nil {
		return err
	}
	// The poller commits after the buffer stored the last read's samples
	// with its checkpoint (and never reads concurrently a driver that
	// commits), so that checkpoint is now the place to go on from.
	p.stateMu.Lock()
	if p.state != nil {
		p.committed = p.state
	}
	p.stateMu.Unlock()
	return nil
}

// checkpoint returns a copy of the state the last read reported.
func (p *proxy) checkpoint() []byte {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	return bytes.Clone(p.state)
}

// restore keeps state as the place every new child starts from. The
// poller calls it before the first Connect, when no child runs yet; a
// child already running is restored at once, within Options.CloseTimeout.
func (p *proxy) restore(state []byte) error {
	if len(state) > MaxState {
		return fmt.Errorf("restoring the %s driver of %s: a state of %d bytes exceeds the %d-byte limit: ignored, the driver goes on from its own record", p.name, p.device, len(state), MaxState)
	}
	state = bytes.Clone(state)
	if state == nil {
		state = []byte{} // nil means none, but an empty state was given
	}
	p.stateMu.Lock()
	p.state, p.committed = state, state
	p.stateMu.Unlock()
	p.mu.Lock()
	c := p.c
	p.mu.Unlock()
	if c == nil || c.exitErr() != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.o.closeTimeout())
	defer cancel()
	return c.restore(ctx, state)
}

// Close closes the child's driver and ends the child, within
// Options.CloseTimeout. Closing twice, or a child that already died, is
// not an error: its death was reported by the call that saw it.
func (p *proxy) Close() error {
	p.mu.Lock()
	c := p.c
	p.c = nil
	p.mu.Unlock()
	if c == nil {
		return nil
	}
	return c.close(p.o.closeTimeout())
}

// current is the running child, or an error: not connected, or the
// child's death (wrapping driver.ErrConnLost) until the next Connect.
func (p *proxy) current() (*child, error) {
	p.mu.Lock()
	c := p.c
	p.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("%s driver host for %s: not connected: Connect first", p.name, p.device)
	}
	if err := c.exitErr(); err != nil {
		return nil, err
	}
	return c, nil
}

// ensure returns the running child, starting one if there is none or the
// last one died.
func (p *proxy) ensure(ctx context.Context) (*child, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c != nil && p.c.exitErr() == nil {
		return p.c, nil
	}
	p.c = nil
	c, err := p.spawn(ctx)
	if err != nil {
		return nil, err
	}
	p.c = c
	return c, nil
}

// spawn starts a child and completes the handshake.
func (p *proxy) spawn(ctx context.Context) (*child, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cmd, err := p.cmd()
	if err != nil {
		return nil, fmt.Errorf("%s driver host for %s: %w", p.name, p.device, err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// The child dies with the agent. (The kernel sends it when the thread
	// that started the child exits; Go's threads outlive their goroutines,
	// and the child also ends when its stdin closes.)
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if p.o.MemoryLimit > 0 {
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+strconv.FormatInt(p.o.MemoryLimit, 10))
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("%s driver host for %s: %w", p.name, p.device, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("%s driver host for %s: %w", p.name, p.device, err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("%s driver host for %s: %w", p.name, p.device, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the %s driver host for %s (%s): %w", p.name, p.device, cmd.Path, err)
	}
	pid := cmd.Process.Pid
	// Before the child reads anything from the device: if memory runs out,
	// the kernel kills the child, not the agent.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte("1000"), 0); err != nil {
		p.log.Debug("could not raise the driver host's oom_score_adj", "pid", pid, "err", err)
	}
	c := &child{
		p:       p,
		cmd:     cmd,
		pid:     pid,
		stdin:   stdin,
		outq:    make(chan []byte, 16),
		pending: map[uint64]chan answer{},
		dead:    make(chan struct{}),
		relay:   &stderrRelay{log: p.log},
		relayed: make(chan struct{}),
	}
	go func() { c.relay.run(stderr); close(c.relayed) }()
	go c.writeLoop()
	go c.readLoop(stdout)
	a, err := c.roundTrip(ctx, 0, p.startBody, ansReady)
	if err == nil && a.version != Version {
		err = fmt.Errorf("the driver host speaks protocol version %d, the agent %d: restart the agent", a.version, Version)
	}
	if err == nil && a.caps != p.caps {
		err = fmt.Errorf("the driver host's %s driver offers capabilities %b, the agent's %b: restart the agent", p.name, a.caps, p.caps)
	}
	if err == nil && p.caps&capCheckpointer != 0 {
		err = p.restoreChild(ctx, c)
	}
	if err != nil {
		c.kill(err)
		<-c.dead
		if ctx.Err() != nil {
			return nil, fmt.Errorf("starting the %s driver host for %s: %w", p.name, p.device, errors.Join(ctx.Err(), c.exitErr()))
		}
		return nil, fmt.Errorf("starting the %s driver host for %s: %w", p.name, p.device, c.exitErr())
	}
	p.log.Debug("driver host started", "pid", pid)
	return c, nil
}

// restoreChild hands a new child's driver the committed state, if any,
// before its Connect. A driver that refuses the state goes on from its own
// record, as the poller lets it (logged); only a child that died or a
// context that ended fails the start.
func (p *proxy) restoreChild(ctx context.Context, c *child) error {
	p.stateMu.Lock()
	state := p.committed
	p.stateMu.Unlock()
	if state == nil {
		return nil
	}
	err := c.restore(ctx, state)
	switch {
	case err == nil:
	case errors.Is(err, driver.ErrConnLost) || ctx.Err() != nil:
		return err
	default:
		p.log.Warn("the driver refused the state it was restored with; it goes on from its own record", "err", err)
	}
	p.stateMu.Lock()
	p.state = state
	p.stateMu.Unlock()
	return nil
}

// restore sends a restore call with state.
func (c *child) restore(ctx context.Context, state []byte) error {
	_, err := c.call(ctx, msgRestore, func(e *enc) error {
		e.deadline(ctx)
		e.optBytes(state)
		return nil
	}, ansOK)
	if err != nil {
		return fmt.Errorf("restoring the %s driver of %s: %w", c.p.name, c.p.device, err)
	}
	return nil
}

func deadlineOnly(ctx context.Context) func(*enc) error {
	return func(e *enc) error { e.deadline(ctx); return nil }
}

// samePoint reports whether a is b as the device was built with, so the
// child may use its copy (settings included) instead of a being sent.
func samePoint(a, b driver.Point) (same bool) {
	// A comparable type can still hold an incomparable value in an
	// interface field, which panics on ==: then the point goes whole.
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	if a.ID != b.ID || a.Ref != b.Ref || a.Name != b.Name || a.Unit != b.Unit || a.Description != b.Description || a.Interval != b.Interval || !slices.Equal(a.Tags, b.Tags) {
		return false
	}
	if a.Settings == nil || b.Settings == nil {
		return a.Settings == nil && b.Settings == nil
	}
	// Interface values compare by dynamic type and value; a type that is
	// not comparable would panic, so such settings go whole.
	if !reflect.TypeOf(a.Settings).Comparable() || !reflect.TypeOf(b.Settings).Comparable() {
		return false
	}
	return a.Settings == b.Settings
}

// child is one running driver host.
type child struct {
	p     *proxy
	cmd   *exec.Cmd
	pid   int
	stdin io.WriteCloser
	outq  chan []byte
	next  atomic.Uint64

	mu         sync.Mutex
	pending    map[uint64]chan answer
	killReason error // why the parent killed it, if it did
	closing    bool  // the parent asked it to close: its exit is expected

	dead    chan struct{} // closed once the child has exited and err is set
	err     error         // why it is gone, wrapping driver.ErrConnLost
	relay   *stderrRelay
	relayed chan struct{} // closed when stderr has been read to its end
}

// exitErr is nil while the child runs, then why it is gone.
func (c *child) exitErr() error {
	select {
	case <-c.dead:
		return c.err
	default:
		return nil
	}
}

// call sends one call, its payload written by build, and waits for its
// answer (see roundTrip). A build error is returned before anything is sent.
func (c *child) call(ctx context.Context, typ byte, build func(*enc) error, want byte) (answer, error) {
	if err := ctx.Err(); err != nil {
		return answer{}, err
	}
	id := c.next.Add(1)
	e := newEnc(typ, id)
	if build != nil {
		if err := build(e); err != nil {
			return answer{}, err
		}
	}
	if len(e.b) > MaxFrame {
		return answer{}, fmt.Errorf("%s driver host for %s: a call of %d bytes exceeds the %d-byte frame limit: read fewer points at a time", c.p.name, c.p.device, len(e.b), MaxFrame)
	}
	return c.roundTrip(ctx, id, e.b, want)
}

// roundTrip sends body and waits for the answer to call id. When ctx ends
// first the child is told to cancel and has Options.Grace to answer; a
// child that does not is killed, and the error wraps both ctx's and
// driver.ErrConnLost.
func (c *child) roundTrip(ctx context.Context, id uint64, body []byte, want byte) (answer, error) {
	ch := make(chan answer, 1)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	// With room in the queue the call is always sent, even when ctx ended
	// meanwhile: the child is told its deadline or cancellation and
	// answers at once. Left to one select with ctx.Done, which picks at
	// random among ready cases, a context that ended just then could
	// keep the call unsent, and the grace below would then kill a healthy
	// child that never saw it. Only a full queue (a child that does not
	// read its stdin) waits on ctx.
	sent := false
	select {
	case c.outq <- body:
		sent = true
	default:
		select {
		case c.outq <- body:
			sent = true
		case <-c.dead:
			return answer{}, c.err
		case <-ctx.Done():
		}
	}
	if sent {
		select {
		case a := <-ch:
			c.p.noteCounters(c, a.counters)
			return c.check(a, want)
		case <-c.dead:
			return answer{}, c.err
		case <-ctx.Done():
		}
		// A deadline the child knows and keeps itself, so its driver's
		// error says deadline, not cancelled; a cancellation it is told.
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			cancel := newEnc(msgCancel, 0)
			cancel.uvarint(id)
			select {
			case c.outq <- cancel.b:
			default: // the queue is full: the child is not reading, the timer below decides
			}
		}
	}
	grace := c.p.o.grace()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case a := <-ch:
		return c.check(a, want)
	case <-c.dead:
		return answer{}, fmt.Errorf("%w (%w)", c.err, ctx.Err())
	case <-t.C:
	}
	c.kill(fmt.Errorf("no answer %s after the call's context ended (%v): killed as hung", grace, ctx.Err()))
	<-c.dead
	return answer{}, fmt.Errorf("%w (%w)", c.err, ctx.Err())
}

// check turns an answer into the call's result; an answer of the wrong
// type breaks the protocol and kills the child.
func (c *child) check(a answer, want byte) (answer, error) {
	switch a.typ {
	case ansError:
		return answer{}, a.err
	case want:
		return a, nil
	}
	err := fmt.Errorf("%w: answer of type %q to a call that wants %q", errMalformed, a.typ, want)
	c.kill(err)
	<-c.dead
	return answer{}, c.err
}

// writeLoop writes queued frames to the child's stdin until it is gone.
func (c *child) writeLoop() {
	for {
		select {
		case body := <-c.outq:
			if err := writeFrame(c.stdin, body); err != nil {
				c.kill(fmt.Errorf("writing to the driver host: %w", err))
				return
			}
		case <-c.dead:
			return
		}
	}
}

// readLoop delivers the child's answers until its stdout ends, then
// records how the child ended.
func (c *child) readLoop(stdout io.Reader) {
	for {
		body, err := readFrame(stdout)
		if err != nil {
			c.exit(err)
			return
		}
		a, err := decodeAnswer(body)
		if err != nil {
			c.kill(err)
			c.exit(err)
			return
		}
		c.mu.Lock()
		ch := c.pending[a.id]
		delete(c.pending, a.id)
		c.mu.Unlock()
		if ch != nil {
			ch <- a
		}
	}
}

// kill kills the child (once it has a reason, later reasons are dropped);
// readLoop then sees its stdout end and records the exit.
func (c *child) kill(reason error) {
	c.mu.Lock()
	if c.killReason == nil {
		c.killReason = reason
	}
	c.mu.Unlock()
	_ = c.cmd.Process.Kill()
}

// exit waits for the child to end and records why; called once, by
// readLoop, when the child's stdout ended.
func (c *child) exit(readErr error) {
	if !errors.Is(readErr, io.EOF) {
		c.kill(fmt.Errorf("reading from the driver host: %w", readErr))
	}
	// A child whose stdout closed is exiting: its stderr ends with it.
	// One that closed stdout and lives on is broken, and killed.
	t := time.NewTimer(c.p.o.grace())
	select {
	case <-c.relayed:
	case <-t.C:
		c.kill(errors.New("closed its stdout but did not exit: killed"))
		t.Reset(c.p.o.grace())
		select {
		case <-c.relayed:
		case <-t.C: // something else holds its stderr; Wait closes it
		}
	}
	t.Stop()
	werr := c.cmd.Wait()
	c.mu.Lock()
	reason, closing := c.killReason, c.closing
	c.mu.Unlock()
	status := "exited"
	if werr != nil {
		status = werr.Error() // "exit status 2", "signal: killed"
	}
	msg := fmt.Sprintf("%s driver host for %s (pid %d) %s", c.p.name, c.p.device, c.pid, status)
	if reason != nil {
		msg += ": " + reason.Error()
	} else if st, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && st.Signaled() && st.Signal() == syscall.SIGKILL {
		msg += " (by the kernel's OOM killer, or an operator)"
	}
	if q := c.relay.quote(); q != "" {
		msg += "; stderr: " + q
	}
	c.err = fmt.Errorf("%s: %w", msg, driver.ErrConnLost)
	if !closing {
		c.p.log.Error("driver host died; the device reconnects with a new one", "pid", c.pid, "status", status, "err", c.err)
	}
	close(c.dead)
}

// close asks the child to close its driver and exit, and makes sure it
// does within timeout.
func (c *child) close(timeout time.Duration) error {
	if c.exitErr() != nil {
		return nil
	}
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.call(ctx, msgClose, nil, ansOK)
	if errors.Is(err, driver.ErrConnLost) {
		// It died while closing: nothing is left to close.
		err = nil
	}
	_ = c.stdin.Close()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.dead:
	case <-t.C:
		c.kill(fmt.Errorf("did not exit within %s of closing: killed", timeout))
		<-c.dead
	}
	if err != nil {
		return fmt.Errorf("closing the %s driver host for %s: %w", c.p.name, c.p.device, err)
	}
	return nil
}
