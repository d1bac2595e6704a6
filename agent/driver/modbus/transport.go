package modbus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	gmodbus "github.com/goburrow/modbus"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

const (
	mbapHeader = 7 // transaction id, protocol id, length, unit id
	// maxADU is the largest Modbus TCP frame: the header and a 253-byte PDU.
	maxADU = mbapHeader + 253
)

// errTimeout marks a request the device did not answer in time. The
// connection is closed (a late answer would be mistaken for the next
// one's) and the next request dials again.
var errTimeout = errors.New("no answer in time")

// TransportOptions configure a Transport. Zero values mean the defaults
// given on each field.
type TransportOptions struct {
	// Address is host:port of the device or gateway. Required.
	Address string
	// LocalAddr is the local IP to dial from (the control NIC), and the
	// connection is bound to the interface holding it; empty lets
	// the kernel choose.
	LocalAddr string
	// RequestTimeout bounds one request and its answer, and each dial,
	// within the caller's context. Default 3s.
	RequestTimeout time.Duration
	// Pause is the least time between the end of one request and the
	// next, for gateways and controllers that drop requests sent back to
	// back. Default 0.
	Pause time.Duration
}

// Transport is a Modbus TCP connection to one device or gateway. It dials
// lazily from the configured local address, sends one request at a time,
// applies each request's deadline from its context, checks the answer's
// header (transaction id, protocol id, unit id, length) and drops the
// connection after any error so the next request starts clean. It is safe
// for concurrent use; requests are serialised.
type Transport struct {
	opts  TransportOptions
	local *net.TCPAddr
	// dial replaces the TCP dial in tests that feed the transport bytes.
	dial func(ctx context.Context) (net.Conn, error)

	mu   sync.Mutex
	conn net.Conn
	last time.Time // when the last request ended, for Pause
}

// NewTransport validates opts and returns a transport; it does no I/O.
func NewTransport(opts TransportOptions) (*Transport, error) {
	if _, _, err := net.SplitHostPort(opts.Address); err != nil {
		return nil, fmt.Errorf("modbus address %q: want host:port: %w", opts.Address, err)
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 3 * time.Second
	}
	t := &Transport{opts: opts}
	if opts.LocalAddr != "" {
		ip := net.ParseIP(opts.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("local address %q: want an IP address of this machine (the control NIC)", opts.LocalAddr)
		}
		t.local = &net.TCPAddr{IP: ip}
	}
	return t, nil
}

// Connect dials the device unless a connection is open.
func (t *Transport) Connect(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dialLocked(ctx)
}

func (t *Transport) dialLocked(ctx context.Context) error {
	if t.conn != nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("connecting to %s: %w", t.opts.Address, err)
	}
	d := net.Dialer{Timeout: t.opts.RequestTimeout}
	if t.local != nil {
		d.LocalAddr = t.local
		// Bound to the control NIC too, not only its address: the
		// connection cannot leave by the uplink whatever the routes say.
		ip, _ := netip.AddrFromSlice(t.local.IP)
		ctl, err := nicbind.ForAddress(ip, nil)
		if err != nil {
			return fmt.Errorf("connecting to %s: %w", t.opts.Address, err)
		}
		d.Control = ctl
	}
	dial := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", t.opts.Address) }
	if t.dial != nil {
		dial = t.dial
	}
	conn, err := dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("connecting to %s: %w", t.opts.Address, ctx.Err())
		}
		return fmt.Errorf("connecting to %s: %w (check the address, that the device is on and that the control network reaches it): %w", t.opts.Address, err, driver.ErrConnLost)
	}
	t.conn = conn
	return nil
}

// Close closes the connection; a later request dials again.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closeLocked()
}

func (t *Transport) closeLocked() error {
	if t.conn == nil {
		return nil
	}
	err := t.conn.Close()
	t.conn = nil
	return err
}

// bind returns a goburrow Transporter that sends under ctx. goburrow's
// interface has no context; the binding lives for one request.
func (t *Transport) bind(ctx context.Context) gmodbus.Transporter {
	return boundTransport{t: t, ctx: ctx}
}

type boundTransport struct {
	t   *Transport
	ctx context.Context
}

// Send sends one frame under the bound context.
func (b boundTransport) Send(adu []byte) ([]byte, error) { return b.t.send(b.ctx, adu) }

// send writes one request frame and reads its answer.
func (t *Transport) send(ctx context.Context, adu []byte) ([]byte, error) {
	if len(adu) < mbapHeader+1 || len(adu) > maxADU {
		return nil, fmt.Errorf("modbus request frame of %d bytes: want %d to %d", len(adu), mbapHeader+1, maxADU)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.pauseLocked(ctx); err != nil {
		return nil, err
	}
	reused := t.conn != nil
	resp, err := t.sendLocked(ctx, adu)
	if reused && errors.Is(err, errStale) && ctx.Err() == nil {
		// Gateways drop idle connections without a word; the first
		// request after that finds the connection closed. Reads are
		// idempotent: dial again and ask once more.
		resp, err = t.sendLocked(ctx, adu)
	}
	t.last = time.Now()
	return resp, err
}

// errStale marks a connection the peer had closed before our request:
// it ended before a byte of the answer arrived.
var errStale = errors.New("connection closed by the device")

// pauseLocked waits until Pause has passed since the last request.
func (t *Transport) pauseLocked(ctx context.Context) error {
	wait := time.Until(t.last.Add(t.opts.Pause))
	if t.opts.Pause <= 0 || wait <= 0 {
		return nil
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("modbus request to %s: %w", t.opts.Address, ctx.Err())
	case <-timer.C:
		return nil
	}
}

func (t *Transport) sendLocked(ctx context.Context, adu []byte) ([]byte, error) {
	if err := t.dialLocked(ctx); err != nil {
		return nil, err
	}
	conn := t.conn
	start := time.Now()
	deadline := start.Add(t.opts.RequestTimeout)
	ctxDeadline := false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ctxDeadline = d, true
	}
	if err := conn.SetDeadline(deadline); err != nil {
		t.closeLocked()
		return nil, fmt.Errorf("setting the request deadline: %w: %w", err, driver.ErrConnLost)
	}
	// A cancelled context interrupts the read at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	resp, err := exchange(conn, adu)
	stop()
	if err != nil {
		t.closeLocked()
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("modbus request to %s: %w", t.opts.Address, ctx.Err())
		case errors.Is(err, os.ErrDeadlineExceeded) && ctxDeadline:
			// The read's own deadline, a hair before its context says so.
			return nil, fmt.Errorf("modbus request to %s: %w", t.opts.Address, context.DeadlineExceeded)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, fmt.Errorf("modbus request to %s: %w within %s: %w", t.opts.Address, errTimeout, deadline.Sub(start).Round(time.Millisecond), driver.ErrConnLost)
		}
		return nil, fmt.Errorf("modbus request to %s: %w: %w", t.opts.Address, err, driver.ErrConnLost)
	}
	return resp, nil
}

// exchange writes the request and reads one answer frame, checking it
// against the request.
func exchange(rw io.ReadWriter, req []byte) ([]byte, error) {
	if _, err := rw.Write(req); err != nil {
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			return nil, fmt.Errorf("sending: %w: %w", err, errStale)
		}
		return nil, fmt.Errorf("sending: %w", err)
	}
	return readFrame(rw, req)
}

// readFrame reads one MBAP frame answering req from r and checks its
// header: it must carry req's transaction, protocol and unit ids and a
// length that fits a Modbus PDU. The frame returned is complete.
func readFrame(r io.Reader, req []byte) ([]byte, error) {
	var buf [maxADU]byte
	if n, err := io.ReadFull(r, buf[:mbapHeader]); err != nil {
		if n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			return nil, fmt.Errorf("the device closed the connection before answering: %w: %w", err, errStale)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("the device closed the connection before answering: %w", err)
		}
		return nil, fmt.Errorf("reading the answer's header: %w", err)
	}
	h := buf[:mbapHeader]
	length := int(binary.BigEndian.Uint16(h[4:]))
	// The length counts the unit id and the PDU: at least a function code
	// and one byte (an exception code or a byte count).
	if length < 3 || length > maxADU-mbapHeader+1 {
		return nil, fmt.Errorf("answer length %d is out of range 3 to %d: not a Modbus TCP frame", length, maxADU-mbapHeader+1)
	}
	n := mbapHeader - 1 + length
	if _, err := io.ReadFull(r, buf[mbapHeader:n]); err != nil {
		return nil, fmt.Errorf("the answer was cut off after %d bytes of %d: %w", mbapHeader, n, err)
	}
	switch {
	case binary.BigEndian.Uint16(h[2:]) != 0:
		return nil, fmt.Errorf("answer protocol id %d: want 0 (Modbus)", binary.BigEndian.Uint16(h[2:]))
	case h[0] != req[0] || h[1] != req[1]:
		return nil, fmt.Errorf("answer transaction id %d does not match the request's %d: the device or a gateway mixed up answers",
			binary.BigEndian.Uint16(h), binary.BigEndian.Uint16(req))
	case h[6] != req[6]:
		return nil, fmt.Errorf("answer from unit %d to a request for unit %d", h[6], req[6])
	case buf[mbapHeader]&0x7f != req[mbapHeader]:
		return nil, fmt.Errorf("answer function code %d to a request with function code %d", buf[mbapHeader], req[mbapHeader])
	}
	return append([]byte(nil), buf[:n]...), nil
}
