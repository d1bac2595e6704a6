package bacnetsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
)

// Config configures a Server.
type Config struct {
	// Addr is the UDP address to listen on; it must be a loopback
	// address. Default "127.0.0.1:0".
	Addr string
	// Local is the device at Addr itself (nil: a pure router).
	Local *Device
	// Routed are the devices behind the simulated router at Addr, each
	// on its Network with its MAC (MS/TP devices behind a BACnet router).
	Routed []*Device
	// Location is the devices' time zone for dates and times. Default UTC.
	Location *time.Location
	// SegmentTimeout is how long the server waits for a Segment-ACK.
	// Default 1s.
	SegmentTimeout time.Duration
	// Logger receives the simulator's logs; nil discards them.
	Logger *slog.Logger
}

// Request is one datagram the simulator received.
type Request struct {
	From netip.AddrPort
	BVLC uint8
	// Network is true for a network layer message.
	Network bool
	PDU     uint8
	Service uint8
	// NAK marks a negative Segment-ACK.
	NAK bool
	// Read says whether the datagram is one of the reads a read-only
	// client may send.
	Read bool
}

// String describes the request for test failures.
func (r Request) String() string {
	if r.Network {
		return fmt.Sprintf("network-message from %s", r.From)
	}
	return fmt.Sprintf("%s service %d (bvlc 0x%02x) from %s", bacnet.PDUName(r.PDU), r.Service, r.BVLC, r.From)
}

// Server is a running simulator endpoint.
type Server struct {
	cfg  Config
	log  *slog.Logger
	conn *net.UDPConn
	all  []*Device

	// devMu guards the devices: answers read them, Update changes them.
	devMu sync.RWMutex

	mu       sync.Mutex
	requests []Request
	acks     map[ackKey]chan bacnet.APDU
	// inflight and maxInflight count confirmed requests being answered,
	// by device instance and (negative keys) by network.
	inflight, maxInflight map[int64]int
	// held counts, by the same keys, the arrivals that brought the
	// requests in flight up to a device's HoldInFlight; heldChanged is
	// closed (and replaced) whenever it grows, waking the held answers.
	held        map[int64]int
	heldChanged chan struct{}
	// aborts counts the Aborts sent: answers too long for the device, a
	// busy device's, and RPMs over AbortRPMOver.
	aborts int
	wg     sync.WaitGroup
	done   chan struct{}
	closed bool
}

type ackKey struct {
	from     netip.AddrPort
	instance uint32
	invoke   uint8
}

// Start listens and serves until Close or ctx is done.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Location == nil {
		cfg.Location = time.UTC
	}
	if cfg.SegmentTimeout <= 0 {
		cfg.SegmentTimeout = time.Second
	}
	ap, err := netip.ParseAddrPort(cfg.Addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("bacnet simulator: address %q: want a loopback IP:port (simulators never listen on a real network)", cfg.Addr)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, acks: map[ackKey]chan bacnet.APDU{}, done: make(chan struct{}),
		inflight: map[int64]int{}, maxInflight: map[int64]int{}, held: map[int64]int{}, heldChanged: make(chan struct{})}
	if cfg.Local != nil {
		cfg.Local.withDefaults()
		s.all = append(s.all, cfg.Local)
	}
	for _, d := range cfg.Routed {
		if d.Network == 0 || len(d.MAC) == 0 {
			return nil, fmt.Errorf("bacnet simulator: routed device %d needs a network and a MAC", d.Instance)
		}
		d.withDefaults()
		s.all = append(s.all, d)
	}
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp4", ap.String())
	if err != nil {
		return nil, fmt.Errorf("bacnet simulator: listening on %s: %w", ap, err)
	}
	s.conn = pc.(*net.UDPConn)
	s.wg.Add(2)
	go s.serve()
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
			s.conn.Close()
		case <-s.done:
		}
	}()
	return s, nil
}

// Update changes the simulated devices (flags, values, NoRPM, Silent)
// while the simulator runs: f runs while no answer is being computed.
func (s *Server) Update(f func()) {
	s.devMu.Lock()
	defer s.devMu.Unlock()
	f()
	for _, d := range s.all {
		d.withDefaults() // objects may have been added
	}
}

// Addr is the address the simulator listens on.
func (s *Server) Addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Devices returns the simulated devices (local first).
func (s *Server) Devices() []*Device { return s.all }

// Close stops the simulator.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	err := s.conn.Close()
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Requests returns every datagram received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Aborts reports how many answers the simulator aborted: as too long for
// the device to send (segmentation-not-supported, apdu-too-long), as a
// Busy device, or as a ReadPropertyMultiple over AbortRPMOver.
func (s *Server) Aborts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.aborts
}

// Reset forgets the recorded requests.
func (s *Server) Reset() {
	s.mu.Lock()
	s.requests = nil
	s.mu.Unlock()
}

// Writes lists every received datagram that is not a read: what a
// read-only client must never send.
func (s *Server) Writes() []string {
	var out []string
	for _, r := range s.Requests() {
		if !r.Read {
			out = append(out, r.String())
		}
	}
	return out
}

// isRead classifies a datagram the way a device's owner would: only the
// read services, and the Segment-ACKs that receiving a segmented answer
// needs, are reads.
func isRead(m bacnet.Message) bool {
	switch m.BVLC.Function {
	case bacnet.BVLCOriginalUnicast, bacnet.BVLCOriginalBroadcast, bacnet.BVLCDistributeBroadcast, bacnet.BVLCForwardedNPDU:
	default:
		return false
	}
	if !m.HasAPDU {
		return false
	}
	a := m.APDU
	switch a.Type {
	case bacnet.PDUConfirmedRequest:
		return a.Service == bacnet.ServiceReadProperty || a.Service == bacnet.ServiceReadPropertyMultiple || a.Service == bacnet.ServiceReadRange
	case bacnet.PDUUnconfirmedRequest:
		return a.Service == bacnet.ServiceWhoIs || a.Service == bacnet.ServiceWhoHas
	case bacnet.PDUSegmentACK:
		return !a.Server
	}
	return false
}

func (s *Server) serve() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		frame := append([]byte(nil), buf[:n]...)
		m, err := bacnet.DecodeMessage(frame)
		bv, _ := bacnet.DecodeBVLC(frame)
		req := Request{From: from, BVLC: bv.Function, Network: m.NPDU.NetworkMessage, PDU: m.APDU.Type, Service: m.APDU.Service, NAK: m.APDU.NAK}
		if err == nil {
			req.Read = isRead(m)
		}
		s.mu.Lock()
		s.requests = append(s.requests, req)
		s.mu.Unlock()
		if err != nil || !req.Read {
			s.log.Debug("simulator ignoring datagram", "from", from.String(), "request", req.String(), "err", err)
			continue
		}
		if m.BVLC.Function == bacnet.BVLCForwardedNPDU {
			// A broadcast a BBMD forwarded: answer its originator.
			from = m.BVLC.Origin
		}
		s.devMu.RLock()
		for _, d := range s.targets(m) {
			if d.Silent {
				continue
			}
			s.handle(from, d, m)
		}
		s.devMu.RUnlock()
	}
}

// targets returns the devices a message is for.
func (s *Server) targets(m bacnet.Message) []*Device {
	n := m.NPDU
	var out []*Device
	for _, d := range s.all {
		switch {
		case !n.HasDest:
			if d.Network == 0 {
				out = append(out, d)
			}
		case n.DNET == bacnet.GlobalNetwork:
			out = append(out, d)
		case n.DNET == d.Network && d.Network != 0:
			if len(n.DADR) == 0 || string(n.DADR) == string(d.MAC) {
				out = append(out, d)
			}
		}
	}
	return out
}

// reply sends an APDU from device d to a client.
func (s *Server) reply(to netip.AddrPort, d *Device, a bacnet.APDU) {
	n := bacnet.NPDU{}
	if d.Network != 0 {
		n.HasSource, n.SNET, n.SADR = true, d.Network, d.MAC
	}
	if _, err := s.conn.WriteToUDPAddrPort(bacnet.EncodeFrame(bacnet.BVLCOriginalUnicast, n, a), to); err != nil {
		s.log.Debug("simulator reply failed", "to", to.String(), "err", err)
	}
}

func (s *Server) handle(from netip.AddrPort, d *Device, m bacnet.Message) {
	a := m.APDU
	switch a.Type {
	case bacnet.PDUUnconfirmedRequest:
		switch a.Service {
		case bacnet.ServiceWhoIs:
			low, high, err := bacnet.DecodeWhoIs(a.Payload)
			if err != nil || (low >= 0 && (int(d.Instance) < low || int(d.Instance) > high)) {
				return
			}
			s.reply(from, d, bacnet.APDU{Type: bacnet.PDUUnconfirmedRequest, Service: bacnet.ServiceIAm, Payload: iAm(d)})
		case bacnet.ServiceWhoHas:
			low, high, obj, name, err := bacnet.DecodeWhoHas(a.Payload)
			if err != nil || (low >= 0 && (int(d.Instance) < low || int(d.Instance) > high)) {
				return
			}
			for _, o := range d.Objects {
				if (name != "" && o.Name == name) || (name == "" && o.ID == obj) {
					payload := appendAll(nil, bacnet.ObjectValue(d.id()), bacnet.ObjectValue(o.ID), bacnet.CharString(o.Name))
					s.reply(from, d, bacnet.APDU{Type: bacnet.PDUUnconfirmedRequest, Service: bacnet.ServiceIHave, Payload: payload})
				}
			}
		}
	case bacnet.PDUSegmentACK:
		s.mu.Lock()
		ch := s.acks[ackKey{from, d.Instance, a.InvokeID}]
		s.mu.Unlock()
		if ch != nil {
			select {
			case ch <- a:
			default:
			}
		}
	case bacnet.PDUConfirmedRequest:
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.confirmed(from, d, a)
		}()
	}
}

func iAm(d *Device) []byte {
	return appendAll(nil, bacnet.ObjectValue(d.id()), bacnet.Unsigned(uint64(d.MaxAPDU)),
		bacnet.Enumerated(uint64(d.Segmentation)), bacnet.Unsigned(999))
}

// appendAll encodes application values; the simulator's values are always
// encodable, so an error is a bug in the simulator.
func appendAll(b []byte, vals ...bacnet.Value) []byte {
	for _, v := range vals {
		var err error
		if b, err = bacnet.AppendValue(b, v); err != nil {
			panic(fmt.Sprintf("bacnet simulator: encoding %v: %v", v, err))
		}
	}
	return b
}

func appendContext(b []byte, tag uint8, v bacnet.Value) []byte {
	b, err := bacnet.AppendContext(b, tag, v)
	if err != nil {
		panic(fmt.Sprintf("bacnet simulator: encoding %v: %v", v, err))
	}
	return b
}

// confirmed answers one confirmed request.
func (s *Server) confirmed(from netip.AddrPort, d *Device, a bacnet.APDU) {
	s.devMu.RLock()
	hung, delay, busy, reason, hold, holdFor := d.Hung, d.Delay, d.Busy, d.BusyReason, d.HoldInFlight, d.HoldFor
	s.devMu.RUnlock()
	if holdFor <= 0 {
		holdFor = 5 * time.Second
	}
	if hung {
		return
	}
	if busy {
		s.abort(from, d, a, reason)
		return
	}
	s.mu.Lock()
	s.inflight[int64(d.Instance)]++
	s.inflight[-int64(d.Network)-1]++
	s.maxInflight[int64(d.Instance)] = max(s.maxInflight[int64(d.Instance)], s.inflight[int64(d.Instance)])
	s.maxInflight[-int64(d.Network)-1] = max(s.maxInflight[-int64(d.Network)-1], s.inflight[-int64(d.Network)-1])
	holdKey := int64(d.Instance)
	if d.Network != 0 {
		holdKey = -int64(d.Network) - 1
	}
	heldBefore := s.held[holdKey]
	if hold > 0 && s.inflight[holdKey] >= hold {
		s.held[holdKey]++
		close(s.heldChanged)
		s.heldChanged = make(chan struct{})
	}
	s.mu.Unlock()
	// The request stops counting before its answer leaves, or the client's
	// next request could arrive while this one still counts.
	finished := func() {
		s.mu.Lock()
		s.inflight[int64(d.Instance)]--
		s.inflight[-int64(d.Network)-1]--
		s.mu.Unlock()
	}
	if hold > 0 && !s.hold(holdKey, hold, heldBefore, holdFor) {
		finished()
		return
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-s.done:
			finished()
			return
		}
	}
	s.devMu.RLock()
	finished()
	payload, answer, maxResp := s.answer(from, d, a)
	s.devMu.RUnlock()
	if answer {
		s.send(from, d, a, payload, maxResp)
	}
}

// hold waits until the requests in flight under key reached hold after
// held was heldBefore, or for at most limit. It returns false when the
// server closes meanwhile.
func (s *Server) hold(key int64, hold, heldBefore int, limit time.Duration) bool {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		s.mu.Lock()
		reached, changed := s.held[key] > heldBefore, s.heldChanged
		s.mu.Unlock()
		if reached {
			return true
		}
		select {
		case <-timer.C:
			return true
		case <-changed:
		case <-s.done:
			return false
		}
	}
}

// MaxInFlight reports the most confirmed requests the simulator was
// answering at once for one device, and for all devices of one network
// (0: the devices at the simulator's own address).
func (s *Server) MaxInFlight(instance uint32, network uint16) (device, onNetwork int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInflight[int64(instance)], s.maxInflight[-int64(network)-1]
}

// answer computes the ComplexACK of a confirmed request, or sends the
// Error or Reject itself and returns answer false.
func (s *Server) answer(from netip.AddrPort, d *Device, a bacnet.APDU) (payload []byte, answer bool, maxResp int) {
	now := time.Now()
	maxResp = min(a.MaxAPDU, d.MaxAPDU)
	fail := func(e *bacnet.Error) {
		s.reply(from, d, bacnet.APDU{Type: bacnet.PDUError, InvokeID: a.InvokeID, Service: a.Service,
			Payload: appendAll(nil, bacnet.Enumerated(uint64(e.Class)), bacnet.Enumerated(uint64(e.Code)))})
	}
	reject := func(reason uint8) {
		s.reply(from, d, bacnet.APDU{Type: bacnet.PDUReject, InvokeID: a.InvokeID, Reason: reason})
	}
	if a.Service != bacnet.ServiceReadProperty && d.NoRPM {
		reject(9) // unrecognized-service
		return nil, false, 0
	}
	switch a.Service {
	case bacnet.ServiceReadProperty:
		obj, p, err := bacnet.DecodeReadPropertyRequest(a.Payload)
		if err != nil {
			reject(4)
			return nil, false, 0
		}
		o := d.object(obj)
		if o == nil {
			fail(errUnknownObject)
			return nil, false, 0
		}
		vals, e := d.read(o, p, now)
		if e != nil {
			fail(e)
			return nil, false, 0
		}
		payload = appendContext(nil, 0, bacnet.ObjectValue(o.ID))
		payload = appendPropRef(payload, 1, 2, p)
		payload = appendAll(bacnet.AppendOpening(payload, 3), vals...)
		payload = bacnet.AppendClosing(payload, 3)
	case bacnet.ServiceReadPropertyMultiple:
		specs, err := bacnet.DecodeReadPropertyMultipleRequest(a.Payload)
		if err != nil {
			reject(4)
			return nil, false, 0
		}
		if d.AbortRPMOver > 0 && len(specs) > d.AbortRPMOver {
			s.abort(from, d, a, bacnet.AbortOther)
			return nil, false, 0
		}
		if d.StrictRPM {
			for _, spec := range specs {
				if d.object(spec.Object) == nil {
					fail(errUnknownObject)
					return nil, false, 0
				}
			}
		}
		payload = s.rpm(d, specs, now)
	case bacnet.ServiceReadRange:
		obj, p, r, err := bacnet.DecodeReadRangeRequest(a.Payload, s.cfg.Location)
		if err != nil {
			reject(4)
			return nil, false, 0
		}
		o := d.object(obj)
		if o == nil {
			fail(errUnknownObject)
			return nil, false, 0
		}
		if o.Log == nil || p.ID != bacnet.PropLogBuffer {
			fail(&bacnet.Error{Class: bacnet.ErrorClassServices, Code: 9})
			return nil, false, 0
		}
		segs := 1
		if d.Segmentation.CanTransmit() && a.SegmentedResponseAccepted {
			segs = min(d.MaxSegments, max(a.MaxSegments, 1))
		}
		payload = s.readRange(d, o, p, r, now, segs*(maxResp-5)-5)
	default:
		reject(9)
		return nil, false, 0
	}
	return payload, true, maxResp
}

func appendPropRef(b []byte, idTag, indexTag uint8, p bacnet.PropertyRef) []byte {
	b = appendContext(b, idTag, bacnet.Enumerated(uint64(p.ID)))
	if p.Index != bacnet.NoIndex {
		b = appendContext(b, indexTag, bacnet.Unsigned(uint64(p.Index)))
	}
	return b
}

// rpm builds a ReadPropertyMultiple ComplexACK, expanding ALL, REQUIRED
// and OPTIONAL.
func (s *Server) rpm(d *Device, specs []bacnet.ReadAccessSpec, now time.Time) []byte {
	var b []byte
	for _, spec := range specs {
		o := d.object(spec.Object)
		id := spec.Object
		if o != nil {
			id = o.ID
		}
		b = appendContext(b, 0, bacnet.ObjectValue(id))
		b = bacnet.AppendOpening(b, 1)
		for _, p := range spec.Properties {
			refs := []bacnet.PropertyRef{p}
			if o != nil && (p.ID == bacnet.PropAll || p.ID == bacnet.PropRequired || p.ID == bacnet.PropOptional) {
				all, required := d.properties(o)
				list := all
				switch p.ID {
				case bacnet.PropRequired:
					list = required
				case bacnet.PropOptional:
					list = slices.DeleteFunc(slices.Clone(all), func(x bacnet.PropertyID) bool { return slices.Contains(required, x) })
				}
				refs = refs[:0]
				for _, x := range list {
					if x != bacnet.PropLogBuffer { // never in ALL (clause 15.7.3.1.2)
						refs = append(refs, bacnet.Prop(x))
					}
				}
			}
			for _, r := range refs {
				b = appendPropRef(b, 2, 3, r)
				var vals []bacnet.Value
				e := errUnknownObject
				if o != nil {
					vals, e = d.read(o, r, now)
				}
				if e != nil {
					b = bacnet.AppendOpening(b, 5)
					b = appendAll(b, bacnet.Enumerated(uint64(e.Class)), bacnet.Enumerated(uint64(e.Code)))
					b = bacnet.AppendClosing(b, 5)
					continue
				}
				b = appendAll(bacnet.AppendOpening(b, 4), vals...)
				b = bacnet.AppendClosing(b, 4)
			}
		}
		b = bacnet.AppendClosing(b, 1)
	}
	return b
}

// readRange builds a ReadRange ComplexACK of at most room octets.
func (s *Server) readRange(d *Device, o *Object, p bacnet.PropertyRef, r bacnet.Range, now time.Time, room int) []byte {
	l := o.Log
	first, last := l.window(now)
	// lo..hi are the sequence numbers that match, walked from start in
	// direction step until room runs out.
	lo, hi := first, last
	switch r.Kind {
	case bacnet.RangeByPosition, bacnet.RangeBySequence:
		ref := uint64(r.Ref)
		if r.Kind == bacnet.RangeByPosition {
			ref = first + ref - 1
		}
		if r.Count >= 0 {
			lo, hi = ref, ref+uint64(r.Count)-1
		} else {
			lo, hi = ref+1-uint64(-r.Count), ref
			if uint64(-r.Count) > ref {
				lo = 1
			}
		}
	case bacnet.RangeByTime:
		// Counting forwards: from the first record newer than the
		// reference time; backwards: from the last one older than it.
		atOrBefore := func(t time.Time) uint64 { // records logged at or before t
			if t.Before(l.Start) {
				return 0
			}
			return uint64(t.Sub(l.Start)/l.Interval) + 1
		}
		if r.Count >= 0 {
			lo = atOrBefore(r.Time) + 1
			hi = lo + uint64(r.Count) - 1
		} else {
			hi = atOrBefore(r.Time.Add(-time.Nanosecond))
			lo = hi + 1 - min(uint64(-r.Count), hi)
		}
	}
	lo, hi = max(lo, first), min(hi, last)
	backward := r.Count < 0
	var items []byte
	var n uint64
	more := false
	if lo <= hi {
		seqs := make([]uint64, 0, hi-lo+1)
		for q := lo; q <= hi; q++ {
			seqs = append(seqs, q)
		}
		if backward {
			slices.Reverse(seqs)
		}
		var kept []uint64
		size := 0
		for _, q := range seqs {
			rec := appendAll(nil, d.logRecord(l, q, s.cfg.Location)...)
			if size+len(rec) > room-40 {
				more = true
				break
			}
			size += len(rec)
			kept = append(kept, q)
		}
		slices.Sort(kept)
		for _, q := range kept {
			items = appendAll(items, d.logRecord(l, q, s.cfg.Location)...)
		}
		n = uint64(len(kept))
		if n > 0 {
			lo, hi = kept[0], kept[len(kept)-1]
		}
	}
	b := appendContext(nil, 0, bacnet.ObjectValue(o.ID))
	b = appendPropRef(b, 1, 2, p)
	flags := bacnet.NewBitString(n > 0 && lo == first, n > 0 && hi == last, more)
	b = appendContext(b, 3, bacnet.Bits(flags))
	b = appendContext(b, 4, bacnet.Unsigned(n))
	b = bacnet.AppendOpening(b, 5)
	b = append(b, items...)
	b = bacnet.AppendClosing(b, 5)
	if n > 0 && (r.Kind == bacnet.RangeBySequence || r.Kind == bacnet.RangeByTime) {
		b = appendContext(b, 6, bacnet.Unsigned(lo))
	}
	return b
}

// abort answers a with an Abort of reason, and counts it.
func (s *Server) abort(to netip.AddrPort, d *Device, a bacnet.APDU, reason uint8) {
	s.mu.Lock()
	s.aborts++
	s.mu.Unlock()
	s.reply(to, d, bacnet.APDU{Type: bacnet.PDUAbort, Server: true, InvokeID: a.InvokeID, Reason: reason})
}

// send answers a in one ComplexACK, or segmented when it does not fit
// and both sides segment; otherwise it aborts as a real device would.
func (s *Server) send(to netip.AddrPort, d *Device, a bacnet.APDU, payload []byte, maxResp int) {
	ack := bacnet.APDU{Type: bacnet.PDUComplexACK, InvokeID: a.InvokeID, Service: a.Service}
	if len(payload)+3 <= maxResp {
		ack.Payload = payload
		s.reply(to, d, ack)
		return
	}
	abort := func(reason uint8) { s.abort(to, d, a, reason) }
	if !d.Segmentation.CanTransmit() || !a.SegmentedResponseAccepted {
		abort(bacnet.AbortSegmentationNotSupported)
		return
	}
	chunk := maxResp - 5
	var segs [][]byte
	for len(payload) > 0 {
		n := min(chunk, len(payload))
		segs = append(segs, payload[:n])
		payload = payload[n:]
	}
	limit := d.MaxSegments
	if a.MaxSegments > 0 {
		limit = min(limit, a.MaxSegments)
	}
	if len(segs) > limit {
		abort(bacnet.AbortApduTooLong)
		return
	}
	key := ackKey{to, d.Instance, a.InvokeID}
	acks := make(chan bacnet.APDU, 64)
	s.mu.Lock()
	s.acks[key] = acks
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.acks, key)
		s.mu.Unlock()
	}()
	s.devMu.Lock()
	drop := d.DropSegment
	d.DropSegment = 0
	s.devMu.Unlock()
	segment := func(i int) {
		if drop > 0 && i == drop {
			drop = 0
			return
		}
		ack.Segmented, ack.MoreFollows = true, i < len(segs)-1
		ack.Sequence, ack.Window, ack.Payload = uint8(i), uint8(d.Window), segs[i]
		s.reply(to, d, ack)
	}
	next, window, tries := 0, 1, 0
	for next < len(segs) {
		for i := next; i < min(next+window, len(segs)); i++ {
			segment(i)
		}
		select {
		case <-s.done:
			return
		case <-time.After(s.cfg.SegmentTimeout):
			if tries++; tries > 3 {
				s.log.Debug("simulator gave up on a segmented answer", "to", to.String(), "invoke_id", a.InvokeID)
				return
			}
		case sa := <-acks:
			tries = 0
			window = max(int(sa.Window), 1)
			// Sequence numbers are modulo 256; the segment acknowledged is
			// the one nearest above the window's start.
			got := next - 1 + int(uint8(int(sa.Sequence)-(next-1)))
			if got >= len(segs) {
				got = next - 1
			}
			next = got + 1
		}
	}
}
