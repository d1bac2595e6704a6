package batch

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

var update = flag.Bool("update", false, "rewrite the golden files and the fuzz seed corpus")

// goldenBatches are fixed batches whose encodings are committed: if one
// changes, the format changed, and old blobs would no longer decode.
func goldenBatches() map[string]*Batch {
	// A device polled every minute: decimals, float32 decimals and
	// binaries sharing one time column, one point with a bad status.
	regular := &Batch{Header: testHeader(), Samples: concat(
		series(0x8a1f_0000_0000_0001, t0, 60_000, 21.5, 21.5, 21.6, 21.6, 21.6, 21.7, 21.7, 21.7, 21.7, 21.8),
		series(0x1c2d_0000_0000_0002, t0, 60_000, float64(float32(66.38)), float64(float32(66.4)), float64(float32(66.4)),
			float64(float32(66.45)), float64(float32(66.5)), float64(float32(66.5)), float64(float32(66.5)),
			float64(float32(66.52)), float64(float32(66.5)), float64(float32(66.47))),
		series(0xf00d_0000_0000_0003, t0, 60_000, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1),
	)}
	regular.Samples[13].Status = telemetry.StatusStale
	regular.Samples[14].Status = telemetry.StatusCommFailure

	// Change-of-value points at irregular times with a second-resolution
	// clock, plus a setpoint logged once.
	cov := &Batch{Header: Header{AgentID: "a-2", Site: "s-9", Seq: 1, SentAt: t0 + 900_000}, Samples: []telemetry.Sample{
		{PointID: 0x42, Time: t0 + 43_000, Value: 1},
		{PointID: 0x42, Time: t0 + 301_000, Value: 0},
		{PointID: 0x42, Time: t0 + 302_000, Value: 1},
		{PointID: 0x42, Time: t0 + 899_000, Value: 0},
		{PointID: 0x77, Time: t0 + 500_000, Value: 58.5},
	}}
	return map[string]*Batch{
		"regular":    regular,
		"cov":        cov,
		"all-forms":  testBatch(),
		"non-finite": {Header: testHeader(), Samples: series(5, -1000, 1, math.NaN(), math.Inf(-1), math.Copysign(0, -1), 1e-310, math.MaxFloat64)},
		// Stored zstd-compressed; the others are small enough to be
		// stored raw.
		"compressed": compressibleBatch(),
	}
}

func TestGolden(t *testing.T) {
	dir := filepath.Join("testdata", "golden")
	for name, b := range goldenBatches() {
		t.Run(name, func(t *testing.T) {
			enc, err := Encode(b)
			if err != nil {
				t.Fatal(err)
			}
			sgb, sgt := filepath.Join(dir, name+".sgb"), filepath.Join(dir, name+".sgt")
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(sgb, enc.Data, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(sgt, enc.Table, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			data, err := os.ReadFile(sgb)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			table, err := os.ReadFile(sgt)
			if err != nil {
				t.Fatal(err)
			}
			// The committed bytes decode to the expected batch.
			ids, h, err := DecodePointTable(table)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(data, Tables{h: ids}, Limits{})
			if err != nil {
				t.Fatalf("decoding golden %s: %v", sgb, err)
			}
			want := slices.Clone(b.Samples)
			slices.SortStableFunc(want, compareSamples)
			checkSamples(t, got.Samples, want)
			if got.AgentID != b.AgentID || got.Site != b.Site || got.Seq != b.Seq || got.SentAt != b.SentAt || got.Health != b.Health {
				t.Errorf("header %+v, want %+v", got.Header, b.Header)
			}
			// And the encoder still writes exactly those bytes.
			if !bytes.Equal(enc.Table, table) {
				t.Errorf("point table encoding changed")
			}
			if !bytes.Equal(enc.Data, data) {
				gotP, _, err1 := unseal(enc.Data, DefaultMaxDecompressed)
				wantP, _, err2 := unseal(data, DefaultMaxDecompressed)
				if err1 == nil && err2 == nil && bytes.Equal(gotP, wantP) {
					t.Errorf("payload unchanged but the zstd output differs (compress library upgrade?): check, then go test -update")
				} else {
					t.Errorf("encoding changed: the format is not stable")
				}
			}
		})
	}
}

// fuzzSeeds are valid batches and payloads, and broken variants of them.
func fuzzSeeds(t testing.TB) (seeds [][]byte, tables Tables) {
	tables = Tables{}
	golden := goldenBatches()
	for _, name := range slices.Sorted(maps.Keys(golden)) {
		b := golden[name]
		enc, err := Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		ids, h, err := DecodePointTable(enc.Table)
		if err != nil {
			t.Fatal(err)
		}
		tables[h] = ids
		header, body, _ := encodeParts(t, b)
		payload := slices.Concat(header, body)
		unsealed := enc.Data[:len(enc.Data)-crcLen]
		seeds = append(seeds, enc.Data, payload, unsealed,
			enc.Data[:len(enc.Data)/2], payload[:len(payload)-1],
			append(slices.Clone(payload), 0))
		// Both storage forms of each payload, without their checksum
		// (FuzzDecode adds it).
		for _, form := range storageForms {
			d := form.wrap(t, payload)
			seeds = append(seeds, d[:len(d)-crcLen])
		}
	}
	seeds = append(seeds, []byte{}, []byte("SGB\x01"), []byte("SGB\x01\x00"), []byte("SGB\x02garbage"))
	return seeds, tables
}

// TestWriteFuzzCorpus writes the seed corpus under testdata/fuzz with
// -update.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite the fuzz seed corpus")
	}
	seeds, _ := fuzzSeeds(t)
	var tables [][]byte
	golden := goldenBatches()
	for _, name := range slices.Sorted(maps.Keys(golden)) {
		b := golden[name]
		enc, err := Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		tables = append(tables, enc.Table, enc.Table[:len(enc.Table)-1])
	}
	tables = append(tables, []byte("SGT\x01\x00\x02\x05\x00"), []byte("SGT\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x07"))
	for target, inputs := range map[string][][]byte{"FuzzDecode": seeds, "FuzzDecodePointTable": tables} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, in := range inputs {
			content := "go test fuzz v1\n[]byte(" + strconv.Quote(string(in)) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
