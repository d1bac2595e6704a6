package bacnet

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// ErrRefused is returned (wrapped) when the read-only guard refuses a
// datagram. It is driver.ErrRefused, so the agent tells it apart from a
// device's failure whichever layer reports it.
var ErrRefused = driver.ErrRefused

// Guard is the read-only check every outgoing datagram passes, at the one
// point where bytes leave the process. It decodes the datagram again, as
// the device would, and allows only: the BVLC functions that carry an NPDU
// to a device (plus Register-Foreign-Device when a BBMD is configured), no
// network layer message, and of APDUs only the confirmed requests
// ReadProperty, ReadPropertyMultiple and ReadRange (unsegmented, with a
// body that parses as that request), the unconfirmed requests Who-Is and
// Who-Has, and client Segment-ACKs, which receiving a segmented answer
// needs. Everything else is refused, counted and logged.
type Guard struct {
	log           *slog.Logger
	allowRegister bool
	refused       atomic.Uint64
}

// NewGuard returns a guard that logs refusals to log. allowRegister
// permits Register-Foreign-Device (only when a BBMD is configured).
func NewGuard(log *slog.Logger, allowRegister bool) *Guard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Guard{log: log, allowRegister: allowRegister}
}

// Refused returns how many datagrams the guard has refused.
func (g *Guard) Refused() uint64 { return g.refused.Load() }

// Check returns nil if frame may be sent, or an error wrapping ErrRefused.
func (g *Guard) Check(frame []byte) error {
	reason := g.reason(frame)
	if reason == "" {
		return nil
	}
	n := g.refused.Add(1)
	g.log.Warn("read-only guard refused an outgoing datagram", "reason", reason, "refused_total", n, "octets", len(frame))
	return fmt.Errorf("%w: %s", ErrRefused, reason)
}

func (g *Guard) reason(frame []byte) string {
	bv, err := DecodeBVLC(frame)
	if err != nil {
		return "malformed datagram: " + err.Error()
	}
	switch bv.Function {
	case BVLCOriginalUnicast, BVLCOriginalBroadcast, BVLCDistributeBroadcast:
	case BVLCRegisterForeignDevice:
		if g.allowRegister {
			return ""
		}
		return "register-foreign-device without a configured bbmd"
	default:
		return fmt.Sprintf("bvlc function 0x%02x is not a read", bv.Function)
	}
	n, err := DecodeNPDU(bv.NPDU)
	if err != nil {
		return "malformed npdu: " + err.Error()
	}
	if n.NetworkMessage {
		return fmt.Sprintf("network layer message 0x%02x", n.MessageType)
	}
	a, err := DecodeAPDU(n.Payload)
	if err != nil {
		return "malformed apdu: " + err.Error()
	}
	switch a.Type {
	case PDUConfirmedRequest:
		if a.Segmented {
			return "segmented confirmed request"
		}
		var err error
		switch a.Service {
		case ServiceReadProperty:
			_, _, err = DecodeReadPropertyRequest(a.Payload)
		case ServiceReadPropertyMultiple:
			_, err = DecodeReadPropertyMultipleRequest(a.Payload)
		case ServiceReadRange:
			_, _, _, err = DecodeReadRangeRequest(a.Payload, time.UTC)
		default:
			return fmt.Sprintf("confirmed service %d is not a read", a.Service)
		}
		if err != nil {
			return fmt.Sprintf("confirmed service %d with a body that is not that read: %v", a.Service, err)
		}
		return ""
	case PDUUnconfirmedRequest:
		var err error
		switch a.Service {
		case ServiceWhoIs:
			_, _, err = DecodeWhoIs(a.Payload)
		case ServiceWhoHas:
			_, _, _, _, err = DecodeWhoHas(a.Payload)
		default:
			return fmt.Sprintf("unconfirmed service %d is not a read", a.Service)
		}
		if err != nil {
			return fmt.Sprintf("unconfirmed service %d with a malformed body: %v", a.Service, err)
		}
		return ""
	case PDUSegmentACK:
		if a.Server {
			return "server segment-ack"
		}
		return ""
	}
	return PDUName(a.Type) + " pdu: a read-only client sends none"
}
