package batch

import (
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// encoder is built once, lazily: a zstd encoder allocates its match tables
// up front (megabytes), EncodeAll is safe for concurrent use, and the agent
// seals batches one after another, so one per process is both the cheapest
// and the fastest choice.
var encoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		// The frame's xxhash catches a damaged blob at rest, which the
		// structural checks alone would not always notice in a value.
		zstd.WithEncoderCRC(true),
		// Batches are small; a 1 MiB window bounds the agent's memory
		// without costing ratio, since similar bytes sit close together.
		zstd.WithWindowSize(1<<20),
	)
})

func compress(dst, payload []byte) ([]byte, error) {
	enc, err := encoder()
	if err != nil {
		return nil, fmt.Errorf("building zstd encoder: %w", err)
	}
	return enc.EncodeAll(payload, dst), nil
}

// decoders holds one zstd decoder per decompressed-size limit (in practice
// one or two limits per process). A decoder's DecodeAll is safe for
// concurrent use and reuses its internal buffers, which is most of the
// decoding speed for small batches; the limit is a decoder option, hence
// the map.
var decoders sync.Map // int -> *zstd.Decoder

func decoderFor(limit int) (*zstd.Decoder, error) {
	if d, ok := decoders.Load(limit); ok {
		return d.(*zstd.Decoder), nil
	}
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderMaxMemory(uint64(limit)),
		// The window can never usefully exceed the whole output.
		zstd.WithDecoderMaxWindow(uint64(max(limit, zstd.MinWindowSize))),
		// One block decoder per core, so concurrent DecodeAll calls in
		// the ingest never queue behind each other.
		zstd.WithDecoderConcurrency(0),
	)
	if err != nil {
		return nil, fmt.Errorf("building zstd decoder: %w", err)
	}
	if prev, loaded := decoders.LoadOrStore(limit, d); loaded {
		d.Close()
		return prev.(*zstd.Decoder), nil
	}
	return d, nil
}

// payloadBufs recycles decompression buffers: the payload is only read
// while decoding, and the samples are copied out of it.
var payloadBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBuf keeps an occasional huge batch from pinning its buffer.
const maxPooledBuf = 4 << 20

// decompress checks the prefix and decompresses the zstd frame behind it,
// refusing to produce more than limit bytes. release returns the buffer.
func decompress(data []byte, limit int) (payload []byte, release func(), err error) {
	if len(data) < prefixLen || [3]byte(data[:3]) != magic {
		return nil, nil, fmt.Errorf("not a batch (bad magic): %w", ErrCorrupt)
	}
	if data[3] != Version {
		return nil, nil, fmt.Errorf("version %d, this build reads %d: %w", data[3], Version, ErrVersion)
	}
	frame := data[prefixLen:]
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		return nil, nil, fmt.Errorf("zstd frame header: %v: %w", err, ErrCorrupt)
	}
	if h.Skippable || h.DictionaryID != 0 {
		return nil, nil, fmt.Errorf("zstd frame is skippable or needs a dictionary: %w", ErrCorrupt)
	}
	if h.HasFCS && h.FrameContentSize > uint64(limit) {
		return nil, nil, fmt.Errorf("zstd frame declares %d bytes, limit is %d: %w", h.FrameContentSize, limit, ErrTooLarge)
	}
	dec, err := decoderFor(limit)
	if err != nil {
		return nil, nil, err
	}
	bufp := payloadBufs.Get().(*[]byte)
	out, err := dec.DecodeAll(frame, (*bufp)[:0])
	if err != nil {
		payloadBufs.Put(bufp)
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return nil, nil, fmt.Errorf("decompressing: more than the %d-byte limit: %w", limit, ErrTooLarge)
		}
		return nil, nil, fmt.Errorf("decompressing: %v: %w", err, ErrCorrupt)
	}
	if len(out) > limit {
		// The decoder enforces the limit already; this keeps the promise
		// even if a future zstd version counted differently.
		payloadBufs.Put(bufp)
		return nil, nil, fmt.Errorf("decompressing: %d bytes, limit is %d: %w", len(out), limit, ErrTooLarge)
	}
	return out, func() {
		if cap(out) <= maxPooledBuf {
			*bufp = out[:0]
			payloadBufs.Put(bufp)
		}
	}, nil
}
