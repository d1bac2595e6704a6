package bacnet

import (
	"errors"
	"fmt"
	"time"
)

// NoIndex means "no array index": the whole property.
const NoIndex = ^uint32(0)

// PropertyRef names one property, optionally one element of an array
// property (Index; NoIndex for the whole property, 0 for the array's size).
type PropertyRef struct {
	ID    PropertyID
	Index uint32
}

// Prop is a PropertyRef without array index.
func Prop(id PropertyID) PropertyRef { return PropertyRef{ID: id, Index: NoIndex} }

// ReadAccessSpec is one object's part of a ReadPropertyMultiple request.
type ReadAccessSpec struct {
	Object     ObjectID
	Properties []PropertyRef
}

// PropertyResult is one property's part of a ReadPropertyMultiple answer:
// its values, or the error the device gave for it alone.
type PropertyResult struct {
	Property PropertyRef
	Values   []Value
	Err      *Error
}

// ObjectResult is one object's part of a ReadPropertyMultiple answer.
type ObjectResult struct {
	Object  ObjectID
	Results []PropertyResult
}

// IAm is a device's announcement of itself.
type IAm struct {
	Device       ObjectID
	MaxAPDU      int
	Segmentation Segmentation
	Vendor       uint32
}

// IHave is a device's answer to Who-Has.
type IHave struct {
	Device, Object ObjectID
	Name           string
}

// RangeKind selects how ReadRange chooses items.
type RangeKind uint8

// Range kinds: the whole list, or count items from a position, a
// sequence number or a time.
const (
	RangeAll RangeKind = iota
	RangeByPosition
	RangeBySequence
	RangeByTime
)

// Range is the range of a ReadRange request. Count may be negative to read
// backwards from the reference (clause 15.8.1.1.4).
type Range struct {
	Kind RangeKind
	// Ref is the reference index (by position) or sequence number.
	Ref uint32
	// Time is the reference time (by time), in the device's local time.
	Time  time.Time
	Count int32
}

// RangeResult is a ReadRange answer.
type RangeResult struct {
	Object    ObjectID
	Property  PropertyRef
	First     bool // the first item of the list is included
	Last      bool // the last item of the list is included
	More      bool // more items match the range than were returned
	ItemCount uint32
	Items     []Value
	// FirstSequence is the sequence number of the first item, when the
	// device gives one (by-sequence and by-time reads).
	FirstSequence    uint32
	HasFirstSequence bool
}

// AppendWhoIs encodes a Who-Is request; low < 0 asks every device.
func AppendWhoIs(b []byte, low, high int) []byte {
	if low < 0 || high < 0 {
		return b
	}
	b = appendContextUint(b, 0, uint64(low))
	return appendContextUint(b, 1, uint64(high))
}

// AppendWhoHas encodes a Who-Has request for an object by id, or by name
// when name is not empty; low < 0 asks every device.
func AppendWhoHas(b []byte, low, high int, obj ObjectID, name string) ([]byte, error) {
	if low >= 0 && high >= 0 {
		b = appendContextUint(b, 0, uint64(low))
		b = appendContextUint(b, 1, uint64(high))
	}
	if name != "" {
		return AppendContext(b, 3, CharString(name))
	}
	return AppendContext(b, 2, ObjectValue(obj))
}

// AppendReadProperty encodes a ReadProperty request.
func AppendReadProperty(b []byte, obj ObjectID, p PropertyRef) ([]byte, error) {
	b, err := AppendContext(b, 0, ObjectValue(obj))
	if err != nil {
		return nil, err
	}
	b = appendContextUint(b, 1, uint64(p.ID))
	if p.Index != NoIndex {
		b = appendContextUint(b, 2, uint64(p.Index))
	}
	return b, nil
}

// AppendReadPropertyMultiple encodes a ReadPropertyMultiple request.
func AppendReadPropertyMultiple(b []byte, specs []ReadAccessSpec) ([]byte, error) {
	for _, s := range specs {
		var err error
		if b, err = AppendContext(b, 0, ObjectValue(s.Object)); err != nil {
			return nil, err
		}
		b = AppendOpening(b, 1)
		for _, p := range s.Properties {
			b = appendContextUint(b, 0, uint64(p.ID))
			if p.Index != NoIndex {
				b = appendContextUint(b, 1, uint64(p.Index))
			}
		}
		b = AppendClosing(b, 1)
	}
	return b, nil
}

// AppendReadRange encodes a ReadRange request.
func AppendReadRange(b []byte, obj ObjectID, p PropertyRef, r Range) ([]byte, error) {
	b, err := AppendReadProperty(b, obj, p)
	if err != nil {
		return nil, err
	}
	var items []Value
	var tagNo uint8
	switch r.Kind {
	case RangeAll:
		return b, nil
	case RangeByPosition:
		tagNo, items = 3, []Value{Unsigned(uint64(r.Ref)), Signed(int64(r.Count))}
	case RangeBySequence:
		tagNo, items = 6, []Value{Unsigned(uint64(r.Ref)), Signed(int64(r.Count))}
	case RangeByTime:
		d, t := dateTimeOf(r.Time)
		tagNo, items = 7, []Value{DateValue(d), TimeValue(t), Signed(int64(r.Count))}
	default:
		return nil, fmt.Errorf("read range: unknown range kind %d", r.Kind)
	}
	return AppendValue(b, Constructed(tagNo, items...))
}

func dateTimeOf(t time.Time) (Date, Time) {
	wd := uint8(t.Weekday())
	if wd == 0 {
		wd = 7
	}
	return Date{Year: t.Year(), Month: uint8(t.Month()), Day: uint8(t.Day()), Weekday: wd},
		Time{Hour: uint8(t.Hour()), Minute: uint8(t.Minute()), Second: uint8(t.Second()), Hundredths: uint8(t.Nanosecond() / 1e7)}
}

// DateTimeValues encodes t as the application date and time a
// BACnetDateTime holds.
func DateTimeValues(t time.Time) (Value, Value) {
	d, tm := dateTimeOf(t)
	return DateValue(d), TimeValue(tm)
}

// fields walks a decoded service payload element by element.
type fields struct {
	vals []Value
	i    int
	what string
}

func newFields(what string, b []byte) (*fields, error) {
	vals, err := DecodeValues(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &fields{vals: vals, what: what}, nil
}

func (f *fields) done() bool { return f.i >= len(f.vals) }

func (f *fields) errf(format string, args ...any) error {
	return fmt.Errorf("%s: element %d: "+format, append([]any{f.what, f.i}, args...)...)
}

// peekContext reports whether the next element is context tag n of kind k.
func (f *fields) peekContext(n uint8, k Kind) bool {
	return f.i < len(f.vals) && f.vals[f.i].Kind == k && f.vals[f.i].Context == n
}

// context takes context primitive n decoded as application type appTag.
func (f *fields) context(n uint8, appTag uint8) (Value, error) {
	if !f.peekContext(n, KindContext) {
		return Value{}, f.errf("want context tag [%d]", n)
	}
	v, err := f.vals[f.i].ContextAs(appTag)
	if err != nil {
		return Value{}, f.errf("[%d]: %v", n, err)
	}
	f.i++
	return v, nil
}

func (f *fields) optionalUint(n uint8) (uint32, bool, error) {
	if !f.peekContext(n, KindContext) {
		return 0, false, nil
	}
	v, err := f.context(n, TagUnsigned)
	if err != nil {
		return 0, false, err
	}
	if v.Uint > 0xFFFFFFFF {
		return 0, false, f.errf("[%d] value %d out of range", n, v.Uint)
	}
	return uint32(v.Uint), true, nil
}

func (f *fields) constructed(n uint8) ([]Value, error) {
	if !f.peekContext(n, KindConstructed) {
		return nil, f.errf("want constructed [%d]", n)
	}
	f.i++
	return f.vals[f.i-1].Items, nil
}

func (f *fields) app(k Kind) (Value, error) {
	if f.i >= len(f.vals) || f.vals[f.i].Kind != k {
		return Value{}, f.errf("want an application %s", k)
	}
	f.i++
	return f.vals[f.i-1], nil
}

func (f *fields) objectRef(n uint8) (ObjectID, error) {
	v, err := f.context(n, TagObjectID)
	return v.Object, err
}

func (f *fields) propertyRef(idTag, indexTag uint8) (PropertyRef, error) {
	v, err := f.context(idTag, TagEnumerated)
	if err != nil {
		return PropertyRef{}, err
	}
	if v.Uint > 1<<22 {
		return PropertyRef{}, f.errf("property id %d out of range", v.Uint)
	}
	p := PropertyRef{ID: PropertyID(v.Uint), Index: NoIndex}
	idx, ok, err := f.optionalUint(indexTag)
	if err != nil {
		return PropertyRef{}, err
	}
	if ok {
		if idx == NoIndex {
			return PropertyRef{}, f.errf("array index %d is reserved", idx)
		}
		p.Index = idx
	}
	return p, nil
}

func (f *fields) end() error {
	if !f.done() {
		return f.errf("%d unexpected trailing elements", len(f.vals)-f.i)
	}
	return nil
}

// DecodeIAm decodes an I-Am request.
func DecodeIAm(b []byte) (IAm, error) {
	f, err := newFields("i-am", b)
	if err != nil {
		return IAm{}, err
	}
	dev, err := f.app(KindObjectID)
	if err != nil {
		return IAm{}, err
	}
	maxAPDU, err := f.app(KindUnsigned)
	if err != nil {
		return IAm{}, err
	}
	seg, err := f.app(KindEnumerated)
	if err != nil {
		return IAm{}, err
	}
	vendor, err := f.app(KindUnsigned)
	if err != nil {
		return IAm{}, err
	}
	if dev.Object.Type != ObjectDevice {
		return IAm{}, fmt.Errorf("i-am: object %v is not a device", dev.Object)
	}
	if seg.Uint > 3 || maxAPDU.Uint < 50 || maxAPDU.Uint > 65535 || vendor.Uint > 0xFFFF {
		return IAm{}, fmt.Errorf("i-am: max apdu %d, segmentation %d or vendor %d out of range", maxAPDU.Uint, seg.Uint, vendor.Uint)
	}
	return IAm{Device: dev.Object, MaxAPDU: int(maxAPDU.Uint), Segmentation: Segmentation(seg.Uint), Vendor: uint32(vendor.Uint)}, f.end()
}

// DecodeIHave decodes an I-Have request.
func DecodeIHave(b []byte) (IHave, error) {
	f, err := newFields("i-have", b)
	if err != nil {
		return IHave{}, err
	}
	dev, err := f.app(KindObjectID)
	if err != nil {
		return IHave{}, err
	}
	obj, err := f.app(KindObjectID)
	if err != nil {
		return IHave{}, err
	}
	name, err := f.app(KindCharacterString)
	if err != nil {
		return IHave{}, err
	}
	return IHave{Device: dev.Object, Object: obj.Object, Name: name.Str}, f.end()
}

// DecodeReadPropertyACK decodes a ReadProperty ComplexACK.
func DecodeReadPropertyACK(b []byte) (ObjectID, PropertyRef, []Value, error) {
	f, err := newFields("read-property ack", b)
	if err != nil {
		return ObjectID{}, PropertyRef{}, nil, err
	}
	obj, err := f.objectRef(0)
	if err != nil {
		return ObjectID{}, PropertyRef{}, nil, err
	}
	p, err := f.propertyRef(1, 2)
	if err != nil {
		return ObjectID{}, PropertyRef{}, nil, err
	}
	vals, err := f.constructed(3)
	if err != nil {
		return ObjectID{}, PropertyRef{}, nil, err
	}
	return obj, p, vals, f.end()
}

// DecodeReadPropertyMultipleACK decodes a ReadPropertyMultiple ComplexACK.
func DecodeReadPropertyMultipleACK(b []byte) ([]ObjectResult, error) {
	f, err := newFields("read-property-multiple ack", b)
	if err != nil {
		return nil, err
	}
	var out []ObjectResult
	for !f.done() {
		obj, err := f.objectRef(0)
		if err != nil {
			return nil, err
		}
		items, err := f.constructed(1)
		if err != nil {
			return nil, err
		}
		r := ObjectResult{Object: obj}
		g := &fields{vals: items, what: fmt.Sprintf("read-property-multiple ack of %v", obj)}
		for !g.done() {
			p, err := g.propertyRef(2, 3)
			if err != nil {
				return nil, err
			}
			pr := PropertyResult{Property: p}
			switch {
			case g.peekContext(4, KindConstructed):
				pr.Values, _ = g.constructed(4)
			case g.peekContext(5, KindConstructed):
				e, _ := g.constructed(5)
				if pr.Err, err = decodeErrorPair(e); err != nil {
					return nil, fmt.Errorf("%s: %v: %w", g.what, p.ID, err)
				}
			default:
				return nil, g.errf("want property value [4] or property access error [5]")
			}
			r.Results = append(r.Results, pr)
		}
		out = append(out, r)
	}
	return out, nil
}

func decodeErrorPair(vals []Value) (*Error, error) {
	if len(vals) != 2 || vals[0].Kind != KindEnumerated || vals[1].Kind != KindEnumerated ||
		vals[0].Uint > 0xFFFF || vals[1].Uint > 0xFFFF {
		return nil, fmt.Errorf("error is not an enumerated class and code")
	}
	return &Error{Class: uint32(vals[0].Uint), Code: uint32(vals[1].Uint)}, nil
}

// DecodeError decodes the payload of an Error PDU.
func DecodeError(b []byte) (*Error, error) {
	vals, err := DecodeValues(b)
	if err != nil {
		return nil, fmt.Errorf("error pdu: %w", err)
	}
	e, err := decodeErrorPair(vals)
	if err != nil {
		return nil, fmt.Errorf("error pdu: %w", err)
	}
	return e, nil
}

// DecodeReadRangeACK decodes a ReadRange ComplexACK.
func DecodeReadRangeACK(b []byte) (RangeResult, error) {
	f, err := newFields("read-range ack", b)
	if err != nil {
		return RangeResult{}, err
	}
	var r RangeResult
	if r.Object, err = f.objectRef(0); err != nil {
		return RangeResult{}, err
	}
	if r.Property, err = f.propertyRef(1, 2); err != nil {
		return RangeResult{}, err
	}
	flags, err := f.context(3, TagBitString)
	if err != nil {
		return RangeResult{}, err
	}
	r.First, r.Last, r.More = flags.Bits.Bit(0), flags.Bits.Bit(1), flags.Bits.Bit(2)
	count, ok, err := f.optionalUint(4)
	if err != nil || !ok {
		return RangeResult{}, f.errf("want item count [4]")
	}
	r.ItemCount = count
	if r.Items, err = f.constructed(5); err != nil {
		return RangeResult{}, err
	}
	if r.FirstSequence, r.HasFirstSequence, err = f.optionalUint(6); err != nil {
		return RangeResult{}, err
	}
	return r, f.end()
}

// Request decoders, for simulators and for the guard's checks.

// DecodeWhoIs decodes a Who-Is request; low and high are -1 when absent.
func DecodeWhoIs(b []byte) (low, high int, err error) {
	f, err := newFields("who-is", b)
	if err != nil {
		return 0, 0, err
	}
	if f.done() {
		return -1, -1, nil
	}
	l, okl, err := f.optionalUint(0)
	if err != nil {
		return 0, 0, err
	}
	h, okh, err := f.optionalUint(1)
	if err != nil {
		return 0, 0, err
	}
	if !okl || !okh || l > MaxInstance || h > MaxInstance {
		return 0, 0, fmt.Errorf("who-is: range needs both limits within 0..%d", MaxInstance)
	}
	return int(l), int(h), f.end()
}

// DecodeWhoHas decodes a Who-Has request.
func DecodeWhoHas(b []byte) (low, high int, obj ObjectID, name string, err error) {
	f, err := newFields("who-has", b)
	if err != nil {
		return 0, 0, ObjectID{}, "", err
	}
	low, high = -1, -1
	if f.peekContext(0, KindContext) {
		l, _, err := f.optionalUint(0)
		if err != nil {
			return 0, 0, ObjectID{}, "", err
		}
		h, ok, err := f.optionalUint(1)
		if err != nil || !ok {
			return 0, 0, ObjectID{}, "", fmt.Errorf("who-has: range without its high limit")
		}
		low, high = int(l), int(h)
	}
	switch {
	case f.peekContext(2, KindContext):
		obj, err = f.objectRef(2)
	case f.peekContext(3, KindContext):
		var v Value
		v, err = f.context(3, TagCharacterString)
		name = v.Str
	default:
		err = fmt.Errorf("who-has: want object [2] or name [3]")
	}
	if err != nil {
		return 0, 0, ObjectID{}, "", err
	}
	return low, high, obj, name, f.end()
}

// DecodeReadPropertyRequest decodes a ReadProperty request.
func DecodeReadPropertyRequest(b []byte) (ObjectID, PropertyRef, error) {
	f, err := newFields("read-property", b)
	if err != nil {
		return ObjectID{}, PropertyRef{}, err
	}
	obj, err := f.objectRef(0)
	if err != nil {
		return ObjectID{}, PropertyRef{}, err
	}
	p, err := f.propertyRef(1, 2)
	if err != nil {
		return ObjectID{}, PropertyRef{}, err
	}
	return obj, p, f.end()
}

// DecodeReadPropertyMultipleRequest decodes a ReadPropertyMultiple request.
func DecodeReadPropertyMultipleRequest(b []byte) ([]ReadAccessSpec, error) {
	f, err := newFields("read-property-multiple", b)
	if err != nil {
		return nil, err
	}
	var out []ReadAccessSpec
	for !f.done() {
		obj, err := f.objectRef(0)
		if err != nil {
			return nil, err
		}
		items, err := f.constructed(1)
		if err != nil {
			return nil, err
		}
		s := ReadAccessSpec{Object: obj}
		g := &fields{vals: items, what: "read-property-multiple property list"}
		for !g.done() {
			p, err := g.propertyRef(0, 1)
			if err != nil {
				return nil, err
			}
			s.Properties = append(s.Properties, p)
		}
		if len(s.Properties) == 0 {
			return nil, fmt.Errorf("read-property-multiple: %v with an empty property list", obj)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read-property-multiple: no object")
	}
	return out, nil
}

// DecodeReadRangeRequest decodes a ReadRange request; the range's time is
// interpreted in loc.
func DecodeReadRangeRequest(b []byte, loc *time.Location) (ObjectID, PropertyRef, Range, error) {
	f, err := newFields("read-range", b)
	if err != nil {
		return ObjectID{}, PropertyRef{}, Range{}, err
	}
	obj, err := f.objectRef(0)
	if err != nil {
		return ObjectID{}, PropertyRef{}, Range{}, err
	}
	p, err := f.propertyRef(1, 2)
	if err != nil {
		return ObjectID{}, PropertyRef{}, Range{}, err
	}
	var r Range
	if f.done() {
		return obj, p, r, nil
	}
	v := f.vals[f.i]
	f.i++
	bad := fmt.Errorf("read-range: malformed range [%d]", v.Context)
	if v.Kind != KindConstructed {
		return ObjectID{}, PropertyRef{}, Range{}, bad
	}
	it := v.Items
	switch {
	case (v.Context == 3 || v.Context == 6) && len(it) == 2 && it[0].Kind == KindUnsigned && it[1].Kind == KindSigned:
		r.Kind = RangeByPosition
		if v.Context == 6 {
			r.Kind = RangeBySequence
		}
		r.Ref, r.Count = uint32(it[0].Uint), int32(it[1].Int)
	case v.Context == 7 && len(it) == 3 && it[0].Kind == KindDate && it[1].Kind == KindTime && it[2].Kind == KindSigned:
		r.Kind, r.Count = RangeByTime, int32(it[2].Int)
		r.Time = DateTime(it[0].Date, it[1].Time, loc)
	default:
		return ObjectID{}, PropertyRef{}, Range{}, bad
	}
	return obj, p, r, f.end()
}

// DateTime converts a BACnet date and time in loc to a time.Time;
// unspecified fields (255) count as zero.
func DateTime(d Date, t Time, loc *time.Location) time.Time {
	or0 := func(x uint8) int {
		if x == 255 {
			return 0
		}
		return int(x)
	}
	hs := or0(t.Hundredths)
	return time.Date(d.Year, time.Month(or0(d.Month)), or0(d.Day), or0(t.Hour), or0(t.Minute), or0(t.Second), hs*1e7, loc)
}

// LogRecord is one decoded BACnetLogRecord of a trend log's buffer.
type LogRecord struct {
	Time time.Time
	// HasValue says Value holds a logged number (real, unsigned, signed,
	// enumerated or boolean); otherwise the record is a status or failure
	// entry and Kind says which datum it was.
	HasValue bool
	Value    float64
	Kind     uint8
	// StatusFlags of the monitored object when logged, if recorded.
	StatusFlags    BitString
	HasStatusFlags bool
}

// Log datum choices of BACnetLogRecord.
const (
	LogDatumStatus   = 0
	LogDatumBoolean  = 1
	LogDatumReal     = 2
	LogDatumEnum     = 3
	LogDatumUnsigned = 4
	LogDatumSigned   = 5
	LogDatumFailure  = 8
)

// DecodeLogRecords interprets ReadRange items of a trend log's log-buffer,
// with timestamps in loc (the device's time zone). A malformed record is
// skipped up to the next record's timestamp, so it loses only itself: the
// records that decode are returned even then, with an error naming each
// one skipped.
func DecodeLogRecords(items []Value, loc *time.Location) ([]LogRecord, error) {
	out := make([]LogRecord, 0, len(items)/2)
	f := &fields{vals: items, what: "log record"}
	var errs []error
	for !f.done() {
		start := f.i
		rec, err := f.logRecord(loc)
		if err == nil {
			out = append(out, rec)
			continue
		}
		errs = append(errs, err)
		// Resynchronise on the next timestamp ([0] constructed).
		for f.i = start + 1; !f.done() && !f.peekContext(0, KindConstructed); f.i++ {
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("%d of the page's records skipped: %w", len(errs), errors.Join(errs...))
	}
	return out, nil
}

// logRecord decodes one BACnetLogRecord.
func (f *fields) logRecord(loc *time.Location) (LogRecord, error) {
	ts, err := f.constructed(0)
	if err != nil {
		return LogRecord{}, err
	}
	if len(ts) != 2 || ts[0].Kind != KindDate || ts[1].Kind != KindTime {
		return LogRecord{}, f.errf("timestamp is not a date and a time")
	}
	rec := LogRecord{Time: DateTime(ts[0].Date, ts[1].Time, loc)}
	datum, err := f.constructed(1)
	if err != nil {
		return LogRecord{}, err
	}
	if len(datum) != 1 || (datum[0].Kind != KindContext && datum[0].Kind != KindConstructed) {
		return LogRecord{}, f.errf("log datum is not one choice")
	}
	d := datum[0]
	rec.Kind = d.Context
	if at, ok := logDatumTags[d.Context]; ok && d.Kind == KindContext {
		v, err := d.ContextAs(at)
		if err != nil {
			return LogRecord{}, f.errf("log datum: %v", err)
		}
		rec.Value, rec.HasValue = v.Float()
	}
	if f.peekContext(2, KindContext) {
		sf, err := f.context(2, TagBitString)
		if err != nil {
			return LogRecord{}, err
		}
		rec.StatusFlags, rec.HasStatusFlags = sf.Bits, true
	}
	return rec, nil
}

// logDatumTags are the application tags of the numeric log datum choices.
var logDatumTags = map[uint8]uint8{LogDatumBoolean: TagBoolean, LogDatumReal: TagReal, LogDatumEnum: TagEnumerated,
	LogDatumUnsigned: TagUnsigned, LogDatumSigned: TagSigned}
