package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/export"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// archiveFixture is a store with two good batches of site s1, one of site
// s2, a corrupt one and one whose table is missing.
type archiveFixture struct {
	root         string
	good1, good2 string // s1
	other        string // s2
	corrupt      string // s1
	noTable      string // s3
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newArchive(t *testing.T) archiveFixture {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	store, err := blob.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	put := func(site string, seq uint64, smp []telemetry.Sample, withTable bool) string {
		t.Helper()
		enc, err := batch.Encode(&batch.Batch{
			Header:  batch.Header{AgentID: "ag-1", Site: site, Seq: seq, SentAt: t0.UnixMilli(), Health: batch.Health{DevicesUp: 3, UptimeSeconds: 60}},
			Samples: smp,
		})
		if err != nil {
			t.Fatal(err)
		}
		if withTable {
			if _, err := store.Put(ctx, blob.TableName("acme", site, enc.TableHash.String()), enc.Table); err != nil {
				t.Fatal(err)
			}
		}
		name := blob.BatchName("acme", site, "ag-1", seq, time.UnixMilli(smp[0].Time))
		if _, err := store.Put(ctx, name, enc.Data); err != nil {
			t.Fatal(err)
		}
		return name
	}
	f := archiveFixture{root: root}
	third := []telemetry.Sample{{PointID: 0xdeadbeefcafef00d, Time: t0.Add(123456 * time.Microsecond).UnixMilli(), Value: 42}}
	f.good1 = put("s1", 1, []telemetry.Sample{
		{PointID: 1, Time: t0.UnixMilli(), Value: 1.5},
		{PointID: 2, Time: t0.UnixMilli(), Value: math.NaN(), Status: telemetry.StatusFault},
	}, true)
	f.good2 = put("s1", 2, []telemetry.Sample{{PointID: 1, Time: t0.Add(time.Hour).UnixMilli(), Value: -3, Status: telemetry.StatusOverridden}}, true)
	f.other = put("s2", 1, third, true)
	f.noTable = put("s3", 1, third, false)
	f.corrupt = blob.BatchName("acme", "s1", "ag-1", 3, t0.Add(2*time.Hour))
	if _, err := store.Put(ctx, f.corrupt, []byte("SGB\x01 not zstd at all")); err != nil {
		t.Fatal(err)
	}
	return f
}

func lines(s string) []string {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func TestArchiveCat(t *testing.T) {
	f := newArchive(t)
	nan := `{"point":"0000000000000002","time":"2026-03-01T12:00:00Z","value":null,"status":"fault"}`
	one := []string{`{"point":"0000000000000001","time":"2026-03-01T12:00:00Z","value":1.5,"status":"ok"}`, nan}
	two := []string{`{"point":"0000000000000001","time":"2026-03-01T13:00:00Z","value":-3,"status":"overridden"}`}
	three := []string{`{"point":"deadbeefcafef00d","time":"2026-03-01T12:00:00.123Z","value":42,"status":"ok"}`}
	tests := []struct {
		name    string
		paths   []string
		want    []string
		failed  []string // blobs stderr must name
		wantErr string
	}{
		{"one batch", []string{f.good1}, one, nil, ""},
		{"absolute path", []string{filepath.Join(f.root, f.good2)}, two, nil, ""},
		{"site folder with slash", []string{"acme/s2/"}, three, nil, ""},
		{"site folder without slash", []string{"acme/s2"}, three, nil, ""},
		{"twice the same", []string{f.other, "acme/s2/"}, three, nil, ""},
		{"hour folder", []string{"acme/s1/2026/03/01/13"}, two, nil, ""},
		{"corrupt among good", []string{"acme/s1/"}, append(append([]string{}, one...), two...), []string{f.corrupt}, "1 of 3 batches"},
		{"missing table", []string{f.noTable}, nil, []string{f.noTable, "point table"}, "1 of 1"},
		{"whole archive", nil, append(append(append([]string{}, one...), two...), three...), []string{f.corrupt, f.noTable}, "2 of 5"},
		{"nothing there", []string{"acme/s9/"}, nil, nil, "no batches under"},
		{"outside the archive", []string{"/etc/passwd"}, nil, nil, "outside the archive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"archive", "cat", "--store-dir", f.root}, tt.paths...)
			out, stderr, err := run(t, context.Background(), args...)
			if got := lines(out); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("stdout\n%s\nwant\n%s", out, strings.Join(tt.want, "\n"))
			}
			for _, w := range tt.failed {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not name %s:\n%s", w, stderr)
				}
			}
			if tt.wantErr == "" && err != nil {
				t.Errorf("err = %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestArchiveCatHeader(t *testing.T) {
	f := newArchive(t)
	out, _, err := run(t, context.Background(), "archive", "cat", "--store-dir", f.root, "--header", f.good1, f.good2)
	if err != nil {
		t.Fatal(err)
	}
	got := lines(out)
	if len(got) != 5 {
		t.Fatalf("got %d lines, want 2 headers and 3 samples:\n%s", len(got), out)
	}
	for i, want := range map[int]struct {
		name    string
		seq     uint64
		samples uint32
	}{0: {f.good1, 1, 2}, 3: {f.good2, 2, 1}} {
		var h headerLine
		if err := json.Unmarshal([]byte(got[i]), &h); err != nil {
			t.Fatalf("line %d is not a header: %v", i, err)
		}
		if h.Batch != want.name || h.Seq != want.seq || h.Samples != want.samples || h.Agent != "ag-1" || h.Site != "s1" ||
			h.Health.DevicesUp != 3 || h.Health.UptimeSeconds != 60 || h.SentAt != "2026-03-01T12:00:00Z" {
			t.Errorf("header line %d: %+v", i, h)
		}
	}
	if !strings.Contains(got[0], `"devices_up":3`) {
		t.Errorf("health keys are not snake_case: %s", got[0])
	}
}

func TestArchiveCatNoStore(t *testing.T) {
	_, _, err := run(t, context.Background(), "archive", "cat", "--store-dir", filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "--store-dir") {
		t.Errorf("err = %v, want advice about --store-dir", err)
	}
}

// TestArchiveExportCutsAtMidnight: batches that cross midnight both ways,
// some days compacted and some not; the export of each day holds exactly
// that day's samples, and the exports of consecutive days together hold
// the archive, no sample twice and none missing.
func TestArchiveExportCutsAtMidnight(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := blob.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	d28 := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	type pt struct {
		id uint64
		t  int64
	}
	archived := map[pt]float64{}
	seq := uint64(0)
	upload := func(start time.Time, minutes int) {
		t.Helper()
		seq++
		var smp []telemetry.Sample
		for p := range 3 {
			for m := range minutes {
				s := telemetry.Sample{PointID: uint64(0xc0 + p), Time: start.Add(time.Duration(m) * time.Minute).UnixMilli(), Value: float64(seq)}
				smp = append(smp, s)
				if _, ok := archived[pt{s.PointID, s.Time}]; !ok {
					archived[pt{s.PointID, s.Time}] = s.Value
				}
			}
		}
		enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: "ag-x", Site: "s1", Seq: seq, SentAt: smp[len(smp)-1].Time}, Samples: smp})
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{
			blob.TableName("acme", "s1", enc.TableHash.String()):                   enc.Table,
			blob.BatchName("acme", "s1", "ag-x", seq, time.UnixMilli(smp[0].Time)): enc.Data,
		} {
			if _, err := store.Put(ctx, name, data); err != nil {
				t.Fatal(err)
			}
		}
	}
	upload(d28.Add(20*time.Hour), 60)                // inside the 28th
	upload(d28.Add(23*time.Hour+40*time.Minute), 40) // the 28th into the 29th
	upload(d28.Add(24*time.Hour), 10)                // the 29th, re-sent inside the one above
	upload(d28.Add(36*time.Hour), 30)                // inside the 29th
	upload(d28.Add(47*time.Hour+50*time.Minute), 30) // the 29th into the 30th
	upload(d28.Add(72*time.Hour-time.Minute), 2)     // the 30th into the 1st
	// The 28th and 29th are compacted (--older-than keeps the 30th out);
	// the 30th stays in batches.
	if _, _, err := run(t, ctx, "archive", "compact", "--store-dir", dir, "--tenant", "acme", "--site", "s1", "--day", "2026-11-28"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, ctx, "archive", "compact", "--store-dir", dir, "--tenant", "acme", "--site", "s1", "--day", "2026-11-29"); err != nil {
		t.Fatal(err)
	}
	exported := map[pt]string{}
	for _, day := range []string{"2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01"} {
		pq := filepath.Join(t.TempDir(), day+".parquet")
		if _, _, err := run(t, ctx, "archive", "export", "--store-dir", dir, "--tenant", "acme", "--site", "s1", "--day", day, "--out", pq); err != nil {
			t.Fatalf("export of %s: %v", day, err)
		}
		data, err := os.ReadFile(pq)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := parquet.Read[export.Row](bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if got := r.Time.UTC().Format(time.DateOnly); got != day {
				t.Errorf("the export of %s holds a sample of %s", day, r.Time.UTC())
			}
			k := pt{r.PointID, r.Time.UnixMilli()}
			if other, dup := exported[k]; dup {
				t.Errorf("point %x at %s is in the exports of %s and %s", r.PointID, r.Time.UTC(), other, day)
			}
			exported[k] = day
			if want, ok := archived[k]; !ok || want != r.Value {
				t.Errorf("point %x at %s: exported %v, archived %v (%v)", r.PointID, r.Time.UTC(), r.Value, want, ok)
			}
		}
	}
	for k := range archived {
		if _, ok := exported[k]; !ok {
			t.Errorf("point %x at %s is in no export", k.id, time.UnixMilli(k.t).UTC())
		}
	}
}
