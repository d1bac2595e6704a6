// Package modbus is the Modbus TCP driver: it reads coils, discrete
// inputs, holding and input registers from controllers, meters and drives,
// directly or through a gateway with several unit ids, and never writes.
//
// Every request passes the read-only Guard at the wire (function codes
// 1-4 and 43/14 only), on our own Transport (dials from the control NIC,
// deadlines from the context, one request at a time, answers checked).
// Points due together are coalesced into block reads by the planner, and
// the driver learns a device's limits from its exceptions: a block the
// device refuses as "illegal data address" or "illegal data value" is
// split until the culprit is found; cuts and a smaller maximum block size
// are remembered and never asked again, holes (registers refused on their
// own) are asked again, alone, after a backoff. See README.md.
package modbus

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	gmodbus "github.com/goburrow/modbus"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Name is the driver's name in a device's `driver:` key.
const Name = "modbus"

// SampleConfig is an example device configuration.
//
//go:embed sample.yaml
var SampleConfig string

// Info describes the driver to the registry.
func Info() driver.Info {
	return driver.Info{Name: Name, New: New}
}

// Compile-time checks that the driver offers what the agent looks for.
var (
	_ driver.Driver     = (*Driver)(nil)
	_ driver.Discoverer = (*Driver)(nil)
	_ driver.Reporter   = (*Driver)(nil)
)

// New is the driver's Factory: it validates the settings and every point
// and does no network I/O.
func New(dev driver.Device) (driver.Driver, error) {
	return newDriver(dev)
}

func newDriver(dev driver.Device) (*Driver, error) {
	cfg, err := parseSettings(dev.Settings)
	errs := []error{}
	if err != nil {
		errs = append(errs, err)
	}
	log := dev.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{cfg: cfg, log: log, guard: NewGuard(log), specs: map[string]spec{}, now: time.Now,
		learned: map[area]*limits{}, units: map[byte]*unitHealth{}, warned: map[string]bool{}}
	if cfg.profile != nil {
		d.profile = byRef(cfg.profile.forUnit(cfg.unit, d.orderOverride()))
	}
	for i, p := range dev.Points {
		s, err := d.resolve(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("point %d %q: %w", i+1, p.Ref, err))
			continue
		}
		d.specs[p.Ref] = s
	}
	errs = append(errs, overlaps(dev.Points, d.specs)...)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("modbus device %q: %w", dev.Name, err)
	}
	d.tr, err = NewTransport(TransportOptions{Address: cfg.address, LocalAddr: cfg.local, RequestTimeout: cfg.timeout, Pause: cfg.pause})
	if err != nil {
		return nil, fmt.Errorf("modbus device %q: %w", dev.Name, err)
	}
	d.state = stateFile(dev.DataDir, dev.Name)
	d.loadLearned()
	return d, nil
}

// resolve turns a configured point into a spec: a profile point by its
// canonical ref, anything else by parsing the ref, with the point's
// settings over the device's.
func (d *Driver) resolve(p driver.Point) (spec, error) {
	ps, line, err := decodePointSettings(p.Settings)
	if err != nil {
		return spec{}, err
	}
	at := func(err error) error {
		if line > 0 {
			return fmt.Errorf("line %d: %w", line, err)
		}
		return err
	}
	d.mu.Lock()
	s, ok := d.profile[p.Ref]
	d.mu.Unlock()
	if ok {
		// Discovered points carry the profile's settings; anything else
		// would quietly change what the profile says.
		t, err := applySettings(s, ps)
		if err != nil || t != s {
			return spec{}, at(errors.New("a profile point takes its order, scale and offset from the profile: fix the profile, or give the point a ref of its own"))
		}
		return s, nil
	}
	s, err = resolvePoint(p.Ref, ps, refDefaults{unit: d.cfg.unit, oneBased: d.cfg.oneBased}, d.cfg.order)
	if err != nil {
		return spec{}, at(err)
	}
	return s, nil
}

// overlaps reports points whose registers partly overlap another's with a
// multi-register value: one register holds one value, so that is almost
// always an address off by one (zero- versus one-based). Several points
// on the very same registers (bit fields of a status word) are fine.
func overlaps(points []driver.Point, specs map[string]spec) []error {
	var errs []error
	for i, p := range points {
		a, ok := specs[p.Ref]
		if !ok || a.table.bits() {
			continue
		}
		for _, q := range points[:i] {
			b, ok := specs[q.Ref]
			if !ok || a.unit != b.unit || a.table != b.table {
				continue
			}
			sa := span{int(a.addr), int(a.addr) + a.size()}
			sb := span{int(b.addr), int(b.addr) + b.size()}
			if sa.overlaps(sb) && sa != sb {
				errs = append(errs, fmt.Errorf("point %q (%s) overlaps point %q (%s): their registers would hold two values; check the addresses (zero- or one-based? see addressing)",
					p.Ref, a.ref(), q.Ref, b.ref()))
			}
		}
	}
	return errs
}

// Driver reads one Modbus TCP device, or several units behind one gateway.
// Its methods are safe for concurrent use; requests are serialised on the
// one connection.
type Driver struct {
	cfg     config
	log     *slog.Logger
	guard   *Guard
	tr      *Transport
	profile map[string]spec  // the profile's points for the device's unit, by ref
	state   string           // file keeping the learned limits; "" without a data dir
	now     func() time.Time // the clock of the learned limits and the units' rest; tests replace it
	// saveMu makes saves of the learned limits one at a time, snapshot
	// and write together, so two concurrent reads cannot leave the
	// older snapshot in the file.
	saveMu sync.Mutex

	mu        sync.Mutex
	specs     map[string]spec // resolved points by ref
	learned   map[area]*limits
	units     map[byte]*unitHealth // units that stopped answering
	saved     []learnedArea        // the learned limits last written to state
	warned    map[string]bool
	connected bool
	closed    bool
	gen       uint64 // bumped by Close, so a Connect racing a Close loses
}

var (
	errClosed       = errors.New("modbus driver closed: call Connect to reconnect")
	errNotConnected = errors.New("modbus driver not connected: call Connect first")
)

// Refused returns how many requests the driver's guard refused.
func (d *Driver) Refused() uint64 { return d.guard.Refused() }

// Counters reports the requests sent and those the guard refused.
func (d *Driver) Counters() []driver.Counter {
	return []driver.Counter{{Name: "requests", Value: d.guard.Sent()}, {Name: driver.GuardRefusals, Value: d.guard.Refused()}}
}

// Connect dials the device. The poller calls it again, after Close, to
// reconnect once a connection was lost or a Connect failed; what the
// driver learned about the device survives.
func (d *Driver) Connect(ctx context.Context) error {
	d.mu.Lock()
	gen := d.gen
	d.mu.Unlock()
	if err := d.tr.Connect(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen != gen {
		// Closed while dialling: the caller wanted it shut.
		d.tr.Close()
		return errClosed
	}
	d.closed, d.connected = false, true
	return nil
}

// Close closes the connection. It is idempotent; Read fails until the
// next Connect.
func (d *Driver) Close() error {
	d.mu.Lock()
	d.closed, d.connected = true, false
	d.gen++
	d.mu.Unlock()
	return d.tr.Close()
}

func (d *Driver) ready() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return errClosed
	case !d.connected:
		return errNotConnected
	}
	return nil
}

// specFor returns the spec of a ref, parsing refs not configured at New.
func (d *Driver) specFor(p driver.Point) (spec, error) {
	d.mu.Lock()
	s, ok := d.specs[p.Ref]
	d.mu.Unlock()
	if ok {
		return s, nil
	}
	s, err := d.resolve(p)
	if err != nil {
		return spec{}, err
	}
	d.mu.Lock()
	d.specs[p.Ref] = s
	d.mu.Unlock()
	return s, nil
}

// limitsLocked returns the learned limits of an area, creating them.
func (d *Driver) limitsLocked(a area) *limits {
	l := d.learned[a]
	if l == nil {
		l = &limits{}
		d.learned[a] = l
	}
	return l
}

// warnOnce logs a warning the first time key is seen.
func (d *Driver) warnOnce(key, msg string, args ...any) {
	d.mu.Lock()
	seen := d.warned[key]
	d.warned[key] = true
	d.mu.Unlock()
	if !seen {
		d.log.Warn(msg, args...)
	}
}

// Read reads points, coalesced into as few block reads as the device
// allows. A point the device cannot deliver is a sample with a fault
// status (an exception) or a comm-failure status (its unit did not
// answer); the read fails only when the connection is lost, the device is
// busy, or no unit answered at all.
func (d *Driver) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := d.ready(); err != nil {
		return nil, err
	}
	if len(points) == 0 {
		return nil, nil
	}
	r := &read{d: d, points: points, specs: make([]spec, len(points)),
		samples: make([]telemetry.Sample, len(points)), dead: map[byte]error{}}
	type loc struct {
		area area
		span span
	}
	byLoc := map[loc]*item{}
	var items []*item
	for i, p := range points {
		r.samples[i].PointID = p.ID
		s, err := d.specFor(p)
		if err != nil {
			d.warnOnce("ref:"+p.Ref, "point cannot be read: its ref is invalid", "point", p.Ref, "err", err)
			r.set(i, 0, telemetry.StatusFault)
			continue
		}
		r.specs[i] = s
		key := loc{area: area{s.unit, s.table}, span: span{int(s.addr), int(s.addr) + s.size()}}
		it := byLoc[key]
		if it == nil {
			it = &item{area: key.area, span: key.span}
			byLoc[key] = it
			items = append(items, it)
		}
		it.specs = append(it.specs, i)
	}
	items = r.skipResting(items)
	d.mu.Lock()
	blocks, skipped := plan(items, d.limitsLocked, d.now(), d.cfg.plan)
	d.mu.Unlock()
	for _, it := range skipped {
		// A hole not due to be asked again, or an unsupported table.
		r.fail(it, telemetry.StatusFault)
	}
	for _, b := range blocks {
		if _, err := r.block(ctx, b); err != nil {
			return nil, err
		}
	}
	if r.learned > 0 {
		d.log.Info("learned the device's limits from refused block reads; later polls read in blocks that work",
			"refusals", r.learned, "requests", r.requests)
	}
	if r.learned > 0 || r.changed {
		d.saveLearned()
	}
	if len(r.dead) > 0 && r.answered == 0 {
		u := slices.Min(slices.Collect(maps.Keys(r.dead)))
		return nil, fmt.Errorf("no unit answered (unit %d: %w): %w", u, r.dead[u], driver.ErrConnLost)
	}
	return r.samples, nil
}

// unitHealth is a unit that stopped answering: it rests until retryAt, so
// a dead unit behind a gateway does not cost every poll of the others its
// timeout.
type unitHealth struct {
	failures int
	since    time.Time
	retryAt  time.Time
}

// Unit rest after consecutive silences: doubling from unitRestBase.
const (
	unitRestBase = 2 * time.Second
	unitRestMax  = 5 * time.Minute
)

// unitSilent records that unit did not answer (or a gateway said so).
func (d *Driver) unitSilent(unit byte, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := d.units[unit]
	if h == nil {
		h = &unitHealth{since: d.now()}
		d.units[unit] = h
		d.log.Warn("unit not answering; its points get a comm-failure status, and it rests between tries", "unit", unit, "err", err)
	}
	h.failures++
	rest := unitRestBase << min(h.failures-1, 10)
	h.retryAt = d.now().Add(min(rest, unitRestMax))
}

// unitAnswered records that unit answered, logging a recovery.
func (d *Driver) unitAnswered(unit byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h := d.units[unit]; h != nil {
		d.log.Info("unit answering again", "unit", unit, "down_for", d.now().Sub(h.since).Round(time.Second))
		delete(d.units, unit)
	}
}

// skipResting gives the points of resting units a comm-failure status
// and returns the other items, unless every unit of the read rests: then
// all are tried, so a read always asks something.
func (r *read) skipResting(items []*item) []*item {
	d := r.d
	d.mu.Lock()
	now := d.now()
	resting := func(u byte) bool { h := d.units[u]; return h != nil && now.Before(h.retryAt) }
	awake := slices.ContainsFunc(items, func(it *item) bool { return !resting(it.area.unit) })
	var keep []*item
	for _, it := range items {
		if awake && resting(it.area.unit) {
			r.fail(it, telemetry.StatusCommFailure)
			continue
		}
		keep = append(keep, it)
	}
	d.mu.Unlock()
	return keep
}

// read is the state of one Read.
type read struct {
	d        *Driver
	points   []driver.Point
	specs    []spec
	samples  []telemetry.Sample
	dead     map[byte]error // units that did not answer in this read
	answered int            // requests answered, exceptions included
	requests int
	learned  int  // limits learned from refused blocks
	changed  bool // the limits changed otherwise: a probe worked, a hole was refused again or answered
}

func (r *read) set(i int, v float64, st telemetry.Status) {
	r.samples[i].Time = time.Now().UnixMilli()
	r.samples[i].Value, r.samples[i].Status = v, st
}

func (r *read) fail(it *item, st telemetry.Status) {
	for _, i := range it.specs {
		r.set(i, 0, st)
	}
}

func (r *read) failBlock(b block, st telemetry.Status) {
	for _, it := range b.items {
		r.fail(it, st)
	}
}

// block reads one block and decodes its items. It reports whether every
// item got its data, in one read or after splitting. An exception 2 or 3
// splits the block and teaches the driver the device's limits.
func (r *read) block(ctx context.Context, b block) (bool, error) {
	d := r.d
	if _, dead := r.dead[b.area.unit]; dead {
		r.failBlock(b, telemetry.StatusCommFailure)
		return false, nil
	}
	data, err := r.fetch(ctx, b)
	var mbErr *gmodbus.ModbusError
	switch {
	case err == nil:
		r.answered++
		d.unitAnswered(b.area.unit)
		d.mu.Lock()
		l := d.limitsLocked(b.area)
		r.changed = r.changed || l.badLen != 0
		l.succeeded(b.span.end - b.span.start)
		back := l.readable(b.span)
		d.mu.Unlock()
		if back {
			r.changed = true
			d.log.Info("device answers registers it refused before; their points are read again, in blocks with their neighbours from the next poll",
				"range", fmt.Sprintf("%s %d+%d on unit %d", b.area.table, b.span.start, b.span.end-b.span.start, b.area.unit))
		}
		r.decode(b, data)
		return true, nil
	case errors.As(err, &mbErr):
		r.answered++
		if c := mbErr.ExceptionCode; c != gmodbus.ExceptionCodeGatewayPathUnavailable && c != gmodbus.ExceptionCodeGatewayTargetDeviceFailedToRespond {
			d.unitAnswered(b.area.unit)
		}
	case errors.Is(err, errTimeout) && ctx.Err() == nil:
		// One silent unit behind a gateway must not cost the others:
		// give up on it for this read, and let it rest a while.
		r.dead[b.area.unit] = err
		d.unitSilent(b.area.unit, err)
		d.log.Debug("unit did not answer", "unit", b.area.unit, "err", err)
		r.failBlock(b, telemetry.StatusCommFailure)
		return false, nil
	default:
		return false, err
	}
	where := fmt.Sprintf("%s %d+%d on unit %d", b.area.table, b.span.start, b.span.end-b.span.start, b.area.unit)
	switch mbErr.ExceptionCode {
	case gmodbus.ExceptionCodeIllegalDataAddress, gmodbus.ExceptionCodeIllegalDataValue:
		if len(b.items) == 1 {
			d.mu.Lock()
			l := d.limitsLocked(b.area)
			first := l.refusedAlone(b.items[0].span, d.now())
			d.mu.Unlock()
			if first {
				r.learned++
				d.log.Warn("device refuses to read these registers; their points get a fault status, and they are asked again after a backoff",
					"range", where, "exception", mbErr.ExceptionCode, "retry_in", holeRetryBase)
			} else {
				// Logged once when learned and again when it answers.
				r.changed = true
				d.log.Debug("device still refuses these registers", "range", where, "exception", mbErr.ExceptionCode)
			}
			r.fail(b.items[0], telemetry.StatusFault)
			return false, nil
		}
		left, right, atGap := b.split()
		okL, err := r.block(ctx, left)
		if err != nil {
			return false, err
		}
		okR, err := r.block(ctx, right)
		if err != nil {
			return false, err
		}
		d.mu.Lock()
		l := d.limitsLocked(b.area)
		switch {
		case atGap && okL && okR:
			// Both halves read whole: the unmapped registers between
			// them made the bridging read fail. Do not bridge this gap
			// again.
			l.cuts = append(l.cuts, right.span.start)
			l.learnedAt(d.now())
		case atGap:
			// A hole (or another failure) in a half may have been what
			// the device refused. Cutting anyway makes the next poll use
			// this read's working partition at once; the cut goes with
			// the area's holes, when one answers again.
			l.holeCuts = append(l.holeCuts, right.span.start)
			l.learnedAt(d.now())
		case okL && okR:
			// Contiguous and both halves fine: the read was too long.
			l.refused(b.span.end - b.span.start)
			l.learnedAt(d.now())
		}
		d.mu.Unlock()
		r.learned++
		d.log.Debug("device refused a block read; split it", "range", where,
			"exception", mbErr.ExceptionCode, "split_at_gap", atGap)
		return okL && okR, nil
	case gmodbus.ExceptionCodeIllegalFunction:
		d.mu.Lock()
		l := d.limitsLocked(b.area)
		l.unsupported = true
		l.learnedAt(d.now())
		d.mu.Unlock()
		r.changed = true // kept, so a restart does not ask again
		d.log.Warn("unit does not support reading this table; its points get a fault status and are not asked again",
			"range", where, "function_code", b.area.table.function())
		r.failBlock(b, telemetry.StatusFault)
		return false, nil
	case gmodbus.ExceptionCodeAcknowledge, gmodbus.ExceptionCodeServerDeviceBusy:
		return false, fmt.Errorf("reading %s: %w: %w", where, mbErr, driver.ErrBusy)
	case gmodbus.ExceptionCodeGatewayPathUnavailable, gmodbus.ExceptionCodeGatewayTargetDeviceFailedToRespond:
		r.dead[b.area.unit] = mbErr
		d.unitSilent(b.area.unit, mbErr)
		r.failBlock(b, telemetry.StatusCommFailure)
		return false, nil
	default:
		d.warnOnce("exc:"+where, "device answered with an exception; its points get a fault status", "range", where, "err", mbErr)
		r.failBlock(b, telemetry.StatusFault)
		return false, nil
	}
}

// fetch sends the block's read request and returns the answer's data
// (registers or packed bits), its length checked.
func (r *read) fetch(ctx context.Context, b block) ([]byte, error) {
	r.requests++
	c := r.d.guard.Client(ctx, r.d.tr, b.area.unit)
	addr, n := uint16(b.span.start), uint16(b.span.end-b.span.start)
	var data []byte
	var err error
	switch b.area.table {
	case coils:
		data, err = c.ReadCoils(addr, n)
	case discrete:
		data, err = c.ReadDiscreteInputs(addr, n)
	case holding:
		data, err = c.ReadHoldingRegisters(addr, n)
	case input:
		data, err = c.ReadInputRegisters(addr, n)
	}
	where := fmt.Sprintf("reading %s %d+%d on unit %d", b.area.table, addr, n, b.area.unit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	want := 2 * int(n)
	if b.area.table.bits() {
		want = (int(n) + 7) / 8
	}
	if len(data) != want {
		return nil, fmt.Errorf("%s: the answer holds %d data bytes, want %d: the device answered a different request", where, len(data), want)
	}
	return data, nil
}

// decode turns a block's data into its items' samples.
func (r *read) decode(b block, data []byte) {
	for _, it := range b.items {
		off := it.span.start - b.span.start
		for _, i := range it.specs {
			s := r.specs[i]
			if s.table.bits() {
				r.set(i, bitAt(data, off), telemetry.StatusOK)
				continue
			}
			v, err := decodeRegisters(s, data[2*off:2*(off+s.size())])
			if err != nil {
				r.d.warnOnce("val:"+r.points[i].Ref, "point value unusable; its samples get a fault status", "point", r.points[i].Ref, "err", err)
				r.set(i, 0, telemetry.StatusFault)
				continue
			}
			r.set(i, v, telemetry.StatusOK)
		}
	}
}

// Discover returns the points of the device's profile: the configured one,
// or the built-in profile matching the device's identification (43/14).
// Refs are canonical (u1/hr/2999/float32).
func (d *Driver) Discover(ctx context.Context) ([]driver.Point, error) {
	if err := d.ready(); err != nil {
		return nil, err
	}
	p := d.cfg.profile
	id, idErr := d.guard.ReadDeviceID(ctx, d.tr, d.cfg.unit)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("discovering modbus points: %w", ctx.Err())
	}
	switch {
	case idErr == nil:
		d.log.Info("device identification", "unit", d.cfg.unit, "id", id.String())
		if p != nil && (p.Match.Vendor != "" || p.Match.Product != "") && !p.matches(id) {
			d.log.Warn("the device does not identify as the configured profile's model; check settings.profile",
				"profile", p.Name, "id", id.String())
		}
	case p != nil:
		// Some devices never answer functions they lack; the profile
		// is all discovery needs.
		d.log.Debug("no device identification", "unit", d.cfg.unit, "err", idErr)
	case errors.Is(idErr, driver.ErrConnLost):
		return nil, fmt.Errorf("discovering modbus points: %w", idErr)
	}
	if p == nil {
		if idErr != nil {
			return nil, fmt.Errorf("discovering modbus points: no settings.profile, and the device gives no identification to choose one (%w): name a profile or list the points", idErr)
		}
		if p = MatchProfile(id); p == nil {
			return nil, fmt.Errorf("discovering modbus points: no built-in profile matches %q: name a profile or list the points", id.String())
		}
		d.log.Info("chose a profile from the device identification; name it in settings.profile to rename or override its points", "profile", p.Name)
	}
	specs := p.forUnit(d.cfg.unit, d.orderOverride())
	d.mu.Lock()
	d.profile = byRef(specs)
	d.mu.Unlock()
	points := make([]driver.Point, 0, len(p.Points))
	for i, pp := range p.Points {
		points = append(points, driver.Point{Ref: specs[i].ref(), Name: pp.Name, Unit: pp.Unit, Kind: specs[i].typ.String(), Settings: settingsOf(specs[i])})
	}
	return points, nil
}

// orderOverride returns the device's byte order when its settings give
// one, which then applies to the profile's points too.
func (d *Driver) orderOverride() *byteOrder {
	if !d.cfg.orderSet {
		return nil
	}
	o := d.cfg.order
	return &o
}
