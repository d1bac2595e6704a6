package bacnet

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// Config configures a Client. Zero values mean the default given on each
// field.
type Config struct {
	// Local is the UDP address to bind, "IP:port": the control NIC's
	// address, e.g. "192.168.10.5:47808". Required: binding every NIC
	// would also listen on the uplink. The sockets are also bound to the
	// interface holding the address (SO_BINDTODEVICE), so nothing arriving
	// on another NIC reaches them and nothing they send leaves by one.
	Local string
	// Broadcast is where Who-Is and Who-Has go when no BBMD is set, e.g.
	// "192.168.10.255:47808", the control subnet's broadcast address.
	// There is no default: a limited broadcast (255.255.255.255) would
	// leave through whichever NIC holds the default route, which on a
	// two-NIC box is the uplink. Without it, broadcasts fail.
	Broadcast string
	// BBMD, if set, is a BACnet Broadcast Management Device the client
	// registers with as a foreign device; broadcasts then go to it as
	// Distribute-Broadcast-To-Network, reaching other subnets.
	BBMD string
	// ForeignTTL is the registration's time-to-live. Default 5m.
	ForeignTTL time.Duration
	// Timeout is how long one attempt of a confirmed request waits for
	// its answer (and for each segment). Default 3s.
	Timeout time.Duration
	// Retries is how often a request that timed out is sent again.
	// Default 2; negative means none.
	Retries int
	// MaxAPDU is the largest APDU we accept (50..1476). Default 1476.
	MaxAPDU int
	// MaxSegments is how many segments of an answer we accept; 0 means
	// the default 64, negative means no segmented answers.
	MaxSegments int
	// Window is the segment window we grant (1..127). Default 8.
	Window int
	// PerDevice is how many confirmed requests may be outstanding to one
	// device at a time. Default 1: small controllers choke on more.
	PerDevice int
	// PerNetwork is how many confirmed requests may be outstanding to all
	// devices of one remote (routed) network together. Default 2: MS/TP
	// trunks run at 38.4 kbit/s.
	PerNetwork int
	// Logger receives the client's logs; nil discards them.
	Logger *slog.Logger
}

// Address is where a device is reached: a BACnet/IP address and, for a
// device behind a router, its network number and MAC address on it (then
// IP is the router's address).
type Address struct {
	IP  netip.AddrPort
	Net uint16
	MAC []byte
}

// Routed reports whether the address is on a remote network.
func (a Address) Routed() bool { return a.Net != 0 }

// String renders "IP:port" or "IP:port/net:mac-hex".
func (a Address) String() string {
	if !a.Routed() {
		return a.IP.String()
	}
	return fmt.Sprintf("%s/%d:%s", a.IP, a.Net, hex.EncodeToString(a.MAC))
}

func (a Address) key() string { return a.String() }

// ParseAddress parses what Address.String writes; the port defaults to
// 47808.
func ParseAddress(s string) (Address, error) {
	ipPart, route, routed := strings.Cut(strings.TrimSpace(s), "/")
	var a Address
	ap, err := parseAddrPort(ipPart)
	if err != nil {
		return Address{}, err
	}
	a.IP = ap
	if routed {
		netPart, macPart, ok := strings.Cut(route, ":")
		n, err := strconv.ParseUint(netPart, 10, 16)
		if !ok || err != nil || n == 0 || n == GlobalNetwork {
			return Address{}, fmt.Errorf("address %q: want IP:port/NET:MAC with NET in 1..65534 and MAC in hex", s)
		}
		mac, err := hex.DecodeString(macPart)
		if err != nil || len(mac) == 0 || len(mac) > 7 {
			return Address{}, fmt.Errorf("address %q: MAC %q must be 1 to 7 octets of hex", s, macPart)
		}
		a.Net, a.MAC = uint16(n), mac
	}
	return a, nil
}

func parseAddrPort(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: want IPv4[:port]", s)
	}
	return netip.AddrPortFrom(ip.Unmap(), 47808), nil
}

// Device is a device as its I-Am described it, and how to treat it.
type Device struct {
	Instance     uint32
	Addr         Address
	MaxAPDU      int
	Segmentation Segmentation
	// MaxSegments is the device's max-segments-accepted property, 0 when
	// unknown (I-Am does not carry it, and older devices lack it). Devices
	// seldom send more segments than they accept, so a planner sizes
	// answers to it.
	MaxSegments int
	Vendor      uint32
	// Timeout, Retries and MaxOutstanding override the client's Timeout,
	// Retries and PerDevice for this device when non-zero (Retries < 0:
	// none), so devices sharing one socket can be treated differently.
	Timeout        time.Duration
	Retries        int
	MaxOutstanding int
}

func (d Device) timeout(c *Client) time.Duration {
	if d.Timeout > 0 {
		return d.Timeout
	}
	return c.cfg.Timeout
}

func (d Device) retries(c *Client) int {
	switch {
	case d.Retries < 0:
		return 0
	case d.Retries > 0:
		return d.Retries
	}
	return c.cfg.Retries
}

// Stats counts what a client sent and received.
type Stats struct {
	Requests, Retries, Timeouts uint64
	SegmentsReceived            uint64
	BytesSent, BytesReceived    uint64
	Refused                     uint64
	// Aborts counts transactions the device aborted (most often an
	// answer too long for it).
	Aborts uint64
}

// Client is a BACnet/IP client that only reads. It is safe for concurrent
// use. Its one send point passes every datagram through the Guard.
type Client struct {
	cfg  Config
	log  *slog.Logger
	conn *net.UDPConn
	// bconns are receive-only, on the broadcast addresses; see
	// listenBroadcast.
	bconns []*net.UDPConn
	// ifname is the NIC holding the local address, which both sockets are
	// bound to; "" when the local address is unspecified.
	ifname string
	guard  *Guard
	bcast  netip.AddrPort
	bbmd   netip.AddrPort

	mu        sync.Mutex
	peers     map[string]*peer
	networks  map[uint16]chan struct{}
	tx        map[txKey]chan Message
	listeners map[int]chan received
	nextL     int
	bvlcRes   chan uint16
	closed    bool

	done chan struct{}
	wg   sync.WaitGroup

	requests, retries, timeouts, segments, sent, recvd, aborts atomic.Uint64
}

type txKey struct {
	peer string
	id   uint8
}

// peer is per-device transaction state.
type peer struct {
	sem  chan struct{}
	next uint8
	used [256]bool
}

// received is an unconfirmed message and where it came from.
type received struct {
	from Address
	apdu APDU
}

// ErrClosed is returned by a Client's methods after Close.
var ErrClosed = errors.New("bacnet client closed")

// ErrTimeout means a device did not answer within the timeout and retries.
var ErrTimeout = errors.New("bacnet device did not answer")

// New opens a client: it binds the local address and, with a BBMD, registers
// as a foreign device.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Local == "" {
		return nil, errors.New("bacnet client: the local address is required: the control NIC's IP and port, e.g. 192.168.10.5:47808 (binding every NIC would listen on the uplink too)")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.Retries == 0 {
		cfg.Retries = 2
	} else if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	if cfg.MaxAPDU == 0 {
		cfg.MaxAPDU = 1476
	}
	if cfg.MaxAPDU < 50 || cfg.MaxAPDU > 1476 {
		return nil, fmt.Errorf("bacnet client: max apdu %d out of 50..1476", cfg.MaxAPDU)
	}
	if cfg.MaxSegments == 0 {
		cfg.MaxSegments = 64
	} else if cfg.MaxSegments < 0 {
		cfg.MaxSegments = 0
	}
	if cfg.Window == 0 {
		cfg.Window = 8
	}
	if cfg.Window < 1 || cfg.Window > 127 {
		return nil, fmt.Errorf("bacnet client: window %d out of 1..127", cfg.Window)
	}
	if cfg.PerDevice <= 0 {
		cfg.PerDevice = 1
	}
	if cfg.PerDevice > 255 {
		cfg.PerDevice = 255
	}
	if cfg.PerNetwork <= 0 {
		cfg.PerNetwork = 2
	}
	if cfg.ForeignTTL <= 0 {
		cfg.ForeignTTL = 5 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		cfg: cfg, log: log,
		peers: map[string]*peer{}, networks: map[uint16]chan struct{}{},
		tx: map[txKey]chan Message{}, listeners: map[int]chan received{},
		bvlcRes: make(chan uint16, 1), done: make(chan struct{}),
	}
	var err error
	if cfg.Broadcast != "" {
		if c.bcast, err = parseAddrPort(cfg.Broadcast); err != nil {
			return nil, fmt.Errorf("bacnet client: broadcast: %w", err)
		}
	}
	if cfg.BBMD != "" {
		if c.bbmd, err = parseAddrPort(cfg.BBMD); err != nil {
			return nil, fmt.Errorf("bacnet client: bbmd: %w", err)
		}
	}
	c.guard = NewGuard(log, cfg.BBMD != "")
	local, err := parseAddrPort(cfg.Local)
	if err != nil {
		return nil, fmt.Errorf("bacnet client: local: %w", err)
	}
	// The sockets are bound to the NIC that holds the local address, not
	// only to the address: Linux would otherwise deliver a datagram for
	// that address arriving on the uplink NIC too (see pkg/nicbind).
	ifname, err := nicbind.Owner(local.Addr())
	if err != nil {
		return nil, fmt.Errorf("bacnet client: local %s: %w", local, err)
	}
	c.ifname = ifname
	// SO_BROADCAST: Linux refuses to send to a broadcast address (the
	// subnet's, or 127.255.255.255 in tests) without it.
	lc := net.ListenConfig{Control: nicbind.Control(ifname, func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
		}); err != nil {
			return err
		}
		return serr
	})}
	pc, err := lc.ListenPacket(ctx, "udp4", local.String())
	if err != nil {
		return nil, fmt.Errorf("bacnet client: binding %s (is another BACnet application using the port? set a different local address): %w", local, err)
	}
	c.conn = pc.(*net.UDPConn)
	c.wg.Add(1)
	go c.readLoop(c.conn)
	// Many devices answer Who-Is with a broadcast I-Am, which a socket
	// bound to one unicast address never sees: receive-only sockets on the
	// subnet's broadcast address and on the limited broadcast address hear
	// them.
	bcs, err := c.listenBroadcast(ctx, local)
	if err != nil {
		c.Close()
		return nil, err
	}
	for _, bc := range bcs {
		c.bconns = append(c.bconns, bc)
		c.wg.Add(1)
		go c.readLoop(bc)
	}
	if c.bbmd.IsValid() {
		// A BBMD that refuses us is a configuration error; one that does
		// not answer yet may be rebooting, and is tried again soon.
		err := c.register(ctx)
		if err != nil && !errors.Is(err, ErrTimeout) {
			c.Close()
			return nil, err
		}
		if err != nil {
			c.log.Warn("bbmd did not answer the foreign device registration; trying again", "bbmd", c.bbmd.String(), "err", err)
		}
		c.wg.Add(1)
		go c.reregister(err == nil)
	}
	return c, nil
}

// Interface is the NIC the client's sockets are bound to; "" when the local
// address is unspecified (every NIC).
func (c *Client) Interface() string { return c.ifname }

// LocalAddr is the bound address.
func (c *Client) LocalAddr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Guard returns the client's read-only guard.
func (c *Client) Guard() *Guard { return c.guard }

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Requests: c.requests.Load(), Retries: c.retries.Load(), Timeouts: c.timeouts.Load(),
		SegmentsReceived: c.segments.Load(), BytesSent: c.sent.Load(), BytesReceived: c.recvd.Load(),
		Refused: c.guard.Refused(), Aborts: c.aborts.Load(),
	}
}

// Close releases the socket. It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	c.mu.Unlock()
	err := c.conn.Close()
	for _, bc := range c.bconns {
		bc.Close()
	}
	c.wg.Wait()
	return err
}

// send is the one point where bytes leave the client: the guard checks
// every datagram here, whoever built it.
func (c *Client) send(to netip.AddrPort, frame []byte) error {
	if err := c.guard.Check(frame); err != nil {
		return err
	}
	if _, err := c.conn.WriteToUDPAddrPort(frame, to); err != nil {
		return fmt.Errorf("sending to %s: %w", to, err)
	}
	c.sent.Add(uint64(len(frame)))
	return nil
}

// listenBroadcast binds the receive-only broadcast sockets, on local's
// port: on the configured broadcast address when it is the directed
// broadcast of the interface holding local, and on the limited broadcast
// 255.255.255.255, which many devices (and BACnet stacks by default) send
// their I-Am to, when local is on a NIC other than loopback. Both are bound
// to that NIC, so they hear broadcasts of the control subnet only; they
// never send. None when local is every interface.
func (c *Client) listenBroadcast(ctx context.Context, local netip.AddrPort) ([]*net.UDPConn, error) {
	if local.Addr().IsUnspecified() {
		return nil, nil
	}
	var addrs []netip.AddrPort
	if c.bcast.IsValid() && isBroadcastOf(c.bcast.Addr(), local.Addr()) {
		addrs = append(addrs, c.bcast)
	}
	if c.ifname != "" && !local.Addr().IsLoopback() {
		if lim := netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), local.Port()); lim != c.bcast {
			addrs = append(addrs, lim)
		}
	}
	// SO_REUSEADDR: other BACnet software on the box may listen there too.
	lc := net.ListenConfig{Control: nicbind.Control(c.ifname, func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		}); err != nil {
			return err
		}
		return serr
	})}
	var out []*net.UDPConn
	for _, a := range addrs {
		pc, err := lc.ListenPacket(ctx, "udp4", a.String())
		if err != nil {
			for _, bc := range out {
				bc.Close()
			}
			return nil, fmt.Errorf("bacnet client: listening for broadcast answers on %s: %w", a, err)
		}
		out = append(out, pc.(*net.UDPConn))
	}
	return out, nil
}

// isBroadcastOf reports whether b is the directed broadcast address of the
// interface network that ip belongs to.
func isBroadcastOf(b, ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.To4() == nil {
			continue
		}
		pfx, err := netip.ParsePrefix(n.String())
		if err != nil || !pfx.Contains(ip) || pfx.Bits() >= 31 {
			continue
		}
		base := pfx.Masked().Addr().As4()
		mask := uint32(1)<<(32-pfx.Bits()) - 1
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]) | mask
		if netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}) == b {
			return true
		}
	}
	return false
}

// readLoop receives on conn (the client's socket, or the receive-only
// broadcast socket) until Close.
func (c *Client) readLoop(conn *net.UDPConn) {
	defer c.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			select {
			case <-c.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Debug("bacnet read failed", "err", err)
			continue
		}
		c.recvd.Add(uint64(n))
		frame := append([]byte(nil), buf[:n]...)
		m, err := DecodeMessage(frame)
		if err != nil {
			c.log.Debug("dropping undecodable datagram", "from", from.String(), "err", err)
			continue
		}
		c.dispatch(netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), m)
	}
}

func (c *Client) dispatch(from netip.AddrPort, m Message) {
	if m.BVLC.Function == BVLCResult {
		// Only the BBMD answers our registration: a result from anyone
		// else (a stray device, a spoofer) must neither refuse nor accept
		// it for the BBMD.
		if !c.bbmd.IsValid() || from != c.bbmd {
			c.log.Debug("dropping a bvlc-result not from the bbmd", "from", from.String(), "result", m.BVLC.Result)
			return
		}
		select {
		case c.bvlcRes <- m.BVLC.Result:
		default:
		}
		return
	}
	if !m.HasAPDU {
		return
	}
	src := Address{IP: from}
	if m.BVLC.Function == BVLCForwardedNPDU {
		src.IP = m.BVLC.Origin
	}
	if m.NPDU.HasSource {
		src.Net, src.MAC = m.NPDU.SNET, m.NPDU.SADR
	}
	switch m.APDU.Type {
	case PDUUnconfirmedRequest:
		c.mu.Lock()
		for _, ch := range c.listeners {
			select {
			case ch <- received{from: src, apdu: m.APDU}:
			default: // a slow listener loses announcements, never blocks the loop
			}
		}
		c.mu.Unlock()
	case PDUSimpleACK, PDUComplexACK, PDUError, PDUReject, PDUAbort:
		c.mu.Lock()
		ch := c.tx[txKey{src.key(), m.APDU.InvokeID}]
		c.mu.Unlock()
		if ch == nil {
			c.log.Debug("dropping answer to no outstanding request", "from", src.String(), "invoke_id", m.APDU.InvokeID)
			return
		}
		select {
		case ch <- m:
		default:
		}
	}
}

// register registers with the BBMD as a foreign device.
func (c *Client) register(ctx context.Context) error {
	ttl := uint16(min(c.cfg.ForeignTTL/time.Second, 65535))
	frame := AppendBVLC(nil, BVLCRegisterForeignDevice, binary.BigEndian.AppendUint16(nil, ttl))
	for attempt := 0; attempt <= c.cfg.Retries; attempt++ {
		if err := c.send(c.bbmd, frame); err != nil {
			return err
		}
		t := time.NewTimer(c.cfg.Timeout)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("registering with bbmd %s: %w", c.bbmd, ctx.Err())
		case <-c.done:
			t.Stop()
			return ErrClosed
		case res := <-c.bvlcRes:
			t.Stop()
			if res != 0 {
				return fmt.Errorf("registering with bbmd %s: it answered result 0x%04x (is foreign device registration enabled there?)", c.bbmd, res)
			}
			return nil
		case <-t.C:
		}
	}
	return fmt.Errorf("registering with bbmd %s: %w", c.bbmd, ErrTimeout)
}

func (c *Client) reregister(ok bool) {
	defer c.wg.Done()
	for {
		// Renew at half the time-to-live; after a failure, every 10s.
		wait := c.cfg.ForeignTTL / 2
		if !ok {
			wait = min(wait, 10*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-c.done:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout*time.Duration(c.cfg.Retries+1))
		err := c.register(ctx)
		cancel()
		switch {
		case errors.Is(err, ErrClosed):
			return
		case err != nil:
			c.log.Warn("foreign device registration failed", "bbmd", c.bbmd.String(), "err", err)
		case !ok:
			c.log.Info("registered with the bbmd as a foreign device", "bbmd", c.bbmd.String())
		}
		ok = err == nil
	}
}

// broadcastTo returns the BVLC function and address a broadcast goes to.
func (c *Client) broadcastTo() (uint8, netip.AddrPort, error) {
	if c.bbmd.IsValid() {
		return BVLCDistributeBroadcast, c.bbmd, nil
	}
	if c.bcast.IsValid() {
		return BVLCOriginalBroadcast, c.bcast, nil
	}
	return 0, netip.AddrPort{}, errors.New("no broadcast address configured: set the control subnet's broadcast address (or a bbmd), or give the device's address")
}

// unconfirmed sends an unconfirmed request, to dst or (dst nil) as a
// broadcast on network net (0: the local network, GlobalNetwork: all).
func (c *Client) unconfirmed(dst *Address, network uint16, service uint8, payload []byte) error {
	n := NPDU{}
	fn, to := BVLCOriginalUnicast, netip.AddrPort{}
	if dst != nil {
		to = dst.IP
		switch {
		case dst.Routed():
			n.HasDest, n.DNET, n.DADR = true, dst.Net, dst.MAC
		case network != 0:
			// Asked of one router: it broadcasts on the network(s) behind it.
			n.HasDest, n.DNET = true, network
		}
	} else {
		var err error
		if fn, to, err = c.broadcastTo(); err != nil {
			return err
		}
		if network != 0 {
			n.HasDest, n.DNET = true, network
		}
	}
	return c.send(to, EncodeFrame(fn, n, APDU{Type: PDUUnconfirmedRequest, Service: service, Payload: payload}))
}

func (c *Client) listen() (int, chan received) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextL++
	ch := make(chan received, 1024)
	c.listeners[c.nextL] = ch
	return c.nextL, ch
}

func (c *Client) unlisten(id int) {
	c.mu.Lock()
	delete(c.listeners, id)
	c.mu.Unlock()
}

// WhoIs asks which devices with instances low..high (low < 0: all) are
// there and collects the I-Am answers for wait, or until ctx is done. To
// is a device or router to ask directly; nil broadcasts on network
// (0: local, GlobalNetwork: every network, N: remote network N). With a
// single instance asked, it returns as soon as that device answered.
func (c *Client) WhoIs(ctx context.Context, to *Address, network uint16, low, high int, wait time.Duration) ([]Device, error) {
	seen := map[uint32]bool{}
	var out []Device
	err := c.ask(ctx, to, network, ServiceWhoIs, AppendWhoIs(nil, low, high), ServiceIAm, wait, func(r received) bool {
		iam, err := DecodeIAm(r.apdu.Payload)
		if err != nil {
			c.log.Debug("dropping malformed i-am", "from", r.from.String(), "err", err)
			return false
		}
		inst := iam.Device.Instance
		if low >= 0 && (int(inst) < low || int(inst) > high) || seen[inst] {
			return false
		}
		seen[inst] = true
		// Some stacks announce more than the 1476 octets BACnet/IP carries.
		out = append(out, Device{Instance: inst, Addr: r.from, MaxAPDU: min(iam.MaxAPDU, 1476), Segmentation: iam.Segmentation, Vendor: iam.Vendor})
		return low >= 0 && low == high
	})
	if err != nil {
		return out, fmt.Errorf("who-is: %w", err)
	}
	return out, nil
}

// WhoHas asks which devices hold the object obj (or, name not empty, the
// object named name) and collects the I-Have answers for wait.
func (c *Client) WhoHas(ctx context.Context, network uint16, low, high int, obj ObjectID, name string, wait time.Duration) ([]IHave, error) {
	payload, err := AppendWhoHas(nil, low, high, obj, name)
	if err != nil {
		return nil, fmt.Errorf("who-has: %w", err)
	}
	var out []IHave
	err = c.ask(ctx, nil, network, ServiceWhoHas, payload, ServiceIHave, wait, func(r received) bool {
		if ih, err := DecodeIHave(r.apdu.Payload); err == nil {
			out = append(out, ih)
		}
		return false
	})
	if err != nil {
		return out, fmt.Errorf("who-has: %w", err)
	}
	return out, nil
}

// ask sends an unconfirmed request and hands each unconfirmed answer of
// service answer to take, until wait elapses or take returns true.
func (c *Client) ask(ctx context.Context, to *Address, network uint16, service uint8, payload []byte, answer uint8, wait time.Duration, take func(received) bool) error {
	id, ch := c.listen()
	defer c.unlisten(id)
	if err := c.unconfirmed(to, network, service, payload); err != nil {
		return err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return ErrClosed
		case <-t.C:
			return nil
		case r := <-ch:
			if r.apdu.Service == answer && take(r) {
				return nil
			}
		}
	}
}

// acquire takes a slot of the device's and its network's outstanding
// request limits and an invoke id; release gives them back.
func (c *Client) acquire(ctx context.Context, dev Device) (uint8, chan Message, func(), error) {
	dst := dev.Addr
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, nil, nil, ErrClosed
	}
	p := c.peers[dst.key()]
	if p == nil {
		n := c.cfg.PerDevice
		if dev.MaxOutstanding > 0 {
			n = min(dev.MaxOutstanding, 255)
		}
		p = &peer{sem: make(chan struct{}, n)}
		c.peers[dst.key()] = p
	}
	var nsem chan struct{}
	if dst.Routed() {
		nsem = c.networks[dst.Net]
		if nsem == nil {
			nsem = make(chan struct{}, c.cfg.PerNetwork)
			c.networks[dst.Net] = nsem
		}
	}
	c.mu.Unlock()
	take := func(sem chan struct{}) error {
		select {
		case sem <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return ErrClosed
		}
	}
	if err := take(p.sem); err != nil {
		return 0, nil, nil, err
	}
	if nsem != nil {
		if err := take(nsem); err != nil {
			<-p.sem
			return 0, nil, nil, err
		}
	}
	c.mu.Lock()
	// PerDevice <= 255 slots guarantee a free id.
	id := p.next
	for p.used[id] {
		id++
	}
	p.used[id] = true
	p.next = id + 1
	ch := make(chan Message, 16)
	key := txKey{dst.key(), id}
	c.tx[key] = ch
	c.mu.Unlock()
	release := func() {
		c.mu.Lock()
		delete(c.tx, key)
		p.used[id] = false
		c.mu.Unlock()
		if nsem != nil {
			<-nsem
		}
		<-p.sem
	}
	return id, ch, release, nil
}

// confirmed sends a confirmed request to dev and returns the service data
// of its ComplexACK (nil for a SimpleACK). The request must fit the
// device's max APDU: this package never segments requests.
func (c *Client) confirmed(ctx context.Context, dev Device, service uint8, payload []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if dev.MaxAPDU == 0 {
		dev.MaxAPDU = 480
	}
	if len(payload)+4 > dev.MaxAPDU {
		return nil, fmt.Errorf("request of %d octets exceeds device %d's max apdu %d: read fewer properties at once", len(payload)+4, dev.Instance, dev.MaxAPDU)
	}
	id, ch, release, err := c.acquire(ctx, dev)
	if err != nil {
		return nil, err
	}
	defer release()
	n := NPDU{ExpectingReply: true}
	if dev.Addr.Routed() {
		n.HasDest, n.DNET, n.DADR = true, dev.Addr.Net, dev.Addr.MAC
	}
	a := APDU{Type: PDUConfirmedRequest, SegmentedResponseAccepted: c.cfg.MaxSegments > 0,
		MaxSegments: c.cfg.MaxSegments, MaxAPDU: c.cfg.MaxAPDU, InvokeID: id, Service: service, Payload: payload}
	frame := EncodeFrame(BVLCOriginalUnicast, n, a)
	c.requests.Add(1)
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			c.retries.Add(1)
		}
		if err := c.send(dev.Addr.IP, frame); err != nil {
			return nil, err
		}
		data, err := c.await(ctx, dev, id, service, ch)
		if !errors.Is(err, ErrTimeout) || attempt >= dev.retries(c) {
			if errors.Is(err, ErrTimeout) {
				c.timeouts.Add(1)
			}
			return data, err
		}
	}
}

// await waits for the answer to one attempt, receiving segments.
func (c *Client) await(ctx context.Context, dev Device, id, service uint8, ch chan Message) ([]byte, error) {
	t := time.NewTimer(dev.timeout(c))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
			return nil, ErrClosed
		case <-t.C:
			return nil, ErrTimeout
		case m := <-ch:
			a := m.APDU
			switch a.Type {
			case PDUSimpleACK:
				return nil, nil
			case PDUComplexACK:
				if a.Service != service {
					return nil, fmt.Errorf("device answered service %d to a request for service %d", a.Service, service)
				}
				if !a.Segmented {
					return a.Payload, nil
				}
				if a.Sequence != 0 {
					continue // a late segment of an earlier attempt
				}
				return c.segmented(ctx, dev, a, ch)
			case PDUError:
				e, err := DecodeError(a.Payload)
				if err != nil {
					return nil, err
				}
				return nil, e
			case PDUReject:
				return nil, &RejectError{Reason: a.Reason}
			case PDUAbort:
				c.aborts.Add(1)
				return nil, &AbortError{Reason: a.Reason, Server: a.Server}
			}
		}
	}
}

// segmented receives the rest of a segmented ComplexACK whose first
// segment is first, acknowledging each window (clause 5.4.5.3).
func (c *Client) segmented(ctx context.Context, dev Device, first APDU, ch chan Message) ([]byte, error) {
	window := int(first.Window)
	if window < 1 || window > c.cfg.Window {
		window = c.cfg.Window
	}
	c.segments.Add(1)
	buf := append([]byte(nil), first.Payload...)
	ack := func(seq uint8, nak bool) error {
		n := NPDU{}
		if dev.Addr.Routed() {
			n.HasDest, n.DNET, n.DADR = true, dev.Addr.Net, dev.Addr.MAC
		}
		return c.send(dev.Addr.IP, EncodeFrame(BVLCOriginalUnicast, n, APDU{Type: PDUSegmentACK, NAK: nak,
			InvokeID: first.InvokeID, Sequence: seq, Window: uint8(window)}))
	}
	if err := ack(0, false); err != nil {
		return nil, err
	}
	if !first.MoreFollows {
		return buf, nil
	}
	last, initial, count := uint8(0), uint8(0), 1
	limit := c.cfg.MaxAPDU * max(c.cfg.MaxSegments, 1)
	t := time.NewTimer(dev.timeout(c))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
			return nil, ErrClosed
		case <-t.C:
			return nil, fmt.Errorf("segment %d of a segmented answer: %w", last+1, ErrTimeout)
		case m := <-ch:
			a := m.APDU
			switch a.Type {
			case PDUAbort:
				c.aborts.Add(1)
				return nil, &AbortError{Reason: a.Reason, Server: a.Server}
			case PDUComplexACK:
			default:
				continue
			}
			if !a.Segmented {
				continue
			}
			if a.Sequence != last+1 {
				// A gap or a repeat: ask again from the last good one.
				initial = last
				if err := ack(last, true); err != nil {
					return nil, err
				}
				continue
			}
			last++
			count++
			c.segments.Add(1)
			if count > max(c.cfg.MaxSegments, 1) || len(buf)+len(a.Payload) > limit {
				return nil, fmt.Errorf("segmented answer exceeds the %d segments of %d octets we accept", c.cfg.MaxSegments, c.cfg.MaxAPDU)
			}
			buf = append(buf, a.Payload...)
			t.Reset(dev.timeout(c))
			if !a.MoreFollows {
				return buf, ack(last, false)
			}
			if last == initial+uint8(window) {
				initial = last
				if err := ack(last, false); err != nil {
					return nil, err
				}
			}
		}
	}
}

// ReadProperty reads one property of obj.
func (c *Client) ReadProperty(ctx context.Context, dev Device, obj ObjectID, p PropertyRef) ([]Value, error) {
	req, err := AppendReadProperty(nil, obj, p)
	if err != nil {
		return nil, fmt.Errorf("read-property %v %v: %w", obj, p.ID, err)
	}
	data, err := c.confirmed(ctx, dev, ServiceReadProperty, req)
	if err != nil {
		return nil, fmt.Errorf("read-property %v %v of device %d: %w", obj, p.ID, dev.Instance, err)
	}
	gotObj, gotP, vals, err := DecodeReadPropertyACK(data)
	if err != nil {
		return nil, fmt.Errorf("read-property %v %v of device %d: %w", obj, p.ID, dev.Instance, err)
	}
	if gotObj != obj || gotP.ID != p.ID {
		return nil, fmt.Errorf("read-property %v %v of device %d: answer is for %v %v", obj, p.ID, dev.Instance, gotObj, gotP.ID)
	}
	return vals, nil
}

// ReadPropertyMultiple reads several properties of several objects in one
// request. ALL, REQUIRED and OPTIONAL are expanded by the device.
func (c *Client) ReadPropertyMultiple(ctx context.Context, dev Device, specs []ReadAccessSpec) ([]ObjectResult, error) {
	req, err := AppendReadPropertyMultiple(nil, specs)
	if err != nil {
		return nil, fmt.Errorf("read-property-multiple: %w", err)
	}
	data, err := c.confirmed(ctx, dev, ServiceReadPropertyMultiple, req)
	if err != nil {
		return nil, fmt.Errorf("read-property-multiple of %d objects of device %d: %w", len(specs), dev.Instance, err)
	}
	res, err := DecodeReadPropertyMultipleACK(data)
	if err != nil {
		return nil, fmt.Errorf("read-property-multiple of device %d: %w", dev.Instance, err)
	}
	return res, nil
}

// ReadRange reads part of a list property, such as a trend log's
// log-buffer.
func (c *Client) ReadRange(ctx context.Context, dev Device, obj ObjectID, p PropertyRef, r Range) (RangeResult, error) {
	req, err := AppendReadRange(nil, obj, p, r)
	if err != nil {
		return RangeResult{}, fmt.Errorf("read-range %v: %w", obj, err)
	}
	data, err := c.confirmed(ctx, dev, ServiceReadRange, req)
	if err != nil {
		return RangeResult{}, fmt.Errorf("read-range %v %v of device %d: %w", obj, p.ID, dev.Instance, err)
	}
	res, err := DecodeReadRangeACK(data)
	if err != nil {
		return RangeResult{}, fmt.Errorf("read-range %v of device %d: %w", obj, dev.Instance, err)
	}
	return res, nil
}

// Timeout is the configured timeout of one request attempt.
func (c *Client) Timeout() time.Duration { return c.cfg.Timeout }
