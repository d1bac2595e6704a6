package batch

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The container around the payload, byte by byte in FORMAT.md:
//
//	"SGB" | version | storage | body | CRC-32C of every byte before it
//
// The storage byte says whether the body is the payload itself or a zstd
// frame: the encoder keeps whichever is smaller, since a batch of a few
// samples does not compress enough to pay for a frame's own bytes.
var magic = [3]byte{'S', 'G', 'B'}

const (
	// prefixLen is magic, version and the storage byte.
	prefixLen = len(magic) + 2
	crcLen    = 4
)

// Storage forms of the body.
const (
	storedRaw  = 0 // the payload as is
	storedZstd = 1 // a zstd frame without its magic number
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// seal wraps payload in the container, compressed only if that makes it
// smaller.
func seal(payload []byte) ([]byte, error) {
	out := make([]byte, 0, prefixLen+len(payload)+crcLen)
	out = append(out, magic[:]...)
	out = append(out, Version, storedZstd)
	out, err := compress(out, payload)
	if err != nil {
		return nil, err
	}
	// Ties go to raw: it decodes faster.
	if len(out)-prefixLen >= len(payload) {
		out = append(out[:prefixLen-1], storedRaw)
		out = append(out, payload...)
	}
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(out, castagnoli)), nil
}

// unseal checks the container and returns the payload, decompressed if
// it was stored compressed and refusing to produce more than limit bytes.
// release returns the payload's buffer, if pooled.
func unseal(data []byte, limit int) (payload []byte, release func(), err error) {
	if len(data) <= len(magic) || [3]byte(data[:3]) != magic {
		return nil, nil, fmt.Errorf("not a batch (bad magic): %w", ErrCorrupt)
	}
	// The version comes before anything else is read: a later version
	// may lay out the rest differently.
	if data[3] != Version {
		return nil, nil, fmt.Errorf("version %d, this build reads %d: %w", data[3], Version, ErrVersion)
	}
	if len(data) < prefixLen+crcLen {
		return nil, nil, fmt.Errorf("%d bytes, shorter than the %d-byte prefix and checksum: %w", len(data), prefixLen+crcLen, ErrCorrupt)
	}
	sealed, sum := data[:len(data)-crcLen], binary.BigEndian.Uint32(data[len(data)-crcLen:])
	if got := crc32.Checksum(sealed, castagnoli); got != sum {
		return nil, nil, fmt.Errorf("checksum %08x, the bytes hash to %08x: damaged in storage or transit: %w", sum, got, ErrCorrupt)
	}
	body := sealed[prefixLen:]
	switch storage := data[prefixLen-1]; storage {
	case storedRaw:
		if len(body) > limit {
			return nil, nil, fmt.Errorf("payload of %d bytes, limit is %d: %w", len(body), limit, ErrTooLarge)
		}
		return body, func() {}, nil
	case storedZstd:
		return decompress(body, limit)
	default:
		return nil, nil, fmt.Errorf("unknown storage form %d: %w", storage, ErrCorrupt)
	}
}
