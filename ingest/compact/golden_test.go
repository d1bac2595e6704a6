package compact

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenUploads is a day of a small site filed the awkward ways a real
// archive is: two agents reporting some of the same points, retries under
// new sequence numbers, conflicting values, a batch holding one point and
// time twice, statuses other than OK, NaN, and a batch crossing midnight.
func goldenUploads() [][]telemetry.Sample {
	r := rand.New(rand.NewPCG(9, 9))
	var ups [][]telemetry.Sample
	for h := range 24 {
		s := hour(h, 6, func(p, m int) float64 { return math.Round(r.NormFloat64()*1000) / 100 })
		for i := range s {
			if r.IntN(40) == 0 {
				s[i].Status = telemetry.Status(1 + r.IntN(int(telemetry.MaxStatus)))
			}
		}
		ups = append(ups, s)
		if h%5 == 0 {
			ups = append(ups, slices.Clone(s[:90])) // a retry: duplicates
		}
		if h%7 == 3 {
			c := slices.Clone(s[30:50]) // another box: conflicts
			for i := range c {
				c[i].Value += 0.5
			}
			ups = append(ups, c)
		}
	}
	twice := []telemetry.Sample{
		{PointID: 1002, Time: day.Add(2 * time.Hour).UnixMilli(), Value: math.NaN()},
		{PointID: 1002, Time: day.Add(2 * time.Hour).UnixMilli(), Value: 7, Status: telemetry.StatusCommFailure},
		{PointID: 5000, Time: day.Add(23*time.Hour + 59*time.Minute).UnixMilli(), Value: 1},
		{PointID: 5000, Time: day.Add(23*time.Hour + 59*time.Minute).UnixMilli(), Value: 2},
		{PointID: 5000, Time: day.Add(24*time.Hour + time.Minute).UnixMilli(), Value: 3},
	}
	return append(ups, twice)
}

// golden is what the golden file records of a compaction: its result and
// each part's name and SHA-256.
type golden struct {
	// Read is the SHA-256 of the samples ReadDay returned before the
	// compaction, and ReadSamples their count.
	Read        string            `json:"read"`
	ReadSamples int               `json:"read_samples"`
	Result      Result            `json:"result"`
	Parts       map[string]string `json:"parts"`
}

// hashSamples is the SHA-256 of samples in a fixed binary form.
func hashSamples(samples []telemetry.Sample) string {
	h := sha256.New()
	for _, s := range samples {
		h.Write(binary.LittleEndian.AppendUint64(nil, s.PointID))
		h.Write(binary.LittleEndian.AppendUint64(nil, uint64(s.Time)))
		h.Write(binary.LittleEndian.AppendUint64(nil, math.Float64bits(s.Value)))
		h.Write([]byte{byte(s.Status)})
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestCompactGolden: the day blobs of a fixed input are byte for byte
// those the compactor wrote before its merge was rewritten to bound its
// memory (the golden file was made with the map-based merge), in two
// generations: a first compaction, then a late backlog merged into it; and
// so are the samples ReadDay returns before each. The same holds when the
// merge is over its budget and goes a range of points at a time (7,200
// samples of 6 points in ranges of 2,500 or 1,000, and of one point each).
func TestCompactGolden(t *testing.T) {
	for _, budget := range []int{0, 2500, 1000, 1} {
		t.Run(fmt.Sprintf("budget %d", budget), func(t *testing.T) {
			compactGolden(t, budget, *update && budget == 0)
		})
	}
}

func compactGolden(t *testing.T, budget int, update bool) {
	a := newArchive(t)
	ups := goldenUploads()
	for i, u := range ups[:len(ups)-6] {
		a.upload(fmt.Sprintf("ag-%c", 'a'+i%2), u)
	}
	c := New(a.store, Options{PartSamples: 1000, MergeSamples: budget})
	var got []golden
	record := func() {
		read, err := c.ReadDay(context.Background(), "t1", "s1", day)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.Day(context.Background(), "t1", "s1", day)
		if err != nil {
			t.Fatal(err)
		}
		names, err := a.store.List(context.Background(), dayBlobPrefix("t1", "s1", day))
		if err != nil {
			t.Fatal(err)
		}
		g := golden{Read: hashSamples(read), ReadSamples: len(read), Result: res, Parts: map[string]string{}}
		for _, n := range names {
			data, err := a.store.Get(context.Background(), n)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasSuffix(n, ".sgb") {
				g.Parts[n] = fmt.Sprintf("%x", sha256.Sum256(data))
			}
		}
		got = append(got, g)
	}
	record()
	for _, u := range ups[len(ups)-6:] {
		a.upload("ag-c", u)
	}
	record()
	data, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "compact.golden.json")
	if update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if string(want) != string(data)+"\n" {
		t.Errorf("the compaction differs from %s:\n%s", path, data)
	}
	if got[0].Result.Duplicates == 0 || got[0].Result.Conflicts == 0 || got[0].Result.Parts < 2 || got[1].Result.Generation != 2 {
		t.Errorf("the input does not exercise duplicates, conflicts, parts and a second generation: %+v", got)
	}
}
