// Package opcua is the OPC UA driver. It reads variables from an OPC UA
// server, read-only: every request passes the guard in guard.go, which
// admits only the session, browse, read, history-read and subscription
// services and refuses Write, Call, node management and everything else
// before it leaves the process. It is the only package that imports the
// gopcua client.
//
// Connect fetches the server's endpoints, picks the configured security
// policy and mode, checks the server's certificate against the pinned one
// and opens a session as the configured user, then reads the server's
// MaxNodesPerRead. Read reads polled points in batches of that size and
// returns the values subscribed points reported since. A lost connection
// is reported as driver.ErrConnLost; the next Connect (or Read) waits out a
// jittered exponential backoff and recreates the subscription. Gaps are
// filled from the server's history (HistoryRead) by the Reads that follow,
// a few pages each within their deadlines, never by Connect: the window of
// history: true points on the first session, and after a reconnect the gap
// of those and of every subscribed node the server historizes. Polled
// samples get strictly increasing times per point (timeline.go). A device
// with history: true points is a driver.Checkpointer of its backfill
// progress (checkpoint.go), so an agent restart backfills only the gap
// since the last committed time. See README.md.
package opcua

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uacp"
	"github.com/gopcua/opcua/uasc"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/nicbind"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Name is the driver's name in a device's `driver:` key.
const Name = "opcua"

// SampleConfig is an example device configuration.
//
//go:embed sample.yaml
var SampleConfig string

// Info describes the driver to the registry.
func Info() driver.Info {
	return driver.Info{Name: Name, New: New}
}

// Compile-time checks that the driver offers what the agent looks for.
var (
	_ driver.Driver     = (*Driver)(nil)
	_ driver.Discoverer = (*Driver)(nil)
	_ driver.Reporter   = (*Driver)(nil)
)

// Driver reads one OPC UA server.
type Driver struct {
	cfg       config
	log       *slog.Logger
	g         *guard
	points    map[string]pointConfig // by ref; the configured points
	subs      []driver.Point         // configured points read by subscription
	pointList []driver.Point         // the configured points, for backfill
	now       func() time.Time

	connMu sync.Mutex // one connection attempt at a time

	mu        sync.Mutex
	closed    bool
	connected bool
	lost      error // set when the subscription's publish loop saw the connection go
	maxNodes  int
	failures  int       // consecutive failed Connects
	nextTry   time.Time // no Connect before this
	sessions  int       // CreateSession attempts, for tests and status
	attempts  int       // connection attempts
	faulty    map[string]ua.StatusCode
	id        *identity
	sub       *subscription
	// droppedBefore sums the values earlier subscriptions dropped.
	droppedBefore uint64
	// tl keeps each point's newest live sample time (see timeline.go).
	tl *timeline
	// notLater counts live samples left out because they could not get a
	// time later than their point's last one.
	notLater uint64
	// carry holds, by point ref, the values a subscription received that
	// no Read took before it ended (a dropped session): the next Reads
	// return them first. carryDropped counts what its bound pushed out.
	carry        map[string][]*ua.DataValue
	carryDropped uint64
	// unanswered counts the Reads in a row whose deadline passed waiting
	// for the server (see readError).
	unanswered int
	everOnce   bool // a session was up before: the next one fills a gap
	warnedOff  bool

	// Backfill (history.go): the gaps still to read, worked off by Reads.
	bfMu        sync.Mutex // one Read at a time works on the backfill
	jobs        []*backfillJob
	pageSize    int           // values asked per HistoryRead; shrinks for a slow server
	pageTook    time.Duration // how long backfill requests take, to fit them in a Read
	subGaps     uint64        // subscribed nodes whose gap could not be filled
	histSamples uint64        // samples read from history

	// Checkpoint (checkpoint.go), under mu: committed is the history
	// points' progress as of the last Commit (or Restore), readSince is
	// set by a Read since then, and resumed names the points a Restore
	// gave a place, whose first session fills only the gap since.
	committed map[string]pointProgress
	readSince bool
	resumed   map[string]bool
	// commits is set when the driver is offered as a driver.Committer
	// (New, for a device with history points): only then does Close
	// rewind what was not committed, since only then does anyone commit.
	commits bool
	// warnedBig is set once a checkpoint too large to store was logged.
	warnedBig bool
}

// New builds a driver for one device. It validates the settings and does
// no network I/O.
func New(dev driver.Device) (driver.Driver, error) {
	d, err := newDriver(dev)
	if err != nil {
		return nil, err
	}
	for _, pc := range d.points {
		if pc.history {
			d.commits = true
			return &historyDriver{d}, nil
		}
	}
	return d, nil
}

func newDriver(dev driver.Device) (*Driver, error) {
	cfg, err := parseSettings(dev.Settings, dev.DataDir)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	d := &Driver{
		cfg:      cfg,
		log:      dev.Logger,
		points:   map[string]pointConfig{},
		now:      time.Now,
		faulty:   map[string]ua.StatusCode{},
		pageSize: historyPageSize,
		resumed:  map[string]bool{},
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.g = newGuard(d.log, cfg.requestTimeout)
	for _, p := range dev.Points {
		pc, err := parsePoint(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.points[p.Ref] = pc
		d.pointList = append(d.pointList, p)
		if pc.subscribe {
			d.subs = append(d.subs, p)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	ids := make([]uint64, len(dev.Points))
	for i, p := range dev.Points {
		ids[i] = p.ID
	}
	d.tl = newTimeline(ids)
	return d, nil
}

// Connect opens a session to the server (see the package doc), also after
// Close: the poller reconnects a device by Close and Connect. After a
// failure it refuses to try again before the backoff has passed, so a
// restarting server never sees a storm of CreateSession requests.
func (d *Driver) Connect(ctx context.Context) error {
	d.mu.Lock()
	d.closed = false
	d.mu.Unlock()
	err := d.ensure(ctx)
	if err != nil && !errors.Is(err, ErrServerCertChanged) && !errors.Is(err, driver.ErrRefused) && ctx.Err() == nil {
		return fmt.Errorf("%w: %w", err, driver.ErrConnLost)
	}
	return err
}

// ensure opens the session unless it is open, honouring the backoff. Read
// calls it too, so a session dropped by a failed request is reopened by the
// next Read even when nobody calls Close and Connect; after Close only
// Connect opens it again.
func (d *Driver) ensure(ctx context.Context) error {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	d.mu.Lock()
	switch {
	case d.closed:
		d.mu.Unlock()
		return errors.New("opcua: closed")
	case d.connected:
		d.mu.Unlock()
		return nil
	}
	if wait := d.nextTry.Sub(d.now()); wait > 0 {
		n := d.failures
		d.mu.Unlock()
		return fmt.Errorf("connecting to %s: holding off %s after %d failed attempts", d.cfg.endpoint, wait.Round(time.Millisecond), n)
	}
	d.mu.Unlock()

	err := d.connect(ctx)

	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil && d.closed {
		err = errors.New("opcua: closed while connecting")
	}
	if err != nil {
		d.failures++
		d.nextTry = d.now().Add(backoff(d.cfg.reconnectMin, d.cfg.reconnectMax, d.failures))
		sub := d.sub
		d.sub = nil
		d.droppedBefore += sub.droppedValues()
		d.mu.Unlock()
		d.retire(sub)
		d.g.hangUp(ctx)
		d.mu.Lock()
		if errors.Is(err, ErrServerCertChanged) || errors.Is(err, driver.ErrRefused) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("connecting to %s: %w", d.cfg.endpoint, errors.Join(ctx.Err(), err))
		}
		return fmt.Errorf("connecting to %s: %w", d.cfg.endpoint, err)
	}
	if d.failures > 0 {
		d.log.Info("OPC UA server reachable again", "endpoint", d.cfg.endpoint, "failed_attempts", d.failures)
	}
	d.failures, d.nextTry, d.connected, d.lost, d.unanswered = 0, time.Time{}, true, nil, 0
	return nil
}

// drop forgets the session after an error that broke it; the next Read
// reconnects.
func (d *Driver) drop(ctx context.Context, why error) {
	d.mu.Lock()
	was := d.connected
	d.connected = false
	sub := d.sub
	d.sub = nil
	d.droppedBefore += sub.droppedValues()
	d.mu.Unlock()
	d.retire(sub)
	d.g.hangUp(ctx)
	if was {
		d.log.Warn("OPC UA session lost; reconnecting", "endpoint", d.cfg.endpoint, "err", why)
	}
}

// backoff is the wait after n consecutive failures: min doubling up to
// max, with "equal jitter" (half fixed, half random) so agents restarted
// together spread out but none retries immediately.
func backoff(lo, hi time.Duration, n int) time.Duration {
	b := lo
	for i := 1; i < n && b < hi; i++ {
		b *= 2
	}
	b = min(b, hi)
	half := b / 2
	return half + rand.N(half+1)
}

func (d *Driver) connect(ctx context.Context) error {
	d.mu.Lock()
	d.attempts++
	d.mu.Unlock()
	if d.cfg.mode == ua.MessageSecurityModeNone && !d.warnedOff {
		d.log.Warn("OPC UA security is off (security_policy None): anyone on the control network can read and alter this traffic; use Basic256Sha256 with SignAndEncrypt where the server supports it", "endpoint", d.cfg.endpoint)
		d.warnedOff = true
	}
	ep, err := d.endpoint(ctx)
	if err != nil {
		return err
	}
	opts, sess, err := d.sessionOptions(ep)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.sessions++
	d.mu.Unlock()
	if err := d.g.dial(ctx, d.cfg.endpoint, opts, sess); err != nil {
		return err
	}
	maxNodes, err := d.readMaxNodes(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.maxNodes = maxNodes
	d.mu.Unlock()
	if len(d.subs) > 0 {
		if err := d.subscribe(ctx); err != nil {
			return err
		}
	}
	// History is read by the Reads that follow, page by page within their
	// deadlines, never here: a long history must not keep the device from
	// coming up.
	d.mu.Lock()
	d.planBackfill(!d.everOnce, d.sessions, d.now())
	d.everOnce = true
	d.mu.Unlock()
	d.log.Info("OPC UA session open", "endpoint", d.cfg.endpoint, "security_policy", d.cfg.policyName, "security_mode", strings.TrimPrefix(d.cfg.mode.String(), "MessageSecurityMode"), "max_nodes_per_read", maxNodes, "subscribed", len(d.subs))
	return nil
}

// endpoint asks the server for its endpoints over an unsecured channel (as
// OPC UA discovery does) and picks the configured one, checking the
// server's certificate against the pin.
func (d *Driver) endpoint(ctx context.Context) (*ua.EndpointDescription, error) {
	eps, err := getEndpoints(ctx, d.g, d.cfg.endpoint, d.cfg.localAddr, d.cfg.requestTimeout)
	if err != nil {
		return nil, err
	}
	ep, err := selectEndpoint(eps, d.cfg.policyURI, d.cfg.mode)
	if err != nil {
		return nil, err
	}
	if !d.cfg.secure() {
		return ep, nil
	}
	p := pinner{file: pinFile(d.cfg.pkiDir, d.cfg.endpoint)}
	if d.cfg.serverCertFile != "" {
		if p.given, err = readCert(d.cfg.serverCertFile); err != nil {
			return nil, fmt.Errorf("settings.server_certificate: %w", err)
		}
	}
	pinned, err := p.check(ep.ServerCertificate)
	if err != nil {
		return nil, err
	}
	if pinned {
		d.log.Warn("pinned the OPC UA server's certificate on first use; check its thumbprint with the server's administrator", "endpoint", d.cfg.endpoint, "sha256", thumbprint(ep.ServerCertificate), "file", p.file)
	}
	return ep, nil
}

// getEndpoints opens an unsecured channel without a session and asks for
// the server's endpoints through the guard.
func getEndpoints(ctx context.Context, g *guard, endpoint string, local net.IP, timeout time.Duration) ([]*ua.EndpointDescription, error) {
	opts := []opcua.Option{
		dialFrom(local),
		opcua.SecurityPolicy(ua.SecurityPolicyURINone),
		opcua.SecurityMode(ua.MessageSecurityModeNone),
		opcua.RequestTimeout(timeout),
		opcua.DialTimeout(timeout),
	}
	if err := g.dial(ctx, endpoint, opts, nil); err != nil {
		return nil, fmt.Errorf("asking for endpoints: %w", err)
	}
	defer g.hangUp(ctx)
	var res *ua.GetEndpointsResponse
	err := g.Send(ctx, &ua.GetEndpointsRequest{EndpointURL: endpoint}, func(v ua.Response) error { return assign(v, &res) })
	if err != nil {
		return nil, fmt.Errorf("asking %s for its endpoints: %w", endpoint, err)
	}
	if len(res.Endpoints) == 0 {
		return nil, fmt.Errorf("%s offers no endpoints", endpoint)
	}
	return res.Endpoints, nil
}

// sessionOptions builds the channel options and the session configuration
// for endpoint ep.
func (d *Driver) sessionOptions(ep *ua.EndpointDescription) ([]opcua.Option, *uasc.SessionConfig, error) {
	opts := []opcua.Option{
		dialFrom(d.cfg.localAddr), // first: DialTimeout below sets its timeout
		opcua.SecurityPolicy(d.cfg.policyURI),
		opcua.SecurityMode(d.cfg.mode),
		opcua.RequestTimeout(d.cfg.requestTimeout),
		opcua.DialTimeout(d.cfg.requestTimeout),
		opcua.SessionTimeout(d.cfg.sessionTimeout),
	}
	uri := appURI()
	if d.cfg.secure() || d.cfg.authType == ua.UserTokenTypeCertificate {
		if d.id == nil {
			id, err := loadIdentity(d.cfg.pkiDir)
			if err != nil {
				return nil, nil, err
			}
			d.id = &id
		}
		uri = d.id.uri
		// SecurityFromEndpoint also sets the server certificate's
		// thumbprint, without which the OpenSecureChannel is not
		// encrypted for the server (node-opcua drops it).
		opts = append(opts, opcua.Certificate(d.id.cert), opcua.PrivateKey(d.id.key), opcua.SecurityFromEndpoint(ep, d.cfg.authType))
	}
	pol, err := userPolicy(ep, d.cfg.authType)
	if err != nil {
		return nil, nil, err
	}
	sess := &uasc.SessionConfig{
		ClientDescription: &ua.ApplicationDescription{
			ApplicationURI:  uri,
			ProductURI:      "urn:sightglass-bms:sightglass",
			ApplicationName: ua.NewLocalizedText("Sightglass agent"),
			ApplicationType: ua.ApplicationTypeClient,
		},
		LocaleIDs:          []string{"en-US"},
		UserTokenSignature: &ua.SignatureData{},
		SessionName:        "sightglass",
		SessionTimeout:     d.cfg.sessionTimeout,
		AuthPolicyURI:      pol.SecurityPolicyURI,
	}
	if sess.AuthPolicyURI == "" {
		sess.AuthPolicyURI = ep.SecurityPolicyURI
	}
	switch d.cfg.authType {
	case ua.UserTokenTypeAnonymous:
		sess.UserIdentityToken = &ua.AnonymousIdentityToken{PolicyID: pol.PolicyID}
	case ua.UserTokenTypeUserName:
		sess.UserIdentityToken = &ua.UserNameIdentityToken{PolicyID: pol.PolicyID, UserName: d.cfg.auth.Username}
		sess.AuthPassword = d.cfg.password
		if d.cfg.auth.PasswordFile != "" {
			b, err := readPrivate(d.cfg.auth.PasswordFile)
			if err != nil {
				return nil, nil, fmt.Errorf("settings.auth.password_file: %w", err)
			}
			sess.AuthPassword = strings.TrimRight(string(b), "\r\n")
		}
	case ua.UserTokenTypeCertificate:
		cert, err := readCert(d.cfg.auth.Certificate)
		if err != nil {
			return nil, nil, fmt.Errorf("settings.auth.certificate: %w", err)
		}
		kb, err := readPrivate(d.cfg.auth.PrivateKey)
		if err != nil {
			return nil, nil, fmt.Errorf("settings.auth.private_key: %w", err)
		}
		key, err := parseKey(kb)
		if err != nil {
			return nil, nil, fmt.Errorf("settings.auth.private_key: %w", err)
		}
		sess.UserIdentityToken = &ua.X509IdentityToken{PolicyID: pol.PolicyID, CertificateData: cert}
		opts = append(opts, opcua.AuthPrivateKey(key))
	}
	return opts, sess, nil
}

// readMaxNodes reads Server_ServerCapabilities_OperationLimits_MaxNodesPerRead;
// zero (no limit) or an unreadable node gives the default, and a
// configured value is kept when it is lower.
func (d *Driver) readMaxNodes(ctx context.Context) (int, error) {
	n := DefaultMaxNodesPerRead
	res, err := d.g.Read(ctx, &ua.ReadRequest{
		NodesToRead:        []*ua.ReadValueID{valueID(ua.NewNumericNodeID(0, id.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead))},
		TimestampsToReturn: ua.TimestampsToReturnNeither,
	})
	if err != nil {
		return 0, fmt.Errorf("reading the server's MaxNodesPerRead: %w", err)
	}
	if len(res.Results) == 1 && res.Results[0].Status == ua.StatusOK && res.Results[0].Value != nil {
		if v, ok := toFloat(res.Results[0].Value.Value()); ok && v >= 1 {
			n = int(min(v, math.MaxInt32))
		}
	}
	if d.cfg.maxNodes > 0 && d.cfg.maxNodes < n {
		n = d.cfg.maxNodes
	}
	return n, nil
}

// valueID is a ReadValueID for a node's value. DataEncoding must be an
// empty name rather than nil: node-opcua never answers a ReadRequest whose
// DataEncoding is missing.
func valueID(n *ua.NodeID) *ua.ReadValueID {
	return &ua.ReadValueID{NodeID: n, AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}}
}

// Read returns the samples of points (see driver.Driver).
func (d *Driver) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	d.mu.Lock()
	closed, lost := d.closed, d.lost
	d.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("reading %s: the driver is closed: Connect first: %w", d.cfg.endpoint, driver.ErrConnLost)
	}
	if len(points) == 0 {
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if lost != nil {
		d.drop(ctx, lost)
	}
	var polled, subscribed []driver.Point
	for _, p := range points {
		pc, ok := d.points[p.Ref]
		if !ok {
			var err error
			if pc, err = parsePoint(p); err != nil {
				return nil, err
			}
		}
		if pc.subscribe {
			subscribed = append(subscribed, p)
		} else {
			polled = append(polled, p)
		}
	}
	var out []telemetry.Sample
	for attempt := 0; ; attempt++ {
		if err := d.ensure(ctx); err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrServerCertChanged) {
				return nil, fmt.Errorf("reading %s: %w", d.cfg.endpoint, err)
			}
			return nil, fmt.Errorf("reading %s: %w: %w", d.cfg.endpoint, err, driver.ErrConnLost)
		}
		samples, err := d.readPolled(ctx, polled)
		if err == nil {
			d.mu.Lock()
			d.unanswered = 0
			d.mu.Unlock()
			out = samples
			break
		}
		rerr := d.readError(ctx, err)
		// A session whose connection closed between polls (the server
		// restarted) is reopened at once, once, so the poll is not lost;
		// a server that hangs is not asked twice.
		if attempt > 0 || !isConnGone(err) || ctx.Err() != nil || errors.Is(rerr, driver.ErrBusy) || errors.Is(rerr, driver.ErrRefused) {
			return nil, rerr
		}
	}
	out = append(out, d.subscribedSamples(subscribed)...)
	// Then history, in what is left of the Read's time: the gaps end at
	// the live samples just taken, so the two never overlap.
	out = append(out, d.runBackfill(ctx)...)
	d.mu.Lock()
	d.readSince = true
	d.mu.Unlock()
	return out, nil
}

// readPolled reads polled points in batches of at most MaxNodesPerRead,
// halving the batch when the server still says BadTooManyOperations.
func (d *Driver) readPolled(ctx context.Context, polled []driver.Point) ([]telemetry.Sample, error) {
	d.mu.Lock()
	maxNodes := d.maxNodes
	d.mu.Unlock()
	out := make([]telemetry.Sample, 0, len(polled))
	for start := 0; start < len(polled); {
		end := min(start+maxNodes, len(polled))
		chunk := polled[start:end]
		samples, err := d.readChunk(ctx, chunk)
		if errors.Is(err, ua.StatusBadTooManyOperations) && len(chunk) > 1 {
			// The server's stated limit was wrong (or it changed): halve
			// and keep going rather than fail the whole poll.
			maxNodes = max(1, len(chunk)/2)
			d.mu.Lock()
			d.maxNodes = maxNodes
			d.mu.Unlock()
			d.log.Warn("server refused a read as too large; lowering max_nodes_per_read", "max_nodes_per_read", maxNodes)
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, samples...)
		start = end
	}
	return out, nil
}

// isConnGone reports errors that mean the connection or session closed
// (rather than a server that is slow or refuses).
func isConnGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, ua.StatusBadSecureChannelClosed) || errors.Is(err, ua.StatusBadConnectionClosed) ||
		errors.Is(err, ua.StatusBadSessionIDInvalid) || errors.Is(err, ua.StatusBadSessionClosed) ||
		errors.Is(err, ua.StatusBadSecureChannelIDInvalid) || errors.Is(err, ua.StatusBadServerNotConnected)
}

func (d *Driver) readChunk(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	req := &ua.ReadRequest{
		MaxAge:             0,
		TimestampsToReturn: ua.TimestampsToReturnBoth,
		NodesToRead:        make([]*ua.ReadValueID, len(points)),
	}
	for i, p := range points {
		req.NodesToRead[i] = valueID(d.nodeOf(p))
	}
	res, err := d.g.Read(ctx, req)
	if err != nil {
		return nil, err
	}
	return d.readResults(points, res)
}

// readResults turns a ReadResponse for points into their samples.
func (d *Driver) readResults(points []driver.Point, res *ua.ReadResponse) ([]telemetry.Sample, error) {
	if res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
		return nil, res.ResponseHeader.ServiceResult
	}
	if len(res.Results) != len(points) {
		return nil, fmt.Errorf("reading %d nodes: the server answered %d results", len(points), len(res.Results))
	}
	now := d.now()
	out := make([]telemetry.Sample, 0, len(points))
	for i, p := range points {
		s := d.sample(p, res.Results[i], now)
		d.mu.Lock()
		m := d.tl.of(p.ID)
		t, ok := polledTime(m.last, res.Results[i], now)
		if ok {
			s.Time = t
		}
		d.mu.Unlock()
		if d.advance(p, m, s.Time, ok, true, now) {
			out = append(out, s)
		}
	}
	return out, nil
}

// advance records a live sample of p at ms in its mark m when ok and ms is
// later than the mark, and reports whether the sample is emitted. A fresh
// sample (read or notified in the current session) also notes that the
// point was heard since the session opened, which ends its gap. A sample
// that is not emitted is counted. One that got no time at all (ok false: a
// steady value polled twice within a millisecond, a server clock ahead of
// the agent's) is logged once until the point's time advances again; one
// whose given time is not later is a repeat (the initial value of a
// subscription recreated after a reconnect, which is expected) and only
// logged at debug level.
func (d *Driver) advance(p driver.Point, m *mark, ms int64, ok, fresh bool, now time.Time) bool {
	d.mu.Lock()
	repeat := ok && ms <= m.last
	ok = ok && !repeat
	var last int64
	var warn, recovered bool
	if fresh && !m.heard {
		m.heard = true
		if ok {
			m.first = ms
		}
	}
	if ok {
		m.last = ms
		recovered, m.stuck = m.stuck, false
	} else {
		d.notLater++
		last = m.last
		if !repeat {
			warn, m.stuck = !m.stuck, true
		}
	}
	d.mu.Unlock()
	switch {
	case repeat:
		d.log.Debug("OPC UA notification repeats the point's last sample; left out", "point", p.Ref, "sample_time", time.UnixMilli(ms).UTC().Format(time.RFC3339Nano))
	case warn:
		d.log.Warn("OPC UA point's time does not advance past its last sample; leaving its samples out until it does (counted as samples_not_later)",
			"point", p.Ref, "last_sample", time.UnixMilli(last).UTC().Format(time.RFC3339Nano), "agent_time", now.UTC().Format(time.RFC3339Nano))
	case recovered:
		d.log.Info("OPC UA point's time advances again", "point", p.Ref)
	}
	return ok
}

func (d *Driver) nodeOf(p driver.Point) *ua.NodeID {
	if pc, ok := d.points[p.Ref]; ok {
		return pc.node
	}
	n, _ := ua.ParseNodeID(p.Ref) // Read validated it
	return n
}

// sample turns a DataValue into a sample of p, logging a point's bad
// status when it starts and again when it clears.
func (d *Driver) sample(p driver.Point, dv *ua.DataValue, now time.Time) telemetry.Sample {
	s := telemetry.Sample{PointID: p.ID, Time: now.UnixMilli()}
	if dv == nil {
		s.Status = telemetry.StatusFault
		return s
	}
	if ms, ok := valueTime(dv); ok {
		s.Time = ms
	}
	s.Status = mapStatus(dv.Status)
	if s.Status == telemetry.StatusOK || s.Status == telemetry.StatusStale || s.Status == telemetry.StatusOverridden {
		var v any
		if dv.Value != nil {
			v = dv.Value.Value()
		}
		f, ok := toFloat(v)
		if !ok {
			d.noteFault(p, ua.StatusBadTypeMismatch, fmt.Sprintf("value of type %T is not a number", v))
			s.Status = telemetry.StatusFault
			return s
		}
		s.Value = f
	}
	if dv.Status&0x80000000 != 0 {
		d.noteFault(p, dv.Status, "")
	} else {
		d.noteOK(p)
	}
	return s
}

// valueTime is the time a server gave a value, in Unix ms: its source
// timestamp, else its server timestamp; false when it gave neither.
func valueTime(dv *ua.DataValue) (int64, bool) {
	switch {
	case validTime(dv.SourceTimestamp):
		return dv.SourceTimestamp.UnixMilli(), true
	case validTime(dv.ServerTimestamp):
		return dv.ServerTimestamp.UnixMilli(), true
	}
	return 0, false
}

func (d *Driver) noteFault(p driver.Point, code ua.StatusCode, why string) {
	d.mu.Lock()
	prev, had := d.faulty[p.Ref]
	d.faulty[p.Ref] = code
	d.mu.Unlock()
	if had && prev == code {
		return
	}
	if why == "" {
		why = code.Error()
	}
	// The node id is local information: logs stay on the box.
	d.log.Warn("OPC UA point is faulty", "point", p.Ref, "status", fmt.Sprintf("0x%08X", uint32(code)), "reason", why)
}

func (d *Driver) noteOK(p driver.Point) {
	d.mu.Lock()
	_, had := d.faulty[p.Ref]
	delete(d.faulty, p.Ref)
	d.mu.Unlock()
	if had {
		d.log.Info("OPC UA point recovered", "point", p.Ref)
	}
}

// mapStatus maps an OPC UA status code onto a sample status. Severity
// decides most: Good is ok, Uncertain is stale (the server vouches for the
// value only partly), Bad is a fault; the codes that say more are mapped
// on their own.
func mapStatus(c ua.StatusCode) telemetry.Status {
	switch c & 0xFFFF0000 { // the low bits are info bits
	case ua.StatusGoodLocalOverride:
		return telemetry.StatusOverridden
	case ua.StatusBadOutOfService:
		return telemetry.StatusOutOfService
	case ua.StatusBadNoCommunication, ua.StatusBadCommunicationError, ua.StatusBadNotConnected, ua.StatusBadWaitingForInitialData, ua.StatusBadServerNotConnected, ua.StatusBadTimeout:
		return telemetry.StatusCommFailure
	}
	switch c >> 30 {
	case 0:
		return telemetry.StatusOK
	case 1:
		return telemetry.StatusStale
	}
	return telemetry.StatusFault
}

// toFloat converts a variant's value to a float64 where it is a number.
func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	case int8:
		return float64(x), true
	case uint8:
		return float64(x), true
	case int16:
		return float64(x), true
	case uint16:
		return float64(x), true
	case int32:
		return float64(x), true
	case uint32:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case float32:
		return float64(x), !math.IsNaN(float64(x)) && !math.IsInf(float64(x), 0)
	case float64:
		return x, !math.IsNaN(x) && !math.IsInf(x, 0)
	}
	return 0, false
}

// readError classifies a failed read for the poller: a busy server is
// ErrBusy, a refusal or a cancelled context is passed on, and anything else
// drops the session and is ErrConnLost (the poller closes, backs off and
// connects again; a Read before that reopens the session by itself).
//
// A Read whose deadline passed while the server did not answer counts as
// unanswered; after maxUnanswered in a row the session is dropped too. A
// connection whose bytes vanish (a pulled cable, a dead host) sends no
// reset, and while requests are outstanding TCP takes many minutes to give
// up on it; a poller whose deadline is shorter than request_timeout would
// otherwise wait on it all that time.
func (d *Driver) readError(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		d.mu.Lock()
		d.unanswered++
		n := d.unanswered
		d.mu.Unlock()
		if n >= maxUnanswered {
			d.drop(ctx, fmt.Errorf("no answer to %d reads in a row: %w", n, err))
			return fmt.Errorf("reading %s: no answer to %d reads in a row, reconnecting: %w: %w", d.cfg.endpoint, n, err, driver.ErrConnLost)
		}
	}
	switch {
	case errors.Is(err, driver.ErrRefused), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case isBusy(err):
		return fmt.Errorf("reading %s: %w: %w", d.cfg.endpoint, err, driver.ErrBusy)
	}
	d.drop(ctx, err)
	return fmt.Errorf("reading %s: %w: %w", d.cfg.endpoint, err, driver.ErrConnLost)
}

// maxUnanswered is how many Reads in a row may pass their deadline with
// no answer before the session is given up as dead.
const maxUnanswered = 2

func isBusy(err error) bool {
	var sc ua.StatusCode
	if errors.As(err, &sc) {
		switch sc {
		case ua.StatusBadTooManyOperations, ua.StatusBadTCPServerTooBusy, ua.StatusBadTooManySessions, ua.StatusBadResourceUnavailable:
			return true
		}
	}
	return false
}

// Close ends the session and stops the subscription, and rewinds the
// backfill progress of Reads not committed. Read fails until Connect
// opens a new session; Close twice is harmless.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.connected = false
	sub := d.sub
	d.sub = nil
	d.droppedBefore += sub.droppedValues()
	// The poller closes the driver after a read its buffer refused: what
	// that read backfilled must be read again from the committed place.
	d.rollback()
	d.mu.Unlock()
	d.retire(sub)
	d.g.close(context.Background(), 2*time.Second)
	return nil
}

// Sessions returns how many sessions the driver has tried to create; with
// Refusals it is what the status command and the reconnect tests look at.
func (d *Driver) Sessions() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sessions
}

// Attempts returns how many times the driver tried to connect.
func (d *Driver) Attempts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.attempts
}

// Refusals returns how many requests the read-only guard refused.
func (d *Driver) Refusals() uint64 { return d.g.refusals() }

// Counters reports the requests the guard let through and refused, the
// sessions created and the connection attempts.
func (d *Driver) Counters() []driver.Counter {
	sent, refused := d.g.stats()
	var ns, nr uint64
	for _, v := range sent {
		ns += v
	}
	for _, v := range refused {
		nr += v
	}
	d.mu.Lock()
	sessions, attempts, sub, notLater, subGaps, histSamples := d.sessions, d.attempts, d.sub, d.notLater, d.subGaps, d.histSamples
	dropped := d.droppedBefore + sub.droppedValues() + d.carryDropped
	d.mu.Unlock()
	return []driver.Counter{
		{Name: "requests", Value: ns},
		{Name: driver.GuardRefusals, Value: nr},
		{Name: "sessions_created", Value: uint64(sessions)},
		{Name: "connect_attempts", Value: uint64(attempts)},
		{Name: "subscription_values_dropped", Value: dropped},
		{Name: "samples_not_later", Value: notLater},
		{Name: "subscription_gaps", Value: subGaps},
		{Name: "history_samples", Value: histSamples},
	}
}

// dialFrom is the option that dials the server from local (the control
// NIC), bound to the interface holding it, or lets the kernel choose when
// local is nil. It must come before
// opcua.DialTimeout, which sets the timeout of the dialer it installs.
func dialFrom(local net.IP) opcua.Option {
	d := &net.Dialer{Timeout: opcua.DefaultDialTimeout}
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
		// Bound to the control NIC too, not only its address: the
		// connection cannot leave by the uplink whatever the routes say.
		ip, _ := netip.AddrFromSlice(local)
		ctl, err := nicbind.ForAddress(ip.Unmap(), nil)
		if err != nil {
			ctl = func(string, string, syscall.RawConn) error { return err }
		}
		d.Control = ctl
	}
	// A copy: gopcua's default dialer shares one global ACK, which options
	// such as MaxMessageSize would change for every client.
	ack := *uacp.DefaultClientACK
	return opcua.Dialer(&uacp.Dialer{Dialer: d, ClientACK: &ack})
}
