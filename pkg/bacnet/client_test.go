package bacnet_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
)

func startSim(t *testing.T, cfg bacnetsim.Config) *bacnetsim.Server {
	t.Helper()
	s, err := bacnetsim.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if w := s.Writes(); len(w) > 0 {
			t.Errorf("the simulator received non-reads: %q", w)
		}
		s.Close()
	})
	return s
}

func newClient(t *testing.T, cfg bacnet.Config) *bacnet.Client {
	t.Helper()
	if cfg.Local == "" {
		cfg.Local = "127.0.0.1:0"
	}
	if cfg.Timeout == 0 {
		// Long: tests that wait a timeout out set their own, and one
		// shorter than a loaded machine under -race can take over a
		// loopback answer would send requests again (tests count them).
		cfg.Timeout = 10 * time.Second
	}
	c, err := bacnet.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var (
	ai1 = bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 1}
	tl1 = bacnet.ObjectID{Type: bacnet.ObjectTrendLog, Instance: 1}
)

// routedSim is one local device and three MS/TP devices behind a router on
// network 5, one of which only knows ReadProperty and one never answers.
func routedSim(t *testing.T) *bacnetsim.Server {
	local := bacnetsim.NewDevice(100, "local", 3, 2, 1, true)
	r1 := bacnetsim.NewDevice(501, "mstp-1", 2, 1, 1, false)
	r1.Network, r1.MAC, r1.MaxAPDU, r1.Segmentation = 5, []byte{1}, 480, bacnet.NoSegmentation
	r2 := bacnetsim.NewDevice(502, "mstp-2", 2, 0, 0, false)
	r2.Network, r2.MAC, r2.MaxAPDU, r2.NoRPM, r2.Segmentation = 5, []byte{2}, 128, true, bacnet.NoSegmentation
	r3 := bacnetsim.NewDevice(503, "mstp-dead", 1, 0, 0, false)
	r3.Network, r3.MAC, r3.Silent = 5, []byte{3}, true
	return startSim(t, bacnetsim.Config{Local: local, Routed: []*bacnetsim.Device{r1, r2, r3}})
}

func TestWhoIs(t *testing.T) {
	sim := routedSim(t)
	c := newClient(t, bacnet.Config{Broadcast: sim.Addr().String()})
	tests := []struct {
		name      string
		network   uint16
		low, high int
		want      []string
	}{
		{"local", 0, -1, -1, []string{"100@" + sim.Addr().String()}},
		{"global", bacnet.GlobalNetwork, -1, -1, []string{"100@" + sim.Addr().String(), "501@" + sim.Addr().String() + "/5:01", "502@" + sim.Addr().String() + "/5:02"}},
		{"network 5", 5, -1, -1, []string{"501@" + sim.Addr().String() + "/5:01", "502@" + sim.Addr().String() + "/5:02"}},
		{"range", bacnet.GlobalNetwork, 502, 600, []string{"502@" + sim.Addr().String() + "/5:02"}},
		{"one", bacnet.GlobalNetwork, 501, 501, []string{"501@" + sim.Addr().String() + "/5:01"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs, err := c.WhoIs(t.Context(), nil, tt.network, tt.low, tt.high, 300*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range devs {
				got = append(got, fmt.Sprintf("%d@%s", d.Instance, d.Addr))
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("found %v, want %v", got, tt.want)
			}
		})
	}
}

func find(t *testing.T, c *bacnet.Client, sim *bacnetsim.Server, instance int) bacnet.Device {
	t.Helper()
	to, err := bacnet.ParseAddress(sim.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	devs, err := c.WhoIs(t.Context(), &to, bacnet.GlobalNetwork, instance, instance, 2*time.Second)
	if err != nil || len(devs) != 1 {
		t.Fatalf("locating device %d: %v %v", instance, devs, err)
	}
	return devs[0]
}

func TestReadProperty(t *testing.T) {
	sim := routedSim(t)
	c := newClient(t, bacnet.Config{})
	local, routed := find(t, c, sim, 100), find(t, c, sim, 502)
	tests := []struct {
		name string
		dev  bacnet.Device
		obj  bacnet.ObjectID
		prop bacnet.PropertyRef
		want func([]bacnet.Value) bool
	}{
		{"present-value", local, ai1, bacnet.Prop(bacnet.PropPresentValue), func(v []bacnet.Value) bool { return v[0].Kind == bacnet.KindReal }},
		{"object-name", local, ai1, bacnet.Prop(bacnet.PropObjectName), func(v []bacnet.Value) bool { return v[0].Str == "local AI-1" }},
		{"status-flags", local, ai1, bacnet.Prop(bacnet.PropStatusFlags), func(v []bacnet.Value) bool { return v[0].Bits.Len == 4 }},
		{"object-list size", local, bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: 100}, bacnet.PropertyRef{ID: bacnet.PropObjectList, Index: 0},
			func(v []bacnet.Value) bool { return v[0].Uint == 8 }},
		{"object-list[2]", local, bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: 100}, bacnet.PropertyRef{ID: bacnet.PropObjectList, Index: 2},
			func(v []bacnet.Value) bool { return v[0].Object == ai1 }},
		{"routed present-value", routed, ai1, bacnet.Prop(bacnet.PropPresentValue), func(v []bacnet.Value) bool { return v[0].Kind == bacnet.KindReal }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := c.ReadProperty(t.Context(), tt.dev, tt.obj, tt.prop)
			if err != nil {
				t.Fatal(err)
			}
			if len(v) == 0 || !tt.want(v) {
				t.Fatalf("got %v", v)
			}
		})
	}
	t.Run("unknown object", func(t *testing.T) {
		_, err := c.ReadProperty(t.Context(), local, bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 99}, bacnet.Prop(bacnet.PropPresentValue))
		var e *bacnet.Error
		if !errors.As(err, &e) || e.Code != bacnet.ErrorCodeUnknownObject {
			t.Fatalf("err = %v, want unknown-object", err)
		}
	})
	t.Run("rpm to a device without it", func(t *testing.T) {
		_, err := c.ReadPropertyMultiple(t.Context(), routed, []bacnet.ReadAccessSpec{{Object: ai1, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropPresentValue)}}})
		var r *bacnet.RejectError
		if !errors.As(err, &r) || r.Reason != 9 {
			t.Fatalf("err = %v, want reject unrecognized-service", err)
		}
	})
}

func TestReadPropertyMultiple(t *testing.T) {
	sim := routedSim(t)
	c := newClient(t, bacnet.Config{})
	dev := find(t, c, sim, 100)
	res, err := c.ReadPropertyMultiple(t.Context(), dev, []bacnet.ReadAccessSpec{
		{Object: ai1, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropPresentValue), bacnet.Prop(bacnet.PropStatusFlags), bacnet.Prop(bacnet.PropLogBuffer)}},
		{Object: bacnet.ObjectID{Type: bacnet.ObjectBinaryValue, Instance: 1}, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropAll)}},
		{Object: bacnet.ObjectID{Type: bacnet.ObjectMultiStateValue, Instance: 1}, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropRequired)}},
		{Object: bacnet.ObjectID{Type: bacnet.ObjectAnalogValue, Instance: 7}, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropPresentValue)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 {
		t.Fatalf("%d object results, want 4", len(res))
	}
	if r := res[0].Results; len(r) != 3 || r[0].Err != nil || r[2].Err == nil || r[2].Err.Code != bacnet.ErrorCodeUnknownProperty {
		t.Errorf("ai1: %+v", r)
	}
	props := func(r bacnet.ObjectResult) []bacnet.PropertyID {
		var out []bacnet.PropertyID
		for _, p := range r.Results {
			out = append(out, p.Property.ID)
		}
		return out
	}
	if p := props(res[1]); !slices.Contains(p, bacnet.PropDescription) || !slices.Contains(p, bacnet.PropPresentValue) {
		t.Errorf("ALL gave %v", p)
	}
	if p := props(res[2]); slices.Contains(p, bacnet.PropDescription) || !slices.Contains(p, bacnet.PropNumberOfStates) {
		t.Errorf("REQUIRED gave %v", p)
	}
	if r := res[3].Results; len(r) != 1 || r[0].Err == nil || r[0].Err.Code != bacnet.ErrorCodeUnknownObject {
		t.Errorf("unknown object: %+v", r)
	}
}

// TestSegmentation reads an answer far larger than the device's max APDU,
// over windows of segments, and one the device cannot segment.
func TestSegmentation(t *testing.T) {
	seg := bacnetsim.NewDevice(200, "segmenting", 60, 0, 0, false)
	seg.MaxAPDU, seg.Window = 206, 3
	noseg := bacnetsim.NewDevice(201, "small", 60, 0, 0, false)
	noseg.MaxAPDU, noseg.Segmentation = 206, bacnet.NoSegmentation
	s1 := startSim(t, bacnetsim.Config{Local: seg})
	s2 := startSim(t, bacnetsim.Config{Local: noseg})
	all := func() []bacnet.ReadAccessSpec {
		var specs []bacnet.ReadAccessSpec
		for i := 1; i <= 12; i++ {
			specs = append(specs, bacnet.ReadAccessSpec{Object: bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: uint32(i)},
				Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropAll)}})
		}
		return specs
	}
	for _, window := range []int{1, 2, 8} {
		t.Run(fmt.Sprintf("window %d", window), func(t *testing.T) {
			c := newClient(t, bacnet.Config{Window: window})
			dev := find(t, c, s1, 200)
			res, err := c.ReadPropertyMultiple(t.Context(), dev, all())
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != 12 || res[11].Results[1].Values[0].Str != "segmenting AI-12" {
				t.Fatalf("assembled answer wrong: %d objects", len(res))
			}
			if st := c.Stats(); st.SegmentsReceived < 5 {
				t.Fatalf("received %d segments; the answer should have needed more than 5", st.SegmentsReceived)
			}
		})
	}
	t.Run("a lost segment", func(t *testing.T) {
		c := newClient(t, bacnet.Config{Window: 4})
		dev := find(t, c, s1, 200)
		s1.Update(func() { seg.DropSegment = 2 })
		res, err := c.ReadPropertyMultiple(t.Context(), dev, all())
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 12 || res[11].Results[1].Values[0].Str != "segmenting AI-12" {
			t.Fatalf("assembled answer wrong after a lost segment: %d objects", len(res))
		}
		naks := 0
		for _, r := range s1.Requests() {
			if r.PDU == bacnet.PDUSegmentACK && r.NAK {
				naks++
			}
		}
		if naks == 0 {
			t.Error("no negative Segment-ACK reached the device: the lost segment was not asked for again")
		}
		if c.Stats().Retries != 0 {
			t.Errorf("the lost segment cost a whole retry; the negative Segment-ACK should have recovered it")
		}
	})
	t.Run("device cannot segment", func(t *testing.T) {
		c := newClient(t, bacnet.Config{})
		dev := find(t, c, s2, 201)
		_, err := c.ReadPropertyMultiple(t.Context(), dev, all())
		var a *bacnet.AbortError
		if !errors.As(err, &a) || a.Reason != bacnet.AbortSegmentationNotSupported {
			t.Fatalf("err = %v, want abort segmentation-not-supported", err)
		}
	})
	t.Run("we accept too few segments", func(t *testing.T) {
		c := newClient(t, bacnet.Config{MaxSegments: 2})
		dev := find(t, c, s1, 200)
		_, err := c.ReadPropertyMultiple(t.Context(), dev, all())
		var a *bacnet.AbortError
		if !errors.As(err, &a) {
			t.Fatalf("err = %v, want an abort", err)
		}
	})
}

func TestReadRange(t *testing.T) {
	sim := routedSim(t)
	c := newClient(t, bacnet.Config{})
	dev := find(t, c, sim, 100)
	log := sim.Devices()[0].Objects[6].Log
	total, err := c.ReadProperty(t.Context(), dev, tl1, bacnet.Prop(bacnet.PropTotalRecordCount))
	if err != nil {
		t.Fatal(err)
	}
	last := uint32(total[0].Uint)
	count, err := c.ReadProperty(t.Context(), dev, tl1, bacnet.Prop(bacnet.PropRecordCount))
	if err != nil {
		t.Fatal(err)
	}
	oldest := last - uint32(count[0].Uint) + 1
	// In UTC, the simulator's zone (Config.Location): a by-time range
	// carries the device's local date and time, which the machine's own
	// zone would shift.
	at := func(seq uint32) time.Time { return log.Start.Add(time.Duration(seq-1) * log.Interval).UTC() }
	tests := []struct {
		name      string
		r         bacnet.Range
		n         int
		firstTime time.Time
		firstSeq  uint32
	}{
		{"by position", bacnet.Range{Kind: bacnet.RangeByPosition, Ref: 1, Count: 5}, 5, at(oldest), 0},
		{"by position backwards", bacnet.Range{Kind: bacnet.RangeByPosition, Ref: 10, Count: -3}, 3, at(oldest + 7), 0},
		{"by sequence", bacnet.Range{Kind: bacnet.RangeBySequence, Ref: last - 9, Count: 100}, 10, at(last - 9), last - 9},
		{"by time", bacnet.Range{Kind: bacnet.RangeByTime, Time: at(last - 20), Count: 5}, 5, at(last - 19), last - 19},
		{"by time backwards", bacnet.Range{Kind: bacnet.RangeByTime, Time: at(last - 20), Count: -5}, 5, at(last - 25), last - 25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.ReadRange(t.Context(), dev, tl1, bacnet.Prop(bacnet.PropLogBuffer), tt.r)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := bacnet.DecodeLogRecords(res.Items, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != tt.n || int(res.ItemCount) != tt.n {
				t.Fatalf("%d records (count %d), want %d", len(recs), res.ItemCount, tt.n)
			}
			if !recs[0].Time.Equal(tt.firstTime) || !recs[0].HasValue {
				t.Fatalf("first record %+v, want time %v", recs[0], tt.firstTime)
			}
			if tt.firstSeq != 0 && (!res.HasFirstSequence || res.FirstSequence != tt.firstSeq) {
				t.Fatalf("first sequence %d (%v), want %d", res.FirstSequence, res.HasFirstSequence, tt.firstSeq)
			}
		})
	}
	t.Run("more than fits", func(t *testing.T) {
		c := newClient(t, bacnet.Config{MaxSegments: 4})
		res, err := c.ReadRange(t.Context(), dev, tl1, bacnet.Prop(bacnet.PropLogBuffer), bacnet.Range{Kind: bacnet.RangeByPosition, Ref: 1, Count: 2000})
		if err != nil {
			t.Fatal(err)
		}
		if !res.More || res.ItemCount == 0 || res.ItemCount >= 2000 || !res.First {
			t.Fatalf("flags first %v more %v count %d", res.First, res.More, res.ItemCount)
		}
	})
}

func TestTimeoutAndRetries(t *testing.T) {
	sim := routedSim(t)
	c := newClient(t, bacnet.Config{Timeout: 50 * time.Millisecond, Retries: 2})
	dead := bacnet.Device{Instance: 503, Addr: bacnet.Address{IP: sim.Addr(), Net: 5, MAC: []byte{3}}, MaxAPDU: 480}
	start := time.Now()
	_, err := c.ReadProperty(t.Context(), dead, ai1, bacnet.Prop(bacnet.PropPresentValue))
	if !errors.Is(err, bacnet.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	// Three attempts take at least their three timeouts; the upper bound
	// only catches a wait for something else, and is loose for a loaded
	// machine.
	if d := time.Since(start); d < 150*time.Millisecond || d > 10*time.Second {
		t.Errorf("took %v, want about three 50ms attempts", d)
	}
	if st := c.Stats(); st.Retries != 2 || st.Timeouts != 1 {
		t.Errorf("stats %+v, want 2 retries and 1 timeout", st)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := c.ReadProperty(ctx, dead, ai1, bacnet.Prop(bacnet.PropPresentValue)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read: %v", err)
	}
}

// TestOutstandingLimits proves that concurrent reads never have more than
// PerDevice requests outstanding to one device, nor PerNetwork to all
// devices of one routed network, and that the limits are reached.
//
// The simulator holds each answer until the limit's count of requests is
// in flight (HoldInFlight), so the limits are reached however slowly a
// loaded machine sends the requests: the plain 20ms delay alone needed
// them all sent within it. The delay that follows the hold leaves a
// request over the limit time to arrive and be counted.
func TestOutstandingLimits(t *testing.T) {
	local := bacnetsim.NewDevice(100, "local", 1, 0, 0, false)
	local.Delay, local.HoldInFlight = 20*time.Millisecond, 3
	var routed []*bacnetsim.Device
	for i := range 3 {
		d := bacnetsim.NewDevice(uint32(501+i), fmt.Sprintf("mstp-%d", i), 1, 0, 0, false)
		d.Network, d.MAC, d.Delay, d.HoldInFlight = 5, []byte{byte(i + 1)}, 20*time.Millisecond, 2
		routed = append(routed, d)
	}
	sim := startSim(t, bacnetsim.Config{Local: local, Routed: routed})
	// The timeout is longer than any hold, so no request is sent twice.
	c := newClient(t, bacnet.Config{PerDevice: 3, PerNetwork: 2, Timeout: time.Minute})
	devs := []bacnet.Device{find(t, c, sim, 100), find(t, c, sim, 501), find(t, c, sim, 502), find(t, c, sim, 503)}
	// 12 reads a device: whole rounds of 3 to the local device and of 2
	// to network 5.
	const reads = 48
	errs := make(chan error, reads)
	for i := range reads {
		go func() {
			_, err := c.ReadProperty(t.Context(), devs[i%4], ai1, bacnet.Prop(bacnet.PropPresentValue))
			errs <- err
		}()
	}
	for range reads {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if dev, _ := sim.MaxInFlight(100, 0); dev != 3 {
		t.Errorf("local device had at most %d requests in flight, want exactly PerDevice 3", dev)
	}
	if _, network := sim.MaxInFlight(501, 5); network != 2 {
		t.Errorf("network 5 had at most %d requests in flight, want exactly PerNetwork 2", network)
	}
}

// TestWriteNeverArrives sends a WriteProperty through the client's send
// point at the simulator: refused, counted, and the simulator sees only
// the reads around it.
func TestWriteNeverArrives(t *testing.T) {
	sim := routedSim(t)
	c := newClient(t, bacnet.Config{})
	dev := find(t, c, sim, 100)
	obj, _ := bacnet.AppendContext(nil, 0, bacnet.ObjectValue(ai1))
	obj, _ = bacnet.AppendContext(obj, 1, bacnet.Enumerated(uint64(bacnet.PropPresentValue)))
	obj = append(obj, 0x3e, 0x44, 0, 0, 0, 0, 0x3f)
	frame := bacnet.EncodeFrame(bacnet.BVLCOriginalUnicast, bacnet.NPDU{ExpectingReply: true},
		bacnet.APDU{Type: bacnet.PDUConfirmedRequest, MaxAPDU: 1476, Service: bacnet.ServiceWriteProperty, Payload: obj})
	if err := c.SendForTest(sim.Addr(), frame); !errors.Is(err, driver.ErrRefused) {
		t.Fatalf("write: %v, want refused", err)
	}
	if _, err := c.ReadProperty(t.Context(), dev, ai1, bacnet.Prop(bacnet.PropPresentValue)); err != nil {
		t.Fatal(err)
	}
	for _, r := range sim.Requests() {
		if !r.Read || r.PDU == bacnet.PDUConfirmedRequest && r.Service == bacnet.ServiceWriteProperty {
			t.Errorf("simulator received %s", r)
		}
	}
	if c.Stats().Refused != 1 {
		t.Errorf("refused %d, want 1", c.Stats().Refused)
	}
}

// TestSocketBoundToInterface: the client's socket is bound to the NIC that
// holds its local address (lo here), and a local address no NIC holds is
// an error that says so.
func TestSocketBoundToInterface(t *testing.T) {
	c := newClient(t, bacnet.Config{})
	if got := c.Interface(); got != "lo" {
		t.Fatalf("Interface() = %q, want lo", got)
	}
	if _, err := bacnet.New(t.Context(), bacnet.Config{Local: "192.0.2.77:47808"}); err == nil || !strings.Contains(err.Error(), "no interface of this machine has that address") {
		t.Fatalf("New with an address on no NIC: %v", err)
	}
}
