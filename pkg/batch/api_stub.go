package batch

import "errors"

// TEMPORARY scaffolding so other packages compile while the codec is written.
// The batch helper replaces this file entirely.

// Encoded is the result of Encode.
type Encoded struct {
	// Data is the encoded, compressed batch.
	Data []byte
	// Table is EncodePointTable of the batch's sorted distinct point ids,
	// and TableHash its hash, which Data references.
	Table     []byte
	TableHash TableHash
}

// Limits bound what Decode accepts; a zero field means its default.
type Limits struct {
	MaxDecompressed int // bytes after decompression (default 64 MiB)
	MaxSamples      int // default 4,000,000
	MaxPoints       int // default 1,000,000
}

// Encode encodes b.
func Encode(b *Batch) (Encoded, error) { return Encoded{}, errors.New("not implemented") }

// Decode decodes and validates data, resolving its point table with tables.
func Decode(data []byte, tables TableResolver, lim Limits) (*Batch, error) {
	return nil, errors.New("not implemented")
}

// EncodePointTable encodes a sorted list of distinct point ids.
func EncodePointTable(ids []uint64) []byte { return nil }

// DecodePointTable decodes a point table and returns its hash.
func DecodePointTable(data []byte) ([]uint64, TableHash, error) {
	return nil, TableHash{}, errors.New("not implemented")
}

// HashPointTable hashes an encoded point table.
func HashPointTable(encoded []byte) TableHash { return TableHash{} }

// ParseTableHash parses the lower-case hex form of a table hash (TableHash.String).
func ParseTableHash(s string) (TableHash, error) { return TableHash{}, errors.New("not implemented") }

// String returns h as 32 lower-case hex digits.
func (h TableHash) String() string { return "" }
