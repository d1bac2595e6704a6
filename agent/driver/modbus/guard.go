package modbus

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	gmodbus "github.com/goburrow/modbus"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Function codes the guard lets through. Everything else, the write codes
// 5, 6, 15, 16, 22 and 23 first of all, is refused.
const (
	fcReadCoils            = 1
	fcReadDiscreteInputs   = 2
	fcReadHoldingRegisters = 3
	fcReadInputRegisters   = 4
	fcEncapsulated         = 43 // only with MEI type 14
	meiReadDeviceID        = 14
)

// allowed reports whether a request PDU (function code and data) is a read.
func allowed(fc byte, data []byte) bool {
	switch fc {
	case fcReadCoils, fcReadDiscreteInputs, fcReadHoldingRegisters, fcReadInputRegisters:
		return true
	case fcEncapsulated:
		// 43 also carries MEI 13 (CANopen general reference), which can
		// write: only Read Device Identification passes.
		return len(data) >= 1 && data[0] == meiReadDeviceID
	}
	return false
}

// Guard is the read-only guard at the wire. It wraps the packager, where a
// PDU becomes a frame, and the transporter, the last point before the
// frame's bytes leave the process, and refuses there every request that is
// not a read (function codes 1-4 and 43/14). Refusals are counted and
// logged and return an error wrapping driver.ErrRefused; nothing is sent.
type Guard struct {
	log     *slog.Logger
	refused atomic.Uint64
	sent    atomic.Uint64 // requests that passed the check at Send
}

// NewGuard returns a guard logging refusals to log (nil: discard).
func NewGuard(log *slog.Logger) *Guard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Guard{log: log}
}

// Refused returns how many requests the guard has refused.
func (g *Guard) Refused() uint64 { return g.refused.Load() }

// Sent returns how many requests the guard let through to the wire.
func (g *Guard) Sent() uint64 { return g.sent.Load() }

func (g *Guard) refuse(where string, fc byte) error {
	n := g.refused.Add(1)
	g.log.Error("read-only guard refused a Modbus request; nothing was sent", "function_code", fc, "at", where, "refused_total", n)
	return fmt.Errorf("modbus function code %d at %s: only reads (1-4, 43/14) may be sent: %w", fc, where, driver.ErrRefused)
}

// Packager wraps p so that Encode refuses any PDU that is not a read.
func (g *Guard) Packager(p gmodbus.Packager) gmodbus.Packager {
	return guardedPackager{g: g, Packager: p}
}

// Transporter wraps t so that Send re-checks the raw frame's function
// code before a byte is written.
func (g *Guard) Transporter(t gmodbus.Transporter) gmodbus.Transporter {
	return guardedTransporter{g: g, t: t}
}

// Client returns a goburrow client for one unit whose every request goes
// through the guard, on the transport tr, under ctx.
func (g *Guard) Client(ctx context.Context, tr *Transport, unit byte) gmodbus.Client {
	return gmodbus.NewClient2(g.Packager(newPackager(unit)), g.Transporter(tr.bind(ctx)))
}

type guardedPackager struct {
	g *Guard
	gmodbus.Packager
}

// Encode refuses any PDU that is not a read, before a frame exists.
func (p guardedPackager) Encode(pdu *gmodbus.ProtocolDataUnit) ([]byte, error) {
	if pdu == nil {
		return nil, p.g.refuse("encode", 0)
	}
	if !allowed(pdu.FunctionCode, pdu.Data) {
		return nil, p.g.refuse("encode", pdu.FunctionCode)
	}
	return p.Packager.Encode(pdu)
}

type guardedTransporter struct {
	g *Guard
	t gmodbus.Transporter
}

// Send checks the MBAP frame: 7 header bytes, then the function code.
func (t guardedTransporter) Send(adu []byte) ([]byte, error) {
	if len(adu) < mbapHeader+1 {
		return nil, t.g.refuse("send", 0)
	}
	if fc := adu[mbapHeader]; !allowed(fc, adu[mbapHeader+1:]) {
		return nil, t.g.refuse("send", fc)
	}
	t.g.sent.Add(1)
	return t.t.Send(adu)
}

// newPackager returns goburrow's Modbus TCP packager for one unit id. Only
// its Encode, Verify and Decode are used; the transport is ours.
func newPackager(unit byte) gmodbus.Packager {
	h := gmodbus.NewTCPClientHandler("")
	h.SlaveId = unit
	return h
}
