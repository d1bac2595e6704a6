package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Value layouts. Every value starts with a layout version byte so a future
// agent can tell old records from new ones.
//
// pending record (one per Append call):
//
//	0x01 | uvarint samples | varint appended_at_ms | samples... | crc32c (4 bytes, LE, of all before)
//	sample: point_id (8 bytes BE) | varint time delta from the previous sample (ms) |
//	        float64 bits (8 bytes LE) | status (1 byte)
//
// sealed batch:
//
//	0x01 | uvarint samples | varint sealed_at_ms | table hash (8) | encoded batch
//
// rejected batch:
//
//	0x01 | uvarint samples | varint sealed_at_ms | varint rejected_at_ms | table hash (8) |
//	uvarint reason length | reason | encoded batch
const layoutV1 = 1

// minSampleSize is the fewest bytes a stored sample takes; it bounds the
// sample count a record header may claim, so a corrupt header cannot make
// the decoder allocate wildly.
const minSampleSize = 8 + 1 + 8 + 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errRecord is wrapped by decoding errors of stored values.
var errRecord = errors.New("damaged value")

// encodeRecord encodes samples appended at appendedAt (Unix ms).
func encodeRecord(samples []telemetry.Sample, appendedAt int64) ([]byte, error) {
	buf := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(samples)*(minSampleSize+3)+4)
	buf = append(buf, layoutV1)
	buf = binary.AppendUvarint(buf, uint64(len(samples)))
	buf = binary.AppendVarint(buf, appendedAt)
	var prev int64
	for i, s := range samples {
		if s.Status > telemetry.MaxStatus {
			return nil, fmt.Errorf("sample %d (point %016x at %d): status %d is not a defined status", i, s.PointID, s.Time, s.Status)
		}
		buf = binary.BigEndian.AppendUint64(buf, s.PointID)
		// Wrapping subtraction is reversed by wrapping addition on decode,
		// so any int64 time round-trips.
		buf = binary.AppendVarint(buf, s.Time-prev)
		prev = s.Time
		buf = binary.LittleEndian.AppendUint64(buf, math.Float64bits(s.Value))
		buf = append(buf, byte(s.Status))
	}
	return binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli)), nil
}

// recordHeader returns the sample count and append time of a record
// without decoding its samples.
func recordHeader(v []byte) (n int, appendedAt int64, err error) {
	if len(v) < 1 || v[0] != layoutV1 {
		return 0, 0, fmt.Errorf("%w: unknown pending record layout", errRecord)
	}
	count, k := binary.Uvarint(v[1:])
	if k <= 0 || count > uint64(len(v)/minSampleSize) {
		return 0, 0, fmt.Errorf("%w: bad sample count in pending record", errRecord)
	}
	at, j := binary.Varint(v[1+k:])
	if j <= 0 {
		return 0, 0, fmt.Errorf("%w: bad append time in pending record", errRecord)
	}
	return int(count), at, nil
}

// decodeRecord appends the samples of record v to dst.
func decodeRecord(v []byte, dst []telemetry.Sample) ([]telemetry.Sample, error) {
	if len(v) < 4 {
		return dst, fmt.Errorf("%w: pending record of %d bytes", errRecord, len(v))
	}
	body := v[:len(v)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(v[len(v)-4:]) {
		return dst, fmt.Errorf("%w: pending record checksum mismatch", errRecord)
	}
	n, _, err := recordHeader(body)
	if err != nil {
		return dst, err
	}
	p := 1
	_, k := binary.Uvarint(body[p:])
	p += k
	_, k = binary.Varint(body[p:])
	p += k
	var prev int64
	for range n {
		if len(body)-p < minSampleSize {
			return dst, fmt.Errorf("%w: pending record truncated", errRecord)
		}
		id := binary.BigEndian.Uint64(body[p:])
		p += 8
		dt, k := binary.Varint(body[p:])
		if k <= 0 || len(body)-p-k < 9 {
			return dst, fmt.Errorf("%w: bad sample time in pending record", errRecord)
		}
		p += k
		prev += dt
		bits := binary.LittleEndian.Uint64(body[p:])
		st := telemetry.Status(body[p+8])
		p += 9
		if st > telemetry.MaxStatus {
			return dst, fmt.Errorf("%w: bad sample status %d in pending record", errRecord, st)
		}
		dst = append(dst, telemetry.Sample{PointID: id, Time: prev, Value: math.Float64frombits(bits), Status: st})
	}
	if p != len(body) {
		return dst, fmt.Errorf("%w: %d trailing bytes in pending record", errRecord, len(body)-p)
	}
	return dst, nil
}

// sealedHeader is the part of a sealed or rejected value before its data.
type sealedHeader struct {
	samples    int
	sealedAt   int64
	rejectedAt int64 // rejected values only
	hash       batch.TableHash
	reason     string // rejected values only
}

func encodeSealed(h sealedHeader, data []byte) []byte {
	buf := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(h.hash)+len(data))
	buf = append(buf, layoutV1)
	buf = binary.AppendUvarint(buf, uint64(h.samples))
	buf = binary.AppendVarint(buf, h.sealedAt)
	buf = append(buf, h.hash[:]...)
	return append(buf, data...)
}

func encodeRejected(h sealedHeader, data []byte) []byte {
	buf := make([]byte, 0, 1+4*binary.MaxVarintLen64+len(h.hash)+len(h.reason)+len(data))
	buf = append(buf, layoutV1)
	buf = binary.AppendUvarint(buf, uint64(h.samples))
	buf = binary.AppendVarint(buf, h.sealedAt)
	buf = binary.AppendVarint(buf, h.rejectedAt)
	buf = append(buf, h.hash[:]...)
	buf = binary.AppendUvarint(buf, uint64(len(h.reason)))
	buf = append(buf, h.reason...)
	return append(buf, data...)
}

// decodeSealed splits a sealed value into its header and data; data
// aliases v.
func decodeSealed(v []byte) (h sealedHeader, data []byte, err error) {
	r := reader{b: v}
	if r.byte() != layoutV1 {
		return h, nil, fmt.Errorf("%w: unknown sealed batch layout", errRecord)
	}
	h.samples = int(r.uvarint())
	h.sealedAt = r.varint()
	copy(h.hash[:], r.bytes(len(h.hash)))
	if r.err != nil {
		return h, nil, fmt.Errorf("%w: sealed batch header", errRecord)
	}
	return h, r.b, nil
}

// decodeRejected is decodeSealed for rejected values.
func decodeRejected(v []byte) (h sealedHeader, data []byte, err error) {
	r := reader{b: v}
	if r.byte() != layoutV1 {
		return h, nil, fmt.Errorf("%w: unknown rejected batch layout", errRecord)
	}
	h.samples = int(r.uvarint())
	h.sealedAt = r.varint()
	h.rejectedAt = r.varint()
	copy(h.hash[:], r.bytes(len(h.hash)))
	h.reason = string(r.bytes(int(min(r.uvarint(), uint64(len(v))))))
	if r.err != nil {
		return h, nil, fmt.Errorf("%w: rejected batch header", errRecord)
	}
	return h, r.b, nil
}

// reader consumes a byte slice, remembering the first error.
type reader struct {
	b   []byte
	err error
}

var errShort = errors.New("short value")

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.err = errShort
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	v, k := binary.Uvarint(r.b)
	if k <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[k:]
	return v
}

func (r *reader) varint() int64 {
	v, k := binary.Varint(r.b)
	if k <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[k:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if len(r.b) < n {
		r.err = errShort
		return nil
	}
	b := r.b[:n]
	r.b = r.b[n:]
	return b
}

func u64key(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
