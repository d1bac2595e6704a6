package batch

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"slices"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// FuzzDecode feeds each input to Decode as a whole batch; so that the
// fuzzer gets past the checksum, also as a batch without its checksum
// (appending a valid one), which reaches the storage forms and the zstd
// frame; and as a payload, which reaches the payload parser directly.
// Decoding must never panic, must fail with one of the package's
// sentinels, and whatever it accepts must be a valid batch that survives
// a round trip.
func FuzzDecode(f *testing.F) {
	seeds, tables := fuzzSeeds(f)
	for _, s := range seeds {
		f.Add(s)
	}
	lim := Limits{MaxDecompressed: 1 << 20, MaxSamples: 100_000, MaxPoints: 10_000}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data, tables, lim)
		checkDecoded(t, tables, b, err)
		sealed := binary.BigEndian.AppendUint32(slices.Clip(data), crc32.Checksum(data, castagnoli))
		b, err = Decode(sealed, tables, lim)
		checkDecoded(t, tables, b, err)
		b, err = decodePayload(data, tables, lim.withDefaults())
		checkDecoded(t, tables, b, err)
	})
}

func checkDecoded(t *testing.T, tables Tables, b *Batch, err error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrUnknownTable) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
		return
	}
	if len(b.Samples) != int(b.Header.Samples) {
		t.Fatalf("header says %d samples, got %d", b.Header.Samples, len(b.Samples))
	}
	if !slices.IsSortedFunc(b.Samples, compareSamples) {
		t.Fatal("samples not sorted")
	}
	for _, s := range b.Samples {
		if s.Status > telemetry.MaxStatus || s.Time < b.Start || s.Time > b.End {
			t.Fatalf("invalid sample %+v in %d..%d", s, b.Start, b.End)
		}
	}
	enc, err := Encode(b)
	if err != nil {
		t.Fatalf("decoded batch does not encode: %v", err)
	}
	if _, ok := tables[enc.TableHash]; !ok {
		t.Fatal("decoded batch encodes with another point table")
	}
	again, err := Decode(enc.Data, tables, Limits{})
	if err != nil {
		t.Fatalf("re-encoded batch does not decode: %v", err)
	}
	if again.Header != b.Header {
		t.Fatalf("header changed in a round trip: %+v, was %+v", again.Header, b.Header)
	}
	checkSamples(t, again.Samples, b.Samples)
}

func FuzzDecodePointTable(f *testing.F) {
	f.Add(EncodePointTable([]uint64{1, 2, 3}))
	f.Add(EncodePointTable([]uint64{0x1234_5678_9abc_def0, 0xffff_ffff_ffff_ffff}))
	f.Fuzz(func(t *testing.T, data []byte) {
		ids, h, err := DecodePointTable(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if len(ids) == 0 || !isStrictlyIncreasing(ids) {
			t.Fatalf("decoded ids %v are not a non-empty sorted set", ids)
		}
		if h != HashPointTable(data) {
			t.Fatal("hash is not of the input")
		}
		again, _, err := DecodePointTable(EncodePointTable(ids))
		if err != nil || !slices.Equal(again, ids) {
			t.Fatalf("round trip: %v, %v", again, err)
		}
	})
}
