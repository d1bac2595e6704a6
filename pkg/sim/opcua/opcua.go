// Package opcua is an OPC UA server simulating a small building, for
// `make demo` and the OPC UA driver's in-process tests. It is built on
// gopcua's server package and listens on loopback only.
//
// The address space under Objects/Building holds two air handlers, a
// chiller plant and a few zones, each variable a Double (or Boolean) whose
// value changes with time and that carries an EngineeringUnits property.
// Plant/ChilledWaterSupplyTemp keeps history (HistoryRead of raw values, one
// a second). The server enforces MaxNodesPerRead with BadTooManyOperations,
// as strict servers do, and records every service request it receives so a
// test can assert that a client only ever read.
package opcua

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/server/attrs"
	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uasc"
)

// NamespaceURI is the simulator's namespace.
const NamespaceURI = "urn:sightglass-bms:sim:building"

// HistoryNode is the node id (without namespace index) of the variable
// that keeps history.
const HistoryNode = "Plant.ChilledWaterSupplyTemp"

// Options configure a simulator. Zero values mean the defaults given.
type Options struct {
	// Host is the loopback address to listen on; default 127.0.0.1. Any
	// address outside 127.0.0.0/8 is refused.
	Host string
	// Port is the TCP port; 0 picks a free one.
	Port int
	// MaxNodesPerRead is the server's OperationLimits value, enforced;
	// default 32.
	MaxNodesPerRead uint32
	// Secure adds Basic256Sha256, Aes128_Sha256_RsaOaep and
	// Aes256_Sha256_RsaPss endpoints (Sign and SignAndEncrypt) beside None,
	// with Key as the server's key (generated when nil).
	Secure bool
	Key    *rsa.PrivateKey
	// Zones is the number of zones, each with a temperature and a setpoint;
	// default 4. The 10,000-node benchmark sets it high.
	Zones int
	// Epoch is when the simulated building's clock started: values and
	// history are functions of the time since. Default now; a restarted
	// simulator given the same Epoch keeps continuous history, as a real
	// historian would.
	Epoch time.Time
	// SteadySource makes the zones' setpoints, whose values never change,
	// report the Epoch as their source timestamp, as many servers keep a
	// steady node's SourceTimestamp at the time its value last changed.
	// By default every value carries the time it was read.
	SteadySource bool
	// HistoryInterval is the spacing of HistoryNode's logged values;
	// default one second. A short one makes a long history of many pages.
	HistoryInterval time.Duration
	// HistoryDelay is how long each HistoryRead takes to answer, as a
	// slow historian does; default none.
	HistoryDelay time.Duration
	// HistoryFault, when set, is asked before each HistoryRead is
	// answered, with its number (1 for the first): a bad status it
	// returns is the request's service fault instead of the values (as a
	// historian that times out or is busy answers), and a delay it
	// returns is waited first, beyond HistoryDelay (to outlast a client's
	// deadline). The values such a request would have held are not lost:
	// the next request for the same time range returns them.
	HistoryFault func(call int) (time.Duration, ua.StatusCode)
	// Logger receives the server's own log lines at debug level; nil
	// discards them.
	Logger *slog.Logger
}

// Server is a running simulator.
type Server struct {
	// URL is the endpoint, opc.tcp://127.0.0.1:port.
	URL string
	// NS is the index of the simulator's namespace.
	NS uint16
	// Cert is the server's certificate (DER) when Secure.
	Cert []byte

	srv     *server.Server
	backend string // gopcua's server's internal address
	// front is the public listener; frontDone counts its goroutines.
	front     net.Listener
	frontDone sync.WaitGroup
	cancel    context.CancelFunc
	ticked    chan struct{} // closed when tick returns
	nodes     *server.NodeNameSpace
	start     time.Time
	maxRead   uint32
	opts      Options

	mu       sync.Mutex
	services []string
	removed  map[string]bool
	// histCalls counts the HistoryRead requests, for HistoryFault.
	histCalls int
	vars      []string // node ids of the building's variables
	closed    bool
	conns     map[net.Conn]bool // both ends of every relayed connection
	dialed    int               // connections the front opened to gopcua's server
	gopcua    gopcuaCounts
}

// Start starts a simulator; Close stops it. ctx bounds only the start.
//
// The simulator listens itself, on Host:Port (a free port when 0, taken at
// once, so no other process can take it while the server is built), and
// relays each connection to gopcua's server on a second, internal port:
// gopcua binds the port it is given and cannot report one the kernel
// chose, and its Close leaves the clients' connections open, where a
// restarted server drops them. Close here drops every connection.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if ip := net.ParseIP(o.Host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("opcua sim: host %q: the simulator listens on loopback (127.0.0.0/8) only", o.Host)
	}
	if o.MaxNodesPerRead == 0 {
		o.MaxNodesPerRead = 32
	}
	if o.Zones == 0 {
		o.Zones = 4
	}
	if o.Epoch.IsZero() {
		o.Epoch = time.Now()
	}
	if o.HistoryInterval <= 0 {
		o.HistoryInterval = time.Second
	}
	// Bound before the server is built (a key made, server.New parsing the
	// standard address space: seconds under -race on a busy machine): a restarted
	// simulator takes its port back at once, and clients that connect
	// meanwhile wait in the backlog until the server answers.
	front, err := net.Listen("tcp", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)))
	if err != nil {
		return nil, fmt.Errorf("opcua sim: listening on %s: %w", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), err)
	}
	o.Port = front.Addr().(*net.TCPAddr).Port
	if o.Secure && o.Key == nil {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			front.Close()
			return nil, fmt.Errorf("opcua sim: generating the server key: %w", err)
		}
		o.Key = key
	}
	// The internal port is reserved and held while the server is built,
	// and let go just before gopcua binds it; should another process take
	// it in that instant, another one is tried.
	for attempt := 1; ; attempt++ {
		l, err := net.Listen("tcp", net.JoinHostPort(o.Host, "0"))
		if err != nil {
			front.Close()
			return nil, fmt.Errorf("opcua sim: finding a free internal port: %w", err)
		}
		s, err := start(ctx, o, l)
		if err == nil {
			s.front = front
			s.frontDone.Add(1)
			go s.serveFront()
			return s, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == maxPortAttempts {
			front.Close()
			return nil, err
		}
	}
}

// channelsEnded waits, at most max, until gopcua's server has finished
// with every connection the front opened to it: each was refused or ended
// its secure channel. gopcua's Close waits on a WaitGroup to which a
// connection still being registered adds, and the race detector reports
// that Add racing the Wait (a connection that came just before Close);
// gopcua offers no other sign than its log lines, which the recorder
// counts. The bound only keeps Close from hanging on a line gopcua did
// not write.
func (s *Server) channelsEnded(max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		g := s.gopcua
		s.mu.Unlock()
		if (g.acceptStopped || g.accepted+g.refused >= s.dialed) && g.ended >= g.accepted {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hookReserved and hookReleased, when set by a test, are called with the
// internal port start is about to bind: while it is still reserved, and
// once it is let go.
var hookReserved, hookReleased func(port int)

// maxPortAttempts bounds how often Start picks another internal port when
// the one it reserved was taken before gopcua's server could bind it.
const maxPortAttempts = 5

// start builds gopcua's server on the internal port that reserved holds,
// closes reserved and starts the server there.
func start(ctx context.Context, o Options, reserved net.Listener) (*Server, error) {
	release := sync.OnceFunc(func() { reserved.Close() })
	defer release()
	s := &Server{start: o.Epoch, maxRead: o.MaxNodesPerRead, removed: map[string]bool{}, opts: o, conns: map[net.Conn]bool{}}
	s.URL = fmt.Sprintf("opc.tcp://%s:%d", o.Host, o.Port)
	s.backend = reserved.Addr().String()
	internal := reserved.Addr().(*net.TCPAddr).Port
	opts := []server.Option{
		// The first endpoint is where gopcua listens; GetEndpoints
		// answers a client with the endpoints of the URL it asked for,
		// the public one.
		server.EndPoint(o.Host, internal),
		server.EndPoint(o.Host, o.Port),
		server.EnableSecurity("None", ua.MessageSecurityModeNone),
		server.EnableAuthMode(ua.UserTokenTypeAnonymous),
		server.SetLogger(recorder{s: s, log: o.Logger}),
		server.ServerName("Sightglass building simulator"),
	}
	if o.Secure {
		cert, err := selfSigned(o.Key, o.Host)
		if err != nil {
			return nil, err
		}
		s.Cert = cert
		opts = append(opts, server.PrivateKey(o.Key), server.Certificate(cert))
		for _, p := range []string{"Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"} {
			opts = append(opts,
				server.EnableSecurity(p, ua.MessageSecurityModeSign),
				server.EnableSecurity(p, ua.MessageSecurityModeSignAndEncrypt))
		}
	}
	srv := server.New(opts...)
	s.srv = srv
	s.buildAddressSpace(o.Zones)
	// Registered before Start, these replace gopcua's own Read (which
	// ignores MaxNodesPerRead) and HistoryRead (which has no history).
	srv.RegisterHandler(id.ReadRequest_Encoding_DefaultBinary, s.read)
	srv.RegisterHandler(id.HistoryReadRequest_Encoding_DefaultBinary, s.historyRead)
	// The server's goroutines live until Close, not until ctx ends: a
	// server that stops answering while clients still talk is what
	// Close is for, deliberately.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if hookReserved != nil {
		hookReserved(internal)
	}
	release()
	if hookReleased != nil {
		hookReleased(internal)
	}
	if err := srv.Start(sctx); err != nil {
		cancel()
		return nil, fmt.Errorf("opcua sim: starting gopcua's server on %s: %w", s.backend, err)
	}
	s.ticked = make(chan struct{})
	go s.tick(sctx)
	return s, nil
}

// serveFront relays each connection to the public port to gopcua's
// server, until Close.
func (s *Server) serveFront() {
	defer s.frontDone.Done()
	for {
		c, err := s.front.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			continue
		}
		// Dialled under mu, so Close counts every connection gopcua
		// may be registering.
		b, err := net.Dial("tcp", s.backend)
		if err != nil {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c], s.conns[b] = true, true
		s.dialed++
		s.mu.Unlock()
		s.frontDone.Add(2)
		go s.relay(c, b)
		go s.relay(b, c)
	}
}

// relay copies src to dst until either ends, then closes both.
func (s *Server) relay(dst, src net.Conn) {
	defer s.frontDone.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	s.mu.Lock()
	delete(s.conns, dst)
	delete(s.conns, src)
	s.mu.Unlock()
}

// Close stops the server and drops every connection, as a server that
// restarts does.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.front.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.frontDone.Wait()
	s.channelsEnded(10 * time.Second)
	// Every secure channel has ended by now, so gopcua's Close does not
	// wait out its 10 s for one still talking. The server before its
	// context: a channel handing a request to the dispatcher, which the
	// context stops, ends only while it runs.
	err := s.srv.Close()
	s.cancel()
	<-s.ticked
	return err
}

// Services returns every service request received so far, by name
// ("Read", "CreateSession", ...), in order.
func (s *Server) Services() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.services...)
}

// Variables returns the node ids of the building's variables.
func (s *Server) Variables() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.vars...)
}

// Remove makes a node disappear: reads of it answer BadNodeIdUnknown, as
// after a server's configuration changed.
func (s *Server) Remove(nodeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed[nodeID] = true
}

// changeEvery is how often the simulated values are announced to
// subscriptions; gopcua's server samples nothing by itself.
const changeEvery = 250 * time.Millisecond

// tick tells the server's subscriptions that every variable changed.
func (s *Server) tick(ctx context.Context) {
	defer close(s.ticked)
	t := time.NewTicker(changeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, v := range s.Variables() {
			n, err := ua.ParseNodeID(v)
			if err == nil {
				s.srv.ChangeNotification(n)
			}
		}
	}
}

// recorder is gopcua's server logger: it records the service of every
// request the server handles (gopcua logs each one at debug level) and
// forwards log lines to an slog logger.
type recorder struct {
	s   *Server
	log *slog.Logger
}

// gopcuaCounts is what gopcua's server logged of the connections it was
// handed (see channelsEnded): accepted (a secure channel being
// registered), refused at the transport handshake, and secure channels
// that ended or never began. acceptStopped: its accept loop is over.
type gopcuaCounts struct {
	accepted, refused, ended int
	acceptStopped            bool
}

// count notes the gopcua log lines channelsEnded waits on.
func (r recorder) count(msg string) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	g := &r.s.gopcua
	switch {
	case strings.HasPrefix(msg, "registered connection:"):
		g.accepted++
	case strings.HasPrefix(msg, "error accepting connection:"):
		g.refused++
	case strings.HasPrefix(msg, "socket closed:"):
		g.acceptStopped = true
	case strings.HasPrefix(msg, "Error creating secure channel"),
		strings.HasPrefix(msg, "Context done, closing Secure Channel"),
		strings.HasPrefix(msg, "Secure Channel "):
		g.ended++
	}
}

func (r recorder) Debug(msg string, args ...any) {
	if strings.HasPrefix(msg, "handleService: Got:") && len(args) == 1 {
		name := strings.TrimSuffix(strings.TrimPrefix(fmt.Sprintf("%T", args[0]), "*ua."), "Request")
		r.s.mu.Lock()
		r.s.services = append(r.s.services, name)
		r.s.mu.Unlock()
	}
	r.logf(slog.LevelDebug, msg, args...)
}
func (r recorder) Info(msg string, args ...any)  { r.count(msg); r.logf(slog.LevelDebug, msg, args...) }
func (r recorder) Warn(msg string, args ...any)  { r.count(msg); r.logf(slog.LevelDebug, msg, args...) }
func (r recorder) Error(msg string, args ...any) { r.count(msg); r.logf(slog.LevelDebug, msg, args...) }

func (r recorder) logf(level slog.Level, msg string, args ...any) {
	if r.log != nil {
		r.log.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(msg, args...)))
	}
}

// variable is one simulated point.
type variable struct {
	name string // browse name
	unit string
	// value is the value at t seconds since the start.
	value func(t float64) any
}

// buildAddressSpace creates Objects/Building/{AHU1,AHU2,Plant,Zones/...}.
func (s *Server) buildAddressSpace(zones int) {
	ns := server.NewNodeNameSpace(s.srv, NamespaceURI)
	s.nodes = ns
	s.NS = ns.ID()
	root, _ := s.srv.Namespace(0)
	objects := root.Objects()
	// Report the limit the read handler enforces, not gopcua's default.
	root.AddNode(server.NewNode(
		ua.NewNumericNodeID(0, id.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
		map[ua.AttributeID]*ua.DataValue{
			ua.AttributeIDBrowseName: server.DataValueFromValue(attrs.BrowseName("MaxNodesPerRead")),
			ua.AttributeIDNodeClass:  server.DataValueFromValue(uint32(ua.NodeClassVariable)),
		},
		nil,
		func() *ua.DataValue { return server.DataValueFromValue(s.maxRead) },
	))

	building := s.folder(ns, "Building", "Building")
	objects.AddRef(building, id.Organizes, true)

	wave := func(base, amp, period, phase float64) func(float64) any {
		return func(t float64) any { return base + amp*math.Sin(2*math.Pi*t/period+phase) }
	}
	groups := []struct {
		name string
		vars []variable
	}{
		{"AHU1", []variable{
			{"SupplyAirTemp", "°C", wave(13, 1.5, 120, 0)},
			{"ReturnAirTemp", "°C", wave(22, 0.8, 300, 1)},
			{"FanSpeed", "%", wave(65, 20, 90, 0)},
			{"FanStatus", "", func(t float64) any { return math.Mod(t, 600) < 540 }},
		}},
		{"AHU2", []variable{
			{"SupplyAirTemp", "°C", wave(14, 1.2, 150, 2)},
			{"ReturnAirTemp", "°C", wave(23, 0.6, 280, 0.5)},
			{"FanSpeed", "%", wave(55, 15, 100, 1)},
		}},
		{"Plant", []variable{
			{"ChilledWaterSupplyTemp", "°C", chilledWater},
			{"ChilledWaterReturnTemp", "°C", wave(12, 0.7, 240, 0.3)},
			{"ChillerPower", "kW", wave(180, 40, 400, 0)},
		}},
	}
	for _, g := range groups {
		f := s.folder(ns, g.name, g.name)
		building.AddRef(f, id.Organizes, true)
		for _, v := range g.vars {
			f.AddRef(s.variable(ns, g.name+"."+v.name, v), id.HasComponent, true)
		}
	}
	zf := s.folder(ns, "Zones", "Zones")
	building.AddRef(zf, id.Organizes, true)
	for i := 1; i <= zones; i++ {
		name := fmt.Sprintf("Zone%d", i)
		z := s.folder(ns, "Zones."+name, name)
		zf.AddRef(z, id.Organizes, true)
		phase := float64(i)
		z.AddRef(s.variable(ns, "Zones."+name+".Temp", variable{"Temp", "°C", wave(21.5, 1, 600, phase)}), id.HasComponent, true)
		z.AddRef(s.variable(ns, "Zones."+name+".Setpoint", variable{"Setpoint", "°C", func(float64) any { return 21.0 + float64(i%3)*0.5 }}), id.HasComponent, true)
	}
}

// chilledWater is the value with history: a slow wave, so a backfill has
// something to show.
func chilledWater(t float64) any { return 6.5 + 0.5*math.Sin(2*math.Pi*t/900) }

func (s *Server) folder(ns *server.NodeNameSpace, nodeID, name string) *server.Node {
	n := server.NewNode(ua.NewStringNodeID(ns.ID(), nodeID), map[ua.AttributeID]*ua.DataValue{
		ua.AttributeIDNodeClass:     server.DataValueFromValue(uint32(ua.NodeClassObject)),
		ua.AttributeIDBrowseName:    server.DataValueFromValue(&ua.QualifiedName{NamespaceIndex: ns.ID(), Name: name}),
		ua.AttributeIDDisplayName:   server.DataValueFromValue(attrs.DisplayName(name, "")),
		ua.AttributeIDEventNotifier: server.DataValueFromValue(byte(0)),
	}, nil, nil)
	n.AddRef(s.srv.Node(ua.NewNumericNodeID(0, id.FolderType)), id.HasTypeDefinition, true)
	return ns.AddNode(n)
}

func (s *Server) variable(ns *server.NodeNameSpace, nodeID string, v variable) *server.Node {
	nid := ua.NewStringNodeID(ns.ID(), nodeID)
	// The setpoints are the values that never change.
	steady := strings.HasSuffix(nodeID, ".Setpoint")
	dt := uint32(id.Double)
	if _, ok := v.value(0).(bool); ok {
		dt = id.Boolean
	}
	n := server.NewNode(nid, map[ua.AttributeID]*ua.DataValue{
		ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(ua.NodeClassVariable)),
		ua.AttributeIDBrowseName:  server.DataValueFromValue(&ua.QualifiedName{NamespaceIndex: ns.ID(), Name: v.name}),
		ua.AttributeIDDisplayName: server.DataValueFromValue(attrs.DisplayName(v.name, "")),
		// gopcua's server keeps DataType as an ExpandedNodeID.
		ua.AttributeIDDataType:        server.DataValueFromValue(ua.NewNumericExpandedNodeID(0, dt)),
		ua.AttributeIDAccessLevel:     server.DataValueFromValue(byte(ua.AccessLevelTypeCurrentRead | ua.AccessLevelTypeHistoryRead)),
		ua.AttributeIDUserAccessLevel: server.DataValueFromValue(byte(ua.AccessLevelTypeCurrentRead | ua.AccessLevelTypeHistoryRead)),
		ua.AttributeIDValueRank:       server.DataValueFromValue(int32(-1)),
		ua.AttributeIDHistorizing:     server.DataValueFromValue(nodeID == HistoryNode),
	}, nil, func() *ua.DataValue {
		now := time.Now()
		src := now
		if steady && s.opts.SteadySource {
			src = s.start
		}
		return &ua.DataValue{
			EncodingMask:    ua.DataValueValue | ua.DataValueSourceTimestamp | ua.DataValueServerTimestamp,
			Value:           ua.MustVariant(v.value(now.Sub(s.start).Seconds())),
			SourceTimestamp: src,
			ServerTimestamp: now,
		}
	})
	n.AddRef(s.srv.Node(ua.NewNumericNodeID(0, id.BaseDataVariableType)), id.HasTypeDefinition, true)
	ns.AddNode(n)
	if v.unit != "" {
		eu := server.NewNode(ua.NewStringNodeID(ns.ID(), nodeID+".EngineeringUnits"), map[ua.AttributeID]*ua.DataValue{
			ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(ua.NodeClassVariable)),
			ua.AttributeIDBrowseName:  server.DataValueFromValue(&ua.QualifiedName{Name: "EngineeringUnits"}),
			ua.AttributeIDDisplayName: server.DataValueFromValue(attrs.DisplayName("EngineeringUnits", "")),
			ua.AttributeIDDataType:    server.DataValueFromValue(ua.NewNumericExpandedNodeID(0, id.EUInformation)),
		}, nil, func() *ua.DataValue {
			return server.DataValueFromValue(ua.MustVariant(ua.NewExtensionObject(&ua.EUInformation{
				NamespaceURI: "http://www.opcfoundation.org/UA/units/un/cefact",
				DisplayName:  ua.NewLocalizedText(v.unit),
				Description:  ua.NewLocalizedText(v.unit),
			})))
		})
		eu.AddRef(s.srv.Node(ua.NewNumericNodeID(0, id.PropertyType)), id.HasTypeDefinition, true)
		ns.AddNode(eu)
		n.AddRef(eu, id.HasProperty, true)
	}
	s.vars = append(s.vars, nid.String())
	return n
}

// read is the Read service, enforcing MaxNodesPerRead and honouring Remove.
func (s *Server) read(_ *uasc.SecureChannel, r ua.Request, _ uint32) (ua.Response, error) {
	req, ok := r.(*ua.ReadRequest)
	if !ok {
		return nil, ua.StatusBadRequestTypeInvalid
	}
	if uint32(len(req.NodesToRead)) > s.maxRead {
		return nil, ua.StatusBadTooManyOperations
	}
	if len(req.NodesToRead) == 0 {
		return nil, ua.StatusBadNothingToDo
	}
	results := make([]*ua.DataValue, len(req.NodesToRead))
	for i, n := range req.NodesToRead {
		results[i] = s.attribute(n.NodeID, n.AttributeID)
	}
	return &ua.ReadResponse{ResponseHeader: responseHeader(req.RequestHeader), Results: results}, nil
}

func (s *Server) attribute(n *ua.NodeID, attr ua.AttributeID) *ua.DataValue {
	bad := func(code ua.StatusCode) *ua.DataValue {
		return &ua.DataValue{EncodingMask: ua.DataValueStatusCode | ua.DataValueServerTimestamp, Status: code, ServerTimestamp: time.Now()}
	}
	if n == nil {
		return bad(ua.StatusBadNodeIDInvalid)
	}
	s.mu.Lock()
	gone := s.removed[n.String()]
	s.mu.Unlock()
	if gone {
		return bad(ua.StatusBadNodeIDUnknown)
	}
	ns, err := s.srv.Namespace(int(n.Namespace()))
	if err != nil {
		return bad(ua.StatusBadNodeIDUnknown)
	}
	return ns.Attribute(n, attr)
}

// historyRead serves raw history of HistoryNode: one value each
// HistoryInterval since the Epoch, computed from the same function as the
// live value, after HistoryDelay.
func (s *Server) historyRead(_ *uasc.SecureChannel, r ua.Request, _ uint32) (ua.Response, error) {
	req, ok := r.(*ua.HistoryReadRequest)
	if !ok {
		return nil, ua.StatusBadRequestTypeInvalid
	}
	var details *ua.ReadRawModifiedDetails
	if req.HistoryReadDetails != nil {
		details, _ = req.HistoryReadDetails.Value.(*ua.ReadRawModifiedDetails)
	}
	if details == nil || details.IsReadModified {
		return nil, ua.StatusBadHistoryOperationUnsupported
	}
	if s.opts.HistoryDelay > 0 {
		time.Sleep(s.opts.HistoryDelay)
	}
	if s.opts.HistoryFault != nil {
		s.mu.Lock()
		s.histCalls++
		call := s.histCalls
		s.mu.Unlock()
		delay, code := s.opts.HistoryFault(call)
		if delay > 0 {
			time.Sleep(delay)
		}
		if code&0x80000000 != 0 {
			return nil, code
		}
	}
	results := make([]*ua.HistoryReadResult, len(req.NodesToRead))
	for i, n := range req.NodesToRead {
		results[i] = s.history(n, details, req.ReleaseContinuationPoints)
	}
	return &ua.HistoryReadResponse{ResponseHeader: responseHeader(req.RequestHeader), Results: results}, nil
}

func (s *Server) history(n *ua.HistoryReadValueID, d *ua.ReadRawModifiedDetails, release bool) *ua.HistoryReadResult {
	if n == nil || n.NodeID == nil || n.NodeID.String() != ua.NewStringNodeID(s.NS, HistoryNode).String() {
		return &ua.HistoryReadResult{StatusCode: ua.StatusBadHistoryOperationUnsupported}
	}
	if release {
		return &ua.HistoryReadResult{StatusCode: ua.StatusOK}
	}
	from := d.StartTime
	if len(n.ContinuationPoint) > 0 {
		t, err := time.Parse(time.RFC3339Nano, string(n.ContinuationPoint))
		if err != nil {
			return &ua.HistoryReadResult{StatusCode: ua.StatusBadContinuationPointInvalid}
		}
		from = t
	}
	end := d.EndTime
	if now := time.Now(); end.IsZero() || end.After(now) {
		end = now
	}
	// One value on each whole interval since start.
	step := s.opts.HistoryInterval
	t := from.Truncate(step)
	if t.Before(from) {
		t = t.Add(step)
	}
	if first := s.start.Truncate(step).Add(step); t.Before(first) {
		t = first
	}
	limit := int(d.NumValuesPerNode)
	if limit == 0 {
		limit = math.MaxInt
	}
	var values []*ua.DataValue
	var cont []byte
	for ; t.Before(end); t = t.Add(step) {
		if len(values) == limit {
			cont = []byte(t.Format(time.RFC3339Nano))
			break
		}
		values = append(values, &ua.DataValue{
			EncodingMask:    ua.DataValueValue | ua.DataValueSourceTimestamp | ua.DataValueServerTimestamp,
			Value:           ua.MustVariant(chilledWater(t.Sub(s.start).Seconds()).(float64)),
			SourceTimestamp: t,
			ServerTimestamp: t,
		})
	}
	return &ua.HistoryReadResult{StatusCode: ua.StatusOK, ContinuationPoint: cont, HistoryData: ua.NewExtensionObject(&ua.HistoryData{DataValues: values})}
}

func responseHeader(h *ua.RequestHeader) *ua.ResponseHeader {
	rh := &ua.ResponseHeader{Timestamp: time.Now(), ServiceResult: ua.StatusOK, ServiceDiagnostics: &ua.DiagnosticInfo{}, StringTable: []string{}, AdditionalHeader: ua.NewExtensionObject(nil)}
	if h != nil {
		rh.RequestHandle = h.RequestHandle
	}
	return rh
}

// selfSigned makes the server's application-instance certificate.
func selfSigned(key *rsa.PrivateKey, host string) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	uri, _ := url.Parse("urn:sightglass-bms:sim:opcua")
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Sightglass OPC UA simulator"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
		IPAddresses:           []net.IP{net.ParseIP(host)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("opcua sim: making the server certificate: %w", err)
	}
	return der, nil
}
