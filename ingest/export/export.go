// Package export writes archived samples in formats analytics engines read
// directly: Parquet, so Spark, Azure Synapse or DuckDB can query a day of a
// site without knowing the batch format.
package export

import (
	"fmt"
	"io"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Row is one sample as a Parquet row. The point id is the 64-bit
// pseudonym (an unsigned INT64 column; DuckDB reads it as UBIGINT, Spark as
// DECIMAL(20,0)); point_hex is the same id as the archive's tools print it,
// for joining with the catalogue by hand.
type Row struct {
	PointID  uint64    `parquet:"point_id"`
	PointHex string    `parquet:"point_hex,dict"`
	Time     time.Time `parquet:"time,timestamp(millisecond)"`
	Value    float64   `parquet:"value"`
	Status   string    `parquet:"status,dict"`
}

// rowGroupRows bounds a row group: big enough for good compression, small
// enough that readers can skip by statistics within a day.
const rowGroupRows = 1 << 20

// WriteParquet writes samples (sorted by point and time, as the archive
// keeps them) as one Parquet file to w, zstd-compressed, with each column's
// statistics so engines can prune by point and time.
func WriteParquet(w io.Writer, samples []telemetry.Sample) error {
	pw := parquet.NewGenericWriter[Row](w,
		parquet.Compression(&zstd.Codec{Level: zstd.SpeedDefault}),
		parquet.CreatedBy("sightglass", "1", ""),
		parquet.KeyValueMetadata("sightglass.format", "one row per sample; point_id is the site's pseudonymous point id"),
	)
	rows := make([]Row, 0, min(len(samples), 64<<10))
	flush := func() error {
		if _, err := pw.Write(rows); err != nil {
			return fmt.Errorf("writing Parquet rows: %w", err)
		}
		rows = rows[:0]
		return nil
	}
	written := 0
	for _, s := range samples {
		rows = append(rows, Row{PointID: s.PointID, PointHex: fmt.Sprintf("%016x", s.PointID), Time: time.UnixMilli(s.Time).UTC(), Value: s.Value, Status: s.Status.String()})
		if len(rows) == cap(rows) {
			if err := flush(); err != nil {
				return err
			}
		}
		written++
		if written%rowGroupRows == 0 {
			if err := flush(); err != nil {
				return err
			}
			if err := pw.Flush(); err != nil {
				return fmt.Errorf("writing a Parquet row group: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if err := pw.Close(); err != nil {
		return fmt.Errorf("finishing the Parquet file: %w", err)
	}
	return nil
}
