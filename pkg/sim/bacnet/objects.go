// Package bacnetsim simulates BACnet/IP devices for the demo, the tests and
// the benchmarks: devices with analog, binary and multi-state objects and
// trend logs, segmented answers for devices that support segmentation, and
// MS/TP devices behind a simulated router. It records every request it
// receives, so a test can prove that only reads arrived.
//
// It answers from the server side of the protocol, which package bacnet
// (a read-only client) does not implement: the encodings of I-Am, I-Have
// and the ComplexACKs live here, built with bacnet's tag codec.
package bacnetsim

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
)

// Object is one simulated object.
type Object struct {
	ID          bacnet.ObjectID
	Name        string
	Description string
	// Units is the BACnetEngineeringUnits of analog objects (62 = °C,
	// 64 = °F, 98 = percent, 95 = no-units).
	Units uint32
	// Value gives the present value at t; nil is a constant 0.
	Value func(t time.Time) float64
	// Flags are the status flags: in-alarm, fault, overridden,
	// out-of-service. Fault is also reported while Reliability is not 0.
	Flags [4]bool
	// Reliability is the BACnetReliability (0: no-fault-detected).
	Reliability uint32
	// States are a multi-state object's state texts.
	States []string
	// Log makes the object a trend log.
	Log *TrendLog
}

// TrendLog is a trend log logging another object's present value at a
// fixed interval since Start, keeping the last Size records.
type TrendLog struct {
	Source   bacnet.ObjectID
	Start    time.Time
	Interval time.Duration
	Size     int
	// Corrupt, if set, makes the records it is true for malformed (a
	// timestamp without its time), as a buggy device sends them.
	Corrupt func(seq uint64) bool
	// value computes the logged value (the source's Value).
	value func(t time.Time) float64
}

// record is one log record: its sequence number (1-based) and time.
func (l *TrendLog) window(now time.Time) (first, last uint64) {
	if now.Before(l.Start) {
		return 1, 0
	}
	total := uint64(now.Sub(l.Start)/l.Interval) + 1
	first = 1
	if l.Size > 0 && total > uint64(l.Size) {
		first = total - uint64(l.Size) + 1
	}
	return first, total
}

func (l *TrendLog) at(seq uint64) time.Time {
	return l.Start.Add(time.Duration(seq-1) * l.Interval)
}

// Device is one simulated device.
type Device struct {
	Instance uint32
	Name     string
	// MaxAPDU is the largest APDU the device sends and accepts. Default 1476.
	MaxAPDU int
	// Segmentation is what the device supports; it segments answers only
	// when it can transmit segments.
	Segmentation bacnet.Segmentation
	// MaxSegments is how many segments it sends at most (and, as its
	// max-segments-accepted property, accepts). Default 32.
	MaxSegments int
	// NoMaxSegmentsAccepted leaves the max-segments-accepted property out,
	// as many older devices do: a client learns what they can send only
	// from their aborts.
	NoMaxSegmentsAccepted bool
	// Window is the segment window it proposes. Default 4.
	Window int
	// DropSegment, when above zero, makes the device leave out segment
	// DropSegment of its next segmented answer, once, as a lossy trunk
	// would: the client must ask for it again with a negative Segment-ACK.
	DropSegment int
	// StrictRPM makes the device answer a ReadPropertyMultiple naming a
	// missing object with one Error for the whole request, as many do.
	StrictRPM bool
	// NoRPM makes the device reject ReadPropertyMultiple and ReadRange,
	// like the small controllers that only know ReadProperty.
	NoRPM bool
	// Silent devices never answer (a dead controller).
	Silent bool
	// Hung devices answer Who-Is but no confirmed request (a controller
	// whose application crashed, its network stack alive).
	Hung bool
	// Busy makes the device answer every confirmed request with an Abort
	// of BusyReason (9, out-of-resources, say), as an overloaded
	// controller does until it catches up.
	Busy       bool
	BusyReason uint8
	// AbortRPMOver, when above zero, makes the device answer every
	// ReadPropertyMultiple naming more than AbortRPMOver objects with
	// Abort(other), for ever, as devices do that find a request too large
	// for them without saying so: ReadProperty still works.
	AbortRPMOver int
	// Delay holds every answer to a confirmed request this long (a slow
	// MS/TP trunk), so tests can see how many requests are in flight.
	Delay time.Duration
	// HoldInFlight, when above zero, holds each answer to a confirmed
	// request, before its Delay, until that many confirmed requests were
	// in flight at once since the request arrived: to the device, or for a
	// routed device to all devices of its network. A test then sees a
	// client's limit on outstanding requests reached however slowly a
	// loaded machine sends them, where a plain Delay needs them all to
	// arrive within it. HoldFor bounds the hold, for requests that never
	// make up the count (the last ones); default 5s.
	HoldInFlight int
	HoldFor      time.Duration
	// Network and MAC place a routed device behind the simulator's router.
	Network uint16
	MAC     []byte
	Objects []*Object

	index map[bacnet.ObjectID]*Object // built at Start: devices of thousands of objects
}

func (d *Device) withDefaults() {
	if d.MaxAPDU == 0 {
		d.MaxAPDU = 1476
	}
	if d.MaxSegments == 0 {
		d.MaxSegments = 32
	}
	if d.Window == 0 {
		d.Window = 4
	}
	d.index = make(map[bacnet.ObjectID]*Object, len(d.Objects))
	for _, o := range d.Objects {
		d.index[o.ID] = o
	}
	for _, o := range d.Objects {
		if o.Log != nil && o.Log.value == nil {
			for _, s := range d.Objects {
				if s.ID == o.Log.Source {
					o.Log.value = s.Value
				}
			}
		}
	}
}

func (d *Device) id() bacnet.ObjectID {
	return bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: d.Instance}
}

func (d *Device) object(id bacnet.ObjectID) *Object {
	if id.Type == bacnet.ObjectDevice && (id.Instance == d.Instance || id.Instance == bacnet.MaxInstance) {
		return &Object{ID: d.id(), Name: d.Name}
	}
	if d.index != nil {
		return d.index[id]
	}
	for _, o := range d.Objects {
		if o.ID == id {
			return o
		}
	}
	return nil
}

// Wave is a smooth, deterministic signal for analog objects: around mid,
// swinging by amp over period, offset by phase.
func Wave(mid, amp float64, period time.Duration, phase float64) func(time.Time) float64 {
	return func(t time.Time) float64 {
		x := float64(t.UnixMilli()%period.Milliseconds()) / float64(period.Milliseconds())
		return math.Round((mid+amp*math.Sin(2*math.Pi*x+phase))*100) / 100
	}
}

// Square alternates between 0 and 1 every half period (binary objects),
// or steps through 1..n (multi-state objects, n > 1).
func Square(period time.Duration, n int) func(time.Time) float64 {
	if n < 2 {
		n = 2
	}
	return func(t time.Time) float64 {
		step := t.UnixMilli() / max(period.Milliseconds()/int64(n), 1)
		if n == 2 {
			return float64(step % 2)
		}
		return float64(step%int64(n)) + 1
	}
}

// NewDevice builds a device with analogs analog inputs, binaries binary
// values and multis multi-state values, and a trend log of the first
// analog input when trend is set; the values are waves and squares.
func NewDevice(instance uint32, name string, analogs, binaries, multis int, trend bool) *Device {
	d := &Device{Instance: instance, Name: name, Segmentation: bacnet.SegmentedBoth}
	for i := range analogs {
		d.Objects = append(d.Objects, &Object{
			ID:   bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: uint32(i + 1)},
			Name: fmt.Sprintf("%s AI-%d", name, i+1), Description: "zone temperature", Units: 62,
			Value: Wave(21+float64(i%5), 2, 10*time.Minute, float64(i)),
		})
	}
	for i := range binaries {
		d.Objects = append(d.Objects, &Object{
			ID:   bacnet.ObjectID{Type: bacnet.ObjectBinaryValue, Instance: uint32(i + 1)},
			Name: fmt.Sprintf("%s BV-%d", name, i+1), Description: "fan status",
			Value: Square(time.Minute+time.Duration(i)*time.Second, 2),
		})
	}
	for i := range multis {
		d.Objects = append(d.Objects, &Object{
			ID:   bacnet.ObjectID{Type: bacnet.ObjectMultiStateValue, Instance: uint32(i + 1)},
			Name: fmt.Sprintf("%s MSV-%d", name, i+1), Description: "occupancy mode",
			States: []string{"occupied", "unoccupied", "standby"},
			Value:  Square(3*time.Minute, 3),
		})
	}
	if trend && analogs > 0 {
		d.Objects = append(d.Objects, &Object{
			ID:   bacnet.ObjectID{Type: bacnet.ObjectTrendLog, Instance: 1},
			Name: name + " TL-1", Description: "trend of AI-1",
			Log: &TrendLog{Source: d.Objects[0].ID, Start: time.Now().Add(-24 * time.Hour).Truncate(time.Minute),
				Interval: time.Minute, Size: 2000},
		})
	}
	return d
}

// properties lists what ALL returns for an object, and which of them
// REQUIRED returns.
func (d *Device) properties(o *Object) (all, required []bacnet.PropertyID) {
	common := []bacnet.PropertyID{bacnet.PropObjectIdentifier, bacnet.PropObjectName, bacnet.PropObjectType}
	switch {
	case o.ID.Type == bacnet.ObjectDevice:
		required = append(common, 112, bacnet.PropVendorName, bacnet.PropVendorIdentifier, bacnet.PropModelName,
			bacnet.PropObjectList, bacnet.PropMaxAPDULengthAccepted, bacnet.PropSegmentationSupported,
			bacnet.PropProtocolServicesSupported)
		all = append(slices.Clone(required), bacnet.PropDescription)
		if !d.NoMaxSegmentsAccepted {
			all = append(all, bacnet.PropMaxSegmentsAccepted)
		}
		return all, required
	case o.Log != nil:
		required = append(common, bacnet.PropStatusFlags, bacnet.PropEventState, bacnet.PropLogBuffer,
			bacnet.PropRecordCount, bacnet.PropTotalRecordCount)
		return append(required, bacnet.PropDescription, bacnet.PropLogDeviceObjectProperty, bacnet.PropLogInterval), required
	}
	required = append(common, bacnet.PropPresentValue, bacnet.PropStatusFlags, bacnet.PropEventState, bacnet.PropOutOfService)
	switch o.ID.Type {
	case bacnet.ObjectAnalogInput, bacnet.ObjectAnalogOutput, bacnet.ObjectAnalogValue:
		required = append(required, bacnet.PropUnits)
	case bacnet.ObjectMultiStateInput, bacnet.ObjectMultiStateOutput, bacnet.ObjectMultiStateValue:
		required = append(required, bacnet.PropNumberOfStates)
	}
	all = append(append([]bacnet.PropertyID{}, required...), bacnet.PropDescription, bacnet.PropReliability)
	if len(o.States) > 0 {
		all = append(all, bacnet.PropStateText)
	}
	return all, required
}

// errUnknownProperty and friends are the errors a read of a missing thing
// answers.
var (
	errUnknownObject   = &bacnet.Error{Class: bacnet.ErrorClassObject, Code: bacnet.ErrorCodeUnknownObject}
	errUnknownProperty = &bacnet.Error{Class: bacnet.ErrorClassProperty, Code: bacnet.ErrorCodeUnknownProperty}
	errBadIndex        = &bacnet.Error{Class: bacnet.ErrorClassProperty, Code: bacnet.ErrorCodeInvalidArrayIndex}
)

// read returns the value of one property at now.
func (d *Device) read(o *Object, p bacnet.PropertyRef, now time.Time) ([]bacnet.Value, *bacnet.Error) {
	all, _ := d.properties(o)
	known := false
	for _, q := range all {
		known = known || q == p.ID
	}
	if !known {
		return nil, errUnknownProperty
	}
	array := func(items []bacnet.Value) ([]bacnet.Value, *bacnet.Error) {
		switch {
		case p.Index == bacnet.NoIndex:
			return items, nil
		case p.Index == 0:
			return []bacnet.Value{bacnet.Unsigned(uint64(len(items)))}, nil
		case int(p.Index) <= len(items):
			return items[p.Index-1 : p.Index], nil
		}
		return nil, errBadIndex
	}
	if p.Index != bacnet.NoIndex && p.ID != bacnet.PropObjectList && p.ID != bacnet.PropStateText {
		return nil, &bacnet.Error{Class: bacnet.ErrorClassProperty, Code: 50} // property-is-not-an-array
	}
	one := func(v bacnet.Value) ([]bacnet.Value, *bacnet.Error) { return []bacnet.Value{v}, nil }
	value := 0.0
	if o.Value != nil {
		value = o.Value(now)
	}
	switch p.ID {
	case bacnet.PropObjectIdentifier:
		return one(bacnet.ObjectValue(o.ID))
	case bacnet.PropObjectName:
		return one(bacnet.CharString(o.Name))
	case bacnet.PropObjectType:
		return one(bacnet.Enumerated(uint64(o.ID.Type)))
	case bacnet.PropDescription:
		return one(bacnet.CharString(o.Description))
	case bacnet.PropStatusFlags:
		// FAULT is set whenever reliability is not no-fault-detected (clause 12).
		return one(bacnet.Bits(bacnet.NewBitString(o.Flags[0], o.Flags[1] || o.Reliability != 0, o.Flags[2], o.Flags[3])))
	case bacnet.PropEventState:
		if o.Flags[0] {
			return one(bacnet.Enumerated(3)) // high-limit
		}
		return one(bacnet.Enumerated(0))
	case bacnet.PropOutOfService:
		return one(bacnet.Bool(o.Flags[3]))
	case bacnet.PropReliability:
		return one(bacnet.Enumerated(uint64(o.Reliability)))
	case bacnet.PropUnits:
		return one(bacnet.Enumerated(uint64(o.Units)))
	case bacnet.PropNumberOfStates:
		return one(bacnet.Unsigned(uint64(len(o.States))))
	case bacnet.PropStateText:
		items := make([]bacnet.Value, len(o.States))
		for i, s := range o.States {
			items[i] = bacnet.CharString(s)
		}
		return array(items)
	case bacnet.PropPresentValue:
		switch o.ID.Type {
		case bacnet.ObjectBinaryInput, bacnet.ObjectBinaryOutput, bacnet.ObjectBinaryValue:
			return one(bacnet.Enumerated(uint64(value)))
		case bacnet.ObjectMultiStateInput, bacnet.ObjectMultiStateOutput, bacnet.ObjectMultiStateValue:
			return one(bacnet.Unsigned(uint64(value)))
		}
		return one(bacnet.Real(float32(value)))
	// device
	case 112: // system-status: operational
		return one(bacnet.Enumerated(0))
	case bacnet.PropVendorName:
		return one(bacnet.CharString("Sightglass simulator"))
	case bacnet.PropVendorIdentifier:
		return one(bacnet.Unsigned(999))
	case bacnet.PropModelName:
		return one(bacnet.CharString("bacnetsim"))
	case bacnet.PropMaxAPDULengthAccepted:
		return one(bacnet.Unsigned(uint64(d.MaxAPDU)))
	case bacnet.PropSegmentationSupported:
		return one(bacnet.Enumerated(uint64(d.Segmentation)))
	case bacnet.PropMaxSegmentsAccepted:
		return one(bacnet.Unsigned(uint64(d.MaxSegments)))
	case bacnet.PropProtocolServicesSupported:
		bits := make([]bool, 41)
		bits[bacnet.ServiceReadProperty] = true
		if !d.NoRPM {
			bits[bacnet.ServiceReadPropertyMultiple] = true
			bits[bacnet.ServiceReadRange] = true
		}
		return one(bacnet.Bits(bacnet.NewBitString(bits...)))
	case bacnet.PropObjectList:
		items := []bacnet.Value{bacnet.ObjectValue(d.id())}
		for _, x := range d.Objects {
			items = append(items, bacnet.ObjectValue(x.ID))
		}
		return array(items)
	// trend log
	case bacnet.PropRecordCount, bacnet.PropTotalRecordCount:
		first, last := o.Log.window(now)
		if p.ID == bacnet.PropTotalRecordCount {
			return one(bacnet.Unsigned(last))
		}
		return one(bacnet.Unsigned(last - first + 1))
	case bacnet.PropLogInterval:
		return one(bacnet.Unsigned(uint64(o.Log.Interval / (10 * time.Millisecond))))
	case bacnet.PropLogDeviceObjectProperty:
		obj, _ := bacnet.ContextOf(0, bacnet.ObjectValue(o.Log.Source))
		prop, _ := bacnet.ContextOf(1, bacnet.Enumerated(uint64(bacnet.PropPresentValue)))
		return []bacnet.Value{obj, prop}, nil
	case bacnet.PropLogBuffer:
		// The log buffer is readable only with ReadRange (clause 12.25.14).
		return nil, &bacnet.Error{Class: bacnet.ErrorClassProperty, Code: 27}
	}
	return nil, errUnknownProperty
}

// logRecord encodes one BACnetLogRecord.
func (d *Device) logRecord(l *TrendLog, seq uint64, loc *time.Location) []bacnet.Value {
	t := l.at(seq).In(loc)
	date, tm := bacnet.DateTimeValues(t)
	v := 0.0
	if l.value != nil {
		v = l.value(t)
	}
	real, _ := bacnet.ContextOf(bacnet.LogDatumReal, bacnet.Real(float32(v)))
	flags, _ := bacnet.ContextOf(2, bacnet.Bits(bacnet.NewBitString(false, false, false, false)))
	if l.Corrupt != nil && l.Corrupt(seq) {
		return []bacnet.Value{bacnet.Constructed(0, date), bacnet.Constructed(1, real), flags}
	}
	return []bacnet.Value{bacnet.Constructed(0, date, tm), bacnet.Constructed(1, real), flags}
}
