// Package batch is the Sightglass wire format: a self-describing, versioned,
// columnar container of samples, zstd-compressed when that pays and
// checksummed, that the agent uploads and the ingest archives.
//
// A batch references its point table (the sorted, distinct point ids it
// holds) by hash, so that a point's 64-bit id is not paid in every batch; the
// table travels once (EncodePointTable) and is archived beside the batches so
// every blob stays decodable.
package batch

import (
	"errors"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Version is the format version the encoder writes.
const Version = 1

// TableHash identifies a point table: the first 8 bytes of the SHA-256 of
// its encoding. 64 bits suffice because tables are namespaced per site and
// verified by content when uploaded (FORMAT.md says why); every batch
// carries one, so its size counts.
type TableHash [8]byte

// Health is the agent's own health, carried in every batch header.
type Health struct {
	BufferSamples  uint64 // samples waiting in the agent's buffer
	BufferBytes    uint64 // bytes used by the buffer
	DroppedSamples uint64 // samples dropped by the buffer cap since install
	PollErrors     uint64 // failed reads since start
	DevicesUp      uint32
	DevicesDown    uint32
	UptimeSeconds  uint64
}

// Header describes a batch.
type Header struct {
	// AgentID and Site are opaque identifiers issued by the ingest; they
	// never name a building or a device. At most 64 bytes each.
	AgentID string
	Site    string
	// Seq is the agent's batch sequence number, increasing by one per batch.
	Seq uint64
	// SentAt is when the batch was sealed, Unix milliseconds.
	SentAt int64
	Health Health
	// Start and End are the earliest and latest sample times (Unix ms);
	// Points and Samples count distinct points and samples. Encode computes
	// them; Decode fills them from the header and checks them.
	Start, End      int64
	Points, Samples uint32
}

// Batch is a header and its samples.
type Batch struct {
	Header
	// Samples in any order to Encode; Decode returns them sorted by point
	// id, then time.
	Samples []telemetry.Sample
}

// TableResolver finds a point table by hash, for Decode. PointTable returns
// the table's ids (sorted, distinct, as DecodePointTable gives them), or an
// error wrapping ErrUnknownTable when it does not have the table; any other
// error is passed on as a failure of the resolver itself (e.g. storage).
type TableResolver interface {
	PointTable(h TableHash) ([]uint64, error)
}

// Errors Decode wraps; check with errors.Is.
var (
	// ErrCorrupt means the bytes are not a valid batch.
	ErrCorrupt = errors.New("corrupt batch")
	// ErrTooLarge means a size limit was exceeded.
	ErrTooLarge = errors.New("batch too large")
	// ErrUnknownTable means the batch references a point table the
	// resolver does not have; the sender should upload it and retry.
	ErrUnknownTable = errors.New("unknown point table")
	// ErrVersion means the batch was written by an unknown format version.
	ErrVersion = errors.New("unsupported batch format version")
)
