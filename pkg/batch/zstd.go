package batch

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// zstdMagic starts every zstd frame (RFC 8878, 3.1.1). The container's
// storage byte already says a frame follows, so the stored frame leaves
// it out (zstd's own "magicless" format) and the decoder puts it back.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// encoder is built once, lazily: a zstd encoder allocates its match tables
// up front (megabytes), EncodeAll is safe for concurrent use, and the agent
// seals batches one after another, so one per process is both the cheapest
// and the fastest choice.
var encoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		// No frame checksum: the container's CRC-32C covers the stored
		// bytes whether compressed or not (FORMAT.md says why).
		zstd.WithEncoderCRC(false),
		// Batches are small; a 1 MiB window bounds the agent's memory
		// without costing ratio, since similar bytes sit close together.
		zstd.WithWindowSize(1<<20),
		// A single-segment frame always declares its content size (so the
		// decoder checks it against its limit before decompressing) and
		// needs no window descriptor: a byte less for most batches.
		zstd.WithSingleSegment(true),
	)
})

// compress appends payload to dst as a zstd frame without its magic
// number.
func compress(dst, payload []byte) ([]byte, error) {
	enc, err := encoder()
	if err != nil {
		return nil, fmt.Errorf("building zstd encoder: %w", err)
	}
	n := len(dst)
	dst = enc.EncodeAll(payload, dst)
	if !bytes.HasPrefix(dst[n:], zstdMagic) {
		return nil, errors.New("zstd encoder wrote no frame magic")
	}
	return append(dst[:n], dst[n+len(zstdMagic):]...), nil
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
	// The decoder refuses a single-segment frame when its limit is below
	// the minimum window (1 KiB), whatever the frame's size; the frame's
	// declared size, which decompress checks against limit first, is what
	// bounds the output.
	bound := uint64(max(limit, zstd.MinWindowSize))
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderMaxMemory(bound),
		// The window can never usefully exceed the whole output.
		zstd.WithDecoderMaxWindow(bound),
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

// bufs recycles the frames rebuilt with their magic and the decompressed
// payloads: both are only read while decoding, and the samples are copied
// out.
var bufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBuf keeps an occasional huge batch from pinning its buffer.
const maxPooledBuf = 4 << 20

func putBuf(bufp *[]byte, b []byte) {
	if cap(b) <= maxPooledBuf {
		*bufp = b[:0]
		bufs.Put(bufp)
	}
}

// decompress decompresses a magicless zstd frame, refusing to produce more
// than limit bytes. release returns the payload's buffer.
func decompress(body []byte, limit int) (payload []byte, release func(), err error) {
	framep := bufs.Get().(*[]byte)
	frame := append(append((*framep)[:0], zstdMagic...), body...)
	defer putBuf(framep, frame)
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		return nil, nil, fmt.Errorf("zstd frame header: %v: %w", err, ErrCorrupt)
	}
	// The encoder writes single-segment frames without a dictionary or a
	// checksum; refusing anything else keeps the format what FORMAT.md
	// says, and a declared size is what bounds the output up front.
	if !h.SingleSegment || !h.HasFCS {
		return nil, nil, fmt.Errorf("zstd frame is not single-segment: %w", ErrCorrupt)
	}
	if h.DictionaryID != 0 || h.HasCheckSum {
		return nil, nil, fmt.Errorf("zstd frame needs a dictionary or carries a checksum: %w", ErrCorrupt)
	}
	if err := checkOneFrame(frame, h.HeaderSize); err != nil {
		return nil, nil, err
	}
	if h.FrameContentSize > uint64(limit) {
		return nil, nil, fmt.Errorf("zstd frame declares %d bytes, limit is %d: %w", h.FrameContentSize, limit, ErrTooLarge)
	}
	dec, err := decoderFor(limit)
	if err != nil {
		return nil, nil, err
	}
	outp := bufs.Get().(*[]byte)
	out, err := dec.DecodeAll(frame, (*outp)[:0])
	if err != nil {
		putBuf(outp, out)
		// The declared size was checked against the limit and the
		// decoder stops there, so more output is a lie, not a big batch.
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return nil, nil, fmt.Errorf("decompressing: more than the %d bytes the frame declares: %w", h.FrameContentSize, ErrCorrupt)
		}
		return nil, nil, fmt.Errorf("decompressing: %v: %w", err, ErrCorrupt)
	}
	if uint64(len(out)) != h.FrameContentSize {
		// The decoder checks this already; the payload's size must be
		// what the frame declared, which was checked against the limit.
		putBuf(outp, out)
		return nil, nil, fmt.Errorf("decompressing: %d bytes, the frame declares %d: %w", len(out), h.FrameContentSize, ErrCorrupt)
	}
	return out, func() { putBuf(outp, out) }, nil
}

// checkOneFrame walks the block headers (RFC 8878, 3.1.1.2) to check
// that the frame ends exactly where the body does: the decoder would
// otherwise accept further frames after it. The decoder checks the
// blocks themselves.
func checkOneFrame(frame []byte, off int) error {
	for {
		if len(frame)-off < 3 {
			return fmt.Errorf("zstd frame: block header cut off: %w", ErrCorrupt)
		}
		bh := int(frame[off]) | int(frame[off+1])<<8 | int(frame[off+2])<<16
		off += 3
		switch size := bh >> 3; bh >> 1 & 3 {
		case 0, 2: // raw, compressed
			off += size
		case 1: // RLE: one byte repeated size times
			off++
		default:
			return fmt.Errorf("zstd frame: reserved block type: %w", ErrCorrupt)
		}
		if off > len(frame) {
			return fmt.Errorf("zstd frame: block cut off: %w", ErrCorrupt)
		}
		if bh&1 != 0 { // last block
			break
		}
	}
	if off != len(frame) {
		return fmt.Errorf("zstd frame: %d bytes after it: %w", len(frame)-off, ErrCorrupt)
	}
	return nil
}
