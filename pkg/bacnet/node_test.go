package bacnet_test

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/sim/bacnet/nodepeer"
)

// TestNodePeerIntegration talks to a BACnet device someone else wrote
// (@bacnet-js/client), then asks it which services it received: only
// reads, though a write was attempted through the client's send point.
func TestNodePeerIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	peer := nodepeer.Start(t, "", 4242)
	c := newClient(t, bacnet.Config{Timeout: 2 * time.Second})
	to := bacnet.Address{IP: peer.Addr}
	devs, err := c.WhoIs(t.Context(), &to, 0, 4242, 4242, 3*time.Second)
	if err != nil || len(devs) != 1 {
		t.Fatalf("who-is: %v %v", devs, err)
	}
	dev := devs[0]
	if dev.Addr.IP != peer.Addr || dev.Segmentation != bacnet.NoSegmentation {
		t.Fatalf("device %+v", dev)
	}
	ai0 := bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 0}
	t.Run("read-property", func(t *testing.T) {
		v, err := c.ReadProperty(t.Context(), dev, ai0, bacnet.Prop(bacnet.PropPresentValue))
		if err != nil || len(v) != 1 || v[0].Kind != bacnet.KindReal || v[0].Real < 17 || v[0].Real > 23 {
			t.Fatalf("%v %v", v, err)
		}
		v, err = c.ReadProperty(t.Context(), dev, bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: 4242}, bacnet.PropertyRef{ID: bacnet.PropObjectList, Index: 0})
		if err != nil || v[0].Uint != 7 {
			t.Fatalf("object-list size: %v %v", v, err)
		}
		_, err = c.ReadProperty(t.Context(), dev, bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 9}, bacnet.Prop(bacnet.PropPresentValue))
		var e *bacnet.Error
		if !errors.As(err, &e) || e.Code != bacnet.ErrorCodeUnknownObject {
			t.Fatalf("unknown object: %v", err)
		}
	})
	t.Run("read-property-multiple", func(t *testing.T) {
		res, err := c.ReadPropertyMultiple(t.Context(), dev, []bacnet.ReadAccessSpec{
			{Object: ai0, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropPresentValue), bacnet.Prop(bacnet.PropStatusFlags), bacnet.Prop(bacnet.PropUnits)}},
			{Object: bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 1}, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropStatusFlags)}},
			{Object: bacnet.ObjectID{Type: bacnet.ObjectMultiStateValue, Instance: 0}, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropAll)}},
			{Object: bacnet.ObjectID{Type: bacnet.ObjectBinaryInput, Instance: 0}, Properties: []bacnet.PropertyRef{bacnet.Prop(bacnet.PropRequired)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 4 || res[0].Results[2].Values[0].Uint != 62 {
			t.Fatalf("%+v", res)
		}
		if f := res[1].Results[0].Values[0].Bits; !f.Bit(1) || f.Bit(0) {
			t.Errorf("status flags of the faulted input: %v, want fault only", res[1].Results[0].Values[0])
		}
		if len(res[2].Results) < 8 || len(res[3].Results) < 7 {
			t.Errorf("ALL gave %d properties, REQUIRED %d", len(res[2].Results), len(res[3].Results))
		}
	})
	t.Run("read-range", func(t *testing.T) {
		tl := bacnet.ObjectID{Type: bacnet.ObjectTrendLog, Instance: 0}
		for _, r := range []bacnet.Range{
			{Kind: bacnet.RangeByPosition, Ref: 1, Count: 10},
			{Kind: bacnet.RangeBySequence, Ref: 5, Count: 10},
			{Kind: bacnet.RangeByTime, Time: time.Now().UTC().Add(-30 * time.Minute), Count: 10},
		} {
			res, err := c.ReadRange(t.Context(), dev, tl, bacnet.Prop(bacnet.PropLogBuffer), r)
			if err != nil {
				t.Fatalf("%+v: %v", r, err)
			}
			recs, err := bacnet.DecodeLogRecords(res.Items, time.UTC)
			if err != nil || len(recs) != 10 || !recs[0].HasValue {
				t.Fatalf("%+v: %d records, %v", r, len(recs), err)
			}
			if r.Kind == bacnet.RangeByTime && (!recs[0].Time.After(r.Time) || recs[0].Time.Sub(r.Time) > time.Minute) {
				t.Errorf("by time from %v: first record at %v", r.Time, recs[0].Time)
			}
		}
	})
	t.Run("a write is refused and never arrives", func(t *testing.T) {
		payload, _ := bacnet.AppendContext(nil, 0, bacnet.ObjectValue(bacnet.ObjectID{Type: bacnet.ObjectBinaryValue, Instance: 1}))
		payload, _ = bacnet.AppendContext(payload, 1, bacnet.Enumerated(uint64(bacnet.PropPresentValue)))
		payload = append(payload, 0x3e, 0x91, 0x01, 0x3f)
		frame := bacnet.EncodeFrame(bacnet.BVLCOriginalUnicast, bacnet.NPDU{ExpectingReply: true},
			bacnet.APDU{Type: bacnet.PDUConfirmedRequest, MaxAPDU: 1476, InvokeID: 200, Service: bacnet.ServiceWriteProperty, Payload: payload})
		if err := c.SendForTest(peer.Addr, frame); !errors.Is(err, driver.ErrRefused) {
			t.Fatalf("write through the client: %v, want refused", err)
		}
		if w := peer.Writes(); len(w) > 0 {
			t.Fatalf("the peer received %v after the refused write", w)
		}
		// The same bytes sent around the client do arrive and are logged:
		// the peer's record would show a write that got through.
		raw, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(peer.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		if _, err := raw.Write(frame); err != nil {
			t.Fatal(err)
		}
		peer.WaitFor(t, "writeProperty", 1)
		if got := peer.Count("writeProperty"); got != 1 {
			t.Fatalf("peer logged %d writes, want exactly the one sent around the client", got)
		}
	})
	for _, s := range peer.Services() {
		if !slices.Contains([]string{"whoIs", "readProperty", "readPropertyMultiple", "readRange", "writeProperty"}, s) {
			t.Errorf("peer received %q", s)
		}
	}
}

// TestNodePeerBroadcastIntegration finds the peer by a broadcast Who-Is on
// the loopback broadcast address.
func TestNodePeerBroadcastIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	peer := nodepeer.Start(t, "0.0.0.0", 4343)
	c := newClient(t, bacnet.Config{Broadcast: fmt.Sprintf("127.255.255.255:%d", peer.Addr.Port())})
	devs, err := c.WhoIs(t.Context(), nil, 0, -1, -1, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	found := slices.ContainsFunc(devs, func(d bacnet.Device) bool { return d.Instance == 4343 })
	if !found {
		t.Fatalf("broadcast who-is found %+v, want device 4343", devs)
	}
	if w := peer.Services(); !slices.Equal(slices.Compact(slices.Sorted(slices.Values(w))), []string{"whoIs"}) {
		t.Errorf("peer received %v", w)
	}
}

// TestNodePeerBroadcastIAmIntegration finds a device that answers Who-Is
// with a broadcast I-Am, which only the client's receive-only socket on the
// broadcast address can hear (its own socket is bound to one address).
func TestNodePeerBroadcastIAmIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	peer := nodepeer.Start(t, "0.0.0.0", 4444, "--iam", "broadcast")
	c := newClient(t, bacnet.Config{Broadcast: fmt.Sprintf("127.255.255.255:%d", peer.Addr.Port())})
	devs, err := c.WhoIs(t.Context(), nil, 0, 4444, 4444, 3*time.Second)
	if err != nil || len(devs) != 1 {
		t.Fatalf("broadcast I-Am not heard: %+v, %v", devs, err)
	}
	if _, err := c.ReadProperty(t.Context(), devs[0], bacnet.ObjectID{Type: bacnet.ObjectAnalogInput, Instance: 0}, bacnet.Prop(bacnet.PropPresentValue)); err != nil {
		t.Fatal(err)
	}
}
