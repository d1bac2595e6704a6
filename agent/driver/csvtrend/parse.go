package csvtrend

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// How a file's value columns are named as points (settings.point_from).
const (
	pointFromAuto   = "auto"
	pointFromColumn = "column"
	pointFromFile   = "file"
)

// column is one value column of a trend file.
type column struct {
	// index is the column's position in a row (0 is the timestamp).
	index int
	// ref is the point reference the column feeds.
	ref string
	// unit is the unit from the header's trailing parentheses, if any.
	unit string
	// header is the header cell as written, for messages.
	header string
}

// parser reads trend files. It holds only configuration and is safe to
// share; per-file state lives in a clock and a fileResult.
type parser struct {
	loc       *time.Location
	states    map[string]float64 // keys lower-case
	pointFrom string
}

// splitHeader splits a header cell into its reference and unit: a trailing
// parenthesised part is the unit ("SAT (°F)" -> "SAT", "°F"). A cell that
// is only a parenthesised part keeps it as its reference.
func splitHeader(h string) (ref, unit string) {
	h = strings.TrimSpace(h)
	if !strings.HasSuffix(h, ")") {
		return h, ""
	}
	depth := 0
	for i := len(h) - 1; i >= 0; i-- {
		switch h[i] {
		case ')':
			depth++
		case '(':
			depth--
			if depth == 0 {
				ref = strings.TrimSpace(h[:i])
				if ref == "" {
					return h, ""
				}
				return ref, strings.TrimSpace(h[i+1 : len(h)-1])
			}
		}
	}
	return h, ""
}

// fileStem is the file's base name without its extension: the reference
// of a single-value-column file under the auto and file rules.
func fileStem(name string) string {
	base := filepath.Base(name)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// newCSVReader returns a reader tolerant of what BMS exports contain: rows
// of differing length (reported by the caller) and stray quotes.
func newCSVReader(r io.Reader) *csv.Reader {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.LazyQuotes = true
	cr.ReuseRecord = true
	return cr
}

// bom is the UTF-8 byte order mark spreadsheet exports put first.
var bom = []byte("\xEF\xBB\xBF")

// stripBOM drops a leading byte order mark.
func stripBOM(b []byte) []byte { return bytes.TrimPrefix(b, bom) }

// columns interprets a header row. name is the file's path, for the file
// rule and messages.
func (p *parser) columns(name string, header []string) ([]column, error) {
	if len(header) < 2 {
		return nil, fmt.Errorf("header %q has no value column: want a timestamp column followed by at least one value column", truncate(strings.Join(header, ","), 80))
	}
	// A header that is itself a timestamp means the file has no header.
	if _, err := newClock(p.loc).parse(header[0]); err == nil {
		return nil, fmt.Errorf("first row starts with a timestamp (%q): the file has no header row naming its columns", truncate(header[0], 40))
	}
	var cols []column
	for i, h := range header[1:] {
		ref, unit := splitHeader(h)
		if ref == "" {
			// Trailing commas in the header make nameless columns; they
			// cannot be referenced, so they are skipped.
			continue
		}
		cols = append(cols, column{index: i + 1, ref: ref, unit: unit, header: h})
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("header %q names no value column", truncate(strings.Join(header, ","), 80))
	}
	useFile := false
	switch p.pointFrom {
	case pointFromFile:
		if len(cols) > 1 {
			return nil, fmt.Errorf("point_from is file but the file has %d value columns: use point_from: column (or auto) for multi-column files", len(cols))
		}
		useFile = true
	case pointFromAuto, "":
		useFile = len(cols) == 1
	}
	if stem := fileStem(name); useFile && stem != "" {
		cols[0].ref = stem
	}
	at := make(map[string]int, len(cols))
	for _, c := range cols {
		if prev, dup := at[c.ref]; dup {
			return nil, fmt.Errorf("columns %d and %d both read as point %q: rename one in the export", prev+1, c.index+1, c.ref)
		}
		at[c.ref] = c.index
	}
	return cols, nil
}

// header reads only the header of a file and returns its columns.
func (p *parser) header(name string, r io.Reader) ([]column, error) {
	br := bufio.NewReader(r)
	if b, err := br.Peek(len(bom)); err == nil && bytes.Equal(b, bom) {
		_, _ = br.Discard(len(bom))
	}
	cr := newCSVReader(br)
	rec, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("empty file: no header row")
	}
	if err != nil {
		return nil, fmt.Errorf("reading header: %w", err)
	}
	return p.columns(name, rec)
}

// badCell records the unparseable cells of one column.
type badCell struct {
	count int
	line  int
	text  string
}

// fileResult is what parsing one file produced.
type fileResult struct {
	columns []column
	// rows is the number of complete data rows read.
	rows    int
	samples []telemetry.Sample
	// short lists the lines of rows with fewer or more fields than the
	// header; they are skipped.
	short []int
	// bad maps a column's ref to its unparseable cells.
	bad map[string]*badCell
	// unused lists the refs of columns no point reads.
	unused []string
}

// ctxCheckEvery is how many rows are parsed between context checks.
const ctxCheckEvery = 1024

// parse reads a whole trend file. ids maps a column's ref to the point IDs
// that read it; columns it maps to nothing are skipped. An error means the
// file as a whole cannot be trusted (no header, a bad timestamp, broken
// CSV); a bad value cell or a short row is recorded and skipped.
func (p *parser) parse(ctx context.Context, name string, data []byte, ids func(ref string) []uint64) (*fileResult, error) {
	cr := newCSVReader(bytes.NewReader(stripBOM(data)))
	head, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("empty file: no header row")
	}
	if err != nil {
		return nil, fmt.Errorf("reading header: %w", err)
	}
	cols, err := p.columns(name, head)
	if err != nil {
		return nil, fmt.Errorf("line 1: %w", err)
	}
	width := len(head)
	res := &fileResult{columns: cols, bad: map[string]*badCell{}}
	type target struct {
		col column
		ids []uint64
	}
	var targets []target
	for _, c := range cols {
		if want := ids(c.ref); len(want) > 0 {
			targets = append(targets, target{c, want})
		} else {
			res.unused = append(res.unused, c.ref)
		}
	}
	clk := newClock(p.loc)
	for n := 0; ; n++ {
		if n%ctxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("malformed CSV: %w", err)
		}
		line, _ := cr.FieldPos(0)
		if len(rec) != width && !(len(rec) > width && allEmpty(rec[width:])) {
			res.short = append(res.short, line)
			continue
		}
		t, err := clk.parse(rec[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		ms := t.UnixMilli()
		res.rows++
		for _, tg := range targets {
			cell := strings.TrimSpace(rec[tg.col.index])
			if cell == "" {
				continue // not logged at this time
			}
			v, ok := p.value(cell)
			if !ok {
				b := res.bad[tg.col.ref]
				if b == nil {
					b = &badCell{line: line, text: truncate(cell, 40)}
					res.bad[tg.col.ref] = b
				}
				b.count++
				continue
			}
			for _, id := range tg.ids {
				res.samples = append(res.samples, telemetry.Sample{PointID: id, Time: ms, Value: v, Status: telemetry.StatusOK})
			}
		}
	}
	return res, nil
}

// value parses a non-empty cell: a finite number, or a state text.
func (p *parser) value(cell string) (float64, bool) {
	if v, err := strconv.ParseFloat(cell, 64); err == nil {
		// NaN and Inf are what some exports write for "no value"; they are
		// not measurements.
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, false
		}
		return v, true
	}
	v, ok := p.states[strings.ToLower(cell)]
	return v, ok
}

func allEmpty(cells []string) bool {
	for _, c := range cells {
		if strings.TrimSpace(c) != "" {
			return false
		}
	}
	return true
}
