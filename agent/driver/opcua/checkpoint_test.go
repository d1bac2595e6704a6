package opcua

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestCheckpointerOnlyWithHistory: a device with history points is a
// Checkpointer and a Committer; one without stays a plain driver, which
// the poller lets read with concurrency above 1.
func TestCheckpointerOnlyWithHistory(t *testing.T) {
	tests := []struct {
		name    string
		points  []driver.Point
		wantCkp bool
	}{
		{"no history", []driver.Point{{ID: 1, Ref: "ns=1;s=a"}, {ID: 2, Ref: "ns=1;s=b", Settings: yamlSettings("mode: subscribe")}}, false},
		{"a history point", []driver.Point{{ID: 1, Ref: "ns=1;s=a"}, {ID: 2, Ref: "ns=1;s=b", Settings: yamlSettings("history: true")}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := New(driver.Device{Name: "d", Settings: noneSettings(t, "opc.tcp://127.0.0.1:4840"), Points: tt.points})
			if err != nil {
				t.Fatal(err)
			}
			_, ckp := d.(driver.Checkpointer)
			_, com := d.(driver.Committer)
			_, disc := d.(driver.Discoverer)
			_, rep := d.(driver.Reporter)
			if ckp != tt.wantCkp || com != tt.wantCkp || !disc || !rep {
				t.Errorf("Checkpointer %v, Committer %v, Discoverer %v, Reporter %v; want %v, %v, true, true", ckp, com, disc, rep, tt.wantCkp, tt.wantCkp)
			}
		})
	}
}

// historyOf returns the times of point id's samples after the first
// (the live one leads a Read, its history follows).
func historyOf(samples []telemetry.Sample, id uint64) []int64 {
	var out []int64
	live := false
	for _, s := range samples {
		if s.PointID != id {
			continue
		}
		if !live {
			live = true
			continue
		}
		out = append(out, s.Time)
	}
	return out
}

// TestCheckpointCommitAndClose drives the driver as the poller does
// across a reconnect (Close and Connect): after a Commit, the reconnect
// backfills only the gap since the committed read; without one (the
// buffer refused the read), Close rewinds and the window is read again.
func TestCheckpointCommitAndClose(t *testing.T) {
	tests := []struct {
		name   string
		commit bool
	}{
		{"committed", true},
		{"not committed", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim := startSim(t, simopcua.Options{Epoch: time.Now().Add(-time.Minute), HistoryInterval: 100 * time.Millisecond})
			points := []driver.Point{historyPoint(sim, 1), {ID: 2, Ref: fmt.Sprintf("ns=%d;s=AHU1.FanSpeed", sim.NS)}}
			logs := &logBuffer{}
			drv, err := New(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL, "backfill_max: 20s"), Points: points, Logger: logs.Logger()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = drv.Close() })
			if err := drv.Connect(t.Context()); err != nil {
				t.Fatal(err)
			}
			// The live sample that ends the first window, and so the mark a
			// commit keeps, is taken after this.
			before := time.Now()
			first, err := drv.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			window := historyOf(first, 1)
			if len(window) < 150 {
				t.Fatalf("the first Read backfilled %d values, want the 20 s window (~200)", len(window))
			}
			if tt.commit {
				if err := drv.(driver.Committer).Commit(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(500 * time.Millisecond)
			if err := drv.Close(); err != nil {
				t.Fatal(err)
			}
			if err := drv.Connect(t.Context()); err != nil {
				t.Fatal(err)
			}
			again, err := drv.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			// The reconnect's window ends no later than now, and starts at
			// backfill_max before a moment between the reconnect and now:
			// on a loaded machine it slides past more of the first window,
			// so what must come again is bounded by the clock, not a count.
			done := time.Now()
			floor := done.Add(-20 * time.Second).UnixMilli()
			hist := historyOf(again, 1)
			got := map[int64]bool{}
			for _, ms := range hist {
				got[ms] = true
			}
			repeated, owed := 0, 0
			for _, ms := range window {
				if got[ms] {
					repeated++
				} else if ms >= floor {
					owed++
				}
			}
			if tt.commit {
				// Only the gap since the committed mark: values on the
				// 100 ms grid strictly between the first Read's live
				// sample and the reconnect's, which lie between before
				// and done. (Measured from the commit instead, the bound
				// missed the time the first Read spent on its window
				// after the live sample, and the Commit: on a loaded
				// machine more than the one value it allowed for.)
				gap := int(done.Sub(before)/(100*time.Millisecond)) + 1
				if repeated > 0 || len(hist) > gap {
					t.Errorf("after a commit the reconnect backfilled %d values, %d of them again; want only the gap since the commit (at most %d) and none again\n%s", len(hist), repeated, gap, logs.String())
				}
				return
			}
			if owed > 0 || repeated == 0 {
				t.Errorf("without a commit the reconnect read %d of the %d uncommitted values again and missed %d still within backfill_max; want the window again (the buffer has none of them)", repeated, len(window), owed)
			}
		})
	}
}

// TestRestoreIgnores: states that cannot be taken are ignored with a log,
// and the point keeps its backfill_max window; a good one is taken.
func TestRestoreIgnores(t *testing.T) {
	const ref = "ns=1;s=Plant.ChilledWaterSupplyTemp"
	now := time.Now()
	state := func(points map[string]pointProgress) []byte {
		b, _ := json.Marshal(checkpointState{Version: checkpointVersion, Points: points})
		return b
	}
	recent := now.Add(-time.Minute).UnixMilli()
	tests := []struct {
		name    string
		state   []byte
		taken   bool
		wantLog string
	}{
		{"good", state(map[string]pointProgress{ref: {Last: recent, Gaps: []historyGap{{From: recent - 5000, To: recent - 1000}}}}), true, "resuming history backfill"},
		{"another version", []byte(fmt.Sprintf(`{"version":2,"points":{%q:{"last":%d}}}`, ref, recent)), false, "does not decode"},
		{"not JSON", []byte("\x00\x01"), false, "does not decode"},
		{"ahead of the clock", state(map[string]pointProgress{ref: {Last: now.Add(time.Hour).UnixMilli()}}), false, "ahead of the agent's clock"},
		{"older than backfill_max", state(map[string]pointProgress{ref: {Last: now.Add(-3 * time.Hour).UnixMilli()}}), false, "older than backfill_max"},
		{"a gap after its mark", state(map[string]pointProgress{ref: {Last: recent, Gaps: []historyGap{{From: recent, To: recent + 10}}}}), false, "does not decode"},
		{"an empty gap", state(map[string]pointProgress{ref: {Last: recent, Gaps: []historyGap{{From: recent - 10, To: recent - 10}}}}), false, "does not decode"},
		{"too many gaps", state(map[string]pointProgress{ref: {Last: recent, Gaps: []historyGap{{1, 2}, {3, 4}, {5, 6}, {7, 8}}}}), false, "does not decode"},
		{"a mark that is no time", state(map[string]pointProgress{ref: {Last: -5}}), false, "does not decode"},
		{"a point not configured", state(map[string]pointProgress{"ns=1;s=Other": {Last: recent}}), false, ""},
		{"too large", append(state(nil), bytes.Repeat([]byte(" "), maxCheckpoint)...), false, "does not decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &logBuffer{}
			points := []driver.Point{{ID: 1, Ref: ref, Settings: yamlSettings("history: true")}}
			d, err := newDriver(driver.Device{Name: "d", Settings: noneSettings(t, "opc.tcp://127.0.0.1:4840", "backfill_max: 1h"), Points: points, Logger: logs.Logger()})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.restore(tt.state); err != nil {
				t.Fatalf("restore: %v; a bad state is ignored", err)
			}
			d.mu.Lock()
			taken, last, jobs := d.resumed[ref], d.tl.of(1).last, len(d.jobs)
			d.planBackfill(true, 1, now)
			var from time.Time
			for _, j := range d.jobs {
				if from.IsZero() || j.from.Before(from) {
					from = j.from
				}
			}
			d.mu.Unlock()
			if taken != tt.taken {
				t.Errorf("taken %v, want %v\n%s", taken, tt.taken, logs.String())
			}
			if tt.wantLog != "" && !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log does not say %q:\n%s", tt.wantLog, logs.String())
			}
			if !tt.taken {
				if last != 0 || jobs != 0 || !from.Equal(now.Add(-time.Hour)) {
					t.Errorf("an ignored state left mark %d and %d jobs, and the backfill starts at %s; want the window from %s", last, jobs, from, now.Add(-time.Hour))
				}
				return
			}
			// Taken: the owed gap and the time since the mark, no window.
			if want := time.UnixMilli(recent - 5000); !from.Equal(want) {
				t.Errorf("a restored point backfills from %s, want its owed gap's start %s", from, want)
			}
			if got := d.checkpoint(); !bytes.Equal(got, tt.state) {
				t.Errorf("Checkpoint after Restore = %s, want the state restored %s", got, tt.state)
			}
		})
	}
}

// TestProgressCarriesGaps: a gap still owed when the agent stops travels
// in the checkpoint with its ends, and the mark covers it.
func TestProgressCarriesGaps(t *testing.T) {
	points := []driver.Point{{ID: 1, Ref: "ns=1;s=h", Settings: yamlSettings("history: true")}, {ID: 2, Ref: "ns=1;s=p"}}
	d, err := newDriver(driver.Device{Name: "d", Settings: noneSettings(t, "opc.tcp://127.0.0.1:4840"), Points: points})
	if err != nil {
		t.Fatal(err)
	}
	opened := time.UnixMilli(1_796_000_000_000)
	d.mu.Lock()
	d.tl.of(1).last = opened.UnixMilli() - 60_000
	d.tl.of(2).last = opened.UnixMilli()
	d.jobs = []*backfillJob{
		{p: points[0], from: opened.Add(-30 * time.Second), to: opened.Add(-20 * time.Second)},
		{p: points[0], from: opened.Add(-10 * time.Second), opened: opened}, // end not fixed yet: the opening
	}
	d.readSince = true
	d.mu.Unlock()
	var got checkpointState
	if err := json.Unmarshal(d.checkpoint(), &got); err != nil {
		t.Fatal(err)
	}
	ms := opened.UnixMilli()
	want := pointProgress{Last: ms - 1, Gaps: []historyGap{{ms - 30_000, ms - 20_000}, {ms - 10_000, ms}}}
	p, ok := got.Points["ns=1;s=h"]
	if len(got.Points) != 1 || !ok || p.Last != want.Last || fmt.Sprint(p.Gaps) != fmt.Sprint(want.Gaps) {
		t.Errorf("checkpoint %+v, want only the history point with %+v", got, want)
	}
	if _, err := decodeCheckpoint(d.checkpoint()); err != nil {
		t.Errorf("the checkpoint does not decode: %v", err)
	}
	if err := d.commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	committed := d.committed["ns=1;s=h"]
	d.mu.Unlock()
	if committed.Last != want.Last || len(committed.Gaps) != 2 {
		t.Errorf("committed %+v, want %+v", committed, want)
	}
}

// FuzzDecodeCheckpoint feeds Restore's decoder states the buffer could
// hand back damaged: it must never panic, and a state it accepts must
// encode and decode to the same progress.
func FuzzDecodeCheckpoint(f *testing.F) {
	f.Add([]byte(`{"version":1,"points":{"ns=2;s=Plant.ChilledWaterSupplyTemp":{"last":1796127537793}}}`))
	f.Add([]byte(`{"version":1,"points":{"ns=2;s=h":{"last":1796127537793,"gaps":[{"from":1796127500000,"to":1796127510000}]}}}`))
	f.Add([]byte(`{"version":2,"points":{}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version":1,"points":{"x":{"last":5,"gaps":[{"from":9,"to":3}]}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeCheckpoint(b)
		if err != nil {
			return
		}
		again, err := decodeCheckpoint(encodeCheckpoint(m))
		if len(m) == 0 {
			return // encodes to none
		}
		if err != nil {
			t.Fatalf("an accepted state does not decode once re-encoded: %v", err)
		}
		if fmt.Sprint(again) != fmt.Sprint(m) {
			t.Fatalf("re-encoded %v decodes to %v", m, again)
		}
	})
}

// BenchmarkCheckpoint10000 takes the checkpoint of a device with 10,000
// history points, each with a gap still owed, as the poller does after
// every Read, and reports its size.
func BenchmarkCheckpoint10000(b *testing.B) {
	const n = 10_000
	d := owingDriver(b, n, "ns=2;s=Zones.Zone%d.Temp", nil)
	var size int
	b.ResetTimer()
	for b.Loop() {
		size = len(d.checkpoint())
	}
	b.ReportMetric(float64(size), "bytes")
	b.ReportMetric(float64(size)/n, "bytes/point")
}

// TestCheckpointTooLarge: a checkpoint above the limit is not handed to
// the agent (which would store it with every read, and the driver host
// refuse it) but logged once; none is stored, and a restart repeats
// history rather than losing any.
func TestCheckpointTooLarge(t *testing.T) {
	logs := &logBuffer{}
	d := owingDriver(t, 12_000, "ns=2;s=Zones.Zone%d.Temperature", logs) // ~100 bytes each: above 1 MiB
	for range 2 {
		if b := d.checkpoint(); b != nil {
			t.Fatalf("a checkpoint of %d bytes was handed out, above the %d limit", len(b), maxCheckpoint)
		}
	}
	if got := strings.Count(logs.String(), "too large to store"); got != 1 {
		t.Errorf("logged %d times, want once:\n%.2000s", got, logs.String())
	}
}

// owingDriver is a driver of n history points (refs from format and the
// point's number) that were each read a moment ago and still owe a gap,
// as after a Read: what a checkpoint of n points holds.
func owingDriver(tb testing.TB, n int, format string, logs *logBuffer) *Driver {
	tb.Helper()
	points := make([]driver.Point, n)
	for i := range points {
		points[i] = driver.Point{ID: uint64(i + 1), Ref: fmt.Sprintf(format, i+1), Settings: yamlSettings("history: true")}
	}
	if logs == nil {
		logs = &logBuffer{}
	}
	d, err := newDriver(driver.Device{Name: "d", Settings: noneSettings(tb, "opc.tcp://127.0.0.1:4840"), Points: points, Logger: logs.Logger()})
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range points {
		d.tl.of(p.ID).last = now.UnixMilli()
		d.jobs = append(d.jobs, &backfillJob{p: p, from: now.Add(-time.Hour), to: now.Add(-time.Minute)})
	}
	d.readSince = true
	return d
}
