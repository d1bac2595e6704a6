package batch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

const t0 = int64(1_735_689_600_000) // 2025-01-01T00:00:00Z in ms

func testHeader() Header {
	return Header{
		AgentID: "agent-1",
		Site:    "site-a",
		Seq:     42,
		SentAt:  t0 + 3_600_000,
		Health:  Health{BufferSamples: 10, BufferBytes: 4096, PollErrors: 3, DevicesUp: 2, DevicesDown: 1, UptimeSeconds: 86400},
	}
}

// series makes n samples of one point every step ms from start.
func series(id uint64, start, step int64, values ...float64) []telemetry.Sample {
	out := make([]telemetry.Sample, len(values))
	for i, v := range values {
		out[i] = telemetry.Sample{PointID: id, Time: start + int64(i)*step, Value: v}
	}
	return out
}

func concat(parts ...[]telemetry.Sample) []telemetry.Sample { return slices.Concat(parts...) }

// roundTrip encodes b, decodes it and checks that the result is b's
// samples sorted, bit for bit, with the header filled in.
func roundTrip(t *testing.T, b *Batch) *Batch {
	t.Helper()
	orig := slices.Clone(b.Samples)
	enc, err := Encode(b)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	if !slices.EqualFunc(b.Samples, orig, sameSample) {
		t.Fatal("Encode modified its input")
	}
	if enc.TableHash != HashPointTable(enc.Table) {
		t.Error("TableHash is not the hash of Table")
	}
	ids, h, err := DecodePointTable(enc.Table)
	if err != nil {
		t.Fatalf("DecodePointTable: %v", err)
	}
	if h != enc.TableHash {
		t.Error("DecodePointTable hash differs")
	}
	got, err := Decode(enc.Data, Tables{h: ids}, Limits{})
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	checkStorage(t, enc.Data)
	want := slices.Clone(orig)
	slices.SortStableFunc(want, compareSamples)
	checkSamples(t, got.Samples, want)

	wantHd := b.Header
	wantHd.Start, wantHd.End = want[0].Time, want[0].Time
	for _, s := range want {
		wantHd.Start, wantHd.End = min(wantHd.Start, s.Time), max(wantHd.End, s.Time)
	}
	points := map[uint64]bool{}
	for _, s := range want {
		points[s.PointID] = true
	}
	wantHd.Points, wantHd.Samples = uint32(len(points)), uint32(len(want))
	if got.Header != wantHd {
		t.Errorf("header:\n got %+v\nwant %+v", got.Header, wantHd)
	}
	// Encoding is deterministic: the decoded batch encodes to the same
	// bytes, which idempotent retries rely on.
	again, err := Encode(got)
	if err != nil {
		t.Fatalf("re-Encode: %v", err)
	}
	if !bytes.Equal(again.Data, enc.Data) {
		t.Error("re-encoding the decoded batch gives different bytes")
	}
	return got
}

// checkStorage checks that data holds its payload in the smaller of the
// two storage forms.
func checkStorage(t *testing.T, data []byte) {
	t.Helper()
	payload, release, err := unseal(data, DefaultMaxDecompressed)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	compressed, err := compress(nil, payload)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Concat(magic[:], []byte{Version, storedRaw}, payload)
	if len(compressed) < len(payload) {
		want = slices.Concat(magic[:], []byte{Version, storedZstd}, compressed)
	}
	if !bytes.Equal(data[:len(data)-crcLen], want) {
		t.Errorf("stored %d bytes in form %d; payload is %d bytes, %d compressed", len(data), data[prefixLen-1], len(payload), len(compressed))
	}
}

// sameSample compares values bit for bit, so NaN equals itself and -0
// differs from 0.
func sameSample(g, w telemetry.Sample) bool {
	return g.PointID == w.PointID && g.Time == w.Time && g.Status == w.Status &&
		math.Float64bits(g.Value) == math.Float64bits(w.Value)
}

func checkSamples(t *testing.T, got, want []telemetry.Sample) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d samples, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if !sameSample(g, w) {
			t.Fatalf("sample %d: got %+v (bits %#x), want %+v (bits %#x)",
				i, g, math.Float64bits(g.Value), w, math.Float64bits(w.Value))
		}
	}
}

// forms returns the value form of each point, in id order.
func forms(t *testing.T, samples []telemetry.Sample) []byte {
	t.Helper()
	s := slices.Clone(samples)
	slices.SortStableFunc(s, compareSamples)
	p, err := newPlan(s)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(p.cols))
	for i, c := range p.cols {
		out[i] = c.desc >> 4 & 3
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	nan2 := math.Float64frombits(0x7ff8_0000_dead_beef) // NaN with a payload
	nan3 := math.Float64frombits(0xfff0_0000_0000_0001) // negative signalling NaN
	withStatus := series(9, t0, 1000, 1, 2, 3, 4, 5, 6)
	for i, st := range []telemetry.Status{0, 1, 1, 2, 5, 3} {
		withStatus[i].Status = st
	}
	irregular := []telemetry.Sample{
		{PointID: 5, Time: t0, Value: 1}, {PointID: 5, Time: t0 + 1, Value: 2},
		{PointID: 5, Time: t0 + 60_000, Value: 3}, {PointID: 5, Time: t0 + 60_000, Value: 4},
		{PointID: 5, Time: t0 + 60_017, Value: 5}, {PointID: 5, Time: t0 + 3_600_000, Value: 6},
		{PointID: 5, Time: t0 + 3_600_001, Value: 7},
	}
	backwards := slices.Clone(irregular)
	slices.Reverse(backwards)
	var many []telemetry.Sample
	for p := range 1000 {
		id := uint64(p)*0x9e37_79b9_7f4a_7c15 + 1
		many = append(many, series(id, t0, 60_000, float64(p%7), float64(p%5), 20.5)...)
	}
	var mixedGroups []telemetry.Sample
	for p := range 50 {
		step := int64(60_000 * (1 + p%3))
		mixedGroups = append(mixedGroups, series(uint64(p+1)<<40, t0+int64(p%2)*1000, step, 1, 2, 3, float64(p))...)
	}
	repeats := series(3, t0, 300_000, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1)

	tests := []struct {
		name    string
		samples []telemetry.Sample
		forms   []byte // expected value form per point, if set
	}{
		{"integers", series(1, t0, 60_000, 0, 1, -1, 100, -100_000, 1<<40, -(1 << 52)), []byte{formDec64}},
		// Powers of two are float32s, 4 bytes each beat 8-9 byte varints.
		{"integer extremes", series(1, t0, 60_000, 1<<53, -(1 << 53), 0), []byte{formF32}},
		{"integer extremes not float32", series(1, t0, 60_000, 1<<53-1, 1<<53-3, 1<<53-5), []byte{formDec64}},
		{"beyond 2^53", series(1, t0, 60_000, 1<<54+4, 3, 1<<60), []byte{formXOR}},
		{"decimals", series(1, t0, 60_000, 21.5, 21.55, 21.6, 0.1, -3.14, 1234.5678, 0.0001), []byte{formDec64}},
		{"float32 decimals", series(1, t0, 60_000, float64(float32(66.38)), float64(float32(45.2492)), float64(float32(0.026875))), []byte{formDec32}},
		{"float32", series(1, t0, 60_000, float64(float32(math.Pi)), float64(float32(math.E)), float64(float32(1e-30))), []byte{formF32}},
		{"float64", series(1, t0, 60_000, math.Pi, math.E, 1e300, -1e-300, math.SmallestNonzeroFloat64), []byte{formXOR}},
		{"non-finite", series(1, t0, 60_000, math.NaN(), math.Inf(1), math.Inf(-1), nan2, nan3, 1, nan2), []byte{formXOR}},
		{"negative zero", series(1, t0, 60_000, 0, math.Copysign(0, -1), 0, 1.5), []byte{formXOR}},
		{"only negative zero", series(1, t0, 60_000, math.Copysign(0, -1)), nil},
		{"repeats", repeats, []byte{formDec64}},
		{"long run", series(4, t0, 1000, slices.Repeat([]float64{72.5}, 5000)...), []byte{formDec64}},
		{"single sample", series(7, t0, 0, 3), nil},
		{"single sample at time zero", series(7, 0, 0, 3), nil},
		{"negative times", series(7, -5_000_000, 1000, 1, 2, 3), nil},
		{"extreme times", []telemetry.Sample{{PointID: 1, Time: math.MaxInt64, Value: 1}, {PointID: 2, Time: 0, Value: 2}}, nil},
		{"extreme times low", []telemetry.Sample{{PointID: 1, Time: math.MinInt64, Value: 1}, {PointID: 2, Time: -1, Value: 2}}, nil},
		{"irregular times", irregular, nil},
		{"backwards input", backwards, nil},
		{"statuses", withStatus, nil},
		{"many points", many, nil},
		{"mixed time groups", mixedGroups, nil},
		{"id extremes", concat(series(0, t0, 1, 1), series(math.MaxUint64, t0, 1, 2)), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &Batch{Header: testHeader(), Samples: tt.samples}
			b.SentAt = tt.samples[0].Time
			roundTrip(t, b)
			if tt.forms != nil {
				if got := forms(t, tt.samples); !slices.Equal(got, tt.forms) {
					t.Errorf("forms %v, want %v", got, tt.forms)
				}
			}
		})
	}
}

func TestRoundTripHeader(t *testing.T) {
	s := series(1, t0, 1000, 1, 2)
	tests := []struct {
		name string
		hd   Header
	}{
		{"zero health", Header{AgentID: "a", Site: "s", SentAt: t0}},
		{"max health", Header{AgentID: strings.Repeat("a", MaxIDLen), Site: strings.Repeat("s", MaxIDLen), Seq: math.MaxUint64,
			SentAt: t0 - 1_000_000, Health: Health{math.MaxUint64, math.MaxUint64, math.MaxUint64, math.MaxUint64,
				math.MaxUint32, math.MaxUint32, math.MaxUint64}}},
		{"sent long after", Header{AgentID: "a", Site: "s", SentAt: math.MaxInt64}},
		{"sent long before", Header{AgentID: "a", Site: "s", SentAt: math.MinInt64 + t0 + 1000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roundTrip(t, &Batch{Header: tt.hd, Samples: s})
		})
	}
}

// TestRoundTripRandom checks properties over random batches: the round
// trip is exact, encoding ignores input order, and is deterministic.
func TestRoundTripRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	gens := []func() float64{
		func() float64 { return float64(rng.IntN(5)) },
		func() float64 { return float64(rng.IntN(20000)-10000) / 100 },
		func() float64 { return float64(float32(rng.Float64() * 100)) },
		func() float64 { return float64(float32(float64(rng.IntN(100000)) / 1000)) },
		func() float64 { return rng.NormFloat64() * 1e6 },
		func() float64 { return math.Float64frombits(rng.Uint64()) }, // any bits, NaNs included
	}
	for iter := range 300 {
		npoints := 1 + rng.IntN(30)
		var samples []telemetry.Sample
		for range npoints {
			id := rng.Uint64()
			n := 1 + rng.IntN(50)
			gen := gens[rng.IntN(len(gens))]
			tm := t0 + rng.Int64N(1_000_000)
			v := gen()
			for range n {
				if rng.IntN(3) > 0 { // runs of equal values
					v = gen()
				}
				st := telemetry.StatusOK
				if rng.IntN(10) == 0 {
					st = telemetry.Status(rng.IntN(int(telemetry.MaxStatus) + 1))
				}
				samples = append(samples, telemetry.Sample{PointID: id, Time: tm, Value: v, Status: st})
				tm += int64(rng.IntN(3)) * int64(rng.IntN(100_000))
			}
		}
		b := &Batch{Header: testHeader(), Samples: samples}
		b.Seq = uint64(iter)
		enc, err := Encode(b)
		if err != nil {
			t.Fatalf("iteration %d: %v", iter, err)
		}
		roundTrip(t, b)
		// Shuffling points (not samples of one point at one time, whose
		// order is kept) must not change the bytes.
		shuffled := slices.Clone(samples)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		slices.SortStableFunc(shuffled, compareSamples)
		enc2, err := Encode(&Batch{Header: b.Header, Samples: shuffled})
		if err != nil {
			t.Fatal(err)
		}
		if !hasEqualTimeDuplicates(samples) && !bytes.Equal(enc.Data, enc2.Data) {
			t.Fatalf("iteration %d: encoding depends on input order", iter)
		}
	}
}

func hasEqualTimeDuplicates(s []telemetry.Sample) bool {
	s = slices.Clone(s)
	slices.SortFunc(s, compareSamples)
	for i := 1; i < len(s); i++ {
		if compareSamples(s[i], s[i-1]) == 0 {
			return true
		}
	}
	return false
}

func TestEncodeRejects(t *testing.T) {
	good := series(1, t0, 1000, 1, 2)
	bad := slices.Clone(good)
	bad[1].Status = telemetry.MaxStatus + 1
	tests := []struct {
		name string
		b    *Batch
		want error
	}{
		{"nil", nil, ErrInvalid},
		{"no samples", &Batch{Header: testHeader()}, ErrInvalid},
		{"empty agent", &Batch{Header: Header{Site: "s"}, Samples: good}, ErrInvalid},
		{"empty site", &Batch{Header: Header{AgentID: "a"}, Samples: good}, ErrInvalid},
		{"long agent", &Batch{Header: Header{AgentID: strings.Repeat("a", MaxIDLen+1), Site: "s"}, Samples: good}, ErrInvalid},
		{"long site", &Batch{Header: Header{AgentID: "a", Site: strings.Repeat("s", MaxIDLen+1)}, Samples: good}, ErrInvalid},
		{"bad status", &Batch{Header: testHeader(), Samples: bad}, ErrInvalid},
		{"span overflows", &Batch{Header: testHeader(), Samples: []telemetry.Sample{{Time: math.MinInt64}, {Time: math.MaxInt64}}}, ErrInvalid},
		{"sent at overflows", &Batch{Header: Header{AgentID: "a", Site: "s", SentAt: math.MinInt64}, Samples: series(1, math.MaxInt64, 1, 1)}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Encode(tt.b)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// testBatch is a small batch exercising every section: two time groups,
// runs, statuses and all four value forms.
func testBatch() *Batch {
	s := concat(
		series(10, t0, 60_000, 21.5, 21.5, 21.5, 21.7, 21.7, 22),
		series(20, t0, 60_000, float64(float32(66.38)), float64(float32(66.41)), float64(float32(66.41)), 0, 0, 0),
		series(30, t0+500, 300_000, float64(float32(math.Pi)), math.Inf(1)),
		series(40, t0+1000, 300_000, math.Pi, math.NaN()),
		series(50, t0, 60_000, 1, 1, 1, 0, 0, 1),
	)
	s[3].Status = telemetry.StatusStale
	s[4].Status = telemetry.StatusCommFailure
	return &Batch{Header: testHeader(), Samples: s}
}

// encodeParts returns a batch's payload, split after the header, and a
// resolver for its table.
func encodeParts(t testing.TB, b *Batch) (header, body []byte, tables Tables) {
	t.Helper()
	s := slices.Clone(b.Samples)
	slices.SortStableFunc(s, compareSamples)
	p, err := newPlan(s)
	if err != nil {
		t.Fatal(err)
	}
	table := EncodePointTable(p.ids)
	hash := HashPointTable(table)
	hd := b.Header
	hd.Start, hd.End, hd.Points, hd.Samples = p.start, p.end, uint32(len(p.cols)), uint32(len(s))
	header = appendHeader(nil, &hd, p.allOK, hash)
	return header, p.appendBody(nil), Tables{hash: p.ids}
}

// container builds a batch around a body as FORMAT.md lays it out:
// prefix, storage byte, body, CRC-32C; it checks nothing, so tests can
// wrap anything.
func container(storage byte, body []byte) []byte {
	out := slices.Concat(magic[:], []byte{Version, storage}, body)
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(out, crc32.MakeTable(crc32.Castagnoli)))
}

// magicless compresses payload with enc and drops the frame's magic
// number, as the zstd storage form holds it.
func magicless(t testing.TB, enc *zstd.Encoder, payload []byte) []byte {
	t.Helper()
	f := enc.EncodeAll(payload, nil)
	if !bytes.HasPrefix(f, zstdMagic) {
		t.Fatal("zstd frame without magic")
	}
	return f[len(zstdMagic):]
}

// storageForms wrap a payload as a batch in each storage form, whichever
// is smaller, so payload-level tests cover both decoding paths.
var storageForms = []struct {
	name string
	wrap func(t testing.TB, payload []byte) []byte
}{
	{"raw", func(_ testing.TB, payload []byte) []byte { return container(storedRaw, payload) }},
	{"zstd", func(t testing.TB, payload []byte) []byte {
		enc, err := encoder()
		if err != nil {
			t.Fatal(err)
		}
		return container(storedZstd, magicless(t, enc, payload))
	}},
}

// zstdEncoder builds a zstd encoder with other options than the
// package's (it writes a checksum unless told not to), to make frames the
// decoder must refuse.
func zstdEncoder(t testing.TB, opts ...zstd.EOption) *zstd.Encoder {
	t.Helper()
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enc.Close() })
	return enc
}

func TestDecodeStrict(t *testing.T) {
	b := testBatch()
	enc, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	ids, h, err := DecodePointTable(enc.Table)
	if err != nil {
		t.Fatal(err)
	}
	tables := Tables{h: ids}
	header, body, _ := encodeParts(t, b)
	payload := slices.Concat(header, body)
	withHeader := func(edit func(h *Header, allOK *bool)) []byte {
		hd := testHeader()
		hd.Start, hd.End, hd.Points, hd.Samples = t0, t0+301_000, 5, 22
		allOK := false
		edit(&hd, &allOK)
		return slices.Concat(appendHeader(nil, &hd, allOK, h), body)
	}
	edited := func(data []byte, at int, b byte) []byte {
		d := slices.Clone(data)
		d[at] = b
		return d
	}
	withCRC := func(data []byte) []byte { // reseals data with a valid checksum
		return container(data[prefixLen-1], data[prefixLen:len(data)-crcLen])
	}
	ours, err := encoder()
	if err != nil {
		t.Fatal(err)
	}
	frame := magicless(t, ours, payload)
	// The encoder's own frame with a second frame after it: zstd
	// decoders would decode both.
	twoFrames := slices.Concat(frame, ours.EncodeAll([]byte{1}, nil))

	// Cases on the container and the zstd frame.
	tests := []struct {
		name    string
		data    []byte
		tables  TableResolver
		lim     Limits
		want    error
		wantMsg string
	}{
		{"empty", nil, tables, Limits{}, ErrCorrupt, "bad magic"},
		{"magic only", magic[:], tables, Limits{}, ErrCorrupt, "bad magic"},
		{"bad magic", edited(enc.Data, 0, 'X'), tables, Limits{}, ErrCorrupt, "bad magic"},
		{"wrong version", edited(enc.Data, 3, 2), tables, Limits{}, ErrVersion, "version 2"},
		{"wrong version, no more", []byte("SGB\x02"), tables, Limits{}, ErrVersion, "version 2"},
		{"prefix only", enc.Data[:prefixLen], tables, Limits{}, ErrCorrupt, "shorter than"},
		{"no body", container(storedRaw, nil), tables, Limits{}, ErrCorrupt, "agent id"},
		{"bad checksum", edited(enc.Data, len(enc.Data)-1, enc.Data[len(enc.Data)-1]^1), tables, Limits{}, ErrCorrupt, "checksum"},
		{"checksum missing", enc.Data[:len(enc.Data)-crcLen], tables, Limits{}, ErrCorrupt, "checksum"},
		{"unknown storage form", withCRC(edited(enc.Data, prefixLen-1, 2)), tables, Limits{}, ErrCorrupt, "storage form 2"},
		{"raw stored as zstd", withCRC(edited(enc.Data, prefixLen-1, storedZstd)), tables, Limits{}, ErrCorrupt, "zstd"},
		{"not zstd", container(storedZstd, []byte("hello, world")), tables, Limits{}, ErrCorrupt, "zstd"},
		{"zstd with magic", container(storedZstd, ours.EncodeAll(payload, nil)), tables, Limits{}, ErrCorrupt, "zstd"},
		{"trailing garbage after frame", container(storedZstd, slices.Concat(frame, []byte{1, 2, 3})), tables, Limits{}, ErrCorrupt, "bytes after it"},
		{"two frames", container(storedZstd, twoFrames), tables, Limits{}, ErrCorrupt, "bytes after it"},
		{"frame cut", container(storedZstd, frame[:len(frame)-1]), tables, Limits{}, ErrCorrupt, "cut off"},
		{"frame with checksum", container(storedZstd, magicless(t, zstdEncoder(t, zstd.WithSingleSegment(true)), payload)),
			tables, Limits{}, ErrCorrupt, "checksum"},
		{"frame not single-segment", container(storedZstd, magicless(t, zstdEncoder(t, zstd.WithSingleSegment(false), zstd.WithEncoderCRC(false)), payload)),
			tables, Limits{}, ErrCorrupt, "single-segment"},
		{"unknown table", enc.Data, Tables{}, Limits{}, ErrUnknownTable, h.String()},
		{"nil resolver", enc.Data, nil, Limits{}, ErrUnknownTable, ""},
		{"table of other size", enc.Data, Tables{h: ids[:2]}, Limits{}, ErrCorrupt, "has 2 ids"},
		{"table not sorted", enc.Data, Tables{h: []uint64{10, 20, 40, 30, 50}}, Limits{}, ErrCorrupt, "not sorted"},
		{"too many samples", enc.Data, tables, Limits{MaxSamples: 21}, ErrTooLarge, "22 samples"},
		{"too many points", enc.Data, tables, Limits{MaxPoints: 4}, ErrTooLarge, "5 points"},
	}
	// Cases on the payload, in each storage form.
	payloadTests := []struct {
		name    string
		payload []byte
		lim     Limits
		want    error
		wantMsg string
	}{
		{"valid", payload, Limits{}, nil, ""},
		{"payload too large", payload, Limits{MaxDecompressed: len(payload) - 1}, ErrTooLarge, "limit"},
		{"payload at the limit", payload, Limits{MaxDecompressed: len(payload)}, nil, ""},
		{"trailing payload", slices.Concat(payload, []byte{0}), Limits{}, ErrCorrupt, "1 trailing bytes"},
		{"payload cut", payload[:len(payload)-1], Limits{}, ErrCorrupt, "statuses"},
		{"sample count mismatch", withHeader(func(h *Header, _ *bool) { h.Samples = 23 }), Limits{}, ErrCorrupt, "samples"},
		{"point count mismatch", withHeader(func(h *Header, _ *bool) { h.Points = 4 }), Limits{}, ErrCorrupt, "points"},
		{"valid test header", withHeader(func(*Header, *bool) {}), Limits{}, nil, ""},
		{"end mismatch", withHeader(func(h *Header, _ *bool) { h.End++ }), Limits{}, ErrCorrupt, "time range"},
		{"statuses flagged ok but present", withHeader(func(_ *Header, ok *bool) { *ok = true }), Limits{}, ErrCorrupt, "trailing"},
		{"zero points", withHeader(func(h *Header, _ *bool) { h.Points = 0 }), Limits{}, ErrCorrupt, "0 points"},
	}
	for _, form := range storageForms {
		for _, pt := range payloadTests {
			tests = append(tests, struct {
				name    string
				data    []byte
				tables  TableResolver
				lim     Limits
				want    error
				wantMsg string
			}{form.name + " " + pt.name, form.wrap(t, pt.payload), tables, pt.lim, pt.want, pt.wantMsg})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.data, tt.tables, tt.lim)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil {
				return
			}
			if !strings.HasPrefix(err.Error(), "decoding batch: ") || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q should start with %q and mention %q", err, "decoding batch: ", tt.wantMsg)
			}
		})
	}
}

// compressibleBatch is large and repetitive enough to be stored
// compressed: 20 points polled every minute for 200 minutes, each cycling
// through 7 values.
func compressibleBatch() *Batch {
	var s []telemetry.Sample
	for p := range 20 {
		vals := make([]float64, 200)
		for i := range vals {
			vals[i] = float64(20+p) + float64(i%7)/2
		}
		s = append(s, series(uint64(p+1)<<20, t0, 60_000, vals...)...)
	}
	return &Batch{Header: testHeader(), Samples: s}
}

// TestStorageForm checks that a batch is compressed exactly when that
// makes it smaller, and decodes either way.
func TestStorageForm(t *testing.T) {
	tests := []struct {
		name string
		b    *Batch
		want byte
	}{
		{"one sample", &Batch{Header: testHeader(), Samples: series(1, t0, 0, 21.5)}, storedRaw},
		{"test batch", testBatch(), storedRaw},
		{"compressible", compressibleBatch(), storedZstd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roundTrip(t, tt.b) // checks the choice was the smaller
			enc, err := Encode(tt.b)
			if err != nil {
				t.Fatal(err)
			}
			if got := enc.Data[prefixLen-1]; got != tt.want {
				t.Errorf("stored in form %d, want %d", got, tt.want)
			}
		})
	}
}

// TestDecodeBodyErrors edits single body bytes and checks the error says
// where the problem is.
func TestDecodeBodyErrors(t *testing.T) {
	one := &Batch{Header: testHeader(), Samples: series(1, t0, 60_000, 1.5, 2.5, 3.5)}
	one.Samples[1].Status = telemetry.StatusFault
	// body: one group (first delta 60000, one zero delta of delta), a
	// palette of one descriptor (decimal, scale 1) and so no indexes,
	// mantissas 15, 25, 35 as zigzag deltas, status runs (ok 1, fault 1,
	// ok 1).
	oneBody := []byte{1, 0xe0, 0xd4, 0x03, 0, 1, 0x01, 30, 20, 20, 0, 0, 2, 0, 0, 0}
	// Three points with one sample each at the same time: 1.5, 2 and
	// 0.25. body: one group of one time (nothing written), a palette of
	// three descriptors (decimal scales 0, 1, 2), 2-bit indexes 1, 0, 2
	// (01 00 10 00), mantissas 15, 2, 25 zigzagged; all statuses ok.
	three := &Batch{Header: testHeader(), Samples: []telemetry.Sample{
		{PointID: 1, Time: t0, Value: 1.5}, {PointID: 2, Time: t0, Value: 2}, {PointID: 3, Time: t0, Value: 0.25}}}
	threeBody := []byte{1, 3, 0x00, 0x01, 0x02, 0x48, 30, 4, 50}
	tests := []struct {
		name    string
		b       *Batch
		at, n   int // replace body[at:at+n]
		with    []byte
		wantMsg string
	}{
		{"bad status", one, 12, 1, []byte{9}, "point 0 statuses: unknown status 9"},
		{"status run overshoots", one, 13, 1, []byte{5}, "point 0 statuses: run of 6 overshoots"},
		{"reserved descriptor bit", one, 6, 1, []byte{0x81}, "value descriptors: bad value descriptor 0x81"},
		{"scale too large", one, 6, 1, []byte{0x0a}, "bad value descriptor"},
		{"scale on float form", one, 6, 1, []byte{0x31}, "bad value descriptor"},
		{"empty palette", one, 5, 1, []byte{0}, "value descriptors: 0 descriptors for 1 points"},
		{"palette larger than points", one, 5, 2, []byte{2, 0x01, 0x02}, "2 descriptors for 1 points"},
		{"zero groups", one, 0, 1, []byte{0}, "0 groups"},
		{"two groups for one point", one, 0, 1, []byte{2}, "2 groups for 1 points"},
		{"time goes backwards", one, 4, 1, binary.AppendUvarint(nil, zigzag(-60_001)), "time group 0: time 2 goes backwards"},
		{"time after end", one, 4, 1, []byte{2}, "time group 0: time 2 after the batch end"},
		{"varint overflow", one, 7, 1, bytes.Repeat([]byte{0xff}, 10), "point 0 values: value 0: varint overflows"},
		{"non-minimal varint", one, 7, 1, []byte{0x9e, 0x00}, "point 0 values: value 0: varint not minimally encoded"},
		{"mantissa out of range", one, 7, 1, binary.AppendUvarint(nil, zigzag(maxMantissa+1)), "point 0 values: value 0: mantissa out of range"},
		{"palette out of order", three, 2, 3, []byte{0x00, 0x02, 0x01}, "palette not in increasing order at 0x1"},
		{"palette repeats", three, 2, 3, []byte{0x00, 0x01, 0x01}, "palette not in increasing order"},
		{"index out of palette", three, 5, 1, []byte{0x4c}, "point 2: index 3, palette has 3"},
		{"palette entry unused", three, 5, 1, []byte{0x40}, "descriptor 0x2 in the palette but unused"},
		{"index padding", three, 5, 1, []byte{0x49}, "nonzero padding"},
		{"indexes cut", three, 5, 4, nil, "indexes need 1 bytes, 0 left"},
	}
	bodies := map[*Batch][]byte{one: oneBody, three: threeBody}
	for b, want := range bodies {
		if _, body, _ := encodeParts(t, b); !bytes.Equal(body, want) {
			t.Fatalf("body is % x, the test expects % x", body, want)
		}
	}
	for _, form := range storageForms {
		for _, tt := range tests {
			t.Run(form.name+" "+tt.name, func(t *testing.T) {
				header, body, tables := encodeParts(t, tt.b)
				b := slices.Concat(body[:tt.at], tt.with, body[tt.at+tt.n:])
				_, err := Decode(form.wrap(t, slices.Concat(header, b)), tables, Limits{})
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("got %v, want ErrCorrupt", err)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("error %q does not mention %q", err, tt.wantMsg)
				}
			})
		}
	}
}

// TestDecodeTruncated cuts a batch, and its payload, at every offset.
func TestDecodeTruncated(t *testing.T) {
	b := testBatch()
	enc, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	header, body, tables := encodeParts(t, b)
	payload := slices.Concat(header, body)
	for i := range len(enc.Data) {
		if _, err := Decode(enc.Data[:i], tables, Limits{}); err == nil {
			t.Errorf("data cut at %d of %d decoded", i, len(enc.Data))
		}
	}
	for i := range len(payload) {
		if _, err := decodePayload(payload[:i], tables, Limits{}.withDefaults()); !errors.Is(err, ErrCorrupt) {
			t.Errorf("payload cut at %d of %d: got %v, want ErrCorrupt", i, len(payload), err)
		}
	}
}

// TestDecodeBitFlips flips every bit of a batch, in each storage form,
// and of its payload: never a panic, a damaged batch is always refused
// (the checksum), and whatever payload decodes is a valid batch.
func TestDecodeBitFlips(t *testing.T) {
	b := testBatch()
	header, body, tables := encodeParts(t, b)
	payload := slices.Concat(header, body)
	check := func(name string, got *Batch, err error) int {
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownTable) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrTooLarge) {
				t.Errorf("%s: error %v wraps no sentinel", name, err)
			}
			return 0
		}
		if _, err := Encode(got); err != nil {
			t.Errorf("%s: decoded an invalid batch: %v", name, err)
		}
		return 1
	}
	for _, form := range storageForms {
		data := form.wrap(t, payload)
		if _, err := Decode(data, tables, Limits{}); err != nil {
			t.Fatal(err)
		}
		for i := range 8 * len(data) {
			d := slices.Clone(data)
			d[i/8] ^= 1 << (i % 8)
			got, err := Decode(d, tables, Limits{})
			if check(form.name, got, err) == 1 {
				t.Errorf("%s: flip of bit %d of byte %d is not detected", form.name, i%8, i/8)
			}
		}
	}
	accepted := 0
	for i := range 8 * len(payload) {
		p := slices.Clone(payload)
		p[i/8] ^= 1 << (i % 8)
		got, err := decodePayload(p, tables, Limits{}.withDefaults())
		accepted += check("payload", got, err)
	}
	t.Logf("%d of %d payload bit flips decode (values and times can change undetectably without the checksum)", accepted, 8*len(payload))
}

// TestDecodeBomb decompresses tiny frames that expand past the limit.
func TestDecodeBomb(t *testing.T) {
	const size = 80 << 20
	zeros := make([]byte, size)
	declared := magicless(t, zstdEncoder(t, zstd.WithSingleSegment(true), zstd.WithEncoderCRC(false)), zeros)
	// The same frame claiming to hold less: the decoder must stop at the
	// declared size.
	h := zstd.Header{}
	if err := h.Decode(slices.Concat(zstdMagic, declared)); err != nil || h.HeaderSize != 9 {
		t.Fatalf("frame header: %+v, %v; the test expects magic, descriptor and a 4-byte size", h, err)
	}
	lying := slices.Clone(declared)
	binary.LittleEndian.PutUint32(lying[1:], 1000)
	// A streamed frame does not declare its size: refused before
	// decompressing.
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, zstd.WithWindowSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(zeros); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	streamed := buf.Bytes()[len(zstdMagic):]
	tests := []struct {
		name    string
		body    []byte
		lim     Limits
		want    error
		wantMsg string
	}{
		{"declared size", declared, Limits{}, ErrTooLarge, "declares 83886080 bytes, limit is 67108864"},
		{"declared size small limit", declared, Limits{MaxDecompressed: 4096}, ErrTooLarge, "limit is 4096"},
		{"size understated", lying, Limits{}, ErrCorrupt, "decompressing"},
		{"undeclared size", streamed, Limits{}, ErrCorrupt, "not single-segment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.body) > 64<<10 {
				t.Fatalf("bomb is %d bytes, not tiny", len(tt.body))
			}
			_, err := Decode(container(storedZstd, tt.body), Tables{}, tt.lim)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("got %v, want %v mentioning %q", err, tt.want, tt.wantMsg)
			}
		})
	}
}

// TestConcurrent shares the encoder and decoder between goroutines; run
// with -race.
func TestConcurrent(t *testing.T) {
	b := testBatch()
	enc, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	_, _, tables := encodeParts(t, b)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				e, err := Encode(b)
				if err != nil || !bytes.Equal(e.Data, enc.Data) {
					t.Errorf("concurrent Encode: %v", err)
					return
				}
				if _, err := Decode(e.Data, tables, Limits{}); err != nil {
					t.Errorf("concurrent Decode: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}
