package subprocess

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// closeWait is how long the child's Close lets calls still running end
// after cancelling them, before it closes the driver under them.
const closeWait = 2 * time.Second

// Main is the child's side, for the hidden `driver-host` command: it
// serves one device's driver from reg (the registry of unwrapped drivers)
// over stdin and stdout until the parent closes it or goes away.
//
// The protocol keeps the process's original stdout to itself and points
// file descriptor 1 at stderr, so a library printing to stdout cannot
// corrupt a frame. SIGINT, SIGTERM and SIGHUP are ignored: a terminal's
// Ctrl-C or systemd's stop reaches the whole group, and the agent must
// close its devices itself; the child ends when the parent closes it, when
// its stdin closes, or (Pdeathsig) when the parent dies.
func Main(ctx context.Context, reg *driver.Registry) error {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	fd, err := syscall.Dup(1)
	if err != nil {
		return fmt.Errorf("driver host: keeping stdout for the protocol: %w", err)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.Dup3(2, 1, 0); err != nil {
		return fmt.Errorf("driver host: pointing stdout at stderr: %w", err)
	}
	out := os.NewFile(uintptr(fd), "driver-host-protocol")
	defer out.Close()
	return Serve(context.WithoutCancel(ctx), reg, os.Stdin, out, os.Stderr)
}

// Serve runs the child's side of the protocol on in and out, logging to
// logw as JSON. The first frame must be start; then calls are served, each
// in its own goroutine (Read may run concurrently when the device's
// concurrency is above 1), until close or the end of in.
func Serve(ctx context.Context, reg *driver.Registry, in io.Reader, out io.Writer, logw io.Writer) error {
	h := &host{out: out, calls: map[uint64]context.CancelFunc{}}
	body, err := readFrame(in)
	if err != nil {
		return fmt.Errorf("driver host: reading the start frame: %w", err)
	}
	c, err := decodeCall(body)
	if err == nil && c.typ != msgStart {
		err = fmt.Errorf("first frame is %q, want start", c.typ)
	}
	if err != nil {
		return fmt.Errorf("driver host: %w", err)
	}
	if err := h.start(reg, c, logw); err != nil {
		h.sendError(c.id, err)
		return fmt.Errorf("driver host: %w", err)
	}
	h.send(newEnc(ansReady, c.id).withReady(Version, h.caps).b)
	defer h.shutdown()
	for {
		body, err := readFrame(in)
		if errors.Is(err, io.EOF) {
			return nil // the parent closed our stdin: it is gone or done
		}
		if err != nil {
			return fmt.Errorf("driver host: %w", err)
		}
		c, err := decodeCall(body)
		if err != nil {
			return fmt.Errorf("driver host: %w", err)
		}
		if done := h.dispatch(ctx, c); done {
			return nil
		}
	}
}

func (e *enc) withReady(version, caps uint64) *enc {
	e.uvarint(version)
	e.uvarint(caps)
	return e
}

// host is the child's state: the one driver it serves.
type host struct {
	wmu sync.Mutex
	out io.Writer

	drv    driver.Driver
	caps   uint64
	cp     driver.Checkpointer // nil unless caps has capCheckpointer
	points []driver.Point
	log    *slog.Logger

	mu     sync.Mutex
	calls  map[uint64]context.CancelFunc
	wg     sync.WaitGroup
	closed bool
}

// start builds the driver the start frame asks for.
func (h *host) start(reg *driver.Registry, c call, logw io.Writer) error {
	s := c.start
	if s.version != Version {
		return fmt.Errorf("the agent speaks protocol version %d and this driver host %d: the binary changed under a running agent; restart it", s.version, Version)
	}
	info, ok := reg.Lookup(s.driver)
	if !ok {
		return fmt.Errorf("driver %q is not hosted here (hosted: %v)", s.driver, reg.Names())
	}
	h.log = slog.New(slog.NewJSONHandler(logw, &slog.HandlerOptions{Level: s.level}))
	h.points = s.points
	drv, err := info.New(driver.Device{Name: s.device, Settings: s.settings, Points: s.points, Logger: h.log, DataDir: s.dataDir, Interval: s.interval})
	if err != nil {
		return fmt.Errorf("building the %s driver: %w", s.driver, err)
	}
	h.drv = drv
	if _, ok := drv.(driver.Discoverer); ok {
		h.caps |= capDiscoverer
	}
	if _, ok := drv.(driver.Committer); ok {
		h.caps |= capCommitter
		if cp, ok := drv.(driver.Checkpointer); ok {
			h.cp = cp
			h.caps |= capCheckpointer
		}
	}
	return nil
}

// dispatch serves one call and reports whether the host is done.
func (h *host) dispatch(ctx context.Context, c call) bool {
	switch c.typ {
	case msgCancel:
		h.mu.Lock()
		cancel := h.calls[c.target]
		h.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		return false
	case msgClose:
		err := h.shutdown()
		if err != nil {
			h.sendError(c.id, err)
		} else {
			h.sendOK(c.id)
		}
		return true
	case msgConnect, msgRead, msgDiscover, msgCommit, msgRestore:
	default:
		// Nothing but the driver's reads is served: a frame asking for
		// anything else is refused, whoever built it.
		h.log.Error("driver host refused a call it does not serve", "call", fmt.Sprintf("%q", c.typ))
		h.sendError(c.id, fmt.Errorf("driver host: call %q refused: only connect, read, discover, commit, restore and close are served: %w", c.typ, driver.ErrRefused))
		return false
	}
	cctx, cancel := context.WithCancel(ctx)
	if c.timeout > 0 {
		cctx, cancel = context.WithTimeout(ctx, c.timeout)
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		cancel()
		h.sendError(c.id, errors.New("driver host: closed"))
		return false
	}
	h.calls[c.id] = cancel
	h.wg.Add(1)
	h.mu.Unlock()
	go func() {
		defer h.wg.Done()
		defer func() {
			h.mu.Lock()
			delete(h.calls, c.id)
			h.mu.Unlock()
			cancel()
		}()
		h.serve(cctx, c)
	}()
	return false
}

// serve runs one driver call and answers it.
func (h *host) serve(ctx context.Context, c call) {
	switch c.typ {
	case msgConnect:
		h.answerErr(c.id, h.drv.Connect(ctx))
	case msgRead:
		points := make([]driver.Point, len(c.points))
		for i, rp := range c.points {
			if rp.index < 0 {
				points[i] = rp.p
				continue
			}
			if rp.index >= len(h.points) {
				h.sendError(c.id, fmt.Errorf("driver host: read of point %d of %d", rp.index, len(h.points)))
				return
			}
			points[i] = h.points[rp.index]
		}
		samples, err := h.drv.Read(ctx, points)
		if err != nil {
			h.sendError(c.id, err)
			return
		}
		e := newEnc(ansSamples, c.id)
		e.samples(samples)
		e.counters(h.counts())
		// The checkpoint rides on the read that made it, so the parent's
		// Checkpoint is exactly the state this Read left, without a call.
		var state []byte
		if h.cp != nil {
			state = h.cp.Checkpoint()
		}
		if len(state) > MaxState {
			h.sendError(c.id, fmt.Errorf("driver host: the driver's checkpoint of %d bytes exceeds the %d-byte limit: it is a bug in the driver, report it", len(state), MaxState))
			return
		}
		e.optBytes(state)
		h.send(e.b)
	case msgDiscover:
		disc, ok := h.drv.(driver.Discoverer)
		if !ok {
			h.sendError(c.id, errors.New("driver host: the driver cannot discover points"))
			return
		}
		found, err := disc.Discover(ctx)
		if err != nil {
			h.sendError(c.id, err)
			return
		}
		e := newEnc(ansPoints, c.id)
		e.uvarint(uint64(len(found)))
		for _, p := range found {
			b, err := encodeSettings(p.Settings)
			if err != nil {
				h.sendError(c.id, fmt.Errorf("discovered point %q: %w", p.Ref, err))
				return
			}
			e.point(p, b)
		}
		h.send(e.b)
	case msgCommit:
		com, ok := h.drv.(driver.Committer)
		if !ok {
			h.sendError(c.id, errors.New("driver host: the driver has nothing to commit"))
			return
		}
		h.answerErr(c.id, com.Commit(ctx))
	case msgRestore:
		if h.cp == nil {
			h.sendError(c.id, errors.New("driver host: the driver keeps no checkpoint to restore"))
			return
		}
		h.answerErr(c.id, h.cp.Restore(c.state))
	}
}

// shutdown cancels the calls in flight, lets them end (briefly) and closes
// the driver, once.
func (h *host) shutdown() error {
	h.mu.Lock()
	if h.closed || h.drv == nil {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	for _, cancel := range h.calls {
		cancel()
	}
	h.mu.Unlock()
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		h.log.Warn("closing the driver while calls still run: they ignored their cancelled context")
	}
	return h.drv.Close()
}

func (h *host) answerErr(id uint64, err error) {
	if err != nil {
		h.sendError(id, err)
		return
	}
	h.sendOK(id)
}

// counts are the driver's counters (driver.Reporter), carried on every
// ok, samples and error answer: a read the guard refused must show in
// status too.
func (h *host) counts() []driver.Counter {
	if r, ok := h.drv.(driver.Reporter); ok {
		return r.Counters()
	}
	return nil
}

func (h *host) sendOK(id uint64) {
	e := newEnc(ansOK, id)
	e.counters(h.counts())
	h.send(e.b)
}

func (h *host) sendError(id uint64, err error) {
	e := newEnc(ansError, id)
	e.uvarint(errorKinds(err))
	e.str(err.Error())
	e.counters(h.counts())
	h.send(e.b)
}

// send writes one frame. An answer too large for a frame becomes an
// error answer, so the parent is never left waiting. A failed write means
// the parent is gone; the read loop sees its end of stdin and stops.
func (h *host) send(body []byte) {
	if len(body) > MaxFrame {
		d := &dec{b: body[1:]}
		id := d.uvarint("call id")
		e := newEnc(ansError, id)
		e.uvarint(0)
		e.str(fmt.Sprintf("driver host: the answer of %d bytes exceeds the %d-byte frame limit: read fewer points at a time", len(body), MaxFrame))
		e.counters(nil)
		body = e.b
	}
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := writeFrame(h.out, body); err != nil && h.log != nil {
		h.log.Debug("driver host: answering the agent failed", "err", err)
	}
}
