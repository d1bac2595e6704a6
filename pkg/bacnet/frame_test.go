package bacnet

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRequestGolden checks whole datagrams byte for byte: what the client
// sends must be exactly what a device expects.
func TestRequestGolden(t *testing.T) {
	ai1 := ObjectID{Type: ObjectAnalogInput, Instance: 1}
	rp, _ := AppendReadProperty(nil, ai1, Prop(PropPresentValue))
	rpIdx, _ := AppendReadProperty(nil, ObjectID{Type: ObjectDevice, Instance: 1234}, PropertyRef{ID: PropObjectList, Index: 0})
	rpm, _ := AppendReadPropertyMultiple(nil, []ReadAccessSpec{{Object: ai1, Properties: []PropertyRef{Prop(PropPresentValue), Prop(PropStatusFlags)}}})
	rr, _ := AppendReadRange(nil, ObjectID{Type: ObjectTrendLog, Instance: 1}, Prop(PropLogBuffer), Range{Kind: RangeBySequence, Ref: 100, Count: -5})
	rrTime, _ := AppendReadRange(nil, ObjectID{Type: ObjectTrendLog, Instance: 1}, Prop(PropLogBuffer),
		Range{Kind: RangeByTime, Time: time.Date(2026, 3, 2, 10, 30, 0, 0, time.UTC), Count: 10})
	confirmed := func(service uint8, payload []byte) APDU {
		return APDU{Type: PDUConfirmedRequest, SegmentedResponseAccepted: true, MaxSegments: 64, MaxAPDU: 1476, InvokeID: 1, Service: service, Payload: payload}
	}
	tests := []struct {
		name  string
		frame []byte
		hex   string
	}{
		{"who-is all", EncodeFrame(BVLCOriginalBroadcast, NPDU{}, APDU{Type: PDUUnconfirmedRequest, Service: ServiceWhoIs}),
			"810b000801001008"},
		{"who-is range global", EncodeFrame(BVLCOriginalBroadcast, NPDU{HasDest: true, DNET: GlobalNetwork},
			APDU{Type: PDUUnconfirmedRequest, Service: ServiceWhoIs, Payload: AppendWhoIs(nil, 10, 300)}),
			"810b00110120ffff00ff1008" + "090a" + "1a012c"},
		{"read-property", EncodeFrame(BVLCOriginalUnicast, NPDU{ExpectingReply: true}, confirmed(ServiceReadProperty, rp)),
			"810a001101040265010c" + "0c00000001" + "1955"},
		{"read-property object-list[0]", EncodeFrame(BVLCOriginalUnicast, NPDU{ExpectingReply: true}, confirmed(ServiceReadProperty, rpIdx)),
			"810a001301040265010c" + "0c020004d2" + "194c" + "2900"},
		{"read-property routed", EncodeFrame(BVLCOriginalUnicast, NPDU{ExpectingReply: true, HasDest: true, DNET: 5, DADR: []byte{0x0a}},
			confirmed(ServiceReadProperty, rp)),
			"810a00160124000501" + "0aff" + "0265010c" + "0c00000001" + "1955"},
		{"read-property-multiple", EncodeFrame(BVLCOriginalUnicast, NPDU{ExpectingReply: true}, confirmed(ServiceReadPropertyMultiple, rpm)),
			"810a001501040265010e" + "0c00000001" + "1e" + "0955" + "096f" + "1f"},
		{"read-range by sequence", EncodeFrame(BVLCOriginalUnicast, NPDU{ExpectingReply: true}, confirmed(ServiceReadRange, rr)),
			"810a001701040265011a" + "0c05000001" + "1983" + "6e" + "2164" + "31fb" + "6f"},
		{"read-range by time", EncodeFrame(BVLCOriginalUnicast, NPDU{ExpectingReply: true}, confirmed(ServiceReadRange, rrTime)),
			"810a001f01040265011a" + "0c05000001" + "1983" + "7e" + "a47e030201" + "b40a1e0000" + "310a" + "7f"},
		{"segment-ack", EncodeFrame(BVLCOriginalUnicast, NPDU{}, APDU{Type: PDUSegmentACK, InvokeID: 7, Sequence: 3, Window: 4}),
			"810a000a0100" + "40070304"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(tt.frame); got != tt.hex {
				t.Fatalf("frame %s, want %s", got, tt.hex)
			}
			m, err := DecodeMessage(tt.frame)
			if err != nil {
				t.Fatalf("decoding our own frame: %v", err)
			}
			again := EncodeFrame(m.BVLC.Function, m.NPDU, m.APDU)
			if !bytes.Equal(again, tt.frame) {
				t.Fatalf("re-encoded %x, want %x", again, tt.frame)
			}
		})
	}
}

func TestDecodeAnswers(t *testing.T) {
	t.Run("i-am", func(t *testing.T) {
		// I-Am of device 1234, max APDU 1476, segmented-both, vendor 260.
		iam, err := DecodeIAm(mustHex(t, "c4020004d2"+"2205c4"+"9100"+"220104"))
		if err != nil {
			t.Fatal(err)
		}
		want := IAm{Device: ObjectID{Type: ObjectDevice, Instance: 1234}, MaxAPDU: 1476, Segmentation: SegmentedBoth, Vendor: 260}
		if iam != want {
			t.Fatalf("%+v, want %+v", iam, want)
		}
	})
	t.Run("read-property ack", func(t *testing.T) {
		obj, p, vals, err := DecodeReadPropertyACK(mustHex(t, "0c00000001"+"1955"+"3e"+"4442900000"+"3f"))
		if err != nil {
			t.Fatal(err)
		}
		if obj.Instance != 1 || p.ID != PropPresentValue || len(vals) != 1 || vals[0].Real != 72 {
			t.Fatalf("%v %v %v", obj, p, vals)
		}
	})
	t.Run("read-property-multiple ack with an error", func(t *testing.T) {
		res, err := DecodeReadPropertyMultipleACK(mustHex(t, "0c00000001"+"1e"+
			"2955"+"4e"+"4442900000"+"4f"+
			"296f"+"4e"+"820400"+"4f"+
			"291c"+"5e"+"9102"+"9120"+"5f"+
			"1f"))
		if err != nil {
			t.Fatal(err)
		}
		r := res[0].Results
		if len(r) != 3 || r[0].Values[0].Real != 72 || r[1].Values[0].Bits.Len != 4 || r[2].Err == nil || r[2].Err.Code != ErrorCodeUnknownProperty {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("read-range ack", func(t *testing.T) {
		// One record: 2026-03-02 10:30:00, real 21.5, status flags 0000.
		rec := "0e" + "a47e030201" + "b40a1e0000" + "0f" + "1e" + "2c41ac0000" + "1f" + "2a0400"
		r, err := DecodeReadRangeACK(mustHex(t, "0c05000001"+"1983"+"3a05c0"+"4901"+"5e"+rec+"5f"+"6964"))
		if err != nil {
			t.Fatal(err)
		}
		if !r.First || !r.Last || r.More || r.ItemCount != 1 || !r.HasFirstSequence || r.FirstSequence != 100 {
			t.Fatalf("%+v", r)
		}
		recs, err := DecodeLogRecords(r.Items, time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 || !recs[0].HasValue || recs[0].Value != 21.5 || !recs[0].Time.Equal(time.Date(2026, 3, 2, 10, 30, 0, 0, time.UTC)) {
			t.Fatalf("%+v", recs)
		}
	})
	t.Run("log records with bad ones", func(t *testing.T) {
		// Good records at 10:30 and 10:45 around bad ones: a timestamp
		// without its time, a datum of two choices, status flags that are
		// not a bit string. Each loses only itself.
		good := func(minute string) string {
			return "0e" + "a47e030201" + "b40a" + minute + "0000" + "0f" + "1e" + "2c41ac0000" + "1f" + "2a0400"
		}
		bad := []string{
			"0e" + "a47e030201" + "0f" + "1e" + "2c41ac0000" + "1f",
			"0e" + "a47e030201" + "b40a200000" + "0f" + "1e" + "2c41ac0000" + "2c41ac0000" + "1f",
			"0e" + "a47e030201" + "b40a210000" + "0f" + "1e" + "2c41ac0000" + "1f" + "28",
		}
		for i, b := range bad {
			r, err := DecodeReadRangeACK(mustHex(t, "0c05000001"+"1983"+"3a05c0"+"4903"+"5e"+good("1e")+b+good("2d")+"5f"))
			if err != nil {
				t.Fatalf("bad record %d: the page: %v", i, err)
			}
			recs, err := DecodeLogRecords(r.Items, time.UTC)
			if err == nil || !strings.Contains(err.Error(), "1 of the page's records skipped") {
				t.Errorf("bad record %d: err %v, want one skipped", i, err)
			}
			if len(recs) != 2 || recs[0].Time.Minute() != 30 || recs[1].Time.Minute() != 45 || recs[1].Value != 21.5 {
				t.Errorf("bad record %d: %+v, want the records of 10:30 and 10:45", i, recs)
			}
		}
	})
	t.Run("error", func(t *testing.T) {
		e, err := DecodeError(mustHex(t, "9101911f"))
		if err != nil || e.Class != ErrorClassObject || e.Code != ErrorCodeUnknownObject {
			t.Fatalf("%v %v", e, err)
		}
	})
}

func TestDecodeFrameRejects(t *testing.T) {
	tests := []struct{ name, hex string }{
		{"short", "81"},
		{"not bacnet/ip", "820a0004"},
		{"length mismatch", "810a0009010010"},
		{"npdu version", "810a0006020010"},
		{"npdu truncated dnet", "810a00070120ff"},
		{"source broadcast", "810a000c01080000000000"},
		{"apdu reserved type", "810a000701008000"},
		{"confirmed truncated", "810a0007010000"},
		{"forwarded without origin", "8104000601"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeMessage(mustHex(t, tt.hex)); err == nil {
				t.Fatalf("DecodeMessage(%s) succeeded", tt.hex)
			}
		})
	}
}

func TestForwarded(t *testing.T) {
	origin := netip.MustParseAddrPort("127.0.0.9:47808")
	npdu := NPDU{Payload: APDU{Type: PDUUnconfirmedRequest, Service: ServiceIAm}.Append(nil)}.Append(nil)
	m, err := DecodeMessage(AppendForwarded(nil, origin, npdu))
	if err != nil {
		t.Fatal(err)
	}
	if m.BVLC.Origin != origin || m.APDU.Service != ServiceIAm {
		t.Fatalf("%+v", m)
	}
}

func TestAddress(t *testing.T) {
	tests := []struct{ in, want string }{
		{"127.0.0.2", "127.0.0.2:47808"},
		{"127.0.0.2:47809", "127.0.0.2:47809"},
		{"127.0.0.2:47808/5:0a", "127.0.0.2:47808/5:0a"},
	}
	for _, tt := range tests {
		a, err := ParseAddress(tt.in)
		if err != nil || a.String() != tt.want {
			t.Errorf("ParseAddress(%q) = %v, %v; want %s", tt.in, a, err, tt.want)
		}
	}
	for _, bad := range []string{"", "host:1", "127.0.0.1/0:0a", "127.0.0.1/5:zz", "127.0.0.1/65535:01"} {
		if _, err := ParseAddress(bad); err == nil {
			t.Errorf("ParseAddress(%q) succeeded", bad)
		}
	}
}
