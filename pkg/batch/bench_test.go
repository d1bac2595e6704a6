package batch

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // the S7 site's local time, whatever the host has installed

	"github.com/klauspost/compress/zstd"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// bmsDir holds real trend logs (see its README.md).
const bmsDir = "../../testdata/bms"

// dataset is one device's trend log as samples sorted by time, then point.
type dataset struct {
	name       string
	resolution time.Duration
	samples    []telemetry.Sample
}

// pointID gives a column a random-looking 64-bit id, as the anonymizer
// would.
func pointID(dataset, column string) uint64 {
	sum := sha256.Sum256([]byte(dataset + "/" + column))
	return binary.BigEndian.Uint64(sum[:8])
}

var zoneOffsets = map[string]int{"EST": -5, "EDT": -4, "CST": -6, "CDT": -5}

// parseTrendTime reads the three timestamp forms of the trend logs.
// Zone abbreviations are mapped by hand: time.Parse would give an
// abbreviation it does not know a zero offset.
func parseTrendTime(s string, local *time.Location) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.ParseInLocation("2006-01-02 15:04:05", s, time.UTC); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("1/2/2006 15:04", s, local); err == nil {
		return t, nil
	}
	if i := strings.LastIndexByte(s, ' '); i > 0 {
		if off, ok := zoneOffsets[s[i+1:]]; ok {
			return time.ParseInLocation("02-Jan-06 3:04:05 PM", s[:i], time.FixedZone(s[i+1:], off*3600))
		}
	}
	return time.Time{}, fmt.Errorf("unrecognised timestamp %q", s)
}

// parseTrendValue reads a number or a binary state; ok is false for an
// empty cell (not logged at this time).
func parseTrendValue(s string) (v float64, ok bool, err error) {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "":
		return 0, false, nil
	case "on", "true", "occupied", "active":
		return 1, true, nil
	case "off", "false", "unoccupied", "inactive":
		return 0, true, nil
	}
	v, err = strconv.ParseFloat(s, 64)
	return v, err == nil, err
}

// loadTrendCSV reads a wide trend log: a timestamp column, then one column
// per point. A short final row (a file truncated upstream) is skipped.
func loadTrendCSV(path, device string, local *time.Location) ([]telemetry.Sample, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(bytes.NewReader(raw))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("reading %s: empty", path)
	}
	header := rows[0]
	ids := make([]uint64, len(header))
	for i, h := range header[1:] {
		ids[i+1] = pointID(device, strings.TrimSpace(h))
	}
	var out []telemetry.Sample
	for n, row := range rows[1:] {
		if len(row) != len(header) {
			if n == len(rows)-2 {
				break // truncated last row
			}
			return nil, fmt.Errorf("%s row %d: %d fields, want %d", path, n+2, len(row), len(header))
		}
		t, err := parseTrendTime(row[0], local)
		if err != nil {
			return nil, fmt.Errorf("%s row %d: %w", path, n+2, err)
		}
		for i, cell := range row[1:] {
			v, ok, err := parseTrendValue(cell)
			if err != nil {
				if n == len(rows)-2 {
					break
				}
				return nil, fmt.Errorf("%s row %d column %q: %w", path, n+2, header[i+1], err)
			}
			if ok {
				out = append(out, telemetry.Sample{PointID: ids[i+1], Time: t.UnixMilli(), Value: v})
			}
		}
	}
	return out, nil
}

func sortByTime(s []telemetry.Sample) {
	slices.SortStableFunc(s, func(a, b telemetry.Sample) int {
		if a.Time != b.Time {
			return int(a.Time - b.Time)
		}
		if a.PointID < b.PointID {
			return -1
		}
		if a.PointID > b.PointID {
			return 1
		}
		return 0
	})
}

var loadDatasets = sync.OnceValues(func() ([]dataset, error) {
	chicago, err := time.LoadLocation("America/Chicago")
	if err != nil {
		return nil, err
	}
	var out []dataset
	for _, f := range []struct {
		name string
		res  time.Duration
	}{{"AHU7", 15 * time.Minute}, {"RTU11", time.Hour}} {
		s, err := loadTrendCSV(filepath.Join(bmsDir, "ahu7", f.name+".csv"), f.name, time.UTC)
		if err != nil {
			return nil, err
		}
		sortByTime(s)
		out = append(out, dataset{f.name, f.res, s})
	}
	files, err := filepath.Glob(filepath.Join(bmsDir, "s7", "*.csv"))
	if err != nil {
		return nil, err
	}
	var s7 []telemetry.Sample
	for _, f := range files {
		// Each file is one point: a time column and a value column, so
		// the file name names the point.
		s, err := loadTrendCSV(f, "S7/"+filepath.Base(f), chicago)
		if err != nil {
			return nil, err
		}
		s7 = append(s7, s...)
	}
	sortByTime(s7)
	out = append(out, dataset{"S7", 5 * time.Minute, s7})
	return out, nil
})

func datasetsOrSkip(tb testing.TB) []dataset {
	tb.Helper()
	ds, err := loadDatasets()
	if err != nil {
		tb.Fatalf("loading trend data: %v", err)
	}
	return ds
}

// windows slices samples (sorted by time) into consecutive windows of
// width ms aligned to the epoch; empty windows are skipped.
func windows(samples []telemetry.Sample, width int64) [][]telemetry.Sample {
	var out [][]telemetry.Sample
	for lo := 0; lo < len(samples); {
		w := floorDiv(samples[lo].Time, width)
		hi := lo
		for hi < len(samples) && floorDiv(samples[hi].Time, width) == w {
			hi++
		}
		out = append(out, samples[lo:hi])
		lo = hi
	}
	return out
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// benchFirstSeq is where a real agent's sequence numbers start: a new
// buffer numbers from the time in milliseconds (agent/daemon), so the
// header carries a 6-byte varint, not the 1 or 2 bytes of a count from 1.
const benchFirstSeq = 1_764_582_400_000

// benchBatch wraps window n in a realistic header: ids as the ingest
// issues them, the agent's sequence number and health.
func benchBatch(samples []telemetry.Sample, n uint64) *Batch {
	end := samples[len(samples)-1].Time
	return &Batch{
		Header: Header{
			AgentID: "ag-5f2c9d1e",
			Site:    "st-71b3a0",
			Seq:     benchFirstSeq + n,
			SentAt:  end + 1200,
			Health: Health{
				BufferBytes:   65536 + 37*n,
				PollErrors:    n / 97,
				DevicesUp:     3,
				UptimeSeconds: 3600 + 900*n,
			},
		},
		Samples: samples,
	}
}

type sppCase struct {
	name  string
	width func(res time.Duration) time.Duration
}

var sppCases = []sppCase{
	{"spp=1", func(r time.Duration) time.Duration { return r }},
	{"spp=15", func(r time.Duration) time.Duration { return 15 * r }},
	{"spp=60", func(r time.Duration) time.Duration { return 60 * r }},
	{"spp=day", func(time.Duration) time.Duration { return 24 * time.Hour }},
}

// allBatches is every window of every dataset for one spp case.
func allBatches(ds []dataset, c sppCase) []*Batch {
	var out []*Batch
	for _, d := range ds {
		for i, w := range windows(d.samples, c.width(d.resolution).Milliseconds()) {
			out = append(out, benchBatch(w, uint64(i+1)))
		}
	}
	return out
}

// BenchmarkWire encodes every window of the real trend logs and reports
// the wire size. B/sample excludes the point table, which travels once per
// distinct point set; table-B/batch is the bytes of the distinct tables
// spread over all batches (its amortized cost), and table-B/sample the
// same per sample.
func BenchmarkWire(b *testing.B) {
	ds := datasetsOrSkip(b)
	for _, c := range sppCases {
		b.Run(c.name, func(b *testing.B) {
			batches := allBatches(ds, c)
			var bytes, tableBytes, samples int
			for b.Loop() {
				bytes, tableBytes, samples = 0, 0, 0
				seen := map[TableHash]bool{}
				for _, bt := range batches {
					enc, err := Encode(bt)
					if err != nil {
						b.Fatal(err)
					}
					bytes += len(enc.Data)
					samples += len(bt.Samples)
					if !seen[enc.TableHash] {
						seen[enc.TableHash] = true
						tableBytes += len(enc.Table)
					}
				}
			}
			b.ReportMetric(float64(bytes)/float64(samples), "B/sample")
			b.ReportMetric(float64(tableBytes)/float64(len(batches)), "table-B/batch")
			b.ReportMetric(float64(tableBytes)/float64(samples), "table-B/sample")
			b.ReportMetric(float64(samples)/float64(len(batches)), "samples/batch")
		})
	}
}

// BenchmarkNaiveZstd is the reference: each sample as a 24-byte row
// (id, ms time, float64 value) and each batch zstd-compressed at the
// default level.
func BenchmarkNaiveZstd(b *testing.B) {
	ds := datasetsOrSkip(b)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		b.Fatal(err)
	}
	defer enc.Close()
	for _, c := range sppCases {
		b.Run(c.name, func(b *testing.B) {
			batches := allBatches(ds, c)
			var bytes, samples int
			var raw, dst []byte
			for b.Loop() {
				bytes, samples = 0, 0
				for _, bt := range batches {
					raw = raw[:0]
					for _, s := range bt.Samples {
						raw = binary.LittleEndian.AppendUint64(raw, s.PointID)
						raw = binary.LittleEndian.AppendUint64(raw, uint64(s.Time))
						raw = binary.LittleEndian.AppendUint64(raw, math.Float64bits(s.Value))
					}
					dst = enc.EncodeAll(raw, dst[:0])
					bytes += len(dst)
					samples += len(bt.Samples)
				}
			}
			b.ReportMetric(float64(bytes)/float64(samples), "B/sample")
		})
	}
}

// BenchmarkDecode measures decoding speed over the real data at spp=1
// (batches stored raw), spp=15 and spp=day (mostly compressed).
func BenchmarkDecode(b *testing.B) {
	ds := datasetsOrSkip(b)
	for _, c := range []sppCase{sppCases[0], sppCases[1], sppCases[3]} {
		b.Run(c.name, func(b *testing.B) {
			tables := Tables{}
			var data [][]byte
			samples := 0
			for _, bt := range allBatches(ds, c) {
				enc, err := Encode(bt)
				if err != nil {
					b.Fatal(err)
				}
				ids, h, err := DecodePointTable(enc.Table)
				if err != nil {
					b.Fatal(err)
				}
				tables[h] = ids
				data = append(data, enc.Data)
				samples += len(bt.Samples)
			}
			b.ResetTimer()
			for b.Loop() {
				for _, d := range data {
					if _, err := Decode(d, tables, Limits{}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(samples)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// TestTrendLoader checks the loader against facts about the files, so the
// benchmarks measure what they say.
func TestTrendLoader(t *testing.T) {
	ds := datasetsOrSkip(t)
	for _, d := range ds {
		points := map[uint64]int{}
		for _, s := range d.samples {
			points[s.PointID]++
		}
		t.Logf("%s: %d samples, %d points", d.name, len(d.samples), len(points))
		if len(d.samples) == 0 {
			t.Errorf("%s: no samples", d.name)
		}
	}
	wantPoints := map[string]int{"AHU7": 20, "RTU11": 10, "S7": 30}
	for _, d := range ds {
		points := map[uint64]bool{}
		for _, s := range d.samples {
			points[s.PointID] = true
		}
		if len(points) != wantPoints[d.name] {
			t.Errorf("%s: %d points with data, want %d", d.name, len(points), wantPoints[d.name])
		}
	}
	tests := []struct {
		in   string
		want string
	}{
		{"2025-01-01 00:15:00", "2025-01-01T00:15:00Z"},
		{"5/7/2022 12:00", "2022-05-07T17:00:00Z"},
		{"07-May-22 12:00:00 PM CDT", "2022-05-07T17:00:00Z"},
		{"02-Mar-22 12:00:43 PM CST", "2022-03-02T18:00:43Z"},
		{"01-Jan-26 12:00:00 AM EST", "2026-01-01T05:00:00Z"},
	}
	chicago, _ := time.LoadLocation("America/Chicago")
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseTrendTime(tt.in, chicago)
			if err != nil {
				t.Fatal(err)
			}
			if s := got.UTC().Format(time.RFC3339); s != tt.want {
				t.Errorf("got %s, want %s", s, tt.want)
			}
		})
	}
}
