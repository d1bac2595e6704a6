package bacnet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// yamlText is driver.Settings from YAML text, decoded strictly like the
// agent's configuration.
type yamlText string

func (y yamlText) Decode(v any) error {
	if strings.TrimSpace(string(y)) == "" {
		return nil
	}
	return yaml.Load([]byte(y), v, yaml.WithKnownFields())
}

func startSim(t *testing.T, cfg bacnetsim.Config) *bacnetsim.Server {
	t.Helper()
	s, err := bacnetsim.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newDriver(t *testing.T, settings string, points []driver.Point) *Driver {
	t.Helper()
	d, err := New(driver.Device{Name: "test", Settings: yamlText(settings), Points: points})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.(*Driver)
}

// confirmed counts the confirmed requests of a service the simulator received.
func confirmed(sim *bacnetsim.Server, service uint8) int {
	n := 0
	for _, r := range sim.Requests() {
		if r.PDU == bacnet.PDUConfirmedRequest && r.Service == service {
			n++
		}
	}
	return n
}

// simSettings are a driver's settings for a device of s. The timeout is
// long: no test of them waits one out, and one shorter than a loaded
// machine under -race can take over a loopback answer would send a request
// twice (tests count requests) or miss the I-Am that locates the device.
func simSettings(s *bacnetsim.Server, instance uint32, extra string) string {
	return fmt.Sprintf("device_instance: %d\nlocal_address: 127.0.0.1:0\nbroadcast: %s\ntimeout: 10s\n%s", instance, s.Addr(), extra)
}

// TestConformance runs the kit. Its drivers share a data directory whose
// backfill state (rewritten by every New, as a driver that never
// committed would leave it) holds a mark a minute old, and the trend log
// logs the same records in every simulator New starts: so a fresh driver
// backfills that minute at its first read, and one restored from another's
// checkpoint must not backfill it again. Without that history the kit's
// resume check could not fail.
func TestConformance(t *testing.T) {
	var sim *bacnetsim.Server
	dataDir := t.TempDir()
	logStart := time.Now().Add(-2 * time.Minute).Truncate(time.Second)
	oldMark := fmt.Sprintf(`{"version":2,"marks":{"analog-input:1":{"last":%d}}}`, time.Now().Add(-time.Minute).UnixMilli())
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			dev := bacnetsim.NewDevice(1001, "ahu", 3, 2, 1, true)
			// A trend log on the first point makes the driver a
			// Checkpointer with a state, so the kit checks resuming.
			for _, o := range dev.Objects {
				if o.Log != nil {
					o.Log.Interval = time.Second
					o.Log.Start = logStart
				}
			}
			sim = startSim(t, bacnetsim.Config{Local: dev})
			if err := os.MkdirAll(filepath.Join(dataDir, "bacnet"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dataDir, "bacnet", "ahu.backfill.json"), []byte(oldMark), 0o600); err != nil {
				t.Fatal(err)
			}
			points := []driver.Point{
				{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}, {ID: 2, Ref: "analog-input:2"},
				{ID: 3, Ref: "binary-value:1"}, {ID: 4, Ref: "multi-state-value:1"},
				{ID: 5, Ref: "analog-input:3/object-name"},
			}
			d, err := New(driver.Device{Name: "ahu", Settings: yamlText(simSettings(sim, 1001, "backfill_after: 200ms\n")), Points: points, DataDir: dataDir})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d, points
		},
		Writes: func() []string { return sim.Writes() },
	})
}

// TestStatusMapping reads points whose objects carry every status flag and
// reliability the device can report.
func TestStatusMapping(t *testing.T) {
	dev := bacnetsim.NewDevice(7, "flags", 6, 0, 0, false)
	dev.Objects[1].Flags[0] = true                           // in alarm: a good value, flagged
	dev.Objects[2].Flags[1] = true                           // fault
	dev.Objects[3].Flags[2] = true                           // overridden
	dev.Objects[4].Flags[3] = true                           // out of service
	dev.Objects[5].Reliability = 7                           // unreliable-other, flags clear
	noRPM := bacnetsim.NewDevice(8, "small", 6, 0, 0, false) // the same by ReadProperty
	noRPM.NoRPM, noRPM.Segmentation, noRPM.MaxAPDU = true, bacnet.NoSegmentation, 128
	noRPM.Objects[1].Flags[0] = true
	noRPM.Objects[2].Flags[1] = true
	noRPM.Objects[3].Flags[2] = true
	noRPM.Objects[4].Flags[3] = true
	noRPM.Objects[5].Reliability = 7
	want := []telemetry.Status{telemetry.StatusOK, telemetry.StatusInAlarm, telemetry.StatusFault, telemetry.StatusOverridden,
		telemetry.StatusOutOfService, telemetry.StatusFault, telemetry.StatusFault, telemetry.StatusFault}
	var points []driver.Point
	for i := range 6 {
		points = append(points, driver.Point{ID: uint64(i + 1), Ref: fmt.Sprintf("analog-input:%d", i+1)})
	}
	points = append(points, driver.Point{ID: 7, Ref: "analog-input:99"}, driver.Point{ID: 8, Ref: "analog-input:1/state-text"})
	for _, d := range []*bacnetsim.Device{dev, noRPM} {
		t.Run(d.Name, func(t *testing.T) {
			sim := startSim(t, bacnetsim.Config{Local: d})
			drv := newDriver(t, simSettings(sim, d.Instance, ""), points)
			if err := drv.Connect(t.Context()); err != nil {
				t.Fatal(err)
			}
			if drv.rpm == d.NoRPM {
				t.Fatalf("rpm = %v for a device with NoRPM %v", drv.rpm, d.NoRPM)
			}
			samples, err := drv.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			if len(samples) != len(points) {
				t.Fatalf("%d samples for %d points", len(samples), len(points))
			}
			for i, s := range samples {
				if s.PointID != points[i].ID || s.Status != want[i] {
					t.Errorf("%s: status %v, want %v", points[i].Ref, s.Status, want[i])
				}
				if (s.Status == telemetry.StatusOK || s.Status == telemetry.StatusInAlarm) && (s.Value < 15 || s.Value > 30) {
					t.Errorf("%s: value %v out of the simulated range", points[i].Ref, s.Value)
				}
			}
			if w := sim.Writes(); len(w) > 0 {
				t.Errorf("non-reads reached the device: %q", w)
			}
		})
	}
}

// TestRPMFallback proves a device that rejects ReadPropertyMultiple (after
// claiming it) is read property by property.
func TestRPMFallback(t *testing.T) {
	d := bacnetsim.NewDevice(9, "liar", 2, 0, 0, false)
	sim := startSim(t, bacnetsim.Config{Local: d})
	points := []driver.Point{{ID: 1, Ref: "analog-input:1"}, {ID: 2, Ref: "analog-input:2"}}
	drv := newDriver(t, simSettings(sim, 9, ""), points)
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	sim.Update(func() { d.NoRPM = true }) // after Connect saw RPM in services-supported
	for range 2 {
		samples, err := drv.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range samples {
			if s.Status != telemetry.StatusOK {
				t.Fatalf("sample %+v", s)
			}
		}
	}
	if rpms := confirmed(sim, bacnet.ServiceReadPropertyMultiple); rpms != 1 {
		t.Errorf("sent %d RPM requests; want exactly the one that was rejected", rpms)
	}
}

// TestPlanFitsDevice checks that every planned request and its expected
// answer fit the device, for devices with and without segmentation.
func TestPlanFitsDevice(t *testing.T) {
	var points []point
	var valid []bool
	for i := range 500 {
		points = append(points, point{obj: bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: uint32(i)}, prop: bacnet.Prop(bacnet.PropPresentValue)})
		valid = append(valid, true)
	}
	tests := []struct {
		dev     bacnet.Device
		maxReqs int
	}{
		{bacnet.Device{MaxAPDU: 1476, Segmentation: bacnet.SegmentedBoth}, 5},
		{bacnet.Device{MaxAPDU: 480, Segmentation: bacnet.NoSegmentation}, 60},
		{bacnet.Device{MaxAPDU: 50, Segmentation: bacnet.NoSegmentation}, 500},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/%v", tt.dev.MaxAPDU, tt.dev.Segmentation), func(t *testing.T) {
			batches := plan(tt.dev, 0, points, valid, roleValue, roleFlags, roleReliability)
			seen := 0
			for _, b := range batches {
				req, err := bacnet.AppendReadPropertyMultiple(nil, b.specs)
				if err != nil {
					t.Fatal(err)
				}
				if len(req)+4 > tt.dev.MaxAPDU {
					t.Errorf("request of %d octets exceeds max apdu %d", len(req)+4, tt.dev.MaxAPDU)
				}
				seen += len(b.specs)
			}
			if seen != len(points) || len(batches) > tt.maxReqs {
				t.Errorf("%d objects in %d requests; want %d in at most %d", seen, len(batches), len(points), tt.maxReqs)
			}
		})
	}
}

func TestRoutedAndDeadDevices(t *testing.T) {
	r1 := bacnetsim.NewDevice(501, "mstp", 2, 0, 0, false)
	r1.Network, r1.MAC, r1.MaxAPDU, r1.Segmentation = 5, []byte{0x0a}, 480, bacnet.NoSegmentation
	dead := bacnetsim.NewDevice(502, "dead", 1, 0, 0, false)
	dead.Network, dead.MAC, dead.Silent = 5, []byte{0x0b}, true
	sim := startSim(t, bacnetsim.Config{Routed: []*bacnetsim.Device{r1, dead}})
	points := []driver.Point{{ID: 1, Ref: "analog-input:1"}}
	t.Run("by who-is", func(t *testing.T) {
		d := newDriver(t, simSettings(sim, 501, ""), points)
		if err := d.Connect(t.Context()); err != nil {
			t.Fatal(err)
		}
		if !d.dev.Addr.Routed() || d.dev.Addr.Net != 5 {
			t.Fatalf("located at %v, want network 5", d.dev.Addr)
		}
		if _, err := d.Read(t.Context(), points); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("by address", func(t *testing.T) {
		d := newDriver(t, fmt.Sprintf("device_instance: 501\nlocal_address: 127.0.0.1:0\naddress: %s/5:0a\n", sim.Addr()), points)
		if err := d.Connect(t.Context()); err != nil {
			t.Fatal(err)
		}
		if d.dev.MaxAPDU != 480 || d.dev.Segmentation != bacnet.NoSegmentation {
			t.Fatalf("device %+v: max apdu and segmentation not read from the device", d.dev)
		}
		s, err := d.Read(t.Context(), points)
		if err != nil || s[0].Status != telemetry.StatusOK {
			t.Fatalf("%v %v", s, err)
		}
	})
	t.Run("dead", func(t *testing.T) {
		d := newDriver(t, fmt.Sprintf("device_instance: 502\nlocal_address: 127.0.0.1:0\naddress: %s/5:0b\ntimeout: 50ms\nretries: -1\n", sim.Addr()), points)
		// Connect succeeds (the socket is open, the agent must not close
		// the driver for a device that is down); Read reports the outage.
		if err := d.Connect(t.Context()); err != nil {
			t.Fatalf("Connect with a dead device: %v", err)
		}
		_, err := d.Read(t.Context(), points)
		if err == nil || errors.Is(err, driver.ErrConnLost) || !errors.Is(err, bacnet.ErrTimeout) {
			t.Fatalf("Read of a dead device: %v, want a timeout that is not ErrConnLost", err)
		}
		// It comes back: the same driver reads it, with no reconnect. The
		// 50ms timeout (no retries) keeps the read of the dead device
		// short, but a loaded machine under -race can take longer than
		// that over an answer on loopback: such a read is one more
		// timeout, not a driver that failed to recover, so read until an
		// answer comes. The bound only stops a driver that never recovers.
		sim.Update(func() { dead.Silent = false })
		var s []telemetry.Sample
		for attempt := 1; ; attempt++ {
			s, err = d.Read(t.Context(), points)
			if err == nil || !errors.Is(err, bacnet.ErrTimeout) || attempt == 100 {
				break
			}
		}
		if err != nil || s[0].Status != telemetry.StatusOK {
			t.Fatalf("Read after the device came back: %v %v", s, err)
		}
	})
}

// TestBackfill takes a device away for a while, then checks the gap is
// filled from its trend log with the logged timestamps.
func TestBackfill(t *testing.T) {
	dev, tl := trendDevice(11, "logged", 100*time.Millisecond)
	log := tl.Log
	clock := newFakeClock()
	sim := startSim(t, bacnetsim.Config{Local: dev})
	dir := t.TempDir()
	pointSettings := yamlText("trend_log: trend-log:1")
	points := []driver.Point{{ID: 1, Ref: "analog-input:1", Settings: pointSettings}}
	settings := simSettings(sim, 11, "backfill_after: 300ms\n")
	d, err := New(driver.Device{Name: "logged", Settings: yamlText(settings), Points: points, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	drv := d.(*Driver)
	drv.now = clock.now
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	first, err := drv.Read(t.Context(), points)
	if err != nil || len(first) != 1 {
		t.Fatalf("first read: %v %v (no backfill expected without a mark)", first, err)
	}
	if err := drv.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	drv.Close()
	clock.advance(time.Second) // the agent is down: 10 records are logged meanwhile
	// A new driver (a restarted agent) finds the mark on disk.
	d2, err := New(driver.Device{Name: "logged", Settings: yamlText(settings), Points: points, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	d2.(*Driver).now = clock.now
	if err := d2.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	samples, err := d2.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	if want := logged(log, first[0].Time, samples[0].Time, nil); len(samples) != 1+want || want != 10 {
		t.Fatalf("%d samples after a 1s gap logged every 100ms; want the live one and the %d records of the gap", len(samples), want)
	}
	for _, s := range samples[1:] {
		if s.Time <= first[0].Time || s.Time >= samples[0].Time || s.PointID != 1 {
			t.Errorf("backfilled sample %+v outside the gap (%d, %d)", s, first[0].Time, samples[0].Time)
		}
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("non-reads reached the device: %q", w)
	}
}

func TestSettingsErrors(t *testing.T) {
	tests := []struct{ settings, want string }{
		{"", "device_instance: required"},
		{"device_instance: 5000000\naddress: 127.0.0.1", "out of range"},
		{"device_instance: 1", "set the device's address"},
		{"device_instance: 1\naddress: nowhere", "want IPv4"},
		{"device_instance: 1\naddress: 127.0.0.1\ntimezone: Mars/Base", "timezone"},
		{"device_instance: 1\naddress: 127.0.0.1\nread_property_multiple: sometimes", "want auto or off"},
		{"device_instance: 1\naddress: 127.0.0.1\nmax_apdu: 20", "max_apdu"},
		{"device_instance: 1\naddress: 127.0.0.1\ndiscover_rate: -1", "discover_rate"},
		{"device_instance: 1\naddress: 127.0.0.1\ndiscover_rate: 5000", "discover_rate"},
		{"device_instance: 1\naddress: 127.0.0.1\nwrite: true", "write"},
		{"device_instance: 1\naddress: 127.0.0.1", "local_address: required"},
		{"device_instance: 1\naddress: 127.0.0.1\nlocal_address: 0.0.0.0:47808", "binds every NIC"},
		{"device_instance: 1\naddress: 127.0.0.1\nlocal_address: nic0", "want IP:port"},
	}
	for _, tt := range tests {
		_, err := New(driver.Device{Name: "x", Settings: yamlText(tt.settings)})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("settings %q: %v, want an error containing %q", tt.settings, err, tt.want)
		}
	}
	_, err := New(driver.Device{Name: "x", Settings: yamlText("device_instance: 1\naddress: 127.0.0.1\nlocal_address: 127.0.0.1:0"),
		Points: []driver.Point{{ID: 1, Ref: "analog-input"}, {ID: 2, Ref: "nonsense:1"}, {ID: 3, Ref: "analog-input:1/bogus-prop"}}})
	if err == nil || strings.Count(err.Error(), "point") < 3 {
		t.Errorf("bad points: %v, want each reported", err)
	}
}

func TestRef(t *testing.T) {
	tests := []struct{ in, canon string }{
		{"analog-input:1", "analog-input:1"},
		{"0:1", "analog-input:1"},
		{"analog-value:3/present-value", "analog-value:3"},
		{"multi-state-value:2/state-text[1]", "multi-state-value:2/state-text[1]"},
		{"analog-output:4/104", "analog-output:4/relinquish-default"},
	}
	for _, tt := range tests {
		p, err := parseRef(tt.in)
		if err != nil {
			t.Fatalf("%q: %v", tt.in, err)
		}
		if got := Ref(p.obj, p.prop); got != tt.canon {
			t.Errorf("Ref(parseRef(%q)) = %q, want %q", tt.in, got, tt.canon)
		}
	}
}

func TestCancelledConnect(t *testing.T) {
	sim := startSim(t, bacnetsim.Config{Local: bacnetsim.NewDevice(1, "x", 1, 0, 0, false)})
	d := newDriver(t, simSettings(sim, 1, ""), nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := d.Connect(ctx); err == nil {
		t.Fatal("Connect with a cancelled context succeeded")
	}
}

// FuzzParseRef checks that any point reference either fails cleanly or
// round-trips through its canonical form.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"analog-input:1", "2:7/85", "multi-state-value:2/state-text[1]", "x", "analog-input:1/[", "device:4194303"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		p, err := parseRef(ref)
		if err != nil {
			return
		}
		q, err := parseRef(Ref(p.obj, p.prop))
		if err != nil || q != p {
			t.Fatalf("%q -> %q -> %+v, %v; want %+v", ref, Ref(p.obj, p.prop), q, err, p)
		}
	})
}

// TestScanSurvivesHungDevice discovers three devices, one of which
// answers Who-Is and then nothing: it is reported with its error within
// the per-device limit, and the others are read completely.
//
// The request timeout is longer than the per-device limit, so it is the
// limit that ends the hung device, and no answer of the others, however
// late a loaded machine delivers it, is a timeout. I-Am answers are
// collected for 1s for the same reason.
func TestScanSurvivesHungDevice(t *testing.T) {
	good := bacnetsim.NewDevice(1, "good", 2, 1, 0, true)
	hung := bacnetsim.NewDevice(2, "hung", 2, 0, 0, false)
	hung.Network, hung.MAC, hung.Hung = 5, []byte{2}, true
	other := bacnetsim.NewDevice(3, "other", 1, 0, 0, false)
	other.Network, other.MAC = 5, []byte{3}
	sim := startSim(t, bacnetsim.Config{Local: good, Routed: []*bacnetsim.Device{hung, other}})
	const timeout, perDevice = time.Minute, 3 * time.Second
	start := time.Now()
	reports, err := Scan(t.Context(), ScanOptions{
		Client:  bacnet.Config{Local: "127.0.0.1:0", Broadcast: sim.Addr().String(), Timeout: timeout, Retries: -1},
		Network: bacnet.GlobalNetwork, Low: -1, High: -1, Wait: time.Second, Rate: 1000, PerDevice: perDevice,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Three devices of at most 3s each, even one after another, and the 1s
	// wait: 10s. A scan waiting on the hung device's requests would take
	// a minute for each.
	if d := time.Since(start); d >= timeout {
		t.Errorf("scan took %v with a hung device; the per-device limit is %v", d, perDevice)
	}
	if len(reports) != 3 {
		t.Fatalf("%d reports, want 3", len(reports))
	}
	if reports[0].Err != "" || len(reports[0].Objects) != 3 || reports[0].Objects[0].TrendLog == nil {
		t.Errorf("good device: %+v", reports[0])
	}
	if reports[1].Err == "" || len(reports[1].Objects) != 0 {
		t.Errorf("hung device: %+v, want an error", reports[1])
	}
	if reports[2].Err != "" || len(reports[2].Objects) != 1 {
		t.Errorf("device behind the hung one: %+v", reports[2])
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("non-reads reached the devices: %q", w)
	}
}

// TestDiscoverLongObjectList discovers a small controller whose object
// list does not fit one answer and that cannot segment: the list is read
// element by element, and names come property by property.
func TestDiscoverLongObjectList(t *testing.T) {
	d := bacnetsim.NewDevice(21, "tiny", 40, 10, 0, false)
	d.MaxAPDU, d.Segmentation, d.NoRPM = 128, bacnet.NoSegmentation, true
	sim := startSim(t, bacnetsim.Config{Local: d})
	drv := newDriver(t, simSettings(sim, 21, "discover_rate: 1000\n"), nil)
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	found, err := drv.Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 50 || found[49].Name != "tiny BV-10" || found[0].Unit != "°C" {
		t.Fatalf("%d points, last %+v", len(found), found[len(found)-1])
	}
	// The object type is the point's kind in the catalogue.
	if found[0].Kind != "analog-input" || found[49].Kind != "binary-value" {
		t.Errorf("kinds %q and %q, want the object types", found[0].Kind, found[49].Kind)
	}
	// 51 object-list elements and its size, then names, descriptions and
	// (40 analogs) units one by one: at least 192 ReadProperty requests.
	if rp := confirmed(sim, bacnet.ServiceReadProperty); rp < 192 {
		t.Errorf("%d ReadProperty requests; the object list was not read element by element", rp)
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("non-reads reached the device: %q", w)
	}
}

func TestResultSample(t *testing.T) {
	flags := func(b ...bool) bacnet.BitString { return bacnet.NewBitString(b...) }
	tests := []struct {
		name  string
		r     result
		value float64
		want  telemetry.Status
	}{
		{"ok", result{value: bacnet.Real(21.5), hasValue: true, reliable: true, flags: flags(false, false, false, false), hasFlags: true}, 21.5, telemetry.StatusOK},
		{"no flags", result{value: bacnet.Enumerated(1), hasValue: true, reliable: true}, 1, telemetry.StatusOK},
		{"in alarm", result{value: bacnet.Real(30), hasValue: true, reliable: true, flags: flags(true, false, false, false), hasFlags: true}, 30, telemetry.StatusInAlarm},
		{"in alarm and overridden", result{value: bacnet.Real(30), hasValue: true, reliable: true, flags: flags(true, false, true, false), hasFlags: true}, 30, telemetry.StatusOverridden},
		{"fault and out of service", result{value: bacnet.Real(1), hasValue: true, reliable: true, flags: flags(false, true, false, true), hasFlags: true}, 1, telemetry.StatusFault},
		{"out of service and overridden", result{value: bacnet.Real(1), hasValue: true, reliable: true, flags: flags(false, false, true, true), hasFlags: true}, 1, telemetry.StatusOutOfService},
		{"unreliable", result{value: bacnet.Real(1), hasValue: true, reliable: false}, 1, telemetry.StatusFault},
		{"nan", result{value: bacnet.Real(float32(math.NaN())), hasValue: true, reliable: true}, 0, telemetry.StatusFault},
		{"inf", result{value: bacnet.Double(math.Inf(1)), hasValue: true, reliable: true}, 0, telemetry.StatusFault},
		{"text", result{value: bacnet.CharString("on"), hasValue: true, reliable: true}, 0, telemetry.StatusFault},
		{"comm", result{commFailed: true}, 0, telemetry.StatusCommFailure},
		{"error", result{err: errors.New("unknown-object")}, 0, telemetry.StatusFault},
	}
	for _, tt := range tests {
		v, st := tt.r.sample()
		if v != tt.value || st != tt.want {
			t.Errorf("%s: %v %v, want %v %v", tt.name, v, st, tt.value, tt.want)
		}
	}
}

// TestStrictRPM reads from a device that fails a whole RPM for one missing
// object: the missing point is a fault, the others are read.
func TestStrictRPM(t *testing.T) {
	d := bacnetsim.NewDevice(31, "strict", 3, 0, 0, false)
	d.StrictRPM = true
	sim := startSim(t, bacnetsim.Config{Local: d})
	points := []driver.Point{{ID: 1, Ref: "analog-input:1"}, {ID: 2, Ref: "analog-input:9"}, {ID: 3, Ref: "analog-input:3"}}
	drv := newDriver(t, simSettings(sim, 31, ""), points)
	if err := drv.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []telemetry.Status{telemetry.StatusOK, telemetry.StatusFault, telemetry.StatusOK}
	rpms := func() int { return confirmed(sim, bacnet.ServiceReadPropertyMultiple) }
	for poll := range 3 {
		before := rpms()
		samples, err := drv.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range samples {
			if s.Status != want[i] {
				t.Errorf("poll %d: %s: %v, want %v", poll, points[i].Ref, s.Status, want[i])
			}
		}
		// The first poll learns the object is missing; later polls send
		// one RPM that succeeds and read the missing object alone.
		if got := rpms() - before; poll > 0 && got != 1 {
			t.Errorf("poll %d sent %d RPM requests, want 1", poll, got)
		}
	}
	// The object appears: it is read again.
	sim.Update(func() {
		d.Objects = append(d.Objects, &bacnetsim.Object{ID: bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 9}, Name: "new"})
	})
	samples, err := drv.Read(t.Context(), points)
	if err != nil || samples[1].Status != telemetry.StatusOK {
		t.Fatalf("after the object appeared: %+v %v", samples, err)
	}
}

// TestBackfillCheckpoint: the agent dies after buffering a read with a
// backfill and before Commit. A driver restored from the checkpoint the
// buffer kept with those samples does not backfill the same records again;
// one without it (only the file Commit writes) does.
func TestBackfillCheckpoint(t *testing.T) {
	dev, _ := trendDevice(12, "logged", 100*time.Millisecond)
	sim := startSim(t, bacnetsim.Config{Local: dev})
	dir := t.TempDir()
	clock := newFakeClock()
	points := []driver.Point{{ID: 1, Ref: "analog-input:1", Settings: yamlText("trend_log: trend-log:1")}}
	settings := yamlText(simSettings(sim, 12, "backfill_after: 300ms\n"))
	open := func(restore []byte) *Driver {
		t.Helper()
		d, err := New(driver.Device{Name: "logged", Settings: settings, Points: points, DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		drv := d.(*Driver)
		drv.now = clock.now
		if restore != nil {
			if err := drv.Restore(restore); err != nil {
				t.Fatal(err)
			}
		}
		if err := drv.Connect(t.Context()); err != nil {
			t.Fatal(err)
		}
		return drv
	}
	read := func(d *Driver) []telemetry.Sample {
		t.Helper()
		s, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	d1 := open(nil)
	read(d1)
	if err := d1.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	clock.advance(time.Second) // a gap of ten logged records

	d2 := open(nil)
	backfilled := read(d2)
	if len(backfilled) < 8 {
		t.Fatalf("%d samples after the gap; want the live one and about 10 backfilled", len(backfilled))
	}
	cp := d2.Checkpoint() // stored with those samples; then the agent dies: no Commit
	d2.Close()
	if cp == nil {
		t.Fatal("no checkpoint after a read with a trend log")
	}

	d3 := open(cp)
	again := read(d3)
	d3.Close()
	if len(again) != 1 {
		t.Errorf("restored from the checkpoint, the next read returned %d samples; want the live one (the gap was backfilled already)", len(again))
	}
	d4 := open(nil) // the control: only the file, which Commit never updated
	if n := len(read(d4)); n < 8 {
		t.Errorf("without the checkpoint the next read returned %d samples; the test expects the gap to be backfilled again (about 10)", n)
	}
	d4.Close()
}

// TestCloseForgetsUncommittedMarks: a read the buffer refused is not
// committed, and the poller closes the driver; the marks that read staged
// must go, or the next read's Commit would skip its backfill.
func TestCloseForgetsUncommittedMarks(t *testing.T) {
	d, err := New(driver.Device{Name: "x", Settings: yamlText("device_instance: 1\naddress: 127.0.0.1\nlocal_address: 127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	drv := d.(*Driver)
	drv.state.stage("analog-input:1", mark{Last: 1000})
	if err := drv.state.commit(); err != nil {
		t.Fatal(err)
	}
	drv.state.stage("analog-input:1", mark{Last: 2000}) // a read the buffer refused
	drv.Close()
	if got := string(drv.Checkpoint()); got != `{"version":2,"marks":{"analog-input:1":{"last":1000}}}` {
		t.Errorf("after Close the checkpoint is %s, want only the committed mark", got)
	}
}
