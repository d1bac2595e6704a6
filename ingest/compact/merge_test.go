package compact

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/batch"
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

// TestMergeMatchesMapMerge: over random runs (blobs), with a point and time
// repeated within and across runs, the heap merge of sorted runs gives
// exactly the samples (bit for bit, first filed winning) and the counts of
// the map-based merge, in chunks of any size, and again on a second pass;
// with the whole input in memory and, past budgets down to one sample, a
// range of points at a time.
func TestMergeMatchesMapMerge(t *testing.T) {
	tests := []struct {
		name         string
		runs, points int
		chunk        int
		from, to     int64
	}{
		{"one run", 1, 5, 7, math.MinInt64, math.MaxInt64},
		{"two runs", 2, 3, 1, math.MinInt64, math.MaxInt64},
		{"many runs, whole chunks", 120, 20, 50, math.MinInt64, math.MaxInt64},
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
			runs = slices.DeleteFunc(runs, func(r []telemetry.Sample) bool { return len(r) == 0 }) // no batch is empty
			want, dups, conflicts := mapMerge(runs, tt.from, tt.to)
			// Each run is a blob, as the archive holds them.
			tables := batch.Tables{}
			var blobs [][]byte
			for i, run := range runs {
				enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: "ag-t", Site: "s1", Seq: uint64(i + 1), SentAt: 1 << 20}, Samples: run})
				if err != nil {
					t.Fatal(err)
				}
				ids, _, err := batch.DecodePointTable(enc.Table)
				if err != nil {
					t.Fatal(err)
				}
				tables[enc.TableHash] = ids
				blobs = append(blobs, enc.Data)
			}
			for _, budget := range []int{0, 1, 7, 100} {
				t.Run(fmt.Sprintf("budget %d", budget), func(t *testing.T) {
					var res Result
					m := New(nil, Options{MergeSamples: budget}).newMerger(tables, &res, tt.from, tt.to)
					for i, b := range blobs {
						if err := m.add(fmt.Sprint("blob ", i), false, b); err != nil {
							t.Fatal(err)
						}
					}
					m.added()
					if ranged := budget > 0 && m.total > budget; m.ranged != ranged {
						t.Errorf("ranged = %v with %d samples and a budget of %d", m.ranged, m.total, budget)
					}
					checkMerge(t, m, &res, tt.chunk, want)
					if res.Duplicates != dups || res.Conflicts != conflicts {
						t.Errorf("%d duplicates, %d conflicts; want %d, %d", res.Duplicates, res.Conflicts, dups, conflicts)
					}
				})
			}
			if tt.runs > 2 && len(want) > 0 && dups+conflicts == 0 {
				t.Error("the runs repeat no point and time: the test proves nothing about ties")
			}
		})
	}
}

// checkMerge streams m twice, counting in res the first time, and checks
// each stream is want, bit for bit, in chunks of at most chunk.
func checkMerge(t *testing.T, m *merger, res *Result, chunk int, want []telemetry.Sample) {
	t.Helper()
	for pass := range 2 {
		var got []telemetry.Sample
		var stats *Result
		if pass == 0 {
			stats = res
		}
		if err := m.each(chunk, stats, func(c []telemetry.Sample) error {
			if len(c) == 0 || len(c) > chunk {
				t.Fatalf("a chunk of %d samples, chunk size %d", len(c), chunk)
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
}
