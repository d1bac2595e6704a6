package export

import (
	"bytes"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

func TestWriteParquetRoundTrip(t *testing.T) {
	base := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC).UnixMilli()
	var in []telemetry.Sample
	for p := range 3 {
		for m := range 1000 {
			in = append(in, telemetry.Sample{PointID: 1<<63 + uint64(p), Time: base + int64(m)*60_000, Value: float64(m) / 3, Status: telemetry.Status(m % 3)})
		}
	}
	in = append(in, telemetry.Sample{PointID: 1<<63 + 9, Time: base, Value: math.NaN(), Status: telemetry.StatusCommFailure})
	var buf bytes.Buffer
	if err := WriteParquet(&buf, in); err != nil {
		t.Fatal(err)
	}
	rows, err := parquet.Read[Row](bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatalf("reading the file back: %v", err)
	}
	if len(rows) != len(in) {
		t.Fatalf("%d rows, want %d", len(rows), len(in))
	}
	for i, r := range rows {
		s := in[i]
		if r.PointID != s.PointID || r.Time.UnixMilli() != s.Time || r.Status != s.Status.String() ||
			math.Float64bits(r.Value) != math.Float64bits(s.Value) {
			t.Fatalf("row %d = %+v, sample %+v", i, r, s)
		}
	}
	if rows[0].PointHex != "8000000000000000" {
		t.Errorf("point_hex %q", rows[0].PointHex)
	}
	f, err := parquet.OpenFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Schema().Fields()[0].Name(); got != "point_id" {
		t.Errorf("first column %q", got)
	}
	t.Logf("%d samples in %d bytes (%.2f B/sample)", len(in), buf.Len(), float64(buf.Len())/float64(len(in)))
}

// TestParquetWriterChunks: a file written from samples handed over in
// chunks of any size, row groups crossed included, is the same bytes as
// one written from all of them at once.
func TestParquetWriterChunks(t *testing.T) {
	base := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC).UnixMilli()
	// Small row groups and row batches: the test runs as the real sizes
	// would, in a fraction of the time.
	const group, batch = 1000, 300
	in := make([]telemetry.Sample, group+batch+17)
	for i := range in {
		in[i] = telemetry.Sample{PointID: uint64(i / 1440), Time: base + int64(i%1440)*60_000, Value: math.Round(100*math.Sin(float64(i))) / 100, Status: telemetry.Status(i % 2)}
	}
	var whole bytes.Buffer
	pw := newParquetWriter(&whole, group, batch)
	if err := pw.Write(in); err != nil {
		t.Fatal(err)
	}
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int{1, 300, 299, 999, 1001, len(in)} {
		t.Run(strconv.Itoa(chunk), func(t *testing.T) {
			var buf bytes.Buffer
			pw := newParquetWriter(&buf, group, batch)
			for lo := 0; lo < len(in); lo += chunk {
				if err := pw.Write(in[lo:min(len(in), lo+chunk)]); err != nil {
					t.Fatal(err)
				}
			}
			if err := pw.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), whole.Bytes()) {
				t.Fatalf("written in chunks of %d: %d bytes, differing from the %d of one write", chunk, buf.Len(), whole.Len())
			}
		})
	}
	f, err := parquet.OpenFile(bytes.NewReader(whole.Bytes()), int64(whole.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if g := len(f.RowGroups()); g != 2 {
		t.Errorf("%d row groups, want 2", g)
	}
	if n := f.NumRows(); n != int64(len(in)) {
		t.Errorf("%d rows, want %d", n, len(in))
	}
}
