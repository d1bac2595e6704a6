// Package sim holds device simulators for the demo and the tests: sources of
// realistic data that the agent reads exactly as it reads real buildings.
package sim

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// TrendReplay replays a real trend export into a folder, as a BMS that
// exports a CSV file every few minutes would, but faster: a row recorded at
// t is written when start + (t - first)/Speed has passed, stamped with that
// time. At Speed 900, a 15-minute trend becomes a 1-second one.
type TrendReplay struct {
	// Source is the trend CSV to replay: a header, then rows whose first
	// column is a timestamp in one of the forms BMS exports use
	// (2006-01-02 15:04:05, 02-Jan-06 3:04:05 PM MST, 1/2/2006 15:04).
	Source string
	// Location resolves timestamps without a zone and zone abbreviations;
	// nil is UTC.
	Location *time.Location
	// Dir receives the exported files, named Prefix-000001.csv and so on.
	Dir    string
	Prefix string
	// Speed is how many times faster than recorded the trend plays.
	Speed float64
	// Every is how often a file is exported. Default 1s.
	Every time.Duration
	// Loop restarts from the first row at the end of the file.
	Loop bool
}

type trendRow struct {
	at   time.Duration // offset from the first row
	rest string        // everything after the timestamp, verbatim
}

// Rows reads the source, skipping rows without a valid timestamp or with
// fewer fields than the header (such as a truncated last line).
func (r *TrendReplay) rows() (header string, rows []trendRow, err error) {
	data, err := os.ReadFile(r.Source)
	if err != nil {
		return "", nil, fmt.Errorf("reading trend %s: %w", r.Source, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var first time.Time
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if header == "" {
			header = line
			continue
		}
		ts, rest, ok := strings.Cut(line, ",")
		if !ok || strings.Count(line, ",") != strings.Count(header, ",") {
			continue
		}
		t, ok := parseTrendTime(ts, r.Location)
		if !ok {
			continue
		}
		if first.IsZero() {
			first = t
		}
		rows = append(rows, trendRow{at: t.Sub(first), rest: rest})
	}
	if err := sc.Err(); err != nil {
		return "", nil, fmt.Errorf("reading trend %s: %w", r.Source, err)
	}
	if len(rows) == 0 {
		return "", nil, fmt.Errorf("trend %s has no rows with a timestamp", r.Source)
	}
	return header, rows, nil
}

// Run exports files until ctx is done or, without Loop, the trend ends. It
// returns how many rows it wrote.
func (r *TrendReplay) Run(ctx context.Context) (int, error) {
	if r.Speed <= 0 {
		return 0, fmt.Errorf("trend replay: speed must be positive")
	}
	every := r.Every
	if every <= 0 {
		every = time.Second
	}
	header, rows, err := r.rows()
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return 0, fmt.Errorf("trend replay: %w", err)
	}
	span := rows[len(rows)-1].at + rows[len(rows)-1].at/time.Duration(len(rows))
	start := time.Now().Truncate(time.Second)
	next, file, written := 0, 0, 0
	var loopOffset time.Duration
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		now := time.Now()
		var buf bytes.Buffer
		for {
			if next == len(rows) {
				if !r.Loop {
					break
				}
				next, loopOffset = 0, loopOffset+span
			}
			at := start.Add(time.Duration(float64(rows[next].at+loopOffset) / r.Speed))
			if at.After(now) {
				break
			}
			if buf.Len() == 0 {
				buf.WriteString(header + "\n")
			}
			fmt.Fprintf(&buf, "%s,%s\n", at.UTC().Format(time.RFC3339Nano), rows[next].rest)
			next++
			written++
		}
		if buf.Len() > 0 {
			file++
			if err := writeAtomic(filepath.Join(r.Dir, fmt.Sprintf("%s-%06d.csv", r.Prefix, file)), buf.Bytes()); err != nil {
				return written, err
			}
		}
		if next == len(rows) && !r.Loop {
			return written, nil
		}
		select {
		case <-ctx.Done():
			return written, nil
		case <-tick.C:
		}
	}
}

// writeAtomic writes a file under a name the reader's pattern does not
// match, then renames it, so a reader never sees half a file.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".part"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("trend replay: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("trend replay: %w", err)
	}
	return nil
}

var trendLayouts = []string{"2006-01-02 15:04:05", "02-Jan-06 3:04:05 PM MST", "1/2/2006 15:04"}

// parseTrendTime reads the timestamp forms of the real exports. Only the
// offsets between rows matter for a replay, so an abbreviation the location
// does not know is read as UTC rather than refused.
func parseTrendTime(s string, loc *time.Location) (time.Time, bool) {
	if loc == nil {
		loc = time.UTC
	}
	for _, layout := range trendLayouts {
		if t, err := time.ParseInLocation(layout, strings.TrimSpace(s), loc); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
