package modbus_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// fakeClock is the time the driver's learned limits follow.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// covers reports whether a request reads address a.
func covers(r modbussim.Request, a int) bool {
	return int(r.Address) <= a && a < int(r.Address)+int(r.Quantity)
}

// TestTransientHole: a register the device refuses (exception 2 or 3)
// for a while is a hole whose point gets a fault status; it is asked
// again, alone, after 10 minutes, then after 20 more, and once it answers
// it is forgotten and read in one block with its neighbours again.
func TestTransientHole(t *testing.T) {
	type step struct {
		advance  time.Duration
		refusing bool
		ok       bool // the refused point's sample
		requests int  // in this poll; 0: not checked
		asked    bool // a request read the refused address
	}
	tests := []struct {
		name   string
		unit   func() *modbussim.Unit
		addrs  []int
		refuse int
		code   byte
		// merged is an address read in the same request as the refused
		// one once it answers again.
		merged int
		steps  []step
	}{
		{
			name: "exception 2 in a contiguous map",
			unit: func() *modbussim.Unit {
				return modbussim.NewUnit().SetRegisters(modbussim.Holding, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
			},
			addrs: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, refuse: 5, code: 2, merged: 6,
			steps: []step{
				{0, true, false, 0, true},                 // learned by splitting
				{time.Minute, true, false, 2, false},      // 0-4 and 6-9, the hole left out
				{9 * time.Minute, true, false, 3, true},   // due: asked alone, refused again
				{10 * time.Minute, true, false, 2, false}, // the wait doubled to 20 minutes
				{10 * time.Minute, false, true, 3, true},  // due: answers
				{time.Minute, false, true, 1, true},       // forgotten: one block again
				{holeRetryMax, false, true, 1, true},      // and stays so
			},
		},
		{
			// Unmapped 10-11 and the hole at 12 are both refused: the cut
			// learned beside the hole goes with it, so 12-18 merge again.
			name: "exception 3 beside a gap on a strict device",
			unit: func() *modbussim.Unit {
				u := modbussim.NewUnit().Strict(true)
				for a := range 20 {
					if a != 10 && a != 11 {
						u.SetRegisters(modbussim.Holding, uint16(a), uint16(a))
					}
				}
				return u
			},
			addrs: []int{5, 12, 18}, refuse: 12, code: 3, merged: 18,
			steps: []step{
				{0, true, false, 0, true},
				{time.Minute, true, false, 2, false},      // 5 and 18
				{9 * time.Minute, true, false, 3, true},   // 5, 12 alone, 18
				{10 * time.Minute, true, false, 2, false}, // resting 20 minutes
				{10 * time.Minute, false, true, 3, true},  // 12 answers
				{time.Minute, false, true, 3, true},       // 5-18 refused at the gap: 5, 12-18
				{time.Minute, false, true, 2, true},       // 5 and 12-18
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := tt.unit()
			sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: u})
			var points []driver.Point
			for i, a := range tt.addrs {
				points = append(points, point(uint64(i+1), fmt.Sprintf("hr/%d", a), ""))
			}
			d := connect(t, driver.Device{Name: "vfd", Settings: yamlSettings("host: " + sim.Addr()), Points: points, DataDir: t.TempDir()})
			clock := &fakeClock{now: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
			modbus.SetClock(d, clock.Now)
			for i, st := range tt.steps {
				clock.Advance(st.advance)
				code := byte(0)
				if st.refusing {
					code = tt.code
				}
				u.Refuse(modbussim.Holding, uint16(tt.refuse), code)
				sim.ResetRequests()
				samples, err := d.Read(t.Context(), points)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				for j, s := range samples {
					a := tt.addrs[j]
					wantOK := a != tt.refuse || st.ok
					if got := s.Status == telemetry.StatusOK; got != wantOK || got && s.Value != float64(a) {
						t.Errorf("step %d: hr/%d = %+v, want ok %v", i, a, s, wantOK)
					}
					if a == tt.refuse && !st.ok && s.Status != telemetry.StatusFault {
						t.Errorf("step %d: the refused point's status is %v, want a fault", i, s.Status)
					}
				}
				reqs := sim.Requests()
				if st.requests > 0 && len(reqs) != st.requests {
					t.Errorf("step %d: %d requests, want %d: %+v", i, len(reqs), st.requests, reqs)
				}
				asked := false
				for _, r := range reqs {
					asked = asked || covers(r, tt.refuse)
				}
				if asked != st.asked {
					t.Errorf("step %d: the refused address asked %v, want %v: %+v", i, asked, st.asked, reqs)
				}
			}
			merged := false
			for _, r := range sim.Requests() {
				merged = merged || covers(r, tt.refuse) && covers(r, tt.merged)
			}
			if !merged {
				t.Errorf("after the hole answered, %d and %d are not read together: %+v", tt.refuse, tt.merged, sim.Requests())
			}
			if d.Refused() != 0 || len(sim.Writes()) > 0 {
				t.Errorf("guard refused %d of the driver's requests; writes %v", d.Refused(), sim.Writes())
			}
		})
	}
}

// holeRetryMax mirrors the driver's cap on a hole's wait.
const holeRetryMax = 6 * time.Hour

// TestLearnedFileTimes: every hole in the learned file expires on its
// own time, the backoff it reached survives a restart, the other limits
// of an area expire on theirs, and a version 1 file (times the file's
// own) still loads.
func TestLearnedFileTimes(t *testing.T) {
	now := time.Now().UTC()
	ago := func(d time.Duration) string { return now.Add(-d).Format(time.RFC3339Nano) }
	week := 7 * 24 * time.Hour
	tests := []struct {
		name string
		file string // %s: the device's address
		// reads are the spans of the first poll's requests; holes the
		// addresses whose points get a fault status.
		reads string
		holes []int
		// kept is what the file says of holes after the poll; "" when it
		// must not have been rewritten.
		kept string
	}{
		{
			name: "one old and one fresh hole: only the fresh one loads",
			file: `{"version": 2, "address": "%s", "learned": "` + ago(0) + `", "areas": [{"unit": 1, "table": "hr", "holes": [
				{"start": 3, "end": 4, "learned": "` + ago(week+time.Hour) + `", "refusals": 1},
				{"start": 7, "end": 8, "learned": "` + ago(time.Minute) + `", "refusals": 1}]}]}`,
			reads: "0+7 8+2", holes: []int{7},
		},
		{
			name: "backoff survives a restart",
			file: `{"version": 2, "address": "%s", "learned": "` + ago(0) + `", "areas": [{"unit": 1, "table": "hr", "holes": [
				{"start": 3, "end": 4, "learned": "` + ago(30*time.Minute) + `", "refusals": 1},
				{"start": 7, "end": 8, "learned": "` + ago(30*time.Minute) + `", "refusals": 3}]}]}`,
			// 3 is due (10 minutes) and answers, 7 waits 40 minutes.
			reads: "0+3 3+1 4+3 8+2", holes: []int{7},
			kept: `[{"start":7,"end":8,"learned":"` + ago(30*time.Minute) + `","refusals":3}]`,
		},
		{
			name:  "version 1 file written a minute ago",
			file:  `{"version": 1, "address": "%s", "learned": "` + ago(time.Minute) + `", "areas": [{"unit": 1, "table": "hr", "holes": [[3, 4], [7, 8]]}]}`,
			reads: "0+3 4+3 8+2", holes: []int{3, 7},
		},
		{
			name:  "version 1 file over a week old",
			file:  `{"version": 1, "address": "%s", "learned": "` + ago(week+time.Hour) + `", "areas": [{"unit": 1, "table": "hr", "holes": [[3, 4]], "cuts": [5]}]}`,
			reads: "0+10",
		},
		{
			name: "an old area's cut expires, its fresh hole stays",
			file: `{"version": 2, "address": "%s", "learned": "` + ago(0) + `", "areas": [{"unit": 1, "table": "hr", "learned": "` + ago(week+time.Hour) + `",
				"cuts": [5], "holes": [{"start": 7, "end": 8, "learned": "` + ago(time.Minute) + `"}]}]}`,
			reads: "0+7 8+2", holes: []int{7},
		},
		{
			name: "a fresh area's cut stays",
			file: `{"version": 2, "address": "%s", "learned": "` + ago(0) + `", "areas": [{"unit": 1, "table": "hr", "learned": "` + ago(week-time.Hour) + `",
				"cuts": [5], "holes": [{"start": 7, "end": 8, "learned": "` + ago(time.Minute) + `"}]}]}`,
			reads: "0+5 5+2 8+2", holes: []int{7},
		},
		{
			name:  "another address: ignored",
			file:  `{"version": 2, "address": "192.0.2.1:502", "learned": "` + ago(0) + `", "areas": [{"unit": 1, "table": "hr", "holes": [{"start": 7, "end": 8}]}]}`,
			reads: "0+10",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := modbussim.NewUnit().SetRegisters(modbussim.Holding, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
			sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: u})
			dataDir := t.TempDir()
			file := filepath.Join(dataDir, "modbus", "ahu_1.json")
			if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
				t.Fatal(err)
			}
			text := tt.file
			if strings.Contains(text, "%s") {
				text = fmt.Sprintf(text, sim.Addr())
			}
			if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			var points []driver.Point
			for a := range 10 {
				points = append(points, point(uint64(a+1), fmt.Sprintf("hr/%d", a), ""))
			}
			d := connect(t, driver.Device{Name: "ahu/1", Settings: yamlSettings("host: " + sim.Addr()), Points: points, DataDir: dataDir})
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			var reads []string
			for _, r := range sim.Requests() {
				reads = append(reads, fmt.Sprintf("%d+%d", r.Address, r.Quantity))
			}
			if got := strings.Join(reads, " "); got != tt.reads {
				t.Errorf("first poll read %q, want %q", got, tt.reads)
			}
			for a, s := range samples {
				wantOK := !slices.Contains(tt.holes, a)
				if (s.Status == telemetry.StatusOK) != wantOK {
					t.Errorf("hr/%d: %+v, want ok %v", a, s, wantOK)
				}
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if tt.kept == "" {
				if string(data) != text {
					t.Errorf("the file was rewritten though nothing changed:\n%s", data)
				}
				return
			}
			var f struct {
				Version int
				Areas   []struct{ Holes json.RawMessage }
			}
			if err := json.Unmarshal(data, &f); err != nil {
				t.Fatal(err)
			}
			var holes bytes.Buffer
			if len(f.Areas) == 1 {
				json.Compact(&holes, f.Areas[0].Holes)
			}
			if f.Version != 2 || len(f.Areas) != 1 || holes.String() != tt.kept {
				t.Errorf("file after the poll:\n%s\nwant version 2 and holes %s", data, tt.kept)
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*")); len(left) > 0 {
				t.Errorf("temporary files left beside the learned file: %v", left)
			}
		})
	}
}
