package compact

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// mapMerge is the merge as compaction did it before runs: every sample in
// a map by point and time, the first added winning, then sorted.
func mapMerge(runs [][]telemetry.Sample, from, to int64) (out []telemetry.Sample, dups, conflicts int) {
	kept := map[key]telemetry.Sample{}
	for _, r := range runs {
		for _, s := range r {
			if s.Time < from || s.Time >= to {
				continue
			}
			k := key{s.PointID, s.Time}
			if old, seen := kept[k]; seen {
				if math.Float64bits(old.Value) == math.Float64bits(s.Value) && old.Status == s.Status {
					dups++
				} else {
					conflicts++
				}
				continue
			}
			kept[k] = s
		}
	}
	for _, s := range kept {
		out = append(out, s)
	}
	slices.SortFunc(out, compareKey)
	return out, dups, conflicts
}

// TestMergeMatchesMapMerge: over random runs, with a point and time
// repeated within and across runs, the heap merge of sorted runs gives
// exactly the samples (bit for bit, first filed winning) and the counts of
// the map-based merge, in chunks of any size, and again on a second pass.
func TestMergeMatchesMapMerge(t *testing.T) {
	tests := []struct {
		name         string
		runs, points int
		chunk        int
		from, to     int64
	}{
		{"one run", 1, 5, 7, math.MinInt64, math.MaxInt64},
		{"two runs", 2, 3, 1, math.MinInt64, math.MaxInt64},
		{"many runs, whole chunks", 300, 20, 50, math.MinInt64, math.MaxInt64},
		{"many runs, cut to a range", 97, 8, 1 << 20, 40, 160},
		{"a range holding nothing", 10, 4, 3, 1 << 40, 1<<40 + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(tt.runs), uint64(tt.points)))
			var runs [][]telemetry.Sample
			for range tt.runs {
				var run []telemetry.Sample
				for p := range tt.points {
					if r.IntN(4) == 0 {
						continue // this batch lacks the point
					}
					tm := int64(r.IntN(200))
					for range r.IntN(12) {
						run = append(run, telemetry.Sample{PointID: uint64(p) * 1e15, Time: tm, Value: float64(r.IntN(3)), Status: telemetry.Status(r.IntN(2))})
						tm += int64(r.IntN(3)) // 0: the same time twice in one run
					}
				}
				runs = append(runs, run)
			}
			want, dups, conflicts := mapMerge(runs, tt.from, tt.to)
			var res Result
			m := &merger{res: &res, from: tt.from, to: tt.to}
			for _, run := range runs {
				// As add keeps a decoded blob: cut to the range.
				run = slices.DeleteFunc(slices.Clone(run), func(s telemetry.Sample) bool { return s.Time < tt.from || s.Time >= tt.to })
				if len(run) > 0 {
					m.runs = append(m.runs, run)
					m.total += len(run)
				}
			}
			for pass := range 2 {
				var got []telemetry.Sample
				var stats *Result
				if pass == 0 {
					stats = &res
				}
				if err := m.each(tt.chunk, stats, func(c []telemetry.Sample) error {
					if len(c) == 0 || len(c) > tt.chunk {
						t.Fatalf("a chunk of %d samples, chunk size %d", len(c), tt.chunk)
					}
					got = append(got, c...)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if len(got) != len(want) {
					t.Fatalf("pass %d: %d samples, want %d", pass, len(got), len(want))
				}
				for i := range want {
					g, w := got[i], want[i]
					if g.PointID != w.PointID || g.Time != w.Time || math.Float64bits(g.Value) != math.Float64bits(w.Value) || g.Status != w.Status {
						t.Fatalf("pass %d, sample %d: %+v, want %+v", pass, i, g, w)
					}
				}
			}
			if res.Duplicates != dups || res.Conflicts != conflicts {
				t.Errorf("%d duplicates, %d conflicts; want %d, %d", res.Duplicates, res.Conflicts, dups, conflicts)
			}
			if tt.runs > 2 && len(want) > 0 && dups+conflicts == 0 {
				t.Error("the runs repeat no point and time: the test proves nothing about ties")
			}
		})
	}
}
