package batch

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Primitive reading errors; the decoder wraps them with where they happened.
var (
	errTruncated  = fmt.Errorf("unexpected end of data: %w", ErrCorrupt)
	errOverflow   = fmt.Errorf("varint overflows: %w", ErrCorrupt)
	errNonMinimal = fmt.Errorf("varint not minimally encoded: %w", ErrCorrupt)
)

// reader reads the primitives of the format from a byte slice, checking
// every read against the bytes left.
type reader struct {
	b   []byte
	off int
}

func (r *reader) remaining() int { return len(r.b) - r.off }

// uvarint reads a minimally encoded unsigned varint. Refusing overlong
// encodings gives every value exactly one encoding, so equal content means
// equal bytes (which the table hash and idempotent uploads rely on).
func (r *reader) uvarint() (uint64, error) {
	b := r.b[r.off:]
	// Fast path for the common one-byte case.
	if len(b) > 0 && b[0] < 0x80 {
		r.off++
		return uint64(b[0]), nil
	}
	v, n := binary.Uvarint(b)
	if n <= 0 {
		if n == 0 {
			return 0, errTruncated
		}
		return 0, errOverflow
	}
	if b[n-1] == 0 {
		return 0, errNonMinimal
	}
	r.off += n
	return v, nil
}

// varint reads a zigzag-encoded signed varint.
func (r *reader) varint() (int64, error) {
	u, err := r.uvarint()
	return unzigzag(u), err
}

func (r *reader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, errTruncated
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

func (r *reader) bytes(n int) ([]byte, error) {
	if n < 0 || n > r.remaining() {
		return nil, errTruncated
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b, nil
}

func zigzag(v int64) uint64   { return uint64(v<<1) ^ uint64(v>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

func uvarintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }

func appendVarint(b []byte, v int64) []byte   { return binary.AppendUvarint(b, zigzag(v)) }
func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// bitWriter packs bits most significant first; the XOR float encoding uses
// it.
type bitWriter struct {
	out  []byte
	acc  uint64 // pending bits, right-aligned
	nacc uint   // number of pending bits (< 8 between calls)
}

// write appends the low n bits of v, n <= 64.
func (w *bitWriter) write(v uint64, n uint) {
	for n > 0 {
		take := min(n, 56-w.nacc)
		w.acc = w.acc<<take | (v>>(n-take))&(1<<take-1)
		w.nacc += take
		n -= take
		for w.nacc >= 8 {
			w.nacc -= 8
			w.out = append(w.out, byte(w.acc>>w.nacc))
		}
		w.acc &= 1<<w.nacc - 1
	}
}

// flush pads the last byte with zero bits.
func (w *bitWriter) flush() []byte {
	if w.nacc > 0 {
		w.out = append(w.out, byte(w.acc<<(8-w.nacc)))
		w.acc, w.nacc = 0, 0
	}
	return w.out
}

// bitReader reads what bitWriter wrote, never past the end of b.
type bitReader struct {
	b    []byte
	off  int    // next byte to load
	acc  uint64 // loaded bits, right-aligned
	nacc uint
}

// read returns the next n bits, n <= 64.
func (r *bitReader) read(n uint) (uint64, error) {
	var v uint64
	for n > 0 {
		if r.nacc == 0 {
			if r.off >= len(r.b) {
				return 0, errTruncated
			}
			// Load up to 7 bytes at once; the common case is a full load.
			k := min(7, len(r.b)-r.off)
			for i := 0; i < k; i++ {
				r.acc = r.acc<<8 | uint64(r.b[r.off+i])
			}
			r.off += k
			r.nacc = uint(8 * k)
		}
		take := min(n, r.nacc)
		r.nacc -= take
		v = v<<take | (r.acc>>r.nacc)&(1<<take-1)
		n -= take
	}
	r.acc &= 1<<r.nacc - 1
	return v, nil
}

// finish checks that only zero padding is left in the last byte read and
// returns how many bytes were consumed.
func (r *bitReader) finish() (int, error) {
	if r.nacc >= 8 {
		// Whole bytes loaded but not used belong to the next stream.
		unused := r.nacc / 8
		r.off -= int(unused)
		r.acc >>= 8 * unused
		r.nacc -= 8 * unused
	}
	if r.acc&(1<<r.nacc-1) != 0 {
		return 0, fmt.Errorf("nonzero padding bits: %w", ErrCorrupt)
	}
	return r.off, nil
}
