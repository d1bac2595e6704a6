package bacnetsim

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
)

// TestWritesRecorded proves the simulator's record catches what a
// read-only client must never send, so tests relying on Writes can fail.
func TestWritesRecorded(t *testing.T) {
	s, err := Start(t.Context(), Config{Local: NewDevice(1, "d", 1, 1, 0, false)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	obj, _ := bacnet.AppendContext(nil, 0, bacnet.ObjectValue(bacnet.ObjectID{Type: bacnet.ObjectBinaryValue, Instance: 1}))
	write := append(obj, 0x19, 0x55, 0x3e, 0x91, 0x01, 0x3f)
	rp, _ := bacnet.AppendReadProperty(nil, bacnet.ObjectID{Type: bacnet.ObjectBinaryValue, Instance: 1}, bacnet.Prop(bacnet.PropPresentValue))
	frames := [][]byte{
		bacnet.EncodeFrame(bacnet.BVLCOriginalUnicast, bacnet.NPDU{ExpectingReply: true},
			bacnet.APDU{Type: bacnet.PDUConfirmedRequest, MaxAPDU: 1476, InvokeID: 1, Service: bacnet.ServiceWriteProperty, Payload: write}),
		bacnet.AppendBVLC(nil, bacnet.BVLCRegisterForeignDevice, []byte{0, 60}),
		bacnet.AppendBVLC(nil, bacnet.BVLCOriginalUnicast, bacnet.NPDU{NetworkMessage: true, MessageType: 1}.Append(nil)),
		bacnet.EncodeFrame(bacnet.BVLCOriginalUnicast, bacnet.NPDU{ExpectingReply: true},
			bacnet.APDU{Type: bacnet.PDUConfirmedRequest, MaxAPDU: 1476, InvokeID: 2, Service: bacnet.ServiceReadProperty, Payload: rp}),
	}
	for _, f := range frames {
		if _, err := conn.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	// The read is answered: once its answer is back, all four are recorded.
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no answer to the read: %v", err)
	}
	if m, err := bacnet.DecodeMessage(buf[:n]); err != nil || m.APDU.Type != bacnet.PDUComplexACK || m.APDU.InvokeID != 2 {
		t.Fatalf("answer %x: %v (the write must not be answered)", buf[:n], err)
	}
	w := s.Writes()
	if len(w) != 3 || !strings.Contains(w[0], "confirmed-request service 15") {
		t.Fatalf("writes recorded: %q, want the write-property, the registration and the network message", w)
	}
	if got := len(s.Requests()); got != 4 {
		t.Fatalf("%d requests recorded, want 4", got)
	}
}
