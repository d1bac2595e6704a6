// Package modbussim is a Modbus TCP device simulator for tests and the
// demo: one listener on loopback serving any number of unit ids, each a
// register map (usually a shipped device profile with realistic, changing
// values). It records every request it receives, writes included, so tests
// can prove that only reads arrive, and it can misbehave on purpose: refuse
// unmapped addresses or long reads, stay silent, close the connection
// mid-answer, answer with a wrong transaction id or length.
//
// It is deliberately written without the driver's code: it encodes values
// and frames on its own, so the two check each other.
package modbussim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Tables, as the function codes that read them.
const (
	Coils    = 1
	Discrete = 2
	Holding  = 3
	Input    = 4
)

// Request is one request the server received.
type Request struct {
	Unit     byte
	Function byte
	// Address and Quantity of a read (functions 1-4); zero otherwise.
	Address, Quantity uint16
	// From is the client's address, ip:port.
	From string
}

// IsRead reports whether the request is a read: functions 1-4, or 43 with
// MEI type 14 (read device identification).
func (r Request) IsRead() bool {
	return r.Function >= 1 && r.Function <= 4 || r.Function == 43 && r.Address == 14
}

// Fault is a misbehaviour for one request.
type Fault uint8

const (
	// NoFault answers normally.
	NoFault Fault = iota
	// Silent never answers (the client times out).
	Silent
	// CloseBeforeAnswer closes the connection instead of answering.
	CloseBeforeAnswer
	// CloseMidAnswer writes the answer but its last two bytes, then closes.
	CloseMidAnswer
	// WrongTransaction answers with another transaction id.
	WrongTransaction
	// WrongLength answers with one data byte fewer than asked for (and a
	// consistent frame length).
	WrongLength
	// BadHeaderLength answers with a frame length of zero.
	BadHeaderLength
	// Busy answers exception 6 (server device busy).
	Busy
	// DeviceFailure answers exception 4 (server device failure).
	DeviceFailure
)

// Options configure a Server.
type Options struct {
	// Addr is where to listen; default 127.0.0.1:0. It must be loopback.
	Addr string
	// Latency delays every answer, like a slow controller.
	Latency time.Duration
	// Fault, when set, picks a misbehaviour for each request.
	Fault func(Request) Fault
	// Logger receives connection errors; nil discards them.
	Logger *slog.Logger
}

// Server is a Modbus TCP simulator.
type Server struct {
	opts Options
	ln   net.Listener
	log  *slog.Logger

	mu       sync.Mutex
	units    map[byte]*Unit
	requests []Request
	conns    map[net.Conn]bool
	closed   bool
	wg       sync.WaitGroup
}

// Start listens and serves units until Close.
func Start(opts Options, units map[byte]*Unit) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("modbus simulator address %q: %w", opts.Addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("modbus simulator address %q: the simulator listens on loopback only", opts.Addr)
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("modbus simulator: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, ln: ln, log: log, units: units, conns: map[net.Conn]bool{}}
	s.wg.Go(s.accept)
	return s, nil
}

// Addr returns the listening address, host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Unit returns the unit with id, or nil.
func (s *Server) Unit(id byte) *Unit {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.units[id]
}

// Requests returns every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// ResetRequests forgets the requests received so far.
func (s *Server) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}

// Writes describes every request received that was not a read.
func (s *Server) Writes() []string {
	var out []string
	for _, r := range s.Requests() {
		if !r.IsRead() {
			out = append(out, fmt.Sprintf("function %d to unit %d", r.Function, r.Unit))
		}
	}
	return out
}

// Close stops the server and waits for its connections to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

// DropConnections closes every open connection, as a device rebooting does.
func (s *Server) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

func (s *Server) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			if err := s.serve(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("modbus simulator connection ended", "err", err)
			}
		})
	}
}

// serve answers the requests of one connection, one at a time.
func (s *Server) serve(c net.Conn) error {
	var hdr [7]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint16(hdr[4:]))
		if n < 2 || n > 254 {
			return fmt.Errorf("request length %d out of range", n)
		}
		pdu := make([]byte, n-1)
		if _, err := io.ReadFull(c, pdu); err != nil {
			return err
		}
		req := Request{Unit: hdr[6], Function: pdu[0], From: c.RemoteAddr().String()}
		switch {
		case req.Function >= 1 && req.Function <= 4 && len(pdu) == 5:
			req.Address = binary.BigEndian.Uint16(pdu[1:])
			req.Quantity = binary.BigEndian.Uint16(pdu[3:])
		case req.Function == 43 && len(pdu) >= 2:
			req.Address = uint16(pdu[1]) // the MEI type
		}
		s.mu.Lock()
		s.requests = append(s.requests, req)
		u := s.units[req.Unit]
		s.mu.Unlock()
		fault := NoFault
		if s.opts.Fault != nil {
			fault = s.opts.Fault(req)
		}
		if s.opts.Latency > 0 {
			time.Sleep(s.opts.Latency)
		}
		var resp []byte
		switch fault {
		case Silent:
			continue
		case CloseBeforeAnswer:
			return nil
		case Busy:
			resp = exception(pdu[0], 6)
		case DeviceFailure:
			resp = exception(pdu[0], 4)
		default:
			if u == nil {
				// A gateway with nothing behind this unit id.
				resp = exception(pdu[0], 11)
			} else {
				resp = u.answer(pdu)
			}
		}
		frame := make([]byte, 7+len(resp))
		copy(frame, hdr[:4])
		binary.BigEndian.PutUint16(frame[4:], uint16(len(resp)+1))
		frame[6] = hdr[6]
		copy(frame[7:], resp)
		switch fault {
		case WrongTransaction:
			frame[1]++
		case WrongLength:
			if len(resp) > 2 && resp[0] <= 4 {
				frame = frame[:len(frame)-1]
				frame[8]--
				binary.BigEndian.PutUint16(frame[4:], uint16(len(frame)-6))
			}
		case BadHeaderLength:
			binary.BigEndian.PutUint16(frame[4:], 0)
		case CloseMidAnswer:
			c.Write(frame[:len(frame)-2])
			return nil
		}
		if _, err := c.Write(frame); err != nil {
			return err
		}
	}
}

func exception(fc, code byte) []byte { return []byte{fc | 0x80, code} }
