package bacnet

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unicode/utf16"
)

// Application tag numbers of the primitive data types (clause 20.2.1.4).
const (
	TagNull            = 0
	TagBoolean         = 1
	TagUnsigned        = 2
	TagSigned          = 3
	TagReal            = 4
	TagDouble          = 5
	TagOctetString     = 6
	TagCharacterString = 7
	TagBitString       = 8
	TagEnumerated      = 9
	TagDate            = 10
	TagTime            = 11
	TagObjectID        = 12
)

// Kind says what a Value holds.
type Kind uint8

// Value kinds: the thirteen application-tagged primitives, a context-tagged
// primitive whose type only the surrounding production knows, and a
// constructed value (opening tag, elements, closing tag).
const (
	KindNull Kind = iota
	KindBoolean
	KindUnsigned
	KindSigned
	KindReal
	KindDouble
	KindOctetString
	KindCharacterString
	KindBitString
	KindEnumerated
	KindDate
	KindTime
	KindObjectID
	// KindContext is a context-tagged primitive: Context holds its tag
	// number and Raw its content octets.
	KindContext
	// KindConstructed is an opening/closing tag pair around Items.
	KindConstructed
)

var kindNames = [...]string{"null", "boolean", "unsigned", "signed", "real", "double", "octet-string",
	"character-string", "bit-string", "enumerated", "date", "time", "object-identifier", "context", "constructed"}

// String names the kind.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Date is a BACnet date; 255 in a field means "any" (unspecified).
type Date struct {
	Year    int // e.g. 2026; 255+1900 when unspecified
	Month   uint8
	Day     uint8
	Weekday uint8 // 1 = Monday ... 7 = Sunday
}

// Time is a BACnet time of day; 255 in a field means "any".
type Time struct {
	Hour, Minute, Second, Hundredths uint8
}

// ObjectID names an object within a device: its type and instance.
type ObjectID struct {
	Type     ObjectType
	Instance uint32
}

// MaxInstance is the largest object instance number (22 bits); 4194303
// itself is the wildcard "any instance".
const MaxInstance = 1<<22 - 1

// String renders "type:instance", e.g. "analog-input:1".
func (o ObjectID) String() string { return fmt.Sprintf("%s:%d", o.Type, o.Instance) }

// BitString is a BACnet bit string: bit 0 is the first bit sent.
type BitString struct {
	Len  int
	Bits []byte // MSB of Bits[0] is bit 0
}

// Bit reports bit i; bits beyond Len are false.
func (b BitString) Bit(i int) bool {
	if i < 0 || i >= b.Len || i/8 >= len(b.Bits) {
		return false
	}
	return b.Bits[i/8]&(0x80>>(i%8)) != 0
}

// NewBitString builds a bit string from bools, bit 0 first.
func NewBitString(bits ...bool) BitString {
	b := BitString{Len: len(bits), Bits: make([]byte, (len(bits)+7)/8)}
	for i, v := range bits {
		if v {
			b.Bits[i/8] |= 0x80 >> (i % 8)
		}
	}
	return b
}

// Value is one decoded element of BACnet data. Exactly the field that
// matches Kind is meaningful.
type Value struct {
	Kind    Kind
	Bool    bool
	Uint    uint64 // unsigned and enumerated
	Int     int64
	Real    float64 // real (widened) and double
	Bytes   []byte  // octet string
	Str     string  // character string, converted to UTF-8
	Bits    BitString
	Date    Date
	Time    Time
	Object  ObjectID
	Context uint8   // tag number of context and constructed values
	Raw     []byte  // content of a context-tagged primitive
	Items   []Value // elements of a constructed value
	charset uint8
}

// Null returns an application null.
func Null() Value { return Value{Kind: KindNull} }

// Bool returns an application boolean.
func Bool(b bool) Value { return Value{Kind: KindBoolean, Bool: b} }

// Unsigned returns an application unsigned integer.
func Unsigned(u uint64) Value { return Value{Kind: KindUnsigned, Uint: u} }

// Signed returns an application signed integer.
func Signed(i int64) Value { return Value{Kind: KindSigned, Int: i} }

// Real returns an application real (IEEE 754 single precision).
func Real(f float32) Value { return Value{Kind: KindReal, Real: float64(f)} }

// Double returns an application double.
func Double(f float64) Value { return Value{Kind: KindDouble, Real: f} }

// OctetString returns an application octet string.
func OctetString(b []byte) Value { return Value{Kind: KindOctetString, Bytes: b} }

// CharString returns an application character string, encoded as UTF-8.
func CharString(s string) Value { return Value{Kind: KindCharacterString, Str: s} }

// Bits returns an application bit string.
func Bits(b BitString) Value { return Value{Kind: KindBitString, Bits: b} }

// Enumerated returns an application enumeration.
func Enumerated(u uint64) Value { return Value{Kind: KindEnumerated, Uint: u} }

// DateValue returns an application date.
func DateValue(d Date) Value { return Value{Kind: KindDate, Date: d} }

// TimeValue returns an application time.
func TimeValue(t Time) Value { return Value{Kind: KindTime, Time: t} }

// ObjectValue returns an application object identifier.
func ObjectValue(o ObjectID) Value { return Value{Kind: KindObjectID, Object: o} }

// Constructed returns items between opening and closing tags numbered tag.
func Constructed(tag uint8, items ...Value) Value {
	return Value{Kind: KindConstructed, Context: tag, Items: items}
}

// Float returns the value as a number: reals, doubles, integers,
// enumerations and booleans convert; anything else is not a number.
func (v Value) Float() (float64, bool) {
	switch v.Kind {
	case KindReal, KindDouble:
		return v.Real, true
	case KindUnsigned, KindEnumerated:
		return float64(v.Uint), true
	case KindSigned:
		return float64(v.Int), true
	case KindBoolean:
		if v.Bool {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

// String renders the value for tables and logs.
func (v Value) String() string {
	switch v.Kind {
	case KindNull:
		return "null"
	case KindBoolean:
		return fmt.Sprint(v.Bool)
	case KindUnsigned, KindEnumerated:
		return fmt.Sprint(v.Uint)
	case KindSigned:
		return fmt.Sprint(v.Int)
	case KindReal, KindDouble:
		return fmt.Sprint(v.Real)
	case KindOctetString:
		return fmt.Sprintf("%x", v.Bytes)
	case KindCharacterString:
		return v.Str
	case KindBitString:
		var s strings.Builder
		for i := range v.Bits.Len {
			if v.Bits.Bit(i) {
				s.WriteByte('1')
			} else {
				s.WriteByte('0')
			}
		}
		return s.String()
	case KindDate:
		return fmt.Sprintf("%04d-%02d-%02d", v.Date.Year, v.Date.Month, v.Date.Day)
	case KindTime:
		return fmt.Sprintf("%02d:%02d:%02d.%02d", v.Time.Hour, v.Time.Minute, v.Time.Second, v.Time.Hundredths)
	case KindObjectID:
		return v.Object.String()
	case KindContext:
		return fmt.Sprintf("[%d]%x", v.Context, v.Raw)
	case KindConstructed:
		parts := make([]string, len(v.Items))
		for i, it := range v.Items {
			parts[i] = it.String()
		}
		return fmt.Sprintf("[%d]{%s}", v.Context, strings.Join(parts, ", "))
	}
	return v.Kind.String()
}

// Limits that bound the decoder: a hostile or broken device can make us
// neither recurse deeply nor allocate much more than the bytes it sent.
const (
	maxDepth    = 16
	maxElements = 1 << 16
)

// tag is a decoded tag header.
type tag struct {
	number  uint8
	context bool
	opening bool
	closing bool
	lvt     uint32 // length, or the boolean value of an application boolean
}

// readTag decodes one tag header from b and returns it with its size.
func readTag(b []byte) (tag, int, error) {
	if len(b) == 0 {
		return tag{}, 0, errShort("tag")
	}
	t := tag{number: b[0] >> 4, context: b[0]&0x08 != 0, lvt: uint32(b[0] & 0x07)}
	n := 1
	if t.number == 15 {
		if len(b) < 2 {
			return tag{}, 0, errShort("extended tag number")
		}
		if b[1] == 255 {
			return tag{}, 0, fmt.Errorf("tag number 255 is reserved")
		}
		t.number = b[1]
		n = 2
	}
	switch {
	case t.context && t.lvt == 6:
		t.opening, t.lvt = true, 0
		return t, n, nil
	case t.context && t.lvt == 7:
		t.closing, t.lvt = true, 0
		return t, n, nil
	case !t.context && t.number == TagBoolean:
		return t, n, nil // the value is in lvt, no content octets
	case t.lvt == 5:
		if len(b) < n+1 {
			return tag{}, 0, errShort("extended length")
		}
		switch l := b[n]; l {
		case 254:
			if len(b) < n+3 {
				return tag{}, 0, errShort("16-bit length")
			}
			t.lvt = uint32(binary.BigEndian.Uint16(b[n+1:]))
			n += 3
		case 255:
			if len(b) < n+5 {
				return tag{}, 0, errShort("32-bit length")
			}
			t.lvt = binary.BigEndian.Uint32(b[n+1:])
			n += 5
		default:
			t.lvt = uint32(l)
			n++
		}
	}
	if uint64(t.lvt) > uint64(len(b)-n) {
		return tag{}, 0, fmt.Errorf("tag %d claims %d content octets but only %d remain", t.number, t.lvt, len(b)-n)
	}
	return t, n, nil
}

func errShort(what string) error { return fmt.Errorf("truncated %s", what) }

// appendTag encodes a tag header.
func appendTag(b []byte, number uint8, context bool, length int) []byte {
	first := byte(0)
	if context {
		first = 0x08
	}
	if number >= 15 {
		first |= 0xF0
	} else {
		first |= number << 4
	}
	lvt := length
	if lvt > 4 {
		lvt = 5
	}
	b = append(b, first|byte(lvt))
	if number >= 15 {
		b = append(b, number)
	}
	switch {
	case length < 5:
	case length < 254:
		b = append(b, byte(length))
	case length < 65536:
		b = append(b, 254, byte(length>>8), byte(length))
	default:
		b = append(b, 255, byte(length>>24), byte(length>>16), byte(length>>8), byte(length))
	}
	return b
}

// AppendOpening and AppendClosing encode the tags around a constructed value.
func AppendOpening(b []byte, number uint8) []byte { return appendPairTag(b, number, 6) }

// AppendClosing encodes a closing tag; see AppendOpening.
func AppendClosing(b []byte, number uint8) []byte { return appendPairTag(b, number, 7) }

func appendPairTag(b []byte, number uint8, lvt byte) []byte {
	if number >= 15 {
		return append(b, 0xF8|lvt, number)
	}
	return append(b, number<<4|0x08|lvt)
}

func uintBytes(u uint64) []byte {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], u)
	i := 0
	for i < 7 && buf[i] == 0 {
		i++
	}
	return buf[i:]
}

func intBytes(v int64) []byte {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(v))
	i := 0
	// Drop leading octets that only repeat the sign.
	for i < 7 && ((buf[i] == 0 && buf[i+1]&0x80 == 0) || (buf[i] == 0xFF && buf[i+1]&0x80 != 0)) {
		i++
	}
	return buf[i:]
}

// content encodes the content octets of a primitive value (without tag).
func (v Value) content() ([]byte, error) {
	switch v.Kind {
	case KindNull:
		return nil, nil
	case KindBoolean:
		if v.Bool {
			return []byte{1}, nil
		}
		return []byte{0}, nil
	case KindUnsigned, KindEnumerated:
		return uintBytes(v.Uint), nil
	case KindSigned:
		return intBytes(v.Int), nil
	case KindReal:
		return binary.BigEndian.AppendUint32(nil, math.Float32bits(float32(v.Real))), nil
	case KindDouble:
		return binary.BigEndian.AppendUint64(nil, math.Float64bits(v.Real)), nil
	case KindOctetString:
		return v.Bytes, nil
	case KindCharacterString:
		return append([]byte{0}, v.Str...), nil // 0: UTF-8
	case KindBitString:
		n := (v.Bits.Len + 7) / 8
		if len(v.Bits.Bits) < n {
			return nil, fmt.Errorf("bit string of %d bits has only %d octets", v.Bits.Len, len(v.Bits.Bits))
		}
		unused := byte(n*8 - v.Bits.Len)
		return append([]byte{unused}, v.Bits.Bits[:n]...), nil
	case KindDate:
		y := v.Date.Year - 1900
		if v.Date.Year == 255 || y < 0 || y > 255 {
			y = 255
		}
		return []byte{byte(y), v.Date.Month, v.Date.Day, v.Date.Weekday}, nil
	case KindTime:
		return []byte{v.Time.Hour, v.Time.Minute, v.Time.Second, v.Time.Hundredths}, nil
	case KindObjectID:
		if v.Object.Instance > MaxInstance || v.Object.Type > 1023 {
			return nil, fmt.Errorf("object identifier %v out of range", v.Object)
		}
		return binary.BigEndian.AppendUint32(nil, uint32(v.Object.Type)<<22|v.Object.Instance), nil
	case KindContext:
		return v.Raw, nil
	}
	return nil, fmt.Errorf("a %s value has no primitive encoding", v.Kind)
}

// AppendValue encodes v with its application tag (context values keep
// their context tag, constructed values their opening/closing pair).
func AppendValue(b []byte, v Value) ([]byte, error) {
	return appendValue(b, v, 0)
}

func appendValue(b []byte, v Value, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("value nested deeper than %d", maxDepth)
	}
	switch v.Kind {
	case KindConstructed:
		b = AppendOpening(b, v.Context)
		for _, it := range v.Items {
			var err error
			if b, err = appendValue(b, it, depth+1); err != nil {
				return nil, err
			}
		}
		return AppendClosing(b, v.Context), nil
	case KindBoolean:
		if v.Bool {
			return append(b, TagBoolean<<4|1), nil
		}
		return append(b, TagBoolean<<4), nil
	case KindContext:
		b = appendTag(b, v.Context, true, len(v.Raw))
		return append(b, v.Raw...), nil
	}
	c, err := v.content()
	if err != nil {
		return nil, err
	}
	b = appendTag(b, uint8(v.Kind), false, len(c))
	return append(b, c...), nil
}

// AppendContext encodes a primitive v under context tag number (the
// content octets of its application encoding, as clause 20.2 prescribes).
func AppendContext(b []byte, number uint8, v Value) ([]byte, error) {
	c, err := v.content()
	if err != nil {
		return nil, err
	}
	b = appendTag(b, number, true, len(c))
	return append(b, c...), nil
}

// appendContextUint is the common case of a context-tagged unsigned or
// enumerated value.
func appendContextUint(b []byte, number uint8, u uint64) []byte {
	c := uintBytes(u)
	b = appendTag(b, number, true, len(c))
	return append(b, c...)
}

// DecodeValues decodes a sequence of tagged elements (the content of an
// "ABSTRACT-SYNTAX.&Type" such as a property value) until b is exhausted.
// Constructed elements nest; the decoder is bounded in depth and count.
func DecodeValues(b []byte) ([]Value, error) {
	count := 0
	vals, rest, err := decodeSeq(b, -1, 0, &count)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d octets after the values", len(rest))
	}
	return vals, nil
}

// decodeSeq decodes elements until b ends (closing < 0) or until the
// closing tag numbered closing, which it consumes.
func decodeSeq(b []byte, closing int, depth int, count *int) ([]Value, []byte, error) {
	if depth > maxDepth {
		return nil, nil, fmt.Errorf("values nested deeper than %d", maxDepth)
	}
	var out []Value
	for {
		if len(b) == 0 {
			if closing >= 0 {
				return nil, nil, fmt.Errorf("missing closing tag %d", closing)
			}
			return out, b, nil
		}
		t, n, err := readTag(b)
		if err != nil {
			return nil, nil, err
		}
		if t.closing {
			if int(t.number) != closing {
				return nil, nil, fmt.Errorf("unexpected closing tag %d", t.number)
			}
			return out, b[n:], nil
		}
		*count++
		if *count > maxElements {
			return nil, nil, fmt.Errorf("more than %d elements", maxElements)
		}
		if t.opening {
			items, rest, err := decodeSeq(b[n:], int(t.number), depth+1, count)
			if err != nil {
				return nil, nil, fmt.Errorf("in constructed [%d]: %w", t.number, err)
			}
			out = append(out, Value{Kind: KindConstructed, Context: t.number, Items: items})
			b = rest
			continue
		}
		v, err := decodePrimitive(t, b[n:n+contentLen(t)])
		if err != nil {
			return nil, nil, err
		}
		out = append(out, v)
		b = b[n+contentLen(t):]
	}
}

func contentLen(t tag) int {
	if !t.context && t.number == TagBoolean {
		return 0
	}
	return int(t.lvt)
}

// decodePrimitive decodes the content c of a primitive element.
func decodePrimitive(t tag, c []byte) (Value, error) {
	if t.context {
		return Value{Kind: KindContext, Context: t.number, Raw: c}, nil
	}
	return decodeApp(t.number, t.lvt, c)
}

// decodeApp decodes the content of an application-tagged primitive.
func decodeApp(number uint8, lvt uint32, c []byte) (Value, error) {
	bad := func(format string, args ...any) (Value, error) {
		return Value{}, fmt.Errorf("application tag %d: "+format, append([]any{number}, args...)...)
	}
	switch number {
	case TagNull:
		if len(c) != 0 {
			return bad("null with %d content octets", len(c))
		}
		return Null(), nil
	case TagBoolean:
		if lvt > 1 {
			return bad("boolean value %d", lvt)
		}
		return Bool(lvt == 1), nil
	case TagUnsigned, TagEnumerated:
		u, err := decodeUint(c)
		if err != nil {
			return bad("%v", err)
		}
		if number == TagEnumerated {
			return Enumerated(u), nil
		}
		return Unsigned(u), nil
	case TagSigned:
		i, err := decodeInt(c)
		if err != nil {
			return bad("%v", err)
		}
		return Signed(i), nil
	case TagReal:
		if len(c) != 4 {
			return bad("real of %d octets", len(c))
		}
		return Real(math.Float32frombits(binary.BigEndian.Uint32(c))), nil
	case TagDouble:
		if len(c) != 8 {
			return bad("double of %d octets", len(c))
		}
		return Double(math.Float64frombits(binary.BigEndian.Uint64(c))), nil
	case TagOctetString:
		return OctetString(c), nil
	case TagCharacterString:
		s, cs, err := decodeCharString(c)
		if err != nil {
			return bad("%v", err)
		}
		v := CharString(s)
		v.charset = cs
		return v, nil
	case TagBitString:
		if len(c) == 0 {
			return bad("bit string without its unused-bits octet")
		}
		if c[0] > 7 || (len(c) == 1 && c[0] != 0) {
			return bad("bit string with %d unused bits in %d octets", c[0], len(c)-1)
		}
		return Bits(BitString{Len: (len(c)-1)*8 - int(c[0]), Bits: c[1:]}), nil
	case TagDate:
		if len(c) != 4 {
			return bad("date of %d octets", len(c))
		}
		return DateValue(Date{Year: int(c[0]) + 1900, Month: c[1], Day: c[2], Weekday: c[3]}), nil
	case TagTime:
		if len(c) != 4 {
			return bad("time of %d octets", len(c))
		}
		return TimeValue(Time{Hour: c[0], Minute: c[1], Second: c[2], Hundredths: c[3]}), nil
	case TagObjectID:
		if len(c) != 4 {
			return bad("object identifier of %d octets", len(c))
		}
		return ObjectValue(objectIDFrom(binary.BigEndian.Uint32(c))), nil
	}
	return bad("reserved application tag")
}

func objectIDFrom(u uint32) ObjectID {
	return ObjectID{Type: ObjectType(u >> 22), Instance: u & MaxInstance}
}

func decodeUint(c []byte) (uint64, error) {
	if len(c) == 0 || len(c) > 8 {
		return 0, fmt.Errorf("unsigned of %d octets", len(c))
	}
	var u uint64
	for _, x := range c {
		u = u<<8 | uint64(x)
	}
	return u, nil
}

func decodeInt(c []byte) (int64, error) {
	if len(c) == 0 || len(c) > 8 {
		return 0, fmt.Errorf("signed of %d octets", len(c))
	}
	u, _ := decodeUint(c)
	shift := 64 - 8*uint(len(c))
	return int64(u<<shift) >> shift, nil
}

func decodeCharString(c []byte) (string, uint8, error) {
	if len(c) == 0 {
		return "", 0, fmt.Errorf("character string without its character-set octet")
	}
	cs, s := c[0], c[1:]
	switch cs {
	case 0: // ISO 10646 UTF-8 (was ANSI X3.4)
		return strings.ToValidUTF8(string(s), "\uFFFD"), cs, nil
	case 4: // UCS-2, big-endian
		if len(s)%2 != 0 {
			return "", cs, fmt.Errorf("UCS-2 string of odd length %d", len(s))
		}
		u := make([]uint16, len(s)/2)
		for i := range u {
			u[i] = binary.BigEndian.Uint16(s[2*i:])
		}
		return string(utf16.Decode(u)), cs, nil
	case 5: // ISO 8859-1
		r := make([]rune, len(s))
		for i, x := range s {
			r[i] = rune(x)
		}
		return string(r), cs, nil
	case 3: // UCS-4, big-endian
		if len(s)%4 != 0 {
			return "", cs, fmt.Errorf("UCS-4 string of length %d", len(s))
		}
		r := make([]rune, len(s)/4)
		for i := range r {
			r[i] = rune(binary.BigEndian.Uint32(s[4*i:]))
		}
		return strings.ToValidUTF8(string(r), "\uFFFD"), cs, nil
	case 1, 2: // IBM/Microsoft DBCS, JIS X 0208
		// Not decoded; kept readable rather than failing the whole answer
		// a name or description is part of.
		return strings.ToValidUTF8(string(s), "\uFFFD"), cs, nil
	}
	return "", cs, fmt.Errorf("character set %d is not defined", cs)
}

// ContextAs interprets a context-tagged primitive as application type
// appTag, which the surrounding production defines (e.g. a log record's
// real-value [2] is a REAL).
func (v Value) ContextAs(appTag uint8) (Value, error) {
	if v.Kind != KindContext {
		return Value{}, fmt.Errorf("want a context-tagged primitive, got %s", v.Kind)
	}
	lvt := uint32(len(v.Raw))
	if appTag == TagBoolean {
		// A context boolean has one content octet holding the value.
		if len(v.Raw) != 1 {
			return Value{}, fmt.Errorf("context boolean of %d octets", len(v.Raw))
		}
		lvt = uint32(v.Raw[0])
	}
	return decodeApp(appTag, lvt, v.Raw)
}

// ContextOf returns primitive v as a context-tagged value numbered
// number, for building constructed values such as log records.
func ContextOf(number uint8, v Value) (Value, error) {
	c, err := v.content()
	if err != nil {
		return Value{}, err
	}
	return Value{Kind: KindContext, Context: number, Raw: c}, nil
}
