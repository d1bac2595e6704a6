package batch

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
)

// A point table is stored and archived on its own, so it carries its own
// magic and version: "SGT", version 1, a form byte, the count, the ids.
var tableMagic = [3]byte{'S', 'G', 'T'}

const (
	tableVersion = 1
	// tableGaps stores the first id as a uvarint, then each gap minus one,
	// which makes every decodable table strictly increasing by construction.
	tableGaps = 0
	// tableRaw stores each id as 8 big-endian bytes: smaller for the few,
	// widely spread ids of a small site (random pseudonyms have large gaps).
	tableRaw = 1
	// tableHeaderLen is magic, version and form.
	tableHeaderLen = len(tableMagic) + 2
)

// EncodePointTable encodes a list of point ids as a point table. The ids
// should be sorted and distinct (as Encode produces them); any other list
// is sorted and deduplicated first, so a set of ids has exactly one
// encoding and therefore one TableHash.
func EncodePointTable(ids []uint64) []byte {
	if !isStrictlyIncreasing(ids) {
		ids = slices.Clone(ids)
		slices.Sort(ids)
		ids = slices.Compact(ids)
	}
	gapSize := 0
	for i, id := range ids {
		gapSize += uvarintLen(tableGap(ids, i, id))
	}
	rawSize := 8 * len(ids)
	out := make([]byte, 0, tableHeaderLen+binary.MaxVarintLen64+min(gapSize, rawSize))
	out = append(out, tableMagic[:]...)
	out = append(out, tableVersion)
	if gapSize < rawSize {
		out = append(out, tableGaps)
		out = binary.AppendUvarint(out, uint64(len(ids)))
		for i, id := range ids {
			out = binary.AppendUvarint(out, tableGap(ids, i, id))
		}
		return out
	}
	out = append(out, tableRaw)
	out = binary.AppendUvarint(out, uint64(len(ids)))
	for _, id := range ids {
		out = binary.BigEndian.AppendUint64(out, id)
	}
	return out
}

// tableGap is what the gap form stores for ids[i].
func tableGap(ids []uint64, i int, id uint64) uint64 {
	if i == 0 {
		return id
	}
	return id - ids[i-1] - 1
}

func isStrictlyIncreasing(ids []uint64) bool {
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			return false
		}
	}
	return true
}

// DecodePointTable decodes a point table and returns its ids (sorted,
// distinct, at least one) and its hash. Errors wrap ErrCorrupt or
// ErrVersion. Memory use is bounded by len(data).
func DecodePointTable(data []byte) ([]uint64, TableHash, error) {
	ids, err := decodePointTable(data)
	if err != nil {
		return nil, TableHash{}, fmt.Errorf("decoding point table: %w", err)
	}
	return ids, HashPointTable(data), nil
}

func decodePointTable(data []byte) ([]uint64, error) {
	if len(data) < tableHeaderLen || [3]byte(data[:3]) != tableMagic {
		return nil, fmt.Errorf("not a point table (bad magic): %w", ErrCorrupt)
	}
	if data[3] != tableVersion {
		return nil, fmt.Errorf("version %d, this build reads %d: %w", data[3], tableVersion, ErrVersion)
	}
	form := data[4]
	r := reader{b: data, off: tableHeaderLen}
	count, err := r.uvarint()
	if err != nil {
		return nil, fmt.Errorf("count: %w", err)
	}
	if count == 0 {
		return nil, fmt.Errorf("empty table: %w", ErrCorrupt)
	}
	rest := uint64(r.remaining())
	// Every id takes a byte at least; and no batch may use more points
	// than DefaultMaxPoints (Encode refuses them), so a larger table is
	// refused before its ids are allocated.
	if count > rest {
		return nil, fmt.Errorf("count %d exceeds the %d bytes left: %w", count, rest, ErrCorrupt)
	}
	if count > DefaultMaxPoints {
		return nil, fmt.Errorf("%d points, at most %d in a table: %w", count, DefaultMaxPoints, ErrTooLarge)
	}
	switch form {
	case tableGaps:
		// Every id takes at least one byte.
		if count > rest {
			return nil, fmt.Errorf("count %d exceeds the %d bytes left: %w", count, rest, ErrCorrupt)
		}
		ids := make([]uint64, count)
		for i := range ids {
			g, err := r.uvarint()
			if err != nil {
				return nil, fmt.Errorf("id %d: %w", i, err)
			}
			if i == 0 {
				ids[i] = g
				continue
			}
			prev := ids[i-1]
			if g >= ^uint64(0)-prev {
				return nil, fmt.Errorf("id %d: gap overflows 64 bits: %w", i, ErrCorrupt)
			}
			ids[i] = prev + g + 1
		}
		if r.remaining() != 0 {
			return nil, fmt.Errorf("%d trailing bytes: %w", r.remaining(), ErrCorrupt)
		}
		return ids, nil
	case tableRaw:
		if count > rest/8 || rest != 8*count {
			return nil, fmt.Errorf("%d ids need %d bytes, have %d: %w", count, 8*count, rest, ErrCorrupt)
		}
		ids := make([]uint64, count)
		b := data[r.off:]
		for i := range ids {
			ids[i] = binary.BigEndian.Uint64(b[8*i:])
			if i > 0 && ids[i] <= ids[i-1] {
				return nil, fmt.Errorf("id %d: not sorted and distinct: %w", i, ErrCorrupt)
			}
		}
		return ids, nil
	default:
		return nil, fmt.Errorf("unknown form %d: %w", form, ErrCorrupt)
	}
}

// HashPointTable hashes an encoded point table: the first 8 bytes of its
// SHA-256.
func HashPointTable(encoded []byte) TableHash {
	sum := sha256.Sum256(encoded)
	return TableHash(sum[:len(TableHash{})])
}

// ParseTableHash parses the lower-case hex form of a table hash
// (TableHash.String), as it appears in URLs and blob names.
func ParseTableHash(s string) (TableHash, error) {
	var h TableHash
	if len(s) != 2*len(h) {
		return h, fmt.Errorf("parsing table hash %q: want %d hex digits, got %d", s, 2*len(h), len(s))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return h, fmt.Errorf("parsing table hash %q: character %d is not a lower-case hex digit", s, i)
		}
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("parsing table hash %q: %w", s, err)
	}
	return h, nil
}

// String returns h as 16 lower-case hex digits.
func (h TableHash) String() string { return hex.EncodeToString(h[:]) }
