package bacnet

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// rawPeer is a UDP socket on loopback that records every datagram.
type rawPeer struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  [][]byte
}

func newRawPeer(t *testing.T) *rawPeer {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			p.mu.Lock()
			p.got = append(p.got, append([]byte(nil), buf[:n]...))
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return p
}

func (p *rawPeer) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *rawPeer) received() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.got...)
}

// TestGuardRefusesAtTheWire pushes writes and other non-reads through the
// client's one send point and proves none reaches the peer, while a read
// sent the same way does.
func TestGuardRefusesAtTheWire(t *testing.T) {
	peer := newRawPeer(t)
	c, err := New(t.Context(), Config{Local: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ai1 := ObjectID{Type: ObjectAnalogOutput, Instance: 1}
	obj, _ := AppendContext(nil, 0, ObjectValue(ai1))
	writeProp := append(appendContextUint(obj, 1, uint64(PropPresentValue)), 0x3e, 0x44, 0x42, 0x90, 0, 0, 0x3f)
	confirmed := func(service uint8, payload []byte) []byte {
		return EncodeFrame(BVLCOriginalUnicast, NPDU{ExpectingReply: true}, APDU{Type: PDUConfirmedRequest, MaxAPDU: 1476, InvokeID: 9, Service: service, Payload: payload})
	}
	rp, _ := AppendReadProperty(nil, ai1, Prop(PropPresentValue))
	refused := []struct {
		name  string
		frame []byte
	}{
		{"write-property", confirmed(ServiceWriteProperty, writeProp)},
		{"write-property-multiple", confirmed(ServiceWritePropertyMultiple, writeProp)},
		{"reinitialize-device", confirmed(20, nil)},
		{"device-communication-control", confirmed(17, []byte{0x09, 0x01})},
		{"subscribe-cov", confirmed(5, obj)},
		{"read-property with a write's body", confirmed(ServiceReadProperty, writeProp)},
		{"segmented read", EncodeFrame(BVLCOriginalUnicast, NPDU{}, APDU{Type: PDUConfirmedRequest, Segmented: true, MaxAPDU: 1476, Service: ServiceReadProperty, Payload: rp})},
		{"time-synchronization", EncodeFrame(BVLCOriginalBroadcast, NPDU{}, APDU{Type: PDUUnconfirmedRequest, Service: 6, Payload: []byte{0xa4, 0x7e, 3, 2, 1}})},
		{"i-am", EncodeFrame(BVLCOriginalBroadcast, NPDU{}, APDU{Type: PDUUnconfirmedRequest, Service: ServiceIAm})},
		{"simple-ack", EncodeFrame(BVLCOriginalUnicast, NPDU{}, APDU{Type: PDUSimpleACK, InvokeID: 1, Service: 15})},
		{"abort", EncodeFrame(BVLCOriginalUnicast, NPDU{}, APDU{Type: PDUAbort, InvokeID: 1})},
		{"server segment-ack", EncodeFrame(BVLCOriginalUnicast, NPDU{}, APDU{Type: PDUSegmentACK, Server: true})},
		{"network message", NPDUFrame(NPDU{NetworkMessage: true, MessageType: 0x01})},
		{"write-bdt", AppendBVLC(nil, BVLCWriteBDT, make([]byte, 10))},
		{"delete-fdt-entry", AppendBVLC(nil, BVLCDeleteFDTEntry, make([]byte, 6))},
		{"register-foreign-device without bbmd", AppendBVLC(nil, BVLCRegisterForeignDevice, []byte{0, 60})},
		{"garbage", []byte{0x81, 0x0a, 0x00}},
	}
	for i, tt := range refused {
		err := c.SendForTest(peer.addr(), tt.frame)
		if !errors.Is(err, driver.ErrRefused) {
			t.Errorf("%s: send = %v, want an error wrapping driver.ErrRefused", tt.name, err)
		}
		if got := c.Guard().Refused(); got != uint64(i+1) {
			t.Errorf("%s: refusals counted %d, want %d", tt.name, got, i+1)
		}
	}
	// A read through the same point arrives: the peer is listening, so the
	// empty record above is not an accident of timing.
	read := confirmed(ServiceReadProperty, rp)
	if err := c.SendForTest(peer.addr(), read); err != nil {
		t.Fatalf("read refused: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second) // loopback is fast; a loaded machine is not
	for len(peer.received()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := peer.received()
	if len(got) != 1 || string(got[0]) != string(read) {
		t.Fatalf("peer received %x, want only the read %x", got, read)
	}
}

// NPDUFrame wraps a network layer message in an Original-Unicast.
func NPDUFrame(n NPDU) []byte { return AppendBVLC(nil, BVLCOriginalUnicast, n.Append(nil)) }

func TestGuardAllowsRegisterWithBBMD(t *testing.T) {
	g := NewGuard(nil, true)
	if err := g.Check(AppendBVLC(nil, BVLCRegisterForeignDevice, []byte{0, 60})); err != nil {
		t.Fatal(err)
	}
}

func TestBroadcastNeedsAnAddress(t *testing.T) {
	c, err := New(t.Context(), Config{Local: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := c.WhoIs(ctx, nil, 0, -1, -1, 10*time.Millisecond); err == nil {
		t.Fatal("who-is without a broadcast address succeeded; it must never guess one")
	}
}
