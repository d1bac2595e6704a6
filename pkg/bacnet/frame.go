package bacnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// BVLC functions of BACnet/IP (Annex J).
const (
	BVLCResult                uint8 = 0x00
	BVLCWriteBDT              uint8 = 0x01
	BVLCReadBDT               uint8 = 0x02
	BVLCReadBDTAck            uint8 = 0x03
	BVLCForwardedNPDU         uint8 = 0x04
	BVLCRegisterForeignDevice uint8 = 0x05
	BVLCReadFDT               uint8 = 0x06
	BVLCReadFDTAck            uint8 = 0x07
	BVLCDeleteFDTEntry        uint8 = 0x08
	BVLCDistributeBroadcast   uint8 = 0x09
	BVLCOriginalUnicast       uint8 = 0x0A
	BVLCOriginalBroadcast     uint8 = 0x0B
	bvlcType                  uint8 = 0x81
	bvlcHeaderLen                   = 4
	forwardedOriginLen              = 6
)

// MaxFrame is the largest BACnet/IP datagram: a 1476-octet APDU, the
// largest NPDU header and the BVLC header (with a forwarded origin).
const MaxFrame = 1497 + 24

// BVLC is a decoded BACnet/IP virtual link layer message.
type BVLC struct {
	Function uint8
	// Origin is the original source of a Forwarded-NPDU.
	Origin netip.AddrPort
	// Result is the code of a BVLC-Result; TTL the time-to-live of a
	// Register-Foreign-Device.
	Result, TTL uint16
	// NPDU is the payload of the NPDU-carrying functions.
	NPDU []byte
}

// DecodeBVLC decodes a BACnet/IP datagram's virtual link layer.
func DecodeBVLC(b []byte) (BVLC, error) {
	if len(b) < bvlcHeaderLen {
		return BVLC{}, fmt.Errorf("bvlc: %d octets, want at least 4", len(b))
	}
	if b[0] != bvlcType {
		return BVLC{}, fmt.Errorf("bvlc: type 0x%02x is not BACnet/IP (0x81)", b[0])
	}
	m := BVLC{Function: b[1]}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if n != len(b) {
		return BVLC{}, fmt.Errorf("bvlc: length field %d but datagram has %d octets", n, len(b))
	}
	body := b[bvlcHeaderLen:]
	switch m.Function {
	case BVLCOriginalUnicast, BVLCOriginalBroadcast, BVLCDistributeBroadcast:
		m.NPDU = body
	case BVLCForwardedNPDU:
		if len(body) < forwardedOriginLen {
			return BVLC{}, fmt.Errorf("bvlc: forwarded-npdu without its 6-octet origin")
		}
		ip, _ := netip.AddrFromSlice(body[:4])
		m.Origin = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(body[4:6]))
		m.NPDU = body[forwardedOriginLen:]
	case BVLCResult:
		if len(body) != 2 {
			return BVLC{}, fmt.Errorf("bvlc: result of %d octets, want 2", len(body))
		}
		m.Result = binary.BigEndian.Uint16(body)
	case BVLCRegisterForeignDevice:
		if len(body) != 2 {
			return BVLC{}, fmt.Errorf("bvlc: register-foreign-device of %d octets, want 2", len(body))
		}
		m.TTL = binary.BigEndian.Uint16(body)
	default:
		m.NPDU = nil // tables of BBMDs: not ours to read
	}
	return m, nil
}

// AppendBVLC encodes a BVLC header for function fn around payload (the
// NPDU, or the function's own fields).
func AppendBVLC(b []byte, fn uint8, payload []byte) []byte {
	b = append(b, bvlcType, fn)
	b = binary.BigEndian.AppendUint16(b, uint16(bvlcHeaderLen+len(payload)))
	return append(b, payload...)
}

// AppendForwarded encodes a Forwarded-NPDU from origin (used by BBMD and
// router simulators).
func AppendForwarded(b []byte, origin netip.AddrPort, npdu []byte) []byte {
	payload := make([]byte, 0, forwardedOriginLen+len(npdu))
	ip := origin.Addr().As4()
	payload = append(payload, ip[:]...)
	payload = binary.BigEndian.AppendUint16(payload, origin.Port())
	return AppendBVLC(b, BVLCForwardedNPDU, append(payload, npdu...))
}

// GlobalNetwork is the DNET of a global broadcast.
const GlobalNetwork = 0xFFFF

// NPDU is a decoded network layer header and its payload.
type NPDU struct {
	// HasDest says DNET/DADR are present; an empty DADR is a broadcast on
	// DNET (DNET 0xFFFF: everywhere).
	HasDest bool
	DNET    uint16
	DADR    []byte
	// HasSource says SNET/SADR are present: the message came through a
	// router from a device on network SNET.
	HasSource bool
	SNET      uint16
	SADR      []byte
	HopCount  uint8
	// ExpectingReply is set on confirmed requests.
	ExpectingReply bool
	Priority       uint8
	// NetworkMessage marks a network layer message (MessageType) rather
	// than an APDU.
	NetworkMessage bool
	MessageType    uint8
	// Payload is the APDU, or the network message's data.
	Payload []byte
}

// DecodeNPDU decodes a network layer header.
func DecodeNPDU(b []byte) (NPDU, error) {
	if len(b) < 2 {
		return NPDU{}, fmt.Errorf("npdu: %d octets, want at least 2", len(b))
	}
	if b[0] != 1 {
		return NPDU{}, fmt.Errorf("npdu: protocol version %d, want 1", b[0])
	}
	ctl := b[1]
	n := NPDU{
		NetworkMessage: ctl&0x80 != 0,
		HasDest:        ctl&0x20 != 0,
		HasSource:      ctl&0x08 != 0,
		ExpectingReply: ctl&0x04 != 0,
		Priority:       ctl & 0x03,
	}
	p := b[2:]
	addr := func(what string) (uint16, []byte, error) {
		if len(p) < 3 {
			return 0, nil, fmt.Errorf("npdu: truncated %s", what)
		}
		net := binary.BigEndian.Uint16(p)
		l := int(p[2])
		if len(p) < 3+l {
			return 0, nil, fmt.Errorf("npdu: %s address of %d octets truncated", what, l)
		}
		a := p[3 : 3+l]
		p = p[3+l:]
		return net, a, nil
	}
	var err error
	if n.HasDest {
		if n.DNET, n.DADR, err = addr("destination"); err != nil {
			return NPDU{}, err
		}
	}
	if n.HasSource {
		if n.SNET, n.SADR, err = addr("source"); err != nil {
			return NPDU{}, err
		}
		if n.SNET == GlobalNetwork || len(n.SADR) == 0 {
			return NPDU{}, fmt.Errorf("npdu: source network %d address %x is invalid", n.SNET, n.SADR)
		}
	}
	if n.HasDest {
		if len(p) < 1 {
			return NPDU{}, fmt.Errorf("npdu: missing hop count")
		}
		n.HopCount, p = p[0], p[1:]
	}
	if n.NetworkMessage {
		if len(p) < 1 {
			return NPDU{}, fmt.Errorf("npdu: missing network message type")
		}
		n.MessageType, p = p[0], p[1:]
		if n.MessageType >= 0x80 {
			if len(p) < 2 {
				return NPDU{}, fmt.Errorf("npdu: missing vendor id")
			}
			p = p[2:]
		}
	}
	n.Payload = p
	return n, nil
}

// Append encodes the network layer header and payload.
func (n NPDU) Append(b []byte) []byte {
	ctl := n.Priority & 0x03
	if n.NetworkMessage {
		ctl |= 0x80
	}
	if n.HasDest {
		ctl |= 0x20
	}
	if n.HasSource {
		ctl |= 0x08
	}
	if n.ExpectingReply {
		ctl |= 0x04
	}
	b = append(b, 1, ctl)
	if n.HasDest {
		b = binary.BigEndian.AppendUint16(b, n.DNET)
		b = append(b, byte(len(n.DADR)))
		b = append(b, n.DADR...)
	}
	if n.HasSource {
		b = binary.BigEndian.AppendUint16(b, n.SNET)
		b = append(b, byte(len(n.SADR)))
		b = append(b, n.SADR...)
	}
	if n.HasDest {
		hop := n.HopCount
		if hop == 0 {
			hop = 255
		}
		b = append(b, hop)
	}
	if n.NetworkMessage {
		b = append(b, n.MessageType)
	}
	return append(b, n.Payload...)
}

// APDU types (the high nibble of the first octet).
const (
	PDUConfirmedRequest   uint8 = 0
	PDUUnconfirmedRequest uint8 = 1
	PDUSimpleACK          uint8 = 2
	PDUComplexACK         uint8 = 3
	PDUSegmentACK         uint8 = 4
	PDUError              uint8 = 5
	PDUReject             uint8 = 6
	PDUAbort              uint8 = 7
)

var pduNames = [...]string{"confirmed-request", "unconfirmed-request", "simple-ack", "complex-ack",
	"segment-ack", "error", "reject", "abort"}

// PDUName names an APDU type for logs.
func PDUName(t uint8) string {
	if int(t) < len(pduNames) {
		return pduNames[t]
	}
	return fmt.Sprintf("pdu-type-%d", t)
}

// APDU is a decoded application layer header. Which fields are meaningful
// depends on Type.
type APDU struct {
	Type uint8
	// Segmented, MoreFollows: this is one segment of a segmented message.
	Segmented, MoreFollows bool
	// SegmentedResponseAccepted, MaxSegments and MaxAPDU are what the
	// sender of a confirmed request accepts in return (MaxSegments 0:
	// unspecified; MaxAPDU in octets).
	SegmentedResponseAccepted bool
	MaxSegments               int
	MaxAPDU                   int
	InvokeID                  uint8
	// Sequence and Window number the segments of a segmented message and,
	// in a Segment-ACK, the last segment received and the window granted.
	Sequence, Window uint8
	// Service is the service choice (requests, ACKs, Error).
	Service uint8
	// NAK marks a negative Segment-ACK; Server says a Segment-ACK or
	// Abort came from the server side of the transaction.
	NAK, Server bool
	// Reason is a Reject's or Abort's reason.
	Reason uint8
	// Payload is the service data (for Error, the error class and code).
	Payload []byte
}

var maxAPDUs = [...]int{50, 128, 206, 480, 1024, 1476}

// encodeMaxAPDU returns the largest code whose size fits n.
func encodeMaxAPDU(n int) uint8 {
	code := 0
	for i, s := range maxAPDUs {
		if s <= n {
			code = i
		}
	}
	return uint8(code)
}

func decodeMaxAPDU(code uint8) int {
	if int(code) < len(maxAPDUs) {
		return maxAPDUs[code]
	}
	return maxAPDUs[len(maxAPDUs)-1]
}

var maxSegmentCounts = [...]int{0, 2, 4, 8, 16, 32, 64, 65}

func encodeMaxSegments(n int) uint8 {
	code := 0
	for i, s := range maxSegmentCounts {
		if s <= n {
			code = i
		}
	}
	return uint8(code)
}

// DecodeAPDU decodes an application layer header.
func DecodeAPDU(b []byte) (APDU, error) {
	if len(b) < 1 {
		return APDU{}, fmt.Errorf("apdu: empty")
	}
	a := APDU{Type: b[0] >> 4}
	need := func(n int) error {
		if len(b) < n {
			return fmt.Errorf("apdu: %s of %d octets, want at least %d", PDUName(a.Type), len(b), n)
		}
		return nil
	}
	switch a.Type {
	case PDUConfirmedRequest:
		a.Segmented, a.MoreFollows, a.SegmentedResponseAccepted = b[0]&0x08 != 0, b[0]&0x04 != 0, b[0]&0x02 != 0
		n := 4
		if a.Segmented {
			n = 6
		}
		if err := need(n); err != nil {
			return APDU{}, err
		}
		a.MaxSegments = maxSegmentCounts[(b[1]>>4)&0x07]
		a.MaxAPDU = decodeMaxAPDU(b[1] & 0x0F)
		a.InvokeID = b[2]
		if a.Segmented {
			a.Sequence, a.Window = b[3], b[4]
		}
		a.Service, a.Payload = b[n-1], b[n:]
	case PDUUnconfirmedRequest:
		if err := need(2); err != nil {
			return APDU{}, err
		}
		a.Service, a.Payload = b[1], b[2:]
	case PDUSimpleACK:
		if err := need(3); err != nil {
			return APDU{}, err
		}
		a.InvokeID, a.Service = b[1], b[2]
	case PDUComplexACK:
		a.Segmented, a.MoreFollows = b[0]&0x08 != 0, b[0]&0x04 != 0
		n := 3
		if a.Segmented {
			n = 5
		}
		if err := need(n); err != nil {
			return APDU{}, err
		}
		a.InvokeID = b[1]
		if a.Segmented {
			a.Sequence, a.Window = b[2], b[3]
		}
		a.Service, a.Payload = b[n-1], b[n:]
	case PDUSegmentACK:
		if err := need(4); err != nil {
			return APDU{}, err
		}
		a.NAK, a.Server = b[0]&0x02 != 0, b[0]&0x01 != 0
		a.InvokeID, a.Sequence, a.Window = b[1], b[2], b[3]
	case PDUError:
		if err := need(3); err != nil {
			return APDU{}, err
		}
		a.InvokeID, a.Service, a.Payload = b[1], b[2], b[3:]
	case PDUReject:
		if err := need(3); err != nil {
			return APDU{}, err
		}
		a.InvokeID, a.Reason = b[1], b[2]
	case PDUAbort:
		if err := need(3); err != nil {
			return APDU{}, err
		}
		a.Server = b[0]&0x01 != 0
		a.InvokeID, a.Reason = b[1], b[2]
	default:
		return APDU{}, fmt.Errorf("apdu: reserved pdu type %d", a.Type)
	}
	return a, nil
}

// Append encodes the APDU.
func (a APDU) Append(b []byte) []byte {
	first := a.Type << 4
	switch a.Type {
	case PDUConfirmedRequest:
		if a.Segmented {
			first |= 0x08
		}
		if a.MoreFollows {
			first |= 0x04
		}
		if a.SegmentedResponseAccepted {
			first |= 0x02
		}
		b = append(b, first, encodeMaxSegments(a.MaxSegments)<<4|encodeMaxAPDU(a.MaxAPDU), a.InvokeID)
		if a.Segmented {
			b = append(b, a.Sequence, a.Window)
		}
		b = append(b, a.Service)
	case PDUUnconfirmedRequest:
		b = append(b, first, a.Service)
	case PDUSimpleACK:
		return append(b, first, a.InvokeID, a.Service)
	case PDUComplexACK:
		if a.Segmented {
			first |= 0x08
		}
		if a.MoreFollows {
			first |= 0x04
		}
		b = append(b, first, a.InvokeID)
		if a.Segmented {
			b = append(b, a.Sequence, a.Window)
		}
		b = append(b, a.Service)
	case PDUSegmentACK:
		if a.NAK {
			first |= 0x02
		}
		if a.Server {
			first |= 0x01
		}
		return append(b, first, a.InvokeID, a.Sequence, a.Window)
	case PDUError:
		b = append(b, first, a.InvokeID, a.Service)
	case PDUReject:
		return append(b, first, a.InvokeID, a.Reason)
	case PDUAbort:
		if a.Server {
			first |= 0x01
		}
		return append(b, first, a.InvokeID, a.Reason)
	}
	return append(b, a.Payload...)
}

// Message is a whole BACnet/IP datagram, decoded layer by layer.
type Message struct {
	BVLC BVLC
	NPDU NPDU
	// APDU is meaningful when HasAPDU (the BVLC carried an NPDU that was
	// not a network layer message).
	APDU    APDU
	HasAPDU bool
}

// DecodeMessage decodes a datagram through all three layers.
func DecodeMessage(b []byte) (Message, error) {
	var m Message
	var err error
	if m.BVLC, err = DecodeBVLC(b); err != nil {
		return m, err
	}
	if m.BVLC.NPDU == nil {
		return m, nil
	}
	if m.NPDU, err = DecodeNPDU(m.BVLC.NPDU); err != nil {
		return m, err
	}
	if m.NPDU.NetworkMessage {
		return m, nil
	}
	if m.APDU, err = DecodeAPDU(m.NPDU.Payload); err != nil {
		return m, err
	}
	m.HasAPDU = true
	return m, nil
}

// EncodeFrame builds a datagram: fn is the BVLC function, n the network
// header (its Payload replaced by the encoded APDU).
func EncodeFrame(fn uint8, n NPDU, a APDU) []byte {
	n.Payload = a.Append(nil)
	return AppendBVLC(make([]byte, 0, 32+len(n.Payload)), fn, n.Append(nil))
}
