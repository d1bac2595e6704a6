package export

import (
	"bytes"
	"math"
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
