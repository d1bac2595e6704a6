package bacnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// backfillState remembers, per point with a trend log, when it was last
// read live and which gaps its trend log still owes: a Read after a longer
// gap than backfill_after fetches the records logged in it. The live mark
// always advances (live reads cover their own time); a gap the trend log
// could not fill yet (no ReadRange, a wrong trend_log, a bad page) is kept
// with its own start and end and retried with backoff, so a late success
// fills only the gap, never the time live samples already cover.
//
// Marks are staged by Read and become durable on Commit (once the samples
// are in the agent's buffer), in a file under the data directory when the
// agent has one, so a restart backfills the time the agent was down. The
// staged marks are the driver's, not one Read's: Commit has no way to say
// which Read's samples are buffered, and it need not, since the agent
// refuses concurrency above 1 for a Committer (agent/poll), so a Read's
// marks are committed before the next Read starts.
type backfillState struct {
	path string

	mu        sync.Mutex
	committed map[string]mark // point ref -> its mark
	staged    map[string]mark
	// retry is each point's backfill failures, in memory only: a restart
	// may retry at once.
	retry map[string]retryState
	// spacings are the last two spans between a point's live reads, in
	// memory: they stand for the interval of points read at the device's.
	spacings map[string][]time.Duration
}

// mark is a point's backfill state.
type mark struct {
	// Last is the Unix ms of the point's last live read.
	Last int64 `json:"last"`
	// Gaps are the spans (Unix ms, both ends exclusive) the trend log
	// still owes, oldest first.
	Gaps []gap `json:"gaps,omitempty"`
}

// gap is a span of time no sample covers yet: records logged strictly
// after From and before To belong in it.
type gap struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

type retryState struct {
	failures int
	at       time.Time // the last failure
}

// maxGaps bounds the gaps kept per point, so the checkpoint stays small
// (it is stored with every read): a trend log that failed through more
// outages than this loses its oldest gap, which is logged.
const maxGaps = 16

// stateVersion marks the checkpoint format with gaps; version 1 was a bare
// map of point ref to the Unix ms of its last read.
const stateVersion = 2

type stateFile struct {
	Version int             `json:"version"`
	Marks   map[string]mark `json:"marks"`
}

func newBackfillState(dataDir, device string) *backfillState {
	s := &backfillState{committed: map[string]mark{}, staged: map[string]mark{}, retry: map[string]retryState{}, spacings: map[string][]time.Duration{}}
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

// decodeState reads a state of either version.
func decodeState(b []byte) (map[string]mark, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, err
	}
	if _, ok := probe["version"]; !ok {
		// Version 1: point refs never spell "version" (they need a colon).
		old := map[string]int64{}
		if err := json.Unmarshal(b, &old); err != nil {
			return nil, err
		}
		m := make(map[string]mark, len(old))
		for k, v := range old {
			m[k] = mark{Last: v}
		}
		return m, nil
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	if f.Version != stateVersion {
		return nil, fmt.Errorf("version %d, want %d (written by a newer agent?)", f.Version, stateVersion)
	}
	for k, m := range f.Marks {
		for _, g := range m.Gaps {
			if g.From >= g.To || g.To > m.Last {
				return nil, fmt.Errorf("point %q: gap %d..%d is not before its mark %d", k, g.From, g.To, m.Last)
			}
		}
		if len(m.Gaps) > maxGaps {
			return nil, fmt.Errorf("point %q: %d gaps, at most %d are kept", k, len(m.Gaps), maxGaps)
		}
	}
	return f.Marks, nil
}

func encodeState(m map[string]mark) []byte {
	b, _ := json.Marshal(stateFile{Version: stateVersion, Marks: m})
	return b
}

// takeLater keeps, per point, whichever of two marks was read later, whole
// with its gaps: the later state already accounts for the earlier's gaps.
// On a tie from wins: two reads within one millisecond (or a clock that
// stepped back, whose reads keep the mark where it was) still commit what
// the later one filled.
func takeLater(into, from map[string]mark) {
	for k, m := range from {
		if cur, ok := into[k]; !ok || m.Last >= cur.Last {
			into[k] = m
		}
	}
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
	m, err := decodeState(b)
	if err != nil {
		return fmt.Errorf("backfill state %s is corrupt (delete it to start afresh): %w", s.path, err)
	}
	s.mu.Lock()
	takeLater(s.committed, m)
	s.mu.Unlock()
	return nil
}

// checkpoint is the marks as the last Read left them, committed or not,
// as JSON: what the agent's buffer stores with that Read's samples.
func (s *backfillState) checkpoint() []byte {
	s.mu.Lock()
	m := maps.Clone(s.committed)
	takeLater(m, s.staged)
	s.mu.Unlock()
	if len(m) == 0 {
		return nil
	}
	return encodeState(m)
}

// restore takes the marks of a checkpoint where they are further along
// than the committed ones.
func (s *backfillState) restore(b []byte) error {
	m, err := decodeState(b)
	if err != nil {
		return fmt.Errorf("backfill marks from the buffer are corrupt: %w", err)
	}
	s.mu.Lock()
	takeLater(s.committed, m)
	s.mu.Unlock()
	return nil
}

// mark returns a point's latest mark, staged or committed.
func (s *backfillState) mark(ref string) mark {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.staged[ref]
	if !ok || s.committed[ref].Last > m.Last {
		m = s.committed[ref]
	}
	m.Gaps = slices.Clone(m.Gaps)
	return m
}

// ahead reports whether any point's mark, staged or committed, is later
// than nowMS: the clock is still behind it.
func (s *backfillState) ahead(nowMS int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, marks := range []map[string]mark{s.committed, s.staged} {
		for _, m := range marks {
			if m.Last > nowMS {
				return true
			}
		}
	}
	return false
}

func (s *backfillState) stage(ref string, m mark) {
	s.mu.Lock()
	if m.Last >= s.staged[ref].Last {
		s.staged[ref] = m
	}
	s.mu.Unlock()
}

// due reports whether a point's gaps may be asked for at now: at once
// after a success, then after base, doubling per failure up to an hour.
func (s *backfillState) due(ref string, now time.Time, base time.Duration) bool {
	s.mu.Lock()
	r, ok := s.retry[ref]
	s.mu.Unlock()
	if !ok || r.failures == 0 || now.Before(r.at) {
		// Before the last failure: the clock stepped back, and waiting
		// for it to pass that time again could take hours.
		return true
	}
	wait := max(base, 0)
	for i := 1; i < r.failures && wait < time.Hour; i++ {
		wait *= 2
	}
	return !now.Before(r.at.Add(min(wait, time.Hour)))
}

// outcome records a backfill attempt and returns the failures before it,
// so the caller logs the first failure and the recovery only.
func (s *backfillState) outcome(ref string, now time.Time, failed bool) (before int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	before = s.retry[ref].failures
	if failed {
		s.retry[ref] = retryState{failures: before + 1, at: now}
	} else {
		delete(s.retry, ref)
	}
	return before
}

// spacing is the shorter of the last two spans seen between a point's
// reads, or 0 before two were seen: one span alone may be an outage.
func (s *backfillState) spacing(ref string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp := s.spacings[ref]; len(sp) == 2 {
		return min(sp[0], sp[1])
	}
	return 0
}

func (s *backfillState) observe(ref string, span time.Duration) {
	s.mu.Lock()
	sp := append(s.spacings[ref], span)
	s.spacings[ref] = sp[max(len(sp)-2, 0):]
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
	takeLater(s.committed, s.staged)
	clear(s.staged)
	snapshot := maps.Clone(s.committed)
	s.mu.Unlock()
	if s.path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("saving backfill state: %w (check the data directory is writable)", err)
	}
	// Whole or not at all, and durable before the poller moves on: a power
	// cut must not leave a torn file (which would lose every mark) or one
	// older than the buffer thinks (which would repeat a backfill).
	if err := atomicfile.Write(s.path, encodeState(snapshot), 0o600); err != nil {
		return fmt.Errorf("saving backfill state: %w (check the data directory is writable)", err)
	}
	return nil
}

// backfillPage is how many records one ReadRange asks for; the device
// returns fewer, flagged "more items", when they do not fit.
const backfillPage = 200

// backfill returns the trend-log records of the gaps points owe: a gap
// opens when a point is read after more than its backfill_after; it is
// asked for at once, and, while the trend log fails, again with backoff.
func (d *Driver) backfill(ctx context.Context, c *bacnet.Client, dev bacnet.Device, points []driver.Point, parsed []point, valid []bool, res []result, now time.Time) []telemetry.Sample {
	var out []telemetry.Sample
	nowMS := now.UnixMilli()
	oldest := now.Add(-d.cfg.backfillMax).UnixMilli()
	for i, p := range points {
		pt := parsed[i]
		if !valid[i] || pt.trend == nil || res[i].commFailed {
			continue
		}
		m := d.state.mark(p.Ref)
		if m.Last > nowMS {
			// The clock stepped back behind the mark (an NTP correction, a
			// box whose RTC lost its time). The mark stays where it is, so
			// what this read fills is committed and not asked for again
			// every poll; a gap opens only once the clock passes it.
			if d.clockBack.CompareAndSwap(false, true) {
				d.log.Warn("the clock is behind the trend-log backfill mark of a point; backfill marks stay until it catches up (check the system clock)",
					"point", p.Ref, "mark", fmtMS(m.Last), "now", fmtMS(nowMS))
			}
		} else if m.Last > 0 {
			since := now.Sub(time.UnixMilli(m.Last))
			if since > d.cfg.backfillAfterFor(p, d.state.spacing(p.Ref)) {
				m.Gaps = append(m.Gaps, gap{From: m.Last, To: nowMS})
			}
			d.state.observe(p.Ref, since)
		}
		// backfill_max bounds how far back a gap reaches.
		m.Gaps = slices.DeleteFunc(m.Gaps, func(g gap) bool { return g.To <= oldest })
		for k := range m.Gaps {
			m.Gaps[k].From = max(m.Gaps[k].From, oldest)
		}
		if n := len(m.Gaps) - maxGaps; n > 0 {
			d.log.Warn("trend-log backfill owes too many gaps; the oldest is given up", "point", p.Ref,
				"trend_log", pt.trend.String(), "gap_from", fmtMS(m.Gaps[0].From), "gap_to", fmtMS(m.Gaps[n-1].To))
			m.Gaps = slices.Delete(m.Gaps, 0, n)
		}
		if len(m.Gaps) > 0 && d.state.due(p.Ref, now, d.cfg.backfillRetry) {
			got, kept, err := d.fillGaps(ctx, c, dev, p, *pt.trend, m.Gaps)
			out = append(out, got...)
			m.Gaps = kept
			switch before := d.state.outcome(p.Ref, now, err != nil); {
			case err != nil && before == 0:
				d.log.Warn("trend-log backfill failed; the gap is kept and asked for again with backoff (check trend_log names a trend log of this point, and that the device supports ReadRange)",
					"point", p.Ref, "trend_log", pt.trend.String(), "gaps", len(kept), "err", err)
			case err != nil:
				d.log.Debug("trend-log backfill failed again", "point", p.Ref, "failures", before+1, "err", err)
			case before > 0:
				d.log.Info("trend-log backfill works again", "point", p.Ref, "trend_log", pt.trend.String(), "failures", before)
			}
		}
		m.Last = max(m.Last, nowMS)
		d.state.stage(p.Ref, m)
	}
	// Caught up only once no mark is ahead, not when this Read's points
	// are: with per-point intervals a Read may hold none of those behind,
	// and the warning and this line would alternate until the clock
	// passes them all.
	if d.clockBack.Load() && !d.state.ahead(nowMS) && d.clockBack.CompareAndSwap(true, false) {
		d.log.Info("the clock has caught up with the trend-log backfill marks")
	}
	return out
}

// fillGaps reads the gaps from the trend log and returns their samples and
// the gaps still owed: each that failed, from past the records already
// read of it. A gap that fails (a page of its time that does not decode, a
// device refusing that range) does not hold up the later ones; a comm
// failure does, since the later gaps would only wait out the same
// timeouts: they are kept for the next attempt.
func (d *Driver) fillGaps(ctx context.Context, c *bacnet.Client, dev bacnet.Device, p driver.Point, tl bacnet.ObjectID, gaps []gap) ([]telemetry.Sample, []gap, error) {
	var out []telemetry.Sample
	var kept []gap
	var errs []error
	for k, g := range gaps {
		got, err := readTrend(ctx, c, dev, tl, time.UnixMilli(g.From), time.UnixMilli(g.To), d.cfg.loc, p.ID, d.log)
		out = append(out, got...)
		if err != nil {
			rest := g
			if len(got) > 0 {
				rest.From = got[len(got)-1].Time
			}
			kept = append(kept, rest)
			errs = append(errs, fmt.Errorf("gap %s..%s: %w", fmtMS(g.From), fmtMS(g.To), err))
			if ctx.Err() != nil || errors.Is(err, bacnet.ErrTimeout) || isBusy(err) {
				kept = append(kept, gaps[k+1:]...)
				break
			}
			continue
		}
		d.log.Info("backfilled a gap from the trend log", "point", p.Ref, "trend_log", tl.String(),
			"from", fmtMS(g.From), "to", fmtMS(g.To), "samples", len(got))
	}
	return out, kept, errors.Join(errs...)
}

func fmtMS(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339) }

// readTrend reads a trend log's records logged after from and before to.
// On an error it returns the records of the pages read before it, in
// order, so a caller can keep them and ask for the rest later.
func readTrend(ctx context.Context, c *bacnet.Client, dev bacnet.Device, tl bacnet.ObjectID, from, to time.Time, loc *time.Location, id uint64, log *slog.Logger) ([]telemetry.Sample, error) {
	var out []telemetry.Sample
	ref := from.In(loc)
	for range 1000 { // bounded: 200k records at most per gap
		r, err := c.ReadRange(ctx, dev, tl, bacnet.Prop(bacnet.PropLogBuffer), bacnet.Range{Kind: bacnet.RangeByTime, Time: ref, Count: backfillPage})
		if err != nil {
			return out, err
		}
		recs, err := bacnet.DecodeLogRecords(r.Items, loc)
		switch {
		case err != nil && len(recs) == 0 && len(r.Items) > 0:
			return out, fmt.Errorf("trend log %v: no record of the page decodes: %w", tl, err)
		case err != nil:
			// A malformed record loses only itself.
			log.Warn("trend-log records that do not decode were skipped", "trend_log", tl.String(), "err", err)
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
