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
// statistics so engines can prune by point and time. It is a
// ParquetWriter given all the samples at once.
func WriteParquet(w io.Writer, samples []telemetry.Sample) error {
	pw := NewParquetWriter(w)
	if err := pw.Write(samples); err != nil {
		return err
	}
	return pw.Close()
}

// ParquetWriter writes one Parquet file from samples handed to it in
// chunks, as compact.Compactor.EachRange streams them, so an export holds
// one row group's rows rather than the whole day. The file is the same
// bytes however the samples are cut into chunks.
type ParquetWriter struct {
	pw      *parquet.GenericWriter[Row]
	rows    []Row
	written int
	group   int // rows per row group: rowGroupRows, less in tests
}

// NewParquetWriter returns a writer of one Parquet file to w; Close
// finishes the file.
func NewParquetWriter(w io.Writer) *ParquetWriter {
	return newParquetWriter(w, rowGroupRows, writeRows)
}

func newParquetWriter(w io.Writer, group, batch int) *ParquetWriter {
	return &ParquetWriter{
		pw: parquet.NewGenericWriter[Row](w,
			parquet.Compression(&zstd.Codec{Level: zstd.SpeedDefault}),
			parquet.CreatedBy("sightglass", "1", ""),
			parquet.KeyValueMetadata("sightglass.format", "one row per sample; point_id is the site's pseudonymous point id"),
		),
		rows:  make([]Row, 0, batch),
		group: group,
	}
}

// writeRows is how many rows go to the Parquet writer at a time.
const writeRows = 64 << 10

// Write adds samples (continuing the order of those written before) to the
// file. It does not keep samples.
func (p *ParquetWriter) Write(samples []telemetry.Sample) error {
	for _, s := range samples {
		p.rows = append(p.rows, Row{PointID: s.PointID, PointHex: fmt.Sprintf("%016x", s.PointID), Time: time.UnixMilli(s.Time).UTC(), Value: s.Value, Status: s.Status.String()})
		if len(p.rows) == cap(p.rows) {
			if err := p.flush(); err != nil {
				return err
			}
		}
		p.written++
		if p.written%p.group == 0 {
			if err := p.flush(); err != nil {
				return err
			}
			if err := p.pw.Flush(); err != nil {
				return fmt.Errorf("writing a Parquet row group: %w", err)
			}
		}
	}
	return nil
}

func (p *ParquetWriter) flush() error {
	if _, err := p.pw.Write(p.rows); err != nil {
		return fmt.Errorf("writing Parquet rows: %w", err)
	}
	p.rows = p.rows[:0]
	return nil
}

// Close writes the rows still buffered and the file's footer. It does not
// close the underlying writer.
func (p *ParquetWriter) Close() error {
	if err := p.flush(); err != nil {
		return err
	}
	if err := p.pw.Close(); err != nil {
		return fmt.Errorf("finishing the Parquet file: %w", err)
	}
	return nil
}
