package subprocess

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Version is the protocol version spoken between the agent and its driver
// host. Both ends are the same binary (the agent re-executes itself), so a
// mismatch means a broken install, and the handshake says so. Version 3
// added the device's read interval to start, the restore call, and the
// driver's checkpoint on every samples answer (driver.Checkpointer).
const Version = 3

// MaxState is the largest checkpoint (driver.Checkpointer state) either
// side carries. The agent's buffer puts no bound of its own on a state (it
// could only refuse the samples stored with it), but a state rides on
// every read, so it must stay small: 1 MiB is far above what a driver
// keeps (an OPC UA mark is some 60 bytes a history point), and a driver
// that grows past it is refused with an error rather than carried.
const MaxState = 1 << 20

// MaxFrame is the largest frame either side accepts: 10,000 samples take
// about 250 kB and a start frame of 10,000 points about 1 MB, so 32 MiB
// leaves room without letting a broken child make the agent allocate
// without bound.
const MaxFrame = 32 << 20

// Frame types. Parent to child: start, connect, read, discover, commit,
// restore, close and cancel. Child to parent: ready (the answer to start),
// and an answer that is an error, nothing, samples (with the driver's
// checkpoint) or points.
const (
	msgStart    byte = 'S'
	msgConnect  byte = 'C'
	msgRead     byte = 'R'
	msgDiscover byte = 'D'
	msgCommit   byte = 'M'
	msgRestore  byte = 'T'
	msgClose    byte = 'X'
	msgCancel   byte = 'K'

	ansReady   byte = 'h'
	ansError   byte = 'e'
	ansOK      byte = 'o'
	ansSamples byte = 's'
	ansPoints  byte = 'p'
)

// Capabilities a child reports in its ready answer: the optional
// interfaces its driver implements.
const (
	capDiscoverer uint64 = 1 << iota
	capCommitter
	// capCheckpointer is set only with capCommitter: the agent stores a
	// checkpoint only for a driver that commits (agent/poll).
	capCheckpointer
)

// Error kinds: the sentinels an error from the child wraps, one bit each,
// so errors.Is still sees them in the parent. A driver's own sentinels
// (opcua.ErrServerCertChanged) do not cross: the agent looks only at these.
var kindErrors = []error{driver.ErrConnLost, driver.ErrBusy, driver.ErrRefused, context.Canceled, context.DeadlineExceeded}

// errMalformed is what every decoding failure wraps.
var errMalformed = errors.New("malformed driver host frame")

// writeFrame writes body as one length-prefixed frame.
func writeFrame(w io.Writer, body []byte) error {
	if len(body) > MaxFrame {
		return fmt.Errorf("driver host frame of %d bytes exceeds the %d-byte limit", len(body), MaxFrame)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err := w.Write(buf)
	return err
}

// readFrame reads one frame, refusing one above MaxFrame before allocating
// for it. A clean end of stream between frames is io.EOF.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: truncated frame header", errMalformed)
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxFrame {
		return nil, fmt.Errorf("%w: frame length %d (want 1 to %d)", errMalformed, n, MaxFrame)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w: frame of %d bytes cut short: %v", errMalformed, n, err)
	}
	return body, nil
}

// enc builds a frame body.
type enc struct{ b []byte }

func newEnc(typ byte, id uint64) *enc {
	e := &enc{b: make([]byte, 0, 64)}
	e.b = append(e.b, typ)
	e.uvarint(id)
	return e
}

func (e *enc) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) byte1(v byte)     { e.b = append(e.b, v) }
func (e *enc) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *enc) float(f float64)  { e.b = binary.LittleEndian.AppendUint64(e.b, math.Float64bits(f)) }

// deadline encodes the time left before ctx's deadline in nanoseconds, at
// least 1; 0 means none. Relative, so the two clocks never need to agree.
func (e *enc) deadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		e.uvarint(0)
		return
	}
	e.uvarint(uint64(max(time.Until(dl), 1)))
}

func (e *enc) samples(ss []telemetry.Sample) {
	e.uvarint(uint64(len(ss)))
	for _, s := range ss {
		e.uvarint(s.PointID)
		e.varint(s.Time)
		e.float(s.Value)
		e.byte1(byte(s.Status))
	}
}

// point encodes a point with its settings, already encoded (nil: none).
func (e *enc) point(p driver.Point, settings []byte) {
	e.uvarint(p.ID)
	e.str(p.Ref)
	e.str(p.Name)
	e.str(p.Unit)
	e.str(p.Description)
	e.uvarint(uint64(len(p.Tags)))
	for _, t := range p.Tags {
		e.str(t)
	}
	e.varint(int64(p.Interval))
	if settings == nil {
		e.byte1(0)
		return
	}
	e.byte1(1)
	e.str(string(settings))
}

// errorKinds returns the kind bits of err.
func errorKinds(err error) uint64 {
	var k uint64
	for i, s := range kindErrors {
		if errors.Is(err, s) {
			k |= 1 << i
		}
	}
	return k
}

// dec reads a frame body; every length is checked against what is left,
// so nothing is allocated beyond a small multiple of the frame's size.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errMalformed, what)
	}
	d.b = nil
}

func (d *dec) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(what)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) str(what string) string {
	n := d.uvarint(what)
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail(what + ": length beyond the frame")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *dec) float(what string) float64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.fail(what)
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(d.b))
	d.b = d.b[8:]
	return v
}

// count reads a number of items each at least minSize bytes long and
// refuses one the rest of the frame cannot hold.
func (d *dec) count(what string, minSize int) int {
	n := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/minSize) {
		d.fail(fmt.Sprintf("%s: %d items cannot fit in %d bytes", what, n, len(d.b)))
		return 0
	}
	return int(n)
}

// end reports an error if bytes are left over or anything failed.
func (d *dec) end() error {
	if d.err == nil && len(d.b) > 0 {
		d.fail(fmt.Sprintf("%d bytes left over", len(d.b)))
	}
	return d.err
}

// Each sample takes at least 1+1+8+1 bytes.
const minSample = 11

func (d *dec) samples() []telemetry.Sample {
	n := d.count("sample count", minSample)
	if n == 0 {
		return nil
	}
	out := make([]telemetry.Sample, n)
	for i := range out {
		out[i] = telemetry.Sample{PointID: d.uvarint("point id"), Time: d.varint("time"), Value: d.float("value"), Status: telemetry.Status(d.byte1("status"))}
	}
	if d.err != nil {
		return nil
	}
	return out
}

// A point takes at least 8 bytes: id, four strings, tag count, interval
// and settings flag, one byte each.
const minPoint = 8

func (d *dec) point() driver.Point {
	p := driver.Point{ID: d.uvarint("point id"), Ref: d.str("ref"), Name: d.str("name"), Unit: d.str("unit"), Description: d.str("description")}
	if n := d.count("tag count", 1); n > 0 {
		p.Tags = make([]string, n)
		for i := range p.Tags {
			p.Tags[i] = d.str("tag")
		}
	}
	p.Interval = time.Duration(d.varint("interval"))
	switch d.byte1("settings flag") {
	case 0:
	case 1:
		p.Settings = yamlSettings(d.str("settings"))
	default:
		d.fail("settings flag")
	}
	return p
}

func (d *dec) points() []driver.Point {
	n := d.count("point count", minPoint)
	if n == 0 {
		return nil
	}
	out := make([]driver.Point, n)
	for i := range out {
		out[i] = d.point()
	}
	if d.err != nil {
		return nil
	}
	return out
}

// maxCounters bounds the counters one answer carries.
const maxCounters = 64

// counters encodes a driver's counts (driver.Reporter): count, then name
// and value of each.
func (e *enc) counters(cs []driver.Counter) {
	e.uvarint(uint64(len(cs)))
	for _, c := range cs {
		e.str(c.Name)
		e.uvarint(c.Value)
	}
}

func (d *dec) counters() []driver.Counter {
	n := d.count("counters", 2)
	if n > maxCounters {
		d.fail(fmt.Sprintf("%d counters, more than %d", n, maxCounters))
		return nil
	}
	var out []driver.Counter
	for range n {
		out = append(out, driver.Counter{Name: d.str("counter name"), Value: d.uvarint("counter value")})
	}
	return out
}

// state decodes an optional checkpoint, as optBytes encodes it: a flag
// (0 none, 1 given), then its bytes, at most MaxState. None and empty
// differ: Checkpoint's nil means none.
func (d *dec) state() []byte {
	switch d.byte1("state flag") {
	case 0:
		return nil
	case 1:
	default:
		d.fail("state flag")
		return nil
	}
	n := d.uvarint("state length")
	switch {
	case d.err != nil:
		return nil
	case n > MaxState:
		d.fail(fmt.Sprintf("state of %d bytes, more than %d", n, MaxState))
		return nil
	case n > uint64(len(d.b)):
		d.fail("state: length beyond the frame")
		return nil
	}
	out := make([]byte, n)
	copy(out, d.b)
	d.b = d.b[n:]
	return out
}

// answer is a decoded child-to-parent frame.
type answer struct {
	typ      byte
	id       uint64
	version  uint64             // ready
	caps     uint64             // ready
	err      error              // error
	samples  []telemetry.Sample // samples
	counters []driver.Counter   // ok, error, samples: the driver's counts after the call
	points   []driver.Point     // points
	// state is the driver's checkpoint after the read (samples), nil when
	// it has none or is not a driver.Checkpointer.
	state []byte
}

// decodeAnswer decodes a frame the child sent.
func decodeAnswer(body []byte) (answer, error) {
	d := &dec{b: body}
	a := answer{typ: d.byte1("frame type"), id: d.uvarint("call id")}
	switch a.typ {
	case ansReady:
		a.version, a.caps = d.uvarint("version"), d.uvarint("capabilities")
	case ansError:
		kinds := d.uvarint("error kinds")
		msg := d.str("error message")
		a.err = remoteError(msg, kinds)
		a.counters = d.counters()
	case ansOK:
		a.counters = d.counters()
	case ansSamples:
		a.samples = d.samples()
		a.counters = d.counters()
		a.state = d.state()
	case ansPoints:
		a.points = d.points()
	default:
		d.fail(fmt.Sprintf("unknown answer type %q", a.typ))
	}
	if err := d.end(); err != nil {
		return answer{}, err
	}
	return a, nil
}

// remoteErr is an error that happened in the child: its message, and the
// sentinels it wrapped there.
type remoteErr struct {
	msg   string
	kinds []error
}

func (e *remoteErr) Error() string   { return e.msg }
func (e *remoteErr) Unwrap() []error { return e.kinds }

func remoteError(msg string, kinds uint64) error {
	e := &remoteErr{msg: msg}
	for i, s := range kindErrors {
		if kinds&(1<<i) != 0 {
			e.kinds = append(e.kinds, s)
		}
	}
	if msg == "" {
		e.msg = "driver host: error without a message"
	}
	return e
}

// yamlSettings is driver.Settings carried across as YAML text, decoded
// strictly like the configuration. The parent validated the original
// settings (with their file and line) before the child ever sees these.
type yamlSettings string

// Decode decodes the settings into v, refusing unknown keys; empty or
// null settings leave v unchanged.
func (s yamlSettings) Decode(v any) error {
	if strings.TrimSpace(string(s)) == "" {
		return nil
	}
	var n yaml.Node
	if err := yaml.Load([]byte(s), &n); err != nil {
		return fmt.Errorf("driver host settings: %w", err)
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = *n.Content[0]
	}
	if n.Kind == 0 || n.Tag == "!!null" || (n.Kind == yaml.MappingNode && len(n.Content) == 0) {
		return nil
	}
	return n.Load(v, yaml.WithKnownFields())
}

// encodeSettings turns any driver.Settings into YAML text by decoding it
// into a YAML node; nil stays nil.
func encodeSettings(s driver.Settings) ([]byte, error) {
	if s == nil {
		return nil, nil
	}
	if y, ok := s.(yamlSettings); ok {
		return []byte(y), nil
	}
	var n yaml.Node
	if err := s.Decode(&n); err != nil {
		return nil, fmt.Errorf("carrying settings to the driver host: %w", err)
	}
	if n.Kind == 0 {
		return []byte{}, nil
	}
	b, err := yaml.Marshal(&n)
	if err != nil {
		return nil, fmt.Errorf("carrying settings to the driver host: %w", err)
	}
	return b, nil
}

// start is what the child needs to build the driver: the driver's name in
// the child's registry and the driver.Device, minus its logger (the child
// logs to stderr at level, and the parent re-logs through the device's).
type start struct {
	version  uint64
	driver   string
	device   string
	dataDir  string
	level    slog.Level
	interval time.Duration // driver.Device.Interval
	settings driver.Settings
	points   []driver.Point
}

// encodeStart encodes the start frame, carrying every settings value as
// YAML text.
func encodeStart(id uint64, s start) ([]byte, error) {
	e := newEnc(msgStart, id)
	e.uvarint(s.version)
	e.str(s.driver)
	e.str(s.device)
	e.str(s.dataDir)
	e.varint(int64(s.level))
	e.varint(int64(s.interval))
	b, err := encodeSettings(s.settings)
	if err != nil {
		return nil, fmt.Errorf("device settings: %w", err)
	}
	e.optBytes(b)
	e.uvarint(uint64(len(s.points)))
	for _, p := range s.points {
		b, err := encodeSettings(p.Settings)
		if err != nil {
			return nil, fmt.Errorf("point %q: %w", p.Ref, err)
		}
		e.point(p, b)
	}
	return e.b, nil
}

func (e *enc) optBytes(b []byte) {
	if b == nil {
		e.byte1(0)
		return
	}
	e.byte1(1)
	e.str(string(b))
}

// readPoint is a point of a read call: an index into the start frame's
// points (the usual case: the poller reads the configured points), or the
// point itself when it is not one of them.
type readPoint struct {
	index int // -1: p is given
	p     driver.Point
}

// call is a decoded parent-to-child frame.
type call struct {
	typ     byte
	id      uint64
	timeout time.Duration // 0: none
	start   start         // msgStart
	points  []readPoint   // msgRead
	target  uint64        // msgCancel: the call to cancel
	state   []byte        // msgRestore
}

// decodeCall decodes a frame the parent sent.
func decodeCall(body []byte) (call, error) {
	d := &dec{b: body}
	c := call{typ: d.byte1("frame type"), id: d.uvarint("call id")}
	switch c.typ {
	case msgStart:
		c.start.version = d.uvarint("version")
		c.start.driver, c.start.device, c.start.dataDir = d.str("driver"), d.str("device"), d.str("data dir")
		c.start.level = slog.Level(d.varint("log level"))
		c.start.interval = time.Duration(d.varint("interval"))
		switch d.byte1("settings flag") {
		case 0:
		case 1:
			c.start.settings = yamlSettings(d.str("settings"))
		default:
			d.fail("settings flag")
		}
		c.start.points = d.points()
	case msgConnect, msgDiscover, msgCommit:
		c.timeout = time.Duration(d.uvarint("timeout"))
	case msgRead:
		c.timeout = time.Duration(d.uvarint("timeout"))
		n := d.count("point count", 1)
		if n > 0 {
			c.points = make([]readPoint, n)
		}
		for i := range c.points {
			ref := d.uvarint("point reference")
			if ref == 0 {
				c.points[i] = readPoint{index: -1, p: d.point()}
				continue
			}
			if ref > math.MaxInt32 {
				d.fail("point reference")
				break
			}
			c.points[i] = readPoint{index: int(ref - 1)}
		}
	case msgRestore:
		c.timeout = time.Duration(d.uvarint("timeout"))
		if c.state = d.state(); c.state == nil && d.err == nil {
			d.fail("restore without a state")
		}
	case msgClose:
	case msgCancel:
		c.target = d.uvarint("cancelled call")
	default:
		// Decoded far enough to answer: the host refuses it by id.
		return c, nil
	}
	if err := d.end(); err != nil {
		return call{}, err
	}
	return c, nil
}
