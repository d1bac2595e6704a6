package compact

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

var day = time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)

type archive struct {
	t     testing.TB
	store *blob.Dir
	seq   uint64
}

func newArchive(t testing.TB) *archive {
	d, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &archive{t: t, store: d}
}

// upload stores a batch of samples the way the ingest does.
func (a *archive) upload(agent string, samples []telemetry.Sample) string {
	a.t.Helper()
	a.seq++
	enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: agent, Site: "s1", Seq: a.seq, SentAt: samples[0].Time}, Samples: samples})
	if err != nil {
		a.t.Fatal(err)
	}
	if _, err := a.store.Put(context.Background(), blob.TableName("t1", "s1", enc.TableHash.String()), enc.Table); err != nil {
		a.t.Fatal(err)
	}
	name := blob.BatchName("t1", "s1", agent, a.seq, time.UnixMilli(samples[0].Time))
	if _, err := a.store.Put(context.Background(), name, enc.Data); err != nil {
		a.t.Fatal(err)
	}
	return name
}

// hour makes samples of n points, one a minute, during hour h of day.
func hour(h, points int, value func(p, m int) float64) []telemetry.Sample {
	var out []telemetry.Sample
	for p := range points {
		for m := range 60 {
			out = append(out, telemetry.Sample{PointID: uint64(1000 + p), Time: day.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute).UnixMilli(), Value: value(p, m)})
		}
	}
	return out
}

func linear(p, m int) float64 { return float64(p*100 + m) }

// read returns every sample of the day's newest generation, and its parts.
func (a *archive) read() ([]telemetry.Sample, []string) {
	a.t.Helper()
	names, err := a.store.List(context.Background(), dayBlobPrefix("t1", "s1", day))
	if err != nil {
		a.t.Fatal(err)
	}
	// A generation's claim stays beside its parts; it holds no samples.
	names = slices.DeleteFunc(names, func(n string) bool { return strings.HasSuffix(n, ".claim") })
	tc := pointtable.New(a.store, nil).Resolver(context.Background(), "t1", "s1")
	var out []telemetry.Sample
	for _, n := range names {
		data, _ := a.store.Get(context.Background(), n)
		b, err := batch.Decode(data, tc, batch.Limits{})
		if err != nil {
			a.t.Fatalf("%s: %v", n, err)
		}
		if b.AgentID != AgentID {
			a.t.Errorf("%s: agent %q", n, b.AgentID)
		}
		out = append(out, b.Samples...)
	}
	return out, names
}

func (a *archive) sources() []string {
	a.t.Helper()
	n, err := a.store.List(context.Background(), DayPrefix("t1", "s1", day))
	if err != nil {
		a.t.Fatal(err)
	}
	return n
}

func sameSamples(t *testing.T, got, want []telemetry.Sample) {
	t.Helper()
	sortSamples(got)
	sortSamples(want)
	if len(got) != len(want) {
		t.Fatalf("%d samples, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.PointID != w.PointID || g.Time != w.Time || math.Float64bits(g.Value) != math.Float64bits(w.Value) || g.Status != w.Status {
			t.Fatalf("sample %d: %+v, want %+v", i, g, w)
		}
	}
}

func sortSamples(s []telemetry.Sample) {
	slices.SortFunc(s, func(a, b telemetry.Sample) int {
		if a.PointID != b.PointID {
			return int(max(-1, min(1, int64(a.PointID)-int64(b.PointID))))
		}
		return int(max(-1, min(1, a.Time-b.Time)))
	})
}

func TestCompactDay(t *testing.T) {
	a := newArchive(t)
	h0, h1 := hour(0, 5, linear), hour(1, 5, linear)
	a.upload("ag-a", h0)
	a.upload("ag-a", h1)
	a.upload("ag-a", h1[:30]) // a retried upload under another seq: duplicates
	conflict := []telemetry.Sample{h0[0]}
	conflict[0].Value = -1
	a.upload("ag-b", conflict) // a second box reporting the same point and time
	c := New(a.store, Options{})
	res, err := c.Day(context.Background(), "t1", "s1", day.Add(13*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if res.Sources != 4 || res.Samples != 600 || res.Duplicates != 30 || res.Conflicts != 1 || res.Generation != 1 || res.Parts != 1 || res.Skipped {
		t.Errorf("result %+v", res)
	}
	got, parts := a.read()
	sameSamples(t, got, append(slices.Clone(h0), h1...))
	if len(parts) != 1 || !strings.HasSuffix(parts[0], "days/2026/11/30.g000001.p001-of-001.sgb") {
		t.Errorf("day parts %v", parts)
	}
	if src := a.sources(); len(src) != 0 {
		t.Errorf("sources left: %v", src)
	}
	if res.Bytes >= res.SourceBytes {
		t.Errorf("the day blob (%d bytes) is no smaller than its sources (%d)", res.Bytes, res.SourceBytes)
	}

	// Again: nothing to do, nothing changes.
	res, err = c.Day(context.Background(), "t1", "s1", day)
	if err != nil || !res.Skipped || res.Generation != 1 {
		t.Errorf("second run %+v, %v", res, err)
	}

	// A late backlog for the same day: merged into generation 2, which
	// replaces generation 1.
	h5 := hour(5, 5, linear)
	a.upload("ag-a", h5)
	res, err = c.Day(context.Background(), "t1", "s1", day)
	if err != nil || res.Generation != 2 || res.Sources != 1 || res.Samples != 900 {
		t.Fatalf("backlog run %+v, %v", res, err)
	}
	got, parts = a.read()
	sameSamples(t, got, append(append(slices.Clone(h0), h1...), h5...))
	if len(parts) != 1 || !strings.Contains(parts[0], ".g000002.") {
		t.Errorf("after the backlog, parts %v", parts)
	}
}

func TestCompactParts(t *testing.T) {
	a := newArchive(t)
	var want []telemetry.Sample
	for h := range 4 {
		s := hour(h, 3, linear)
		a.upload("ag-a", s)
		want = append(want, s...)
	}
	res, err := New(a.store, Options{PartSamples: 250}).Day(context.Background(), "t1", "s1", day)
	if err != nil {
		t.Fatal(err)
	}
	if res.Parts != 3 { // 720 samples
		t.Errorf("%d parts", res.Parts)
	}
	got, _ := a.read()
	sameSamples(t, got, want)
}

// failingDeletes deletes nothing, as a compactor that crashed after
// storing the day blob would.
type failingDeletes struct{ *blob.Dir }

func (failingDeletes) Delete(context.Context, string) error { return errors.New("crash") }

func TestCrashBeforeDeleteLosesNothing(t *testing.T) {
	a := newArchive(t)
	h0 := hour(0, 4, linear)
	a.upload("ag-a", h0)
	if _, err := New(failingDeletes{a.store}, Options{}).Day(context.Background(), "t1", "s1", day); err == nil {
		t.Fatal("no error from a failing delete")
	}
	if len(a.sources()) != 1 {
		t.Fatal("the source went although deleting failed")
	}
	res, err := New(a.store, Options{}).Day(context.Background(), "t1", "s1", day)
	if err != nil {
		t.Fatal(err)
	}
	if res.Generation != 2 || res.Duplicates != len(h0) || res.Samples != len(h0) {
		t.Errorf("rerun %+v", res)
	}
	got, parts := a.read()
	sameSamples(t, got, h0)
	if len(parts) != 1 || len(a.sources()) != 0 {
		t.Errorf("left parts %v, sources %v", parts, a.sources())
	}
}

func TestDamagedSourceDeletesNothing(t *testing.T) {
	a := newArchive(t)
	a.upload("ag-a", hour(0, 2, linear))
	bad := blob.BatchName("t1", "s1", "ag-a", 99, day.Add(time.Hour))
	if _, err := a.store.Put(context.Background(), bad, []byte("SGB\x01garbage")); err != nil {
		t.Fatal(err)
	}
	_, err := New(a.store, Options{}).Day(context.Background(), "t1", "s1", day)
	if err == nil || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Fatalf("err = %v", err)
	}
	if len(a.sources()) != 2 {
		t.Errorf("sources %v", a.sources())
	}
	if _, parts := a.read(); len(parts) != 0 {
		t.Errorf("day parts written: %v", parts)
	}
}

func TestConcurrentCompactors(t *testing.T) {
	a := newArchive(t)
	var want []telemetry.Sample
	for h := range 6 {
		s := hour(h, 4, linear)
		a.upload("ag-a", s)
		want = append(want, s...)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			if _, err := New(a.store, Options{}).Day(context.Background(), "t1", "s1", day); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a compactor failed: %v", err)
	}
	got, parts := a.read()
	sameSamples(t, got, want)
	if len(parts) != 1 || len(a.sources()) != 0 {
		t.Errorf("parts %v, sources %v", parts, a.sources())
	}
}

func TestParsePart(t *testing.T) {
	p := dayBlobPrefix("t1", "s1", day)
	for _, tt := range []struct {
		name          string
		gen, part, of int
		ok            bool
	}{
		{PartName("t1", "s1", day, 7, 2, 3), 7, 2, 3, true},
		{p + "g1.p4-of-3.sgb", 0, 0, 0, false},
		{p + "g1.p1-of-1.sgt", 0, 0, 0, false},
		{p + "gx.p1-of-1.sgb", 0, 0, 0, false},
		{"t1/s1/2026/11/30/00/ag-a-1.sgb", 0, 0, 0, false},
	} {
		g, pt, of, ok := parsePart(p, tt.name)
		if ok != tt.ok || g != tt.gen || pt != tt.part || of != tt.of {
			t.Errorf("parsePart(%q) = %d %d %d %v", tt.name, g, pt, of, ok)
		}
	}
}

// TestOwedBatchesHeld: a batch the hot store still owes (Options.Owed)
// stays as it is, so the retry that reads its blob finds it; the next
// compaction, once it is no longer owed, merges it. Readers see every
// sample throughout.
func TestOwedBatchesHeld(t *testing.T) {
	a := newArchive(t)
	h0, h1 := hour(0, 3, linear), hour(1, 3, linear)
	a.upload("ag-a", h0)
	held := a.upload("ag-a", h1)
	owedSeq := a.seq
	owed := true
	c := New(a.store, Options{Owed: func(_ context.Context, tenant, site string) (func(string, uint64) bool, error) {
		if tenant != "t1" || site != "s1" {
			t.Errorf("asked about %s/%s", tenant, site)
		}
		return func(agent string, seq uint64) bool { return owed && agent == "ag-a" && seq == owedSeq }, nil
	}})
	res, err := c.Day(context.Background(), "t1", "s1", day)
	if err != nil || res.Sources != 1 || res.Held != 1 || res.Samples != len(h0) {
		t.Fatalf("with a batch owed: %+v, %v; want one merged and one held", res, err)
	}
	if src := a.sources(); len(src) != 1 || src[0] != held {
		t.Errorf("sources left %v, want the owed %s", src, held)
	}
	all, err := c.ReadDay(context.Background(), "t1", "s1", day)
	if err != nil {
		t.Fatal(err)
	}
	sameSamples(t, all, append(slices.Clone(h0), h1...))

	owed = false
	res, err = c.Day(context.Background(), "t1", "s1", day)
	if err != nil || res.Sources != 1 || res.Held != 0 || res.Samples != len(h0)+len(h1) {
		t.Fatalf("once no longer owed: %+v, %v; want it merged", res, err)
	}
	if src := a.sources(); len(src) != 0 {
		t.Errorf("sources left %v", src)
	}

	failing := New(a.store, Options{Owed: func(context.Context, string, string) (func(string, uint64) bool, error) {
		return nil, errors.New("archive down")
	}})
	a.upload("ag-a", hour(2, 3, linear))
	if _, err := failing.Day(context.Background(), "t1", "s1", day); err == nil || !strings.Contains(err.Error(), "owes") {
		t.Errorf("Owed failing: %v, want the day left alone with an error saying why", err)
	}
	if src := a.sources(); len(src) != 1 {
		t.Errorf("after Owed failed, sources %v, want the new batch kept", src)
	}
}

// TestOwedDuringMerge: a batch that becomes owed while its day is merged
// (its Observe failed just after compaction listed it) keeps its blob: it
// is asked again before anything is deleted.
func TestOwedDuringMerge(t *testing.T) {
	a := newArchive(t)
	h0 := hour(0, 3, linear)
	name := a.upload("ag-a", h0)
	calls := 0
	c := New(a.store, Options{Owed: func(context.Context, string, string) (func(string, uint64) bool, error) {
		calls++
		owedNow := calls > 1
		return func(string, uint64) bool { return owedNow }, nil
	}})
	res, err := c.Day(context.Background(), "t1", "s1", day)
	if err != nil || res.Held != 1 || calls != 2 {
		t.Fatalf("%+v, %v after %d questions; want the batch held by the second", res, err, calls)
	}
	if src := a.sources(); len(src) != 1 || src[0] != name {
		t.Errorf("sources %v, want %s kept", src, name)
	}
	got, err := c.ReadDay(context.Background(), "t1", "s1", day)
	if err != nil {
		t.Fatal(err)
	}
	sameSamples(t, got, slices.Clone(h0))
}
