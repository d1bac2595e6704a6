package modbus

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// arrange returns the registers' bytes in big-endian (ABCD) order, undoing
// the point's byte order. raw holds the registers as they came off the wire.
func arrange(raw []byte, o byteOrder) []byte {
	out := make([]byte, len(raw))
	n := len(raw) / 2
	for i := range n {
		src := i
		if o.swapWords() {
			src = n - 1 - i
		}
		hi, lo := raw[2*src], raw[2*src+1]
		if o.swapBytes() {
			hi, lo = lo, hi
		}
		out[2*i], out[2*i+1] = hi, lo
	}
	return out
}

// decodeRegisters turns a point's registers into its engineering value.
// raw must hold exactly s.typ.registers() registers. A value the device
// cannot have meant (a NaN or infinite float, text that is not a number)
// is an error, which the caller turns into a fault sample.
func decodeRegisters(s spec, raw []byte) (float64, error) {
	if len(raw) != 2*s.typ.registers() {
		return 0, fmt.Errorf("decoding %s: got %d bytes, want %d", s.typ, len(raw), 2*s.typ.registers())
	}
	var v float64
	if s.typ.kind == kindString {
		// Text is stored in register order; only the bytes within each
		// register may be swapped.
		o := orderABCD
		if s.order.swapBytes() {
			o = orderBADC
		}
		b := arrange(raw, o)[:s.typ.chars]
		text := strings.TrimSpace(strings.TrimRight(string(b), "\x00 "))
		f, err := strconv.ParseFloat(text, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, fmt.Errorf("text %q is not a number: samples are numbers, so only numeric text can be read", text)
		}
		v = f
	} else {
		b := arrange(raw, s.order)
		switch s.typ.kind {
		case kindInt16:
			v = float64(int16(binary.BigEndian.Uint16(b)))
		case kindUint16:
			v = float64(binary.BigEndian.Uint16(b))
		case kindBits:
			w := binary.BigEndian.Uint16(b)
			width := s.typ.hi - s.typ.lo + 1
			v = float64((w >> s.typ.lo) & (1<<width - 1))
		case kindInt32:
			v = float64(int32(binary.BigEndian.Uint32(b)))
		case kindUint32:
			v = float64(binary.BigEndian.Uint32(b))
		case kindInt64:
			v = float64(int64(binary.BigEndian.Uint64(b)))
		case kindUint64:
			v = float64(binary.BigEndian.Uint64(b))
		case kindFloat32:
			v = float64(math.Float32frombits(binary.BigEndian.Uint32(b)))
		case kindFloat64:
			v = math.Float64frombits(binary.BigEndian.Uint64(b))
		default:
			return 0, fmt.Errorf("decoding: type %s is not a register type", s.typ)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			// Meters report "not available" as NaN.
			return 0, fmt.Errorf("%s is %v: the device reports the value as not available", s.typ, v)
		}
	}
	return v*s.scale + s.offset, nil
}

// bitAt returns bit i of a coil or discrete input response (LSB first).
func bitAt(data []byte, i int) float64 {
	return float64(data[i/8] >> (i % 8) & 1)
}
