package opcua

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

func TestPolledTime(t *testing.T) {
	base := time.UnixMilli(1_700_000_000_000)
	at := func(ms int64) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	last := base.UnixMilli() + 100 // the point's last sample, at base+100ms
	tests := []struct {
		name     string
		last     int64
		src, srv time.Time
		now      time.Time
		want     time.Time // zero: not emitted
	}{
		{"first sample takes the source", 0, at(0), at(5), at(9), at(0)},
		{"source advanced", last, at(150), at(160), at(170), at(150)},
		{"steady source: the server's read time", last, at(0), at(160), at(170), at(160)},
		{"source equal to last: the server's", last, at(100), at(101), at(170), at(101)},
		{"no source: the server's", last, time.Time{}, at(160), at(170), at(160)},
		{"server not later either: the agent's", last, at(0), at(100), at(170), at(170)},
		{"no timestamps at all: the agent's", last, time.Time{}, time.Time{}, at(170), at(170)},
		{"1601 (OPC UA's none) is no timestamp", last, time.Date(1601, 1, 1, 0, 0, 0, 0, time.UTC), time.Time{}, at(170), at(170)},
		{"nothing later: left out", last, at(0), at(50), at(100), time.Time{}},
		{"agent clock behind: left out", last, at(90), at(95), at(99), time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := polledTime(tt.last, &ua.DataValue{SourceTimestamp: tt.src, ServerTimestamp: tt.srv}, tt.now)
			if tt.want.IsZero() {
				if ok {
					t.Fatalf("polledTime = %d, want the sample left out", got)
				}
				return
			}
			if !ok || got != tt.want.UnixMilli() {
				t.Fatalf("polledTime = %d, %v; want %d", got, ok, tt.want.UnixMilli())
			}
		})
	}
	if got, ok := polledTime(0, nil, at(3)); !ok || got != at(3).UnixMilli() {
		t.Errorf("polledTime(nil value) = %d, %v; want the read time", got, ok)
	}
}

// TestSteadyValueOnePerPoll polls the simulator's setpoints, which never
// change and keep their source timestamp at the simulator's start: every
// poll must give one sample per point at a new time (the first at the
// source timestamp, the later ones at the server's read time), not the
// same (point, time) again and again.
func TestSteadyValueOnePerPoll(t *testing.T) {
	epoch := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	sim := startSim(t, simopcua.Options{Epoch: epoch, SteadySource: true})
	var points []driver.Point
	for i := 1; i <= 3; i++ {
		points = append(points, driver.Point{ID: uint64(i), Ref: fmt.Sprintf("ns=%d;s=Zones.Zone%d.Setpoint", sim.NS, i)})
	}
	d, _ := connected(t, noneSettings(t, sim.URL), points)
	const polls = 5
	times := map[uint64][]int64{}
	for range polls {
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range samples {
			times[s.PointID] = append(times[s.PointID], s.Time)
		}
		time.Sleep(5 * time.Millisecond) // the server's clock moves on
	}
	for _, p := range points {
		ts := times[p.ID]
		if len(ts) != polls {
			t.Fatalf("point %d: %d samples in %d polls, want one per poll: %v", p.ID, len(ts), polls, ts)
		}
		if ts[0] != epoch.UnixMilli() {
			t.Errorf("point %d: first sample at %d, want the source timestamp %d", p.ID, ts[0], epoch.UnixMilli())
		}
		for i := 1; i < len(ts); i++ {
			if ts[i] <= ts[i-1] {
				t.Errorf("point %d: sample times %v do not strictly increase", p.ID, ts)
				break
			}
		}
	}
	if n := counter(d, "samples_not_later"); n != 0 {
		t.Errorf("samples_not_later = %d, want 0", n)
	}
}

// TestNotLaterLeftOut reads the same steady value twice at the same agent
// time (a server that repeats both timestamps): the second read cannot
// give the point a later time, so its sample is left out, counted, and
// logged once for the episode; memory for points the device was not
// configured with stays bounded.
func TestNotLaterLeftOut(t *testing.T) {
	var logs logBuffer
	points := []driver.Point{{ID: 1, Ref: "ns=2;s=A"}, {ID: 2, Ref: "ns=2;s=B"}}
	d, err := newDriver(driver.Device{Name: "d", Settings: yamlSettings("endpoint: opc.tcp://127.0.0.1:4840\npki_dir: /nonexistent"), Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(1_700_000_000_000)
	d.now = func() time.Time { return now }
	steady := &ua.DataValue{Value: ua.MustVariant(21.0), SourceTimestamp: now.Add(-time.Hour), ServerTimestamp: now.Add(-time.Minute)}
	res := &ua.ReadResponse{Results: []*ua.DataValue{steady, steady}}
	want := []int{2, 2, 2, 0, 0} // source, server, agent, nothing later twice
	for i, n := range want {
		samples, err := d.readResults(points, res)
		if err != nil {
			t.Fatal(err)
		}
		if len(samples) != n {
			t.Fatalf("read %d: %d samples, want %d", i, len(samples), n)
		}
	}
	if got := counter(d, "samples_not_later"); got != 4 {
		t.Errorf("samples_not_later = %d, want 4", got)
	}
	if n := strings.Count(logs.String(), "does not advance"); n != 2 {
		t.Errorf("logged %d times for 2 points stuck twice each, want once per point:\n%s", n, logs.String())
	}
	now = now.Add(time.Millisecond)
	if samples, _ := d.readResults(points, res); len(samples) != 2 {
		t.Errorf("%d samples once the agent's clock moved on, want 2", len(samples))
	}
	if n := strings.Count(logs.String(), "advances again"); n != 2 {
		t.Errorf("recovery logged %d times, want once per point:\n%s", n, logs.String())
	}

	var other []driver.Point
	var values []*ua.DataValue
	for i := range 1000 {
		other = append(other, driver.Point{ID: uint64(100 + i), Ref: fmt.Sprintf("ns=2;i=%d", i)})
		values = append(values, steady)
	}
	if _, err := d.readResults(other, &ua.ReadResponse{Results: values}); err != nil {
		t.Fatal(err)
	}
	if n := d.tl.size(); n > len(points)+minUnconfigured {
		t.Errorf("%d marks kept after reading 1000 unconfigured points; want at most %d", n, len(points)+minUnconfigured)
	}
}

// counter returns the driver's counter called name.
func counter(d *Driver, name string) uint64 {
	for _, c := range d.Counters() {
		if c.Name == name {
			return c.Value
		}
	}
	panic("no counter " + name)
}

// TestNodeOPCUASteadyIntegration polls node-opcua's steady setpoint, set
// once at the peer's start: each poll is one sample at a new time.
func TestNodeOPCUASteadyIntegration(t *testing.T) {
	p := shared(t)
	points := []driver.Point{{ID: 1, Ref: peerRef("Plant.ChillerSetpoint")}, {ID: 2, Ref: peerRef("AHU1.SupplyAirTemp")}}
	d, _ := connected(t, noneSettings(t, p.URL), points)
	const polls = 4
	times := map[uint64][]int64{}
	for range polls {
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range samples {
			times[s.PointID] = append(times[s.PointID], s.Time)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range points {
		ts := times[p.ID]
		if len(ts) != polls {
			t.Fatalf("point %d: %d samples in %d polls: %v", p.ID, len(ts), polls, ts)
		}
		for i := 1; i < len(ts); i++ {
			if ts[i] <= ts[i-1] {
				t.Fatalf("point %d: sample times %v do not strictly increase", p.ID, ts)
			}
		}
	}
	t.Logf("steady setpoint sample times %v", times[1])
}

// TestSubscribedRepeatLeftOut delivers a notification that repeats the
// last one's time, as the initial value of a subscription recreated after
// a reconnect does for a steady node: it is left out and counted, without
// the warning a stuck point gets.
func TestSubscribedRepeatLeftOut(t *testing.T) {
	var logs logBuffer
	points := []driver.Point{{ID: 1, Ref: "ns=2;s=A", Settings: yamlSettings("mode: subscribe")}}
	d, err := newDriver(driver.Device{Name: "d", Settings: yamlSettings("endpoint: opc.tcp://127.0.0.1:4840\npki_dir: /nonexistent"), Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	s := &subscription{handles: map[string]uint32{"ns=2;s=A": 1}, pending: map[uint32][]*ua.DataValue{}}
	d.sub = s
	changed := time.UnixMilli(1_700_000_000_000)
	for i, want := range []int{1, 0, 1} {
		dv := &ua.DataValue{Value: ua.MustVariant(float64(i)), SourceTimestamp: changed}
		if i == 2 {
			dv.SourceTimestamp = changed.Add(time.Second) // a real change
		}
		s.push(1, dv)
		if got := d.subscribedSamples(points); len(got) != want {
			t.Fatalf("notification %d: %d samples, want %d", i, len(got), want)
		}
	}
	if n := counter(d, "samples_not_later"); n != 1 {
		t.Errorf("samples_not_later = %d, want 1", n)
	}
	if strings.Contains(logs.String(), "does not advance") {
		t.Errorf("a repeated notification was warned about:\n%s", logs.String())
	}
}
