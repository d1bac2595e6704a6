package bacnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// backfillState remembers, per point with a trend log, when it was last
// read: a Read after a longer gap fetches the trend log's records since.
// Marks are staged by Read and become durable on Commit (once the samples
// are in the agent's buffer), in a file under the data directory when the
// agent has one, so a restart backfills the time the agent was down.
type backfillState struct {
	path string

	mu        sync.Mutex
	committed map[string]int64 // point ref -> Unix ms of the last sample
	staged    map[string]int64
}

func newBackfillState(dataDir, device string) *backfillState {
	s := &backfillState{committed: map[string]int64{}, staged: map[string]int64{}}
	if dataDir != "" {
		safe := strings.Map(func(r rune) rune {
			if r == '/' || r == '\\' || r == 0 || r == '.' {
				return '_'
			}
			return r
		}, device)
		s.path = filepath.Join(dataDir, "bacnet", safe+".backfill.json")
	}
	return s
}

func (s *backfillState) load() error {
	if s.path == "" {
		return nil
	}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading backfill state: %w", err)
	}
	m := map[string]int64{}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("backfill state %s is corrupt (delete it to start afresh): %w", s.path, err)
	}
	s.mu.Lock()
	for k, v := range m {
		if v > s.committed[k] {
			s.committed[k] = v
		}
	}
	s.mu.Unlock()
	return nil
}

// checkpoint is the marks as the last Read left them, committed or not,
// as JSON: what the agent's buffer stores with that Read's samples.
func (s *backfillState) checkpoint() []byte {
	s.mu.Lock()
	m := maps.Clone(s.committed)
	for k, v := range s.staged {
		m[k] = max(m[k], v)
	}
	s.mu.Unlock()
	if len(m) == 0 {
		return nil
	}
	b, _ := json.Marshal(m)
	return b
}

// restore takes the marks of a checkpoint where they are further along
// than the committed ones.
func (s *backfillState) restore(b []byte) error {
	m := map[string]int64{}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("backfill marks from the buffer are corrupt: %w", err)
	}
	s.mu.Lock()
	for k, v := range m {
		s.committed[k] = max(s.committed[k], v)
	}
	s.mu.Unlock()
	return nil
}

func (s *backfillState) last(ref string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(s.staged[ref], s.committed[ref])
}

func (s *backfillState) stage(ref string, ms int64) {
	s.mu.Lock()
	s.staged[ref] = max(s.staged[ref], ms)
	s.mu.Unlock()
}

// discard forgets the staged marks: their samples were not buffered, so
// the next read must backfill from the committed ones again.
func (s *backfillState) discard() {
	s.mu.Lock()
	clear(s.staged)
	s.mu.Unlock()
}

func (s *backfillState) commit() error {
	s.mu.Lock()
	if len(s.staged) == 0 {
		s.mu.Unlock()
		return nil
	}
	maps.Copy(s.committed, s.staged)
	clear(s.staged)
	snapshot := maps.Clone(s.committed)
	s.mu.Unlock()
	if s.path == "" {
		return nil
	}
	b, _ := json.Marshal(snapshot)
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("saving backfill state: %w", err)
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("saving backfill state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("saving backfill state: %w", err)
	}
	return nil
}

// backfillPage is how many records one ReadRange asks for; the device
// returns fewer, flagged "more items", when they do not fit.
const backfillPage = 200

// backfill returns the trend-log records of points read after a gap.
func (d *Driver) backfill(ctx context.Context, c *bacnet.Client, dev bacnet.Device, points []driver.Point, parsed []point, valid []bool, res []result, now time.Time) []telemetry.Sample {
	var out []telemetry.Sample
	for i, p := range points {
		pt := parsed[i]
		if !valid[i] || pt.trend == nil || res[i].commFailed {
			continue
		}
		last := d.state.last(p.Ref)
		if last > 0 && now.Sub(time.UnixMilli(last)) > d.cfg.backfillAfter {
			from := time.UnixMilli(last)
			if oldest := now.Add(-d.cfg.backfillMax); from.Before(oldest) {
				from = oldest
			}
			got, err := readTrend(ctx, c, dev, *pt.trend, from, now, d.cfg.loc, p.ID)
			if err != nil {
				// Keep the old mark: the next read tries again.
				d.log.Warn("trend-log backfill failed", "point", p.Ref, "trend_log", pt.trend.String(), "err", err)
				continue
			}
			d.log.Info("backfilled a gap from the trend log", "point", p.Ref, "trend_log", pt.trend.String(),
				"from", from.UTC().Format(time.RFC3339), "samples", len(got))
			out = append(out, got...)
		}
		d.state.stage(p.Ref, now.UnixMilli())
	}
	return out
}

// readTrend reads a trend log's records logged after from and before to.
func readTrend(ctx context.Context, c *bacnet.Client, dev bacnet.Device, tl bacnet.ObjectID, from, to time.Time, loc *time.Location, id uint64) ([]telemetry.Sample, error) {
	var out []telemetry.Sample
	ref := from.In(loc)
	for range 1000 { // bounded: 200k records at most per gap
		r, err := c.ReadRange(ctx, dev, tl, bacnet.Prop(bacnet.PropLogBuffer), bacnet.Range{Kind: bacnet.RangeByTime, Time: ref, Count: backfillPage})
		if err != nil {
			return nil, err
		}
		recs, err := bacnet.DecodeLogRecords(r.Items, loc)
		if err != nil {
			return nil, err
		}
		for _, rec := range recs {
			if !rec.Time.After(from) || !rec.Time.Before(to) || !rec.HasValue {
				continue
			}
			st := telemetry.StatusOK
			if rec.HasStatusFlags {
				_, st = result{value: bacnet.Double(rec.Value), hasValue: true, reliable: true, flags: rec.StatusFlags, hasFlags: true}.sample()
			}
			out = append(out, telemetry.Sample{PointID: id, Time: rec.Time.UnixMilli(), Value: rec.Value, Status: st})
		}
		if len(recs) == 0 || !r.More || !recs[len(recs)-1].Time.Before(to) {
			return out, nil
		}
		ref = recs[len(recs)-1].Time
	}
	return out, nil
}
