package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Rollup resolutions: the widths of the buckets written as batches arrive.
// Coarser views (a day) are summed from the hourly rows when read.
const (
	Res5Min = 5 * time.Minute
	ResHour = time.Hour
	ResDay  = 24 * time.Hour
)

// Keep5Min is how long 5-minute rollups are kept (PruneRollups); hourly
// ones are kept for good. Readers fall back to hours past it.
const Keep5Min = 35 * 24 * time.Hour

// KeepObserved is how long ObserveBatch remembers a batch it folded in:
// far longer than an agent retries one (an agent's buffer holds a batch
// until it is acknowledged, so retries come within hours of the first
// attempt, or days after an outage).
const KeepObserved = 30 * 24 * time.Hour

// PruneObserved forgets the batches folded in before before.
func (s *DB) PruneObserved(ctx context.Context, before time.Time) (int64, error) {
	r, err := s.exec(ctx, `DELETE FROM observed WHERE at < ?`, ms(before))
	if err != nil {
		return 0, fmt.Errorf("pruning the observed batches: %w", err)
	}
	return r.RowsAffected()
}

// Latest is the newest sample of a point, with what the dashboard shows
// next to it.
type Latest struct {
	PointID   uint64
	AgentID   string
	Time      time.Time
	Value     float64
	Status    telemetry.Status
	FirstTime time.Time     // the first sample ever received
	Interval  time.Duration // the sampling interval as observed; 0 until known
}

// Rollup is one bucket of a point's samples.
type Rollup struct {
	Bucket time.Time // the bucket's start
	N      int64     // samples received, any status
	Bad    int64     // of which fault or comm-failure
	Good   int64     // samples with a usable value; Min..Last cover these
	Min    float64
	Max    float64
	Mean   float64
	Last   float64
}

// AgentHealth is what the newest batch of an agent said about it.
type AgentHealth struct {
	AgentID    string
	Site       SiteRef
	LastUpload time.Time // when the ingest stored its newest batch
	LastSeq    uint64
	LastSample time.Time // the newest sample time in that batch
	batch.Health
}

// usable reports whether a sample's value means anything: a fault or a
// failed read carries none, and a non-finite value cannot be charted.
func usable(smp telemetry.Sample) bool {
	return smp.Status != telemetry.StatusFault && smp.Status != telemetry.StatusCommFailure &&
		!math.IsNaN(smp.Value) && !math.IsInf(smp.Value, 0)
}

type bucketKey struct {
	point  uint64
	res    int64 // seconds
	bucket int64 // ms
}

type agg struct {
	n, bad, good   int64
	min, max, sum  float64
	last, lastTime int64
	lastV          float64
}

func (a *agg) add(smp telemetry.Sample) {
	a.n++
	if !usable(smp) {
		a.bad++
		return
	}
	if a.good == 0 || smp.Value < a.min {
		a.min = smp.Value
	}
	if a.good == 0 || smp.Value > a.max {
		a.max = smp.Value
	}
	a.good++
	a.sum += smp.Value
	if a.good == 1 || smp.Time >= a.lastTime {
		a.lastV, a.lastTime = smp.Value, smp.Time
	}
}

// ObserveBatch folds an archived batch into the hot store in one
// transaction: the building (created on first sight), the latest value of
// each point, the 5-minute and hourly rollups and the agent's health. It
// is idempotent per (agent, seq): a batch seen before (within KeepObserved)
// changes nothing, so the server may show it every retry, and a crash
// between archive and hot store is healed by the agent's next attempt.
func (s *DB) ObserveBatch(ctx context.Context, ref SiteRef, agentID string, b *batch.Batch) error {
	now := ms(s.now())
	f := newFold(b.Samples, math.MinInt64)
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO observed (agent_id, seq, at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, agentID, int64(b.Seq), now)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil // folded in already
		}
		if err := putSite(ctx, tx, ref, "", now); err != nil {
			return err
		}
		if err := f.write(ctx, tx, ref, agentID); err != nil {
			return err
		}
		h := b.Health
		_, err = tx.ExecContext(ctx, `INSERT INTO agent_health (agent_id, tenant, site, last_upload, last_seq, last_sample,
				buffer_samples, buffer_bytes, dropped, poll_errors, devices_up, devices_down, uptime_s)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (agent_id) DO UPDATE SET tenant = excluded.tenant, site = excluded.site, last_upload = excluded.last_upload,
				last_seq = excluded.last_seq, last_sample = max(agent_health.last_sample, excluded.last_sample),
				buffer_samples = excluded.buffer_samples, buffer_bytes = excluded.buffer_bytes, dropped = excluded.dropped,
				poll_errors = excluded.poll_errors, devices_up = excluded.devices_up, devices_down = excluded.devices_down,
				uptime_s = excluded.uptime_s
			WHERE excluded.last_seq >= agent_health.last_seq`,
			agentID, ref.Tenant, ref.Site, now, int64(b.Seq), f.lastSample,
			int64(h.BufferSamples), int64(h.BufferBytes), int64(h.DroppedSamples), int64(h.PollErrors),
			int64(h.DevicesUp), int64(h.DevicesDown), int64(h.UptimeSeconds))
		return err
	})
	if err != nil {
		return fmt.Errorf("updating the hot store with batch %d of agent %s: %w", b.Seq, agentID, err)
	}
	return nil
}

// pointState is one point's share of a fold.
type pointState struct {
	last     telemetry.Sample // the newest sample
	first    int64            // the oldest sample's time
	interval int64            // the median spacing, ms; 0 with one sample
}

// fold is a run of samples summed the way the hot store keeps them: each
// point's newest sample, first time and spacing, and the 5-minute and
// hourly buckets. ObserveBatch and Rebuild both write through it, so a
// store rebuilt from the archive holds what live ingestion wrote.
type fold struct {
	buckets    map[bucketKey]*agg
	points     map[uint64]*pointState
	order      []uint64 // points in first-seen order
	lastSample int64
}

// newFold sums samples, sorted by point then time as Decode returns them.
// 5-minute buckets starting before from5 (Unix ms) are left out: a rebuild
// does not write the rows PruneRollups would delete at once.
func newFold(samples []telemetry.Sample, from5 int64) *fold {
	f := &fold{buckets: map[bucketKey]*agg{}, points: map[uint64]*pointState{}}
	var gaps []int64
	// Walk each point's run once to find its newest sample and its
	// typical spacing.
	for i := 0; i < len(samples); {
		j := i
		for j < len(samples) && samples[j].PointID == samples[i].PointID {
			j++
		}
		run := samples[i:j]
		if !sort.SliceIsSorted(run, func(a, c int) bool { return run[a].Time < run[c].Time }) {
			run = slices.Clone(run)
			sort.Slice(run, func(a, c int) bool { return run[a].Time < run[c].Time })
		}
		ps := &pointState{last: run[len(run)-1], first: run[0].Time}
		gaps = gaps[:0]
		for k := 1; k < len(run); k++ {
			if d := run[k].Time - run[k-1].Time; d > 0 {
				gaps = append(gaps, d)
			}
		}
		if len(gaps) > 0 {
			slices.Sort(gaps)
			ps.interval = gaps[len(gaps)/2]
		}
		if _, seen := f.points[ps.last.PointID]; !seen {
			f.order = append(f.order, ps.last.PointID)
		}
		f.points[ps.last.PointID] = ps
		for _, smp := range run {
			for _, res := range []time.Duration{Res5Min, ResHour} {
				w := res.Milliseconds()
				k := bucketKey{point: smp.PointID, res: int64(res / time.Second), bucket: floorDiv(smp.Time, w) * w}
				if res == Res5Min && k.bucket < from5 {
					continue
				}
				a := f.buckets[k]
				if a == nil {
					a = &agg{}
					f.buckets[k] = a
				}
				a.add(smp)
			}
			f.lastSample = max(f.lastSample, smp.Time)
		}
		i = j
	}
	return f
}

// write upserts the fold's latest values and rollups into ref's, as the
// samples of agentID.
func (f *fold) write(ctx context.Context, tx *sql.Tx, ref SiteRef, agentID string) error {
	// Keep the previous interval when a batch holds one sample of a
	// point; take the newer estimate otherwise (intervals change when an
	// installer edits the config).
	lst, err := tx.PrepareContext(ctx, `INSERT INTO latest (tenant, site, point_id, agent_id, time, value, status, first_time, interval_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant, site, point_id) DO UPDATE SET
			agent_id = CASE WHEN excluded.time >= latest.time THEN excluded.agent_id ELSE latest.agent_id END,
			time = CASE WHEN excluded.time >= latest.time THEN excluded.time ELSE latest.time END,
			value = CASE WHEN excluded.time >= latest.time THEN excluded.value ELSE latest.value END,
			status = CASE WHEN excluded.time >= latest.time THEN excluded.status ELSE latest.status END,
			first_time = min(latest.first_time, excluded.first_time),
			interval_ms = CASE WHEN excluded.interval_ms > 0 THEN excluded.interval_ms
				WHEN latest.interval_ms = 0 AND excluded.time > latest.time THEN excluded.time - latest.time
				ELSE latest.interval_ms END`)
	if err != nil {
		return err
	}
	defer lst.Close()
	for _, id := range f.order {
		ps := f.points[id]
		if _, err := lst.ExecContext(ctx, ref.Tenant, ref.Site, int64(id), agentID, ps.last.Time, finite(ps.last.Value), int(ps.last.Status), ps.first, ps.interval); err != nil {
			return fmt.Errorf("point %016x: %w", id, err)
		}
	}
	roll, err := tx.PrepareContext(ctx, `INSERT INTO rollups (tenant, site, point_id, res, bucket, n, bad, good, min, max, sum, last, last_time)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant, site, point_id, res, bucket) DO UPDATE SET
			n = rollups.n + excluded.n,
			bad = rollups.bad + excluded.bad,
			min = CASE WHEN excluded.good = 0 THEN rollups.min WHEN rollups.good = 0 THEN excluded.min ELSE min(rollups.min, excluded.min) END,
			max = CASE WHEN excluded.good = 0 THEN rollups.max WHEN rollups.good = 0 THEN excluded.max ELSE max(rollups.max, excluded.max) END,
			sum = rollups.sum + excluded.sum,
			last = CASE WHEN excluded.good > 0 AND (rollups.good = 0 OR excluded.last_time >= rollups.last_time) THEN excluded.last ELSE rollups.last END,
			last_time = CASE WHEN excluded.good > 0 AND (rollups.good = 0 OR excluded.last_time >= rollups.last_time) THEN excluded.last_time ELSE rollups.last_time END,
			good = rollups.good + excluded.good`)
	if err != nil {
		return err
	}
	defer roll.Close()
	for k, a := range f.buckets {
		if _, err := roll.ExecContext(ctx, ref.Tenant, ref.Site, int64(k.point), k.res, k.bucket,
			a.n, a.bad, a.good, a.min, a.max, a.sum, a.lastV, a.lastTime); err != nil {
			return fmt.Errorf("rollup of point %016x: %w", k.point, err)
		}
	}
	return nil
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// finite keeps a non-finite value out of a REAL column; its status already
// says it is unusable.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// LatestValues returns the newest sample of every point of a building that
// ever sent one, by point id.
func (s *DB) LatestValues(ctx context.Context, ref SiteRef) ([]Latest, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT point_id, agent_id, time, value, status, first_time, interval_ms FROM latest
		WHERE tenant = ? AND site = ? ORDER BY point_id`, ref.Tenant, ref.Site)
	if err != nil {
		return nil, fmt.Errorf("reading the latest values of %s: %w", ref, err)
	}
	defer rows.Close()
	var out []Latest
	for rows.Next() {
		var l Latest
		var id, t, first, iv int64
		var st int
		if err := rows.Scan(&id, &l.AgentID, &t, &l.Value, &st, &first, &iv); err != nil {
			return nil, fmt.Errorf("reading the latest values of %s: %w", ref, err)
		}
		l.PointID, l.Time, l.Status, l.FirstTime, l.Interval = uint64(id), fromMS(t), telemetry.Status(st), fromMS(first), time.Duration(iv)*time.Millisecond
		out = append(out, l)
	}
	return out, rows.Err()
}

// LatestValue returns the newest sample of one point, or ErrNotFound.
func (s *DB) LatestValue(ctx context.Context, ref SiteRef, point uint64) (Latest, error) {
	var l Latest
	var t, first, iv int64
	var st int
	err := s.db.QueryRowContext(ctx, `SELECT agent_id, time, value, status, first_time, interval_ms FROM latest
		WHERE tenant = ? AND site = ? AND point_id = ?`, ref.Tenant, ref.Site, int64(point)).Scan(&l.AgentID, &t, &l.Value, &st, &first, &iv)
	if errors.Is(err, sql.ErrNoRows) {
		return Latest{}, fmt.Errorf("point %016x of %s: %w", point, ref, ErrNotFound)
	}
	if err != nil {
		return Latest{}, fmt.Errorf("reading point %016x of %s: %w", point, ref, err)
	}
	l.PointID, l.Time, l.Status, l.FirstTime, l.Interval = point, fromMS(t), telemetry.Status(st), fromMS(first), time.Duration(iv)*time.Millisecond
	return l, nil
}

// Rollups returns a point's buckets of width res (Res5Min, ResHour or
// ResDay, the last summed from hourly rows) starting in [from, to), oldest
// first. Buckets without samples are absent: a gap is a gap.
func (s *DB) Rollups(ctx context.Context, ref SiteRef, point uint64, res time.Duration, from, to time.Time) ([]Rollup, error) {
	var rows *sql.Rows
	var err error
	switch res {
	case Res5Min, ResHour:
		rows, err = s.db.QueryContext(ctx, `SELECT bucket, n, bad, good, min, max, sum, last FROM rollups
			WHERE tenant = ? AND site = ? AND point_id = ? AND res = ? AND bucket >= ? AND bucket < ? ORDER BY bucket`,
			ref.Tenant, ref.Site, int64(point), int64(res/time.Second), ms(from), ms(to))
	case ResDay:
		// A day in UTC; the last value is the one of the latest hour that
		// had usable samples (SQLite's bare column with max()).
		rows, err = s.db.QueryContext(ctx, `SELECT (bucket / 86400000) * 86400000 AS day, sum(n), sum(bad), sum(good),
				min(CASE WHEN good > 0 THEN min END), max(CASE WHEN good > 0 THEN max END), sum(sum),
				(SELECT r2.last FROM rollups r2 WHERE r2.tenant = r.tenant AND r2.site = r.site AND r2.point_id = r.point_id AND r2.res = 3600
					AND r2.bucket >= (r.bucket / 86400000) * 86400000 AND r2.bucket < (r.bucket / 86400000) * 86400000 + 86400000 AND r2.good > 0
					ORDER BY r2.last_time DESC LIMIT 1)
			FROM rollups r WHERE tenant = ? AND site = ? AND point_id = ? AND res = 3600 AND bucket >= ? AND bucket < ?
			GROUP BY day ORDER BY day`,
			ref.Tenant, ref.Site, int64(point), ms(from), ms(to))
	default:
		return nil, fmt.Errorf("reading rollups: resolution %v: want 5m, 1h or 24h", res)
	}
	if err != nil {
		return nil, fmt.Errorf("reading rollups of point %016x of %s: %w", point, ref, err)
	}
	defer rows.Close()
	var out []Rollup
	for rows.Next() {
		var r Rollup
		var b int64
		var mn, mx, last sql.NullFloat64
		var sum float64
		if err := rows.Scan(&b, &r.N, &r.Bad, &r.Good, &mn, &mx, &sum, &last); err != nil {
			return nil, fmt.Errorf("reading rollups of point %016x of %s: %w", point, ref, err)
		}
		r.Bucket, r.Min, r.Max, r.Last = time.UnixMilli(b).UTC(), mn.Float64, mx.Float64, last.Float64
		if r.Good > 0 {
			r.Mean = sum / float64(r.Good)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Received counts a point's samples (all, and fault or comm-failure) in
// the 5-minute buckets starting in [from, to).
func (s *DB) Received(ctx context.Context, ref SiteRef, point uint64, from, to time.Time) (n, bad int64, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT coalesce(sum(n), 0), coalesce(sum(bad), 0) FROM rollups
		WHERE tenant = ? AND site = ? AND point_id = ? AND res = 300 AND bucket >= ? AND bucket < ?`,
		ref.Tenant, ref.Site, int64(point), ms(from), ms(to)).Scan(&n, &bad)
	if err != nil {
		return 0, 0, fmt.Errorf("counting samples of point %016x of %s: %w", point, ref, err)
	}
	return n, bad, nil
}

// receivedAllQuery walks the building's points (latest holds one row per
// point that ever reported, as every rollup row's point does) and sums
// each one's window from the rollups_point_window index (migration 5): one
// contiguous range of a covering index per point, grouped as read, no
// sort. INDEXED BY because the planner, given statistics (ANALYZE, PRAGMA
// optimize), may prefer the primary key, which lacks n and bad, or a scan
// of every rollup row of the building. (SQLite syntax; a PostgreSQL store
// needs no hint for the same index.)
const receivedAllQuery = `SELECT l.point_id, sum(r.n), sum(r.bad) FROM latest l
	JOIN rollups r INDEXED BY rollups_point_window ON r.tenant = l.tenant AND r.site = l.site AND r.res = ? AND r.point_id = l.point_id
		AND r.bucket >= ? AND r.bucket < ?
	WHERE l.tenant = ? AND l.site = ? GROUP BY l.point_id`

// ReceivedAll counts the samples of every point of a building at once, by
// point, in the buckets of width res (Res5Min or ResHour) starting in
// [from, to).
func (s *DB) ReceivedAll(ctx context.Context, ref SiteRef, res time.Duration, from, to time.Time) (map[uint64][2]int64, error) {
	if res != Res5Min && res != ResHour {
		return nil, fmt.Errorf("counting samples of %s: resolution %v: want 5m or 1h", ref, res)
	}
	rows, err := s.db.QueryContext(ctx, receivedAllQuery, int64(res/time.Second), ms(from), ms(to), ref.Tenant, ref.Site)
	if err != nil {
		return nil, fmt.Errorf("counting samples of %s: %w", ref, err)
	}
	defer rows.Close()
	out := map[uint64][2]int64{}
	for rows.Next() {
		var id, n, bad int64
		if err := rows.Scan(&id, &n, &bad); err != nil {
			return nil, fmt.Errorf("counting samples of %s: %w", ref, err)
		}
		out[uint64(id)] = [2]int64{n, bad}
	}
	return out, rows.Err()
}

// AgentHealths lists what the newest batch of every agent said, by agent.
func (s *DB) AgentHealths(ctx context.Context) ([]AgentHealth, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT agent_id, tenant, site, last_upload, last_seq, last_sample, buffer_samples, buffer_bytes,
		dropped, poll_errors, devices_up, devices_down, uptime_s FROM agent_health ORDER BY tenant, site, agent_id`)
	if err != nil {
		return nil, fmt.Errorf("reading agent health: %w", err)
	}
	defer rows.Close()
	var out []AgentHealth
	for rows.Next() {
		var h AgentHealth
		var up, seq, smp, bs, bb, dr, pe, du, dd, ut int64
		if err := rows.Scan(&h.AgentID, &h.Site.Tenant, &h.Site.Site, &up, &seq, &smp, &bs, &bb, &dr, &pe, &du, &dd, &ut); err != nil {
			return nil, fmt.Errorf("reading agent health: %w", err)
		}
		h.LastUpload, h.LastSeq, h.LastSample = fromMS(up), uint64(seq), fromMS(smp)
		h.Health = batch.Health{BufferSamples: uint64(bs), BufferBytes: uint64(bb), DroppedSamples: uint64(dr), PollErrors: uint64(pe),
			DevicesUp: uint32(du), DevicesDown: uint32(dd), UptimeSeconds: uint64(ut)}
		out = append(out, h)
	}
	return out, rows.Err()
}

// PruneRollups deletes the buckets of width res that start before before,
// in chunks so a writer never waits long, and returns how many it
// deleted. The 5-minute rows are the bulk of the hot store (105,120 a
// point a year); charts past two days read the hourly ones.
func (s *DB) PruneRollups(ctx context.Context, res time.Duration, before time.Time) (int64, error) {
	var total int64
	for {
		var n int64
		err := s.tx(ctx, func(tx *sql.Tx) error {
			r, err := tx.ExecContext(ctx, `DELETE FROM rollups WHERE rowid IN (SELECT rowid FROM rollups WHERE res = ? AND bucket < ? LIMIT 10000)`,
				int64(res/time.Second), ms(before))
			if err != nil {
				return err
			}
			n, err = r.RowsAffected()
			return err
		})
		if err != nil {
			return total, fmt.Errorf("pruning %v rollups before %s: %w", res, before.Format(time.RFC3339), err)
		}
		total += n
		if n == 0 {
			return total, nil
		}
	}
}
