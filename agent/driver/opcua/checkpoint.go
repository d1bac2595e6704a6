package opcua

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Compile-time checks: a device with history points is a Checkpointer of
// its backfill progress.
var (
	_ driver.Driver       = (*historyDriver)(nil)
	_ driver.Discoverer   = (*historyDriver)(nil)
	_ driver.Reporter     = (*historyDriver)(nil)
	_ driver.Committer    = (*historyDriver)(nil)
	_ driver.Checkpointer = (*historyDriver)(nil)
)

// historyDriver is the driver of a device with history: true points: a
// driver.Checkpointer (and so a driver.Committer) of how far each of them
// has been backfilled, so an agent restart backfills only the gap since
// the last committed time instead of the whole backfill_max window again
// (whose samples the archive would hold twice until compaction, and the
// hot store's rollups would count twice). A device without history points
// has nothing to carry and stays a plain Driver: the poller refuses
// concurrency above 1 for a Committer, and such a device may read
// concurrently.
type historyDriver struct{ *Driver }

// Commit makes the backfill progress of the last Read the committed one:
// the poller calls it once that Read's samples are in its buffer.
func (h *historyDriver) Commit(ctx context.Context) error { return h.commit(ctx) }

// Checkpoint returns the backfill progress as the last Read left it.
func (h *historyDriver) Checkpoint() []byte { return h.checkpoint() }

// Restore takes the backfill progress a Checkpoint stored; see restore.
func (h *historyDriver) Restore(state []byte) error { return h.restore(state) }

// checkpointVersion is the version of the checkpoint's JSON.
const checkpointVersion = 1

// maxCheckpoint bounds a state Restore decodes (the driver host's bound).
const maxCheckpoint = 1 << 20

// maxFutureMark is how far past the agent's clock a restored mark may lie
// (a server clock a little ahead); one further is stale (a clock stepped
// back, a state from elsewhere) and would hold the point's live samples
// back until the clock caught up.
const maxFutureMark = 15 * time.Minute

// checkpointState is the checkpoint: per history point (by ref, which
// stays on the box like the buffer it is stored in), how far it is read.
type checkpointState struct {
	Version int                      `json:"version"`
	Points  map[string]pointProgress `json:"points"`
}

// pointProgress is one history point's place: every value the server
// logged at or before Last (Unix ms) was returned, except those in Gaps,
// which are still owed.
type pointProgress struct {
	Last int64        `json:"last"`
	Gaps []historyGap `json:"gaps,omitempty"`
}

// historyGap is a span [From, To) of Unix ms still to read from history.
type historyGap struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

func encodeCheckpoint(m map[string]pointProgress) []byte {
	if len(m) == 0 {
		return nil
	}
	b, _ := json.Marshal(checkpointState{Version: checkpointVersion, Points: m})
	return b
}

// decodeCheckpoint decodes a state, checking its shape: a later version, a
// gap that is empty or lies after its mark, or more gaps than a point can
// have are refused.
func decodeCheckpoint(b []byte) (map[string]pointProgress, error) {
	if len(b) > maxCheckpoint {
		return nil, fmt.Errorf("%d bytes, more than the %d a checkpoint may have", len(b), maxCheckpoint)
	}
	var s checkpointState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	if s.Version != checkpointVersion {
		return nil, fmt.Errorf("version %d, want %d (written by another agent version?)", s.Version, checkpointVersion)
	}
	for ref, p := range s.Points {
		if p.Last <= 0 {
			return nil, fmt.Errorf("point %q: mark %d is not a time", ref, p.Last)
		}
		if len(p.Gaps) > maxJobsPerPoint {
			return nil, fmt.Errorf("point %q: %d gaps, at most %d are kept", ref, len(p.Gaps), maxJobsPerPoint)
		}
		for _, g := range p.Gaps {
			if g.From <= 0 || g.From >= g.To || g.To > p.Last+1 {
				return nil, fmt.Errorf("point %q: gap %d..%d is not a span before its mark %d", ref, g.From, g.To, p.Last)
			}
		}
	}
	return s.Points, nil
}

// progress is every history point's place as the driver's state has it
// now: the newest live sample's time, and the backfill jobs still owed
// (whose end, when not fixed yet, is what nextJob will fix it to). The
// caller holds d.mu.
func (d *Driver) progress() map[string]pointProgress {
	out := map[string]pointProgress{}
	// One pass over the jobs: a device may have thousands of history
	// points, and this runs at every Read.
	jobs := make(map[string][]*backfillJob, len(d.jobs))
	for _, j := range d.jobs {
		jobs[j.p.Ref] = append(jobs[j.p.Ref], j)
	}
	for _, p := range d.pointList {
		if !d.points[p.Ref].history {
			continue
		}
		m := d.tl.of(p.ID)
		st := pointProgress{Last: m.last}
		for _, j := range jobs[p.Ref] {
			end := j.to
			if end.IsZero() {
				end = j.opened
				if m.heard && m.first > 0 {
					end = time.UnixMilli(m.first)
				}
			}
			from, to := j.from.UnixMilli(), end.UnixMilli()
			if from >= to {
				continue
			}
			st.Gaps = append(st.Gaps, historyGap{From: from, To: to})
			// A gap's values are owed, and everything before its end
			// that is not in it was returned: the mark is at least there.
			st.Last = max(st.Last, to-1)
		}
		if st.Last <= 0 {
			continue
		}
		slices.SortFunc(st.Gaps, func(a, b historyGap) int { return int(a.From - b.From) })
		out[p.Ref] = st
	}
	return out
}

func (d *Driver) checkpoint() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b []byte
	if !d.readSince {
		b = encodeCheckpoint(d.committed)
	} else {
		b = encodeCheckpoint(d.progress())
	}
	if len(b) > maxCheckpoint {
		// Some 100 bytes a point: only many thousands of history points
		// with gaps get here. None is stored then, and a restart goes on
		// from an older state (or the window): repeats, never a loss.
		if !d.warnedBig {
			d.log.Warn("the backfill checkpoint is too large to store; a restart may read history again: give fewer points history: true", "bytes", len(b), "limit", maxCheckpoint)
			d.warnedBig = true
		}
		return nil
	}
	return b
}

func (d *Driver) commit(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.readSince {
		d.committed = d.progress()
		d.readSince = false
	}
	return nil
}

// restore takes the places of a checkpoint for the history points it
// names, where they are further along than the driver's own: their first
// session then backfills only the gaps the state owes and the time since
// its mark, not the backfill_max window. A state that does not decode, or
// a point's place that is stale (older than backfill_max, or too far
// ahead of the clock), is ignored with a log: the window is read again,
// which at worst repeats what the archive already has.
func (d *Driver) restore(state []byte) error {
	m, err := decodeCheckpoint(state)
	if err != nil {
		d.log.Warn("ignoring the backfill checkpoint the agent stored: it does not decode; history points read their backfill_max window again", "err", err, "bytes", len(state))
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	floor, ceiling := now.Add(-d.cfg.backfillMax).UnixMilli(), now.Add(maxFutureMark).UnixMilli()
	taken := map[string]pointProgress{}
	for _, p := range d.pointList {
		st, ok := m[p.Ref]
		if !ok || !d.points[p.Ref].history {
			continue
		}
		switch {
		case st.Last > ceiling:
			d.log.Warn("ignoring a point's backfill checkpoint: it lies ahead of the agent's clock; the point reads its backfill_max window again", "point", p.Ref, "mark", time.UnixMilli(st.Last).UTC().Format(time.RFC3339Nano))
			continue
		case st.Last < floor:
			d.log.Info("a point's backfill checkpoint is older than backfill_max; the point reads its window", "point", p.Ref, "mark", time.UnixMilli(st.Last).UTC().Format(time.RFC3339Nano))
			continue
		case d.tl.of(p.ID).last >= st.Last:
			continue // the driver's own record is further along
		}
		d.rewind(p, &st, now)
		d.resumed[p.Ref] = true
		taken[p.Ref] = st
	}
	if ignored := len(m) - len(taken); ignored > 0 {
		d.log.Debug("backfill checkpoint points not taken", "points", ignored)
	}
	d.committed, d.readSince = taken, false
	if len(taken) > 0 {
		d.log.Info("resuming history backfill from the agent's checkpoint", "points", len(taken))
	}
	return nil
}

// rewind puts history point p's backfill back to st: its jobs become st's
// gaps and its mark st's, so the next session plans the gap since it; nil
// st (nothing committed yet) gives the point its backfill_max window
// again. The caller holds d.mu.
func (d *Driver) rewind(p driver.Point, st *pointProgress, now time.Time) {
	d.jobs = slices.DeleteFunc(d.jobs, func(j *backfillJob) bool { return j.p.Ref == p.Ref })
	m := d.tl.of(p.ID)
	if st == nil {
		m.last = 0
		d.jobs = append(d.jobs, &backfillJob{p: p, from: now.Add(-d.cfg.backfillMax), opened: now, session: -1})
		return
	}
	m.last = st.Last
	floor := now.Add(-d.cfg.backfillMax)
	for _, g := range st.Gaps {
		// Like every gap, read no further back than backfill_max.
		from, to := time.UnixMilli(g.From), time.UnixMilli(g.To)
		if !to.After(floor) {
			continue
		}
		if from.Before(floor) {
			from = floor
		}
		d.jobs = append(d.jobs, &backfillJob{p: p, from: from, to: to, opened: now, session: -1})
	}
}

// rollback forgets the backfill progress of Reads not committed (the
// poller closes the driver after a read its buffer refused, and those
// samples must be read again). The caller holds d.mu.
func (d *Driver) rollback() {
	if !d.commits || !d.readSince || !d.everOnce {
		return
	}
	now := d.now()
	for _, p := range d.pointList {
		if !d.points[p.Ref].history {
			continue
		}
		if st, ok := d.committed[p.Ref]; ok {
			d.rewind(p, &st, now)
		} else {
			d.rewind(p, nil, now)
		}
	}
	d.readSince = false
}
