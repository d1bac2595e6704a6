// Package bacnet is the BACnet/IP driver: it reads points (a property,
// present-value by default, of an object of a device) together with their
// status flags and reliability, grouped into ReadPropertyMultiple requests
// sized to the device's max APDU and segmentation, falling back to
// ReadProperty for devices without it. Points with a Trend Log in the
// controller are backfilled with ReadRange after a gap. It never writes:
// package bacnet (pkg/bacnet) offers no write service, and its guard
// refuses anything but reads at the wire. See README.md.
package bacnet

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Name is the driver's name in a device's `driver:` key.
const Name = "bacnet"

// SampleConfig is an example device configuration.
//
//go:embed sample.yaml
var SampleConfig string

// Info describes the driver to the registry.
func Info() driver.Info { return driver.Info{Name: Name, New: New} }

// Compile-time checks that the driver offers what the agent looks for.
var (
	_ driver.Driver     = (*Driver)(nil)
	_ driver.Discoverer = (*Driver)(nil)
	_ driver.Committer  = (*Driver)(nil)
	_ driver.Reporter   = (*Driver)(nil)
	// The trend-log backfill marks go into the buffer with the samples
	// they account for, so a crash before Commit neither repeats nor
	// skips a backfill.
	_ driver.Checkpointer = (*Driver)(nil)
)

// Driver reads one BACnet device.
type Driver struct {
	cfg    config
	name   string
	log    *slog.Logger
	points map[string]point // parsed configured points by ref
	state  *backfillState
	// now is the clock of live samples and backfill marks: time.Now, a
	// fake one in tests, so gaps are as long as a test says and not as
	// long as a loaded machine makes them.
	now func() time.Time
	// clockBack is set while the clock is behind a backfill mark, so that
	// is logged once and once more when it has caught up.
	clockBack atomic.Bool
	// counted is the client last connected, for Counters without d.mu
	// (which a Read holds while it locates the device).
	counted atomic.Pointer[bacnet.Client]

	mu      sync.Mutex
	client  *sharedClient
	located bool
	dev     bacnet.Device
	rpm     bool
	closed  bool
	missing map[bacnet.ObjectID]bool // objects the device says it does not have
	// budget is the answer length the device has shown it can send; kept
	// across locates, since a device that moved is the same device.
	budget answerBudget
}

// ErrClosed is returned by Connect and Read after Close.
var ErrClosed = errors.New("bacnet driver closed: call Connect to reconnect")

// New builds a driver from a device's configuration; it does no network I/O.
func New(d driver.Device) (driver.Driver, error) {
	cfg, err := parseSettings(d.Settings)
	cfg.interval = d.Interval
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	drv := &Driver{cfg: cfg, name: d.Name, log: log, points: map[string]point{}, missing: map[bacnet.ObjectID]bool{}, now: time.Now}
	for _, p := range d.Points {
		pt, err := parsePoint(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("point %q: %w", p.Ref, err))
			continue
		}
		drv.points[p.Ref] = pt
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	drv.state = newBackfillState(d.DataDir, d.Name)
	return drv, nil
}

// Connect opens (or shares) the socket and locates the device: by Who-Is
// unless its address is configured, then reads what it supports.
//
// BACnet/IP has no connection to lose, and the agent closes a driver whose
// Connect failed: so Connect fails only when the socket cannot be opened.
// A device that does not answer yet is logged and located again by the
// next Read, whose error (not ErrConnLost) makes the agent back off.
func (d *Driver) Connect(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Connect after Close reopens: the poller reconnects this way.
	d.closed = false
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.client == nil {
		cl, err := acquireClient(ctx, d.cfg.client, d.log)
		if err != nil {
			return fmt.Errorf("%w: %w", driver.ErrConnLost, err)
		}
		d.client = cl
		d.counted.Store(cl.c)
	}
	if err := d.state.load(); err != nil {
		d.log.Warn("backfill state unreadable; trend logs will only fill gaps seen from now on", "err", err)
	}
	if err := d.locateLocked(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.log.Warn("bacnet device not found yet; trying again on the next read", "instance", d.cfg.instance, "err", err)
	}
	return nil
}

// locateLocked finds the device; d.mu is held.
func (d *Driver) locateLocked(ctx context.Context) error {
	dev, rpm, err := locate(ctx, d.client.c, d.cfg)
	if err != nil {
		return fmt.Errorf("locating device %d: %w", d.cfg.instance, err)
	}
	d.dev, d.rpm, d.located = dev, rpm, true
	d.log.Info("bacnet device located", "instance", dev.Instance, "max_apdu", dev.MaxAPDU,
		"segmentation", dev.Segmentation.String(), "max_segments", dev.MaxSegments, "read_property_multiple", rpm)
	return nil
}

// locate finds the device and what it supports.
func locate(ctx context.Context, c *bacnet.Client, cfg config) (bacnet.Device, bool, error) {
	var dev bacnet.Device
	mine := func(d bacnet.Device) bacnet.Device {
		d.Timeout, d.Retries, d.MaxOutstanding = cfg.timeout, cfg.retries, cfg.outstanding
		return d
	}
	if cfg.addr != nil {
		dev = mine(bacnet.Device{Instance: cfg.instance, Addr: *cfg.addr, MaxAPDU: 480, Segmentation: bacnet.NoSegmentation})
		// Ask the device itself (RP is the one service every device has)
		// rather than trust defaults.
		devObj := bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: cfg.instance}
		v, err := c.ReadProperty(ctx, dev, devObj, bacnet.Prop(bacnet.PropMaxAPDULengthAccepted))
		if err != nil {
			return dev, false, err
		}
		if len(v) == 1 && v[0].Kind == bacnet.KindUnsigned && v[0].Uint >= 50 {
			dev.MaxAPDU = int(min(v[0].Uint, 1476))
		}
		if v, err := c.ReadProperty(ctx, dev, devObj, bacnet.Prop(bacnet.PropSegmentationSupported)); err == nil && len(v) == 1 && v[0].Uint <= 3 {
			dev.Segmentation = bacnet.Segmentation(v[0].Uint)
		}
	} else {
		wait := cfg.timeout
		if wait <= 0 {
			wait = c.Timeout()
		}
		devs, err := c.WhoIs(ctx, nil, bacnet.GlobalNetwork, int(cfg.instance), int(cfg.instance), wait)
		if err != nil {
			return dev, false, err
		}
		if len(devs) == 0 {
			return dev, false, fmt.Errorf("no I-Am from device %d: check the instance number, the broadcast address and that the device is on line", cfg.instance)
		}
		dev = mine(devs[0])
	}
	if cfg.maxAPDU > 0 {
		dev.MaxAPDU = min(dev.MaxAPDU, cfg.maxAPDU)
	}
	devObj := bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: cfg.instance}
	if dev.Segmentation.CanTransmit() {
		// How many segments the device takes is the best hint of how many
		// it sends; many lack the property, and their aborts teach the
		// planner instead.
		v, err := c.ReadProperty(ctx, dev, devObj, bacnet.Prop(bacnet.PropMaxSegmentsAccepted))
		if err == nil && len(v) == 1 && v[0].Kind == bacnet.KindUnsigned && v[0].Uint > 0 {
			dev.MaxSegments = int(min(v[0].Uint, 255))
		} else if ctx.Err() != nil {
			return dev, false, ctx.Err()
		}
	}
	rpm := cfg.rpm
	if rpm {
		v, err := c.ReadProperty(ctx, dev, devObj, bacnet.Prop(bacnet.PropProtocolServicesSupported))
		if err == nil && len(v) == 1 && v[0].Kind == bacnet.KindBitString {
			rpm = v[0].Bits.Bit(int(bacnet.ServiceReadPropertyMultiple))
		} else if ctx.Err() != nil {
			return dev, false, ctx.Err()
		}
	}
	return dev, rpm, nil
}

// Counters reports the counts of the BACnet socket the device is read
// through — shared by every device on the same local address, so the
// counts are the socket's, not the device's alone.
func (d *Driver) Counters() []driver.Counter {
	var st bacnet.Stats
	if c := d.counted.Load(); c != nil {
		st = c.Stats()
	}
	return []driver.Counter{
		{Name: "requests", Value: st.Requests},
		{Name: driver.GuardRefusals, Value: st.Refused},
		{Name: "retries", Value: st.Retries},
		{Name: "timeouts", Value: st.Timeouts},
		{Name: "aborts", Value: st.Aborts},
		{Name: "segments_received", Value: st.SegmentsReceived},
		{Name: "bytes_sent", Value: st.BytesSent},
		{Name: "bytes_received", Value: st.BytesReceived},
	}
}

// Close releases the socket (when no other device shares it) and forgets
// backfill marks not committed. It is idempotent; Read fails until the
// next Connect.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.client != nil {
		d.client.release()
		d.client = nil
	}
	// Marks of reads not committed go: the poller closes the driver when
	// the buffer refused a read, and the data must be read again.
	d.state.discard()
	return nil
}

// session returns what a Read needs, locating the device first if that
// has not succeeded yet.
func (d *Driver) session(ctx context.Context) (*bacnet.Client, bacnet.Device, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, bacnet.Device{}, false, ErrClosed
	}
	if d.client == nil {
		return nil, bacnet.Device{}, false, fmt.Errorf("%w: not connected", driver.ErrConnLost)
	}
	if !d.located {
		if err := ctx.Err(); err != nil {
			return nil, bacnet.Device{}, false, err
		}
		if err := d.locateLocked(ctx); err != nil {
			return nil, bacnet.Device{}, false, err
		}
	}
	return d.client.c, d.dev, d.rpm, nil
}

// lost forgets where a device found by Who-Is is, after it answered
// nothing: it may have moved (a new address, a replaced router).
func (d *Driver) lost() {
	if d.cfg.addr != nil {
		return
	}
	d.mu.Lock()
	d.located = false
	d.mu.Unlock()
}

// Read reads points: the live values, then any trend-log backfill due.
func (d *Driver) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(points) == 0 {
		if _, _, _, err := d.session(ctx); errors.Is(err, ErrClosed) {
			return nil, err
		}
		return nil, nil
	}
	c, dev, rpm, err := d.session(ctx)
	if err != nil {
		return nil, err
	}
	parsed := make([]point, len(points))
	valid := make([]bool, len(points))
	for i, p := range points {
		pt, ok := d.points[p.Ref]
		if !ok {
			var err error
			if pt, err = parsePoint(p); err != nil {
				d.log.Warn("unreadable point reference", "point", p.Ref, "err", err)
				continue
			}
		}
		parsed[i], valid[i] = pt, true
	}
	now := d.now()
	// Objects the device said do not exist are kept out of RPM requests
	// (a strict device fails a whole request for one of them) and read
	// alone, so a point created later is picked up.
	d.mu.Lock()
	batched := slices.Clone(valid)
	var alone []int
	for i := range parsed {
		if valid[i] && d.missing[parsed[i].obj] {
			batched[i] = false
			alone = append(alone, i)
		}
	}
	d.mu.Unlock()
	res, fellBack, err := reader{c: c, dev: dev, budget: &d.budget, log: d.log, now: now}.readAll(ctx, rpm, parsed, batched)
	if err == nil {
		for _, i := range alone {
			res[i] = result{reliable: true}
			res[i].commFailed = isCommFailure(readSingle(ctx, c, dev, parsed[i], &res[i]))
		}
		if err = ctx.Err(); err != nil {
			return nil, err
		}
		d.learnMissing(parsed, valid, res)
	}
	if fellBack {
		d.mu.Lock()
		d.rpm = false
		d.mu.Unlock()
		d.log.Info("device rejected ReadPropertyMultiple; reading property by property from now on")
	}
	if errors.Is(err, bacnet.ErrTimeout) {
		d.lost()
	}
	if err != nil {
		return nil, err
	}
	samples := make([]telemetry.Sample, 0, len(points))
	for i, p := range points {
		s := telemetry.Sample{PointID: p.ID, Time: now.UnixMilli(), Status: telemetry.StatusFault}
		if valid[i] {
			s.Value, s.Status = res[i].sample()
		}
		samples = append(samples, s)
	}
	samples = append(samples, d.backfill(ctx, c, dev, points, parsed, valid, res, now)...)
	return samples, nil
}

// learnMissing remembers which objects the device says do not exist.
func (d *Driver) learnMissing(parsed []point, valid []bool, res []result) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, r := range res {
		if !valid[i] || r.commFailed {
			continue
		}
		var e *bacnet.Error
		switch {
		case errors.As(r.err, &e) && e.Class == bacnet.ErrorClassObject && e.Code == bacnet.ErrorCodeUnknownObject:
			if !d.missing[parsed[i].obj] {
				d.log.Warn("the device has no such object; reading it alone from now on", "object", parsed[i].obj.String())
			}
			d.missing[parsed[i].obj] = true
		case r.err == nil && d.missing[parsed[i].obj]:
			d.log.Info("the object exists now", "object", parsed[i].obj.String())
			delete(d.missing, parsed[i].obj)
		}
	}
}

// Commit persists the backfill marks of the samples now buffered.
func (d *Driver) Commit(ctx context.Context) error {
	return d.state.commit()
}

// Checkpoint returns the backfill marks as the last Read left them.
func (d *Driver) Checkpoint() []byte { return d.state.checkpoint() }

// Restore takes backfill marks the buffer stored with the last samples it
// holds, where they are further along than the driver's own file.
func (d *Driver) Restore(state []byte) error { return d.state.restore(state) }
