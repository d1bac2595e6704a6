package modbus

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// table is one of the four Modbus data tables.
type table uint8

const (
	coils    table = iota // function 1, bits, 0xxxx
	discrete              // function 2, bits, 1xxxx
	holding               // function 3, registers, 4xxxx
	input                 // function 4, registers, 3xxxx
)

var tableNames = [...]string{"coil", "di", "hr", "ir"}

// String is the table's name in refs: coil, di, hr, ir.
func (t table) String() string { return tableNames[t] }

// function is the read function code of the table.
func (t table) function() byte {
	return [...]byte{1, 2, 3, 4}[t]
}

// bits reports whether the table holds bits rather than 16-bit registers.
func (t table) bits() bool { return t == coils || t == discrete }

// kind is how a point's raw bits become a number.
type kind uint8

const (
	kindBool kind = iota // a coil or discrete input
	kindInt16
	kindUint16
	kindInt32
	kindUint32
	kindInt64
	kindUint64
	kindFloat32
	kindFloat64
	kindBits   // a field of bits within one register
	kindString // ASCII text that must parse as a number
)

var kindNames = map[string]kind{
	"bool": kindBool, "int16": kindInt16, "uint16": kindUint16, "int32": kindInt32,
	"uint32": kindUint32, "int64": kindInt64, "uint64": kindUint64,
	"float32": kindFloat32, "float64": kindFloat64,
}

// valueType is a point's type: its kind and, for bit fields and strings,
// where the bits are or how long the text is.
type valueType struct {
	kind   kind
	lo, hi uint8 // bit field: bits lo..hi of the register, 0 the least significant
	chars  int   // string: characters (two per register)
}

// registers returns how many registers (or bits, for kindBool) the type spans.
func (v valueType) registers() int {
	switch v.kind {
	case kindInt32, kindUint32, kindFloat32:
		return 2
	case kindInt64, kindUint64, kindFloat64:
		return 4
	case kindString:
		return (v.chars + 1) / 2
	}
	return 1
}

// String returns the type's canonical name, as it appears in a Ref.
func (v valueType) String() string {
	switch v.kind {
	case kindBits:
		if v.lo == v.hi {
			return fmt.Sprintf("bit%d", v.lo)
		}
		return fmt.Sprintf("bits%d-%d", v.lo, v.hi)
	case kindString:
		return fmt.Sprintf("string%d", v.chars)
	}
	for name, k := range kindNames {
		if k == v.kind {
			return name
		}
	}
	return fmt.Sprintf("kind(%d)", v.kind)
}

// maxStringChars keeps a string within one read of 125 registers.
const maxStringChars = 250

func parseType(s string) (valueType, error) {
	if k, ok := kindNames[s]; ok {
		return valueType{kind: k}, nil
	}
	switch {
	case strings.HasPrefix(s, "bits"):
		lo, hi, ok := strings.Cut(s[4:], "-")
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if !ok || err1 != nil || err2 != nil || l < 0 || h > 15 || l > h {
			return valueType{}, fmt.Errorf("bit field %q: want bitsLO-HI with 0 <= LO <= HI <= 15, e.g. bits4-7", s)
		}
		return valueType{kind: kindBits, lo: uint8(l), hi: uint8(h)}, nil
	case strings.HasPrefix(s, "bit"):
		n, err := strconv.Atoi(s[3:])
		if err != nil || n < 0 || n > 15 {
			return valueType{}, fmt.Errorf("bit %q: want bit0 to bit15 (bit0 the least significant)", s)
		}
		return valueType{kind: kindBits, lo: uint8(n), hi: uint8(n)}, nil
	case strings.HasPrefix(s, "string"):
		n, err := strconv.Atoi(s[6:])
		if err != nil || n < 1 || n > maxStringChars {
			return valueType{}, fmt.Errorf("string %q: want stringN with N characters, 1 to %d", s, maxStringChars)
		}
		return valueType{kind: kindString, chars: n}, nil
	}
	return valueType{}, fmt.Errorf("unknown type %q: want int16, uint16, int32, uint32, int64, uint64, float32, float64, bitN, bitsLO-HI or stringN (bool for coils and discrete inputs)", s)
}

// byteOrder is how a value's bytes are laid out across its registers,
// written as the letters of a 32-bit value ABCD in register order.
type byteOrder uint8

const (
	orderABCD byteOrder = iota // big-endian: the Modbus default
	orderCDAB                  // words swapped: low word first
	orderBADC                  // bytes swapped within each register
	orderDCBA                  // little-endian
)

var orderNames = [...]string{"ABCD", "CDAB", "BADC", "DCBA"}

// String is the order's name: ABCD, CDAB, BADC or DCBA.
func (o byteOrder) String() string { return orderNames[o] }

func (o byteOrder) swapWords() bool { return o == orderCDAB || o == orderDCBA }
func (o byteOrder) swapBytes() bool { return o == orderBADC || o == orderDCBA }

func parseOrder(s string) (byteOrder, error) {
	for i, n := range orderNames {
		if strings.EqualFold(s, n) {
			return byteOrder(i), nil
		}
	}
	return 0, fmt.Errorf("byte order %q: want ABCD (big-endian, the default), CDAB (words swapped), BADC (bytes swapped) or DCBA (little-endian)", s)
}

// spec is a fully resolved point: where it is and how to decode it.
type spec struct {
	unit   byte
	table  table
	addr   uint16 // zero-based protocol address
	typ    valueType
	order  byteOrder
	scale  float64
	offset float64
}

// size is how many registers, or bits, the point spans.
func (s spec) size() int {
	if s.table.bits() {
		return 1
	}
	return s.typ.registers()
}

// ref returns the canonical reference: u<unit>/<table>/<zero-based address>/<type>.
func (s spec) ref() string {
	if s.table.bits() {
		return fmt.Sprintf("u%d/%s/%d", s.unit, s.table, s.addr)
	}
	return fmt.Sprintf("u%d/%s/%d/%s", s.unit, s.table, s.addr, s.typ)
}

// refDefaults are what a ref leaves out.
type refDefaults struct {
	unit byte
	// oneBased makes table/N addresses one-based register numbers.
	oneBased bool
}

var errRef = errors.New("want [uUNIT/]TABLE/ADDRESS[/TYPE] such as u1/hr/3000/float32 or 43001/float32")

// parseRef parses a point reference:
//
//	[u<unit>/]<table>/<address>[/<type>]   table hr, ir, coil or di; address zero-based, or one-based with addressing: 1
//	[u<unit>/]<modicon>[/<type>]           40001-49999 or 400001-465536 (and 3, 1, 0 prefixes): always one-based
//
// It returns the location and type; order, scale and offset are the
// caller's.
func parseRef(ref string, def refDefaults) (spec, error) {
	s := spec{unit: def.unit, order: orderABCD, scale: 1}
	parts := strings.Split(strings.TrimSpace(ref), "/")
	if len(parts) > 0 && len(parts[0]) > 1 && (parts[0][0] == 'u' || parts[0][0] == 'U') {
		n, err := strconv.Atoi(parts[0][1:])
		if err != nil || n < 0 || n > 255 {
			return spec{}, fmt.Errorf("unit %q: want u0 to u255", parts[0])
		}
		s.unit = byte(n)
		parts = parts[1:]
	}
	if len(parts) == 0 || parts[0] == "" {
		return spec{}, errRef
	}
	var addr int
	switch t := strings.ToLower(parts[0]); t {
	case "hr", "ir", "coil", "di":
		for i, n := range tableNames {
			if n == t {
				s.table = table(i)
			}
		}
		if len(parts) < 2 {
			return spec{}, fmt.Errorf("table %s without an address: %w", t, errRef)
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil {
			return spec{}, fmt.Errorf("address %q is not a number: %w", parts[1], errRef)
		}
		if def.oneBased {
			if n < 1 || n > 65536 {
				return spec{}, fmt.Errorf("register %d out of range: one-based numbers run 1 to 65536", n)
			}
			n--
		} else if n < 0 || n > 65535 {
			return spec{}, fmt.Errorf("address %d out of range: zero-based addresses run 0 to 65535 (set addressing: 1 for one-based numbers)", n)
		}
		addr = n
		parts = parts[2:]
	default:
		tbl, n, err := parseModicon(parts[0])
		if err != nil {
			return spec{}, err
		}
		s.table, addr = tbl, n
		parts = parts[1:]
	}
	s.addr = uint16(addr)
	switch {
	case len(parts) > 1:
		return spec{}, fmt.Errorf("trailing %q: %w", strings.Join(parts[1:], "/"), errRef)
	case len(parts) == 1:
		typ, err := parseType(strings.ToLower(parts[0]))
		if err != nil {
			return spec{}, err
		}
		s.typ = typ
	case s.table.bits():
		s.typ = valueType{kind: kindBool}
	default:
		s.typ = valueType{kind: kindUint16}
	}
	if s.table.bits() != (s.typ.kind == kindBool) {
		if s.table.bits() {
			return spec{}, fmt.Errorf("type %s does not fit a %s: coils and discrete inputs are single bits (type bool)", s.typ, s.table)
		}
		return spec{}, fmt.Errorf("type bool does not fit a %s register: use uint16, or bitN for one bit", s.table)
	}
	if end := addr + s.size(); end > 65536 {
		return spec{}, fmt.Errorf("%s at %s/%d spans %d registers and runs past the last address 65535", s.typ, s.table, addr, s.size())
	}
	return s, nil
}

// parseModicon parses the 5- or 6-digit notation installers use: the first
// digit names the table (0 coil, 1 discrete input, 3 input register, 4
// holding register), the rest is a one-based register number.
func parseModicon(s string) (table, int, error) {
	if (len(s) != 5 && len(s) != 6) || strings.Trim(s, "0123456789") != "" {
		return 0, 0, fmt.Errorf("address %q: %w", s, errRef)
	}
	var t table
	switch s[0] {
	case '0':
		t = coils
	case '1':
		t = discrete
	case '3':
		t = input
	case '4':
		t = holding
	default:
		return 0, 0, fmt.Errorf("address %q: the first digit must be 0 (coil), 1 (discrete input), 3 (input register) or 4 (holding register)", s)
	}
	n, _ := strconv.Atoi(s[1:])
	limit := 9999
	if len(s) == 6 {
		limit = 65536
	}
	if n < 1 || n > limit {
		return 0, 0, fmt.Errorf("address %q: register number %d out of range 1 to %d", s, n, limit)
	}
	return t, n - 1, nil
}
