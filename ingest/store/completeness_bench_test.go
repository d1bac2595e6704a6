package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fillRollups writes days of 5-minute and hourly rollup rows for points
// points of ref, ending at end, and their latest rows, inside SQLite (a
// recursive CTE: a Go loop of upserts would take minutes at this size).
// The count index is dropped while filling and built once after, as a
// sort, which is what makes millions of rows affordable in a benchmark.
func fillRollups(tb testing.TB, db *DB, ref SiteRef, points, days int, end time.Time) {
	tb.Helper()
	ctx := context.Background()
	if _, err := db.db.ExecContext(ctx, `DROP INDEX IF EXISTS rollups_point_window`); err != nil {
		tb.Fatal(err)
	}
	if _, err := db.db.ExecContext(ctx, `WITH RECURSIVE p(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM p WHERE i < ?)
		INSERT INTO latest (tenant, site, point_id, agent_id, time, value, status, first_time, interval_ms)
		SELECT ?, ?, i, 'ag', ?, 1, 0, ?, 60000 FROM p`, points, ref.Tenant, ref.Site, end.UnixMilli(), end.Add(-time.Duration(days)*24*time.Hour).UnixMilli()); err != nil {
		tb.Fatal(err)
	}
	for _, res := range []time.Duration{Res5Min, ResHour} {
		n := int64(time.Duration(days) * 24 * time.Hour / res)
		w := res.Milliseconds()
		start := end.Truncate(res).UnixMilli() - n*w
		per := int64(res / time.Minute) // a sample a minute
		_, err := db.db.ExecContext(ctx, `WITH RECURSIVE p(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM p WHERE i < ?),
				k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j < ?)
			INSERT INTO rollups (tenant, site, point_id, res, bucket, n, bad, good, min, max, sum, last, last_time)
			SELECT ?, ?, i, ?, ? + j * ?, ?, 0, ?, 1, 2, 1.5 * ?, 2, ? + j * ? FROM p, k`,
			points, n-1, ref.Tenant, ref.Site, int64(res/time.Second), start, w, per, per, per, start, w)
		if err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := db.db.ExecContext(ctx, `CREATE INDEX rollups_point_window ON rollups(tenant, site, res, point_id, bucket, n, bad)`); err != nil {
		tb.Fatal(err)
	}
	if _, err := db.db.ExecContext(ctx, `ANALYZE`); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkReceivedAll is the completeness page's one query: every point
// of a building over a window, with 30 days of 5-minute and hourly
// history. SIGHTGLASS_BENCH_POINTS sets the building's size (1,000 by
// default; 10,000 points are 94 million rows and some 8 GB: too much to
// build on every run).
func BenchmarkReceivedAll(b *testing.B) {
	points := 1000
	if v, err := strconv.Atoi(os.Getenv("SIGHTGLASS_BENCH_POINTS")); err == nil && v > 0 {
		points = v
	}
	ctx := context.Background()
	end := time.Date(2026, 6, 30, 12, 0, 0, 0, time.UTC)
	db, err := Open(ctx, filepath.Join(b.TempDir(), "bench.db"), Options{Now: func() time.Time { return end }})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ref := site1
	t0 := time.Now()
	fillRollups(b, db, ref, points, 30, end)
	b.Logf("built %d points × 30 days in %v", points, time.Since(t0).Round(time.Millisecond))
	b.Logf("plan: %s", queryPlan(b, db, end.Add(-30*24*time.Hour), end))
	for _, tt := range []struct {
		name string
		res  time.Duration
		span time.Duration
	}{
		{"24h-5min", Res5Min, 24 * time.Hour},
		{"7d-hourly", ResHour, 7 * 24 * time.Hour},
		{"30d-hourly", ResHour, 30 * 24 * time.Hour},
	} {
		b.Run(fmt.Sprintf("%dpoints-%s", points, tt.name), func(b *testing.B) {
			for b.Loop() {
				got, err := db.ReceivedAll(ctx, ref, tt.res, end.Add(-tt.span), end)
				if err != nil || len(got) != points {
					b.Fatalf("%d points, %v", len(got), err)
				}
			}
		})
	}
}

// queryPlan is SQLite's plan for ReceivedAll's query over [from, to).
func queryPlan(tb testing.TB, db *DB, from, to time.Time) string {
	tb.Helper()
	rows, err := db.db.QueryContext(context.Background(), `EXPLAIN QUERY PLAN `+receivedAllQuery, 300, from.UnixMilli(), to.UnixMilli(), site1.Tenant, site1.Site)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			tb.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return strings.Join(plan, "; ")
}

// TestReceivedAllUsesWindowIndex: the completeness query reads each
// point's window as one range of the covering index, not every rollup row
// of the building through the primary key's (tenant, site) prefix, and
// needs no sort to group.
func TestReceivedAllUsesWindowIndex(t *testing.T) {
	db, _ := open(t)
	ctx := context.Background()
	end := time.Date(2026, 6, 30, 12, 0, 0, 0, time.UTC)
	fillRollups(t, db, site1, 20, 3, end)
	all := queryPlan(t, db, end.Add(-time.Hour), end)
	if !strings.Contains(all, "USING COVERING INDEX rollups_point_window (tenant=? AND site=? AND res=? AND point_id=? AND bucket>? AND bucket<?)") ||
		strings.Contains(all, "TEMP B-TREE") || strings.Contains(all, "SCAN") {
		t.Errorf("the completeness query does not range over each point's window in the index: %s", all)
	}
	got, err := db.ReceivedAll(ctx, site1, Res5Min, end.Add(-time.Hour), end)
	if err != nil || len(got) != 20 || got[1] != [2]int64{60, 0} {
		t.Errorf("ReceivedAll over the last hour: %v, %v; want 20 points of 60 samples", got[1], err)
	}
}
