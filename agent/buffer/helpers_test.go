package buffer

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// fakeSeal is a Sealer that does not depend on pkg/batch's codec: a plain
// binary dump of the samples after the sequence number, and a point table
// of the sorted distinct ids hashed with SHA-256 like the real one.
func fakeSeal(seq uint64, samples []telemetry.Sample) (batch.Encoded, error) {
	data := []byte("FAKE")
	data = binary.BigEndian.AppendUint64(data, seq)
	data = binary.BigEndian.AppendUint32(data, uint32(len(samples)))
	ids := make([]uint64, 0, len(samples))
	for _, s := range samples {
		data = binary.BigEndian.AppendUint64(data, s.PointID)
		data = binary.BigEndian.AppendUint64(data, uint64(s.Time))
		data = binary.BigEndian.AppendUint64(data, math.Float64bits(s.Value))
		data = append(data, byte(s.Status))
		ids = append(ids, s.PointID)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var table []byte
	for _, id := range ids {
		table = binary.BigEndian.AppendUint64(table, id)
	}
	sum := sha256.Sum256(table)
	var h batch.TableHash
	copy(h[:], sum[:])
	return batch.Encoded{Data: data, Table: table, TableHash: h}, nil
}

// fakeOpen decodes what fakeSeal made.
func fakeOpen(data []byte) (uint64, []telemetry.Sample, error) {
	if len(data) < 16 || string(data[:4]) != "FAKE" {
		return 0, nil, errors.New("not a fake batch")
	}
	seq := binary.BigEndian.Uint64(data[4:])
	n := int(binary.BigEndian.Uint32(data[12:]))
	p := data[16:]
	if len(p) != n*25 {
		return 0, nil, fmt.Errorf("fake batch of %d samples has %d bytes", n, len(p))
	}
	out := make([]telemetry.Sample, n)
	for i := range out {
		out[i] = telemetry.Sample{
			PointID: binary.BigEndian.Uint64(p),
			Time:    int64(binary.BigEndian.Uint64(p[8:])),
			Value:   math.Float64frombits(binary.BigEndian.Uint64(p[16:])),
			Status:  telemetry.Status(p[24]),
		}
		p = p[25:]
	}
	return seq, out, nil
}

func openT(t testing.TB, path string, opts Options) *Buffer {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	b, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tempPath(t testing.TB) string { return filepath.Join(t.TempDir(), "buffer.db") }

// reopen closes b and opens path again, checking that the counters Open
// recomputes from the file equal the ones b kept incrementally.
func reopen(t *testing.T, b *Buffer, path string, opts Options) *Buffer {
	t.Helper()
	before := b.Stats()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	nb := openT(t, path, opts)
	if after := nb.Stats(); after != before {
		t.Fatalf("stats changed across reopen:\nbefore %+v\nafter  %+v", before, after)
	}
	return nb
}

// drainAll seals, reads and acknowledges everything, returning the samples
// in queue order.
func drainAll(t *testing.T, b *Buffer, maxSamples int) []telemetry.Sample {
	t.Helper()
	var out []telemetry.Sample
	for {
		if _, _, err := b.Seal(context.Background(), maxSamples, fakeSeal); err != nil {
			t.Fatal(err)
		}
		s, ok, err := b.Next(0)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return out
		}
		seq, samples, err := fakeOpen(s.Data)
		if err != nil || seq != s.Seq || len(samples) != s.Samples {
			t.Fatalf("batch %d: decoded seq %d, %d samples (want %d), %v", s.Seq, seq, len(samples), s.Samples, err)
		}
		out = append(out, samples...)
		if err := b.Ack(s.Seq); err != nil {
			t.Fatal(err)
		}
	}
}

// mkSamples returns n samples whose every field is derived from base+i.
func mkSamples(base, n int) []telemetry.Sample {
	out := make([]telemetry.Sample, n)
	for i := range out {
		k := uint64(base + i)
		out[i] = telemetry.Sample{
			PointID: k*0x9e3779b97f4a7c15 + 1, // a bijection: distinct k, distinct ids
			Time:    1_700_000_000_000 + int64(k)*1000,
			Value:   float64(k) / 7,
			Status:  telemetry.Status(k % uint64(telemetry.MaxStatus+1)),
		}
	}
	return out
}

// sameSamples compares samples bit-exactly (NaN payloads and -0 included).
func sameSamples(a, b []telemetry.Sample) bool {
	return slices.EqualFunc(a, b, func(x, y telemetry.Sample) bool {
		return x.PointID == y.PointID && x.Time == y.Time && x.Status == y.Status &&
			math.Float64bits(x.Value) == math.Float64bits(y.Value)
	})
}
