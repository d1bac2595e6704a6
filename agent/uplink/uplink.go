// Package uplink sends sealed batches from the agent's buffer to the ingest
// over HTTPS (HTTP/2, TLS 1.3, client certificate), outbound only.
//
// The uplink drains a Source (the buffer) in sequence order, keeps a bounded
// number of batches in flight, and removes a batch from the buffer only once
// the ingest has answered that it stored it (Ack) or refused it for good
// (Reject). Anything else — network errors, timeouts, 5xx, 429 — leaves the
// batch in the buffer and is retried after Retry-After or a jittered
// exponential backoff shared by all in-flight uploads, so an outage costs one
// request per backoff round, not one per batch.
//
// The uplink only ever dials: it opens no listening socket. It honours
// HTTPS_PROXY (or a proxy function) and can dial from a chosen local address
// so that traffic leaves through the uplink NIC.
//
// The protocol with the ingest:
//
//	PUT  /v1/tables/{hash}  body: encoded point table      → 200/201 stored
//	POST /v1/batches        body: encoded batch,
//	                        Sightglass-Seq: {seq}          → 200 {"status":"stored"|"duplicate","seq":N}
//	                                                         422 {"code":"unknown_point_table"} → PUT the table, retry
//	                                                         409 and other 4xx → the batch is rejected
//	                                                         408, 429, 5xx → retried (Retry-After honoured)
//
// 401, 403, 404, 405, 407 and 421 are retried too rather than rejected: they
// say the endpoint or the agent's identity is wrong, not the batch.
// Redirects are not followed.
package uplink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// Batch is a sealed batch as the uplink needs it.
type Batch struct {
	// Seq is the batch's sequence number; the Source hands batches out in
	// increasing Seq order.
	Seq uint64
	// Data is the encoded batch. It must stay valid and unchanged until the
	// batch is acked or rejected (a bbolt-backed Source copies it).
	Data []byte
	// TableHash names the point table Data references.
	TableHash batch.TableHash
	// Samples is the number of samples in the batch, for statistics.
	Samples int
}

// Source is the store the uplink drains: the agent's buffer. Its methods are
// called from several goroutines at once.
type Source interface {
	// Next returns the oldest batch with Seq > after; ok is false when there
	// is none yet.
	Next(after uint64) (b Batch, ok bool, err error)
	// Table returns the encoded point table h. An error wrapping
	// batch.ErrUnknownTable means the Source does not have it, so a batch
	// that needs it can never be stored and is rejected; any other error is
	// retried.
	Table(h batch.TableHash) ([]byte, error)
	// Ack removes a batch the ingest has stored.
	Ack(seq uint64) error
	// Reject quarantines a batch the ingest has refused for good.
	Reject(seq uint64, reason string) error
}

// Defaults for the zero values of Config.
const (
	DefaultMaxInFlight   = 4
	DefaultTimeout       = 30 * time.Second
	DefaultBackoffBase   = time.Second
	DefaultBackoffMax    = 5 * time.Minute
	DefaultRetryAfterMax = 10 * time.Minute
	DefaultPollInterval  = 30 * time.Second
)

// Config configures an Uplink. The zero value of every optional field means
// its default.
type Config struct {
	// URL is the ingest's base URL, https://host:port; a path prefix is
	// kept and /v1/... appended to it. Required.
	URL string
	// Cert returns the agent's client certificate. It is called at every
	// TLS handshake, so a rotated certificate is picked up by the next
	// connection (see CertificateRotated). Required.
	Cert func() (*tls.Certificate, error)
	// Roots is the CA pool that signs the ingest's server certificate; the
	// system roots are never used. Required.
	Roots *x509.CertPool
	// LocalAddr is the IP address to dial from (the uplink NIC); "" lets
	// the kernel choose.
	LocalAddr string
	// Interface, if set, is the uplink NIC: every connection (to the
	// ingest or to the proxy) is bound to it (SO_BINDTODEVICE), so the
	// uplink never leaves by the control NIC whatever the routes say.
	Interface string
	// Proxy chooses the proxy for a request; nil means
	// http.ProxyFromEnvironment (HTTPS_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// MaxInFlight bounds the batches being uploaded at once; 0 means 4.
	MaxInFlight int
	// Timeout bounds each request; 0 means 30s. With a bandwidth cap, the
	// time the cap needs to send the body is added.
	Timeout time.Duration
	// BackoffBase and BackoffMax shape the retry backoff: the n-th
	// consecutive failure waits a random time in [0, min(max, base·2^(n-1))]
	// ("full jitter"). 0 means 1s and 5m.
	BackoffBase, BackoffMax time.Duration
	// RetryAfterMax caps a server's Retry-After; 0 means 10m.
	RetryAfterMax time.Duration
	// PollInterval is how often the buffer is checked when nobody calls
	// Notify; 0 means 30s.
	PollInterval time.Duration
	// BytesPerSecond caps the upload bandwidth of all requests together;
	// 0 means no cap.
	BytesPerSecond int64
	// Logger receives the uplink's logs; nil discards them.
	Logger *slog.Logger
}

// Stats is a snapshot of the uplink's state, for status and metrics.
type Stats struct {
	// LastSuccess is when the ingest last stored a batch.
	LastSuccess time.Time
	// LastError is the most recent failure ("" if none since New) and
	// LastErrorAt when it happened.
	LastError   string
	LastErrorAt time.Time
	// ConsecutiveFailures counts failed rounds since the last success;
	// uploads in flight together that fail together count once.
	ConsecutiveFailures int
	// Batches, Samples and Bytes count what the ingest stored (duplicates
	// of a batch it already had included); Bytes includes point tables.
	Batches, Samples, Bytes uint64
	// Duplicates counts batches the ingest already had.
	Duplicates uint64
	// Tables counts point tables uploaded.
	Tables uint64
	// Rejected counts batches the ingest refused for good.
	Rejected uint64
	// InFlight is the number of batches being uploaded now.
	InFlight int
}

// Uplink uploads batches from a Source to the ingest. Create it with New.
type Uplink struct {
	cfg      Config
	src      Source
	client   *http.Client
	log      *slog.Logger
	base     *url.URL
	batchURL string
	pace     *pacer            // nil without a bandwidth cap
	rnd      func(int64) int64 // the backoff's jitter; tests replace it
	conns    *connTracker      // nil over a test transport
	probe    *refusalProbe     // asks why a connection was refused; nil over a test transport
	notify   chan struct{}
	running  atomic.Bool

	mu        sync.Mutex
	gen       uint64        // bumped at every failed round and every success; see failed
	okGen     uint64        // gen just after the last success: older attempts are stale
	retryAt   time.Time     // no attempt before this
	recovered chan struct{} // closed and replaced at every success, waking waiters
	logged    string        // the failure last logged, to log only changes
	srcLogged string        // the buffer error last logged
	stats     Stats
}

// New checks cfg and returns an Uplink that reads batches from src. It does
// no network I/O.
func New(cfg Config, src Source) (*Uplink, error) {
	var problems []error
	if _, err := cfg.check(); err != nil {
		problems = append(problems, err)
	}
	if cfg.Cert == nil {
		problems = append(problems, errors.New("no client certificate: set Config.Cert"))
	}
	if cfg.Roots == nil {
		problems = append(problems, errors.New("no CA pool for the ingest's certificate: set Config.Roots"))
	}
	conns := newConnTracker()
	// Each transport gets its own session cache: a TLS 1.3 ticket reaches
	// the client after the handshake, so an old connection can still put
	// a session of the old certificate into a cache that was just emptied.
	build := func() (http.RoundTripper, error) {
		return newTransport(cfg.withDefaults(), conns, newSessionCache())
	}
	tr, err := newRotatingTransport(build)
	if err != nil {
		problems = append(problems, err)
	}
	probeTr, err := newTransport(cfg.withDefaults(), conns, nil)
	if err != nil {
		problems = append(problems, err)
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("configuring uplink: %w", err)
	}
	u, err := newUplink(cfg, src, tr)
	if err != nil {
		return nil, err
	}
	u.conns = conns
	u.probe = newRefusalProbe(probeTr, cfg.URL, cfg.Cert)
	return u, nil
}

// newUplink is New with the transport given, so tests can run the uplink
// over an in-memory transport inside a synctest bubble.
func newUplink(cfg Config, src Source, rt http.RoundTripper) (*Uplink, error) {
	if src == nil {
		return nil, errors.New("configuring uplink: no batch source")
	}
	base, err := cfg.check()
	if err != nil {
		return nil, fmt.Errorf("configuring uplink: %w", err)
	}
	cfg = cfg.withDefaults()
	u := &Uplink{
		cfg: cfg,
		src: src,
		client: &http.Client{
			Transport: rt,
			// A redirect would send batches somewhere nobody configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log:       cfg.Logger,
		base:      base,
		batchURL:  base.JoinPath("v1", "batches").String(),
		notify:    make(chan struct{}, 1),
		recovered: make(chan struct{}),
		rnd:       rand.Int64N,
	}
	if cfg.BytesPerSecond > 0 {
		u.pace = &pacer{rate: float64(cfg.BytesPerSecond)}
	}
	return u, nil
}

// check validates what does not depend on the transport and returns the
// parsed base URL.
func (c Config) check() (*url.URL, error) {
	var problems []error
	base, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		problems = append(problems, errors.New("no ingest URL: set it to https://host:port"))
	case err != nil:
		problems = append(problems, fmt.Errorf("ingest URL %q: %w", c.URL, err))
	case base.Scheme != "https":
		problems = append(problems, fmt.Errorf("ingest URL %q: scheme must be https", c.URL))
	case base.Host == "":
		problems = append(problems, fmt.Errorf("ingest URL %q: no host", c.URL))
	case base.User != nil || base.RawQuery != "" || base.Fragment != "":
		problems = append(problems, fmt.Errorf("ingest URL %q: must not hold user info, a query or a fragment", c.URL))
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxInFlight", int64(c.MaxInFlight)},
		{"Timeout", int64(c.Timeout)},
		{"BackoffBase", int64(c.BackoffBase)},
		{"BackoffMax", int64(c.BackoffMax)},
		{"RetryAfterMax", int64(c.RetryAfterMax)},
		{"PollInterval", int64(c.PollInterval)},
		{"BytesPerSecond", c.BytesPerSecond},
	} {
		if f.v < 0 {
			problems = append(problems, fmt.Errorf("%s is negative (%d): use 0 for the default", f.name, f.v))
		}
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	return base, nil
}

func (c Config) withDefaults() Config {
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.BackoffBase == 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.RetryAfterMax == 0 {
		c.RetryAfterMax = DefaultRetryAfterMax
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Notify tells the uplink that a batch was sealed, so it looks at the buffer
// now rather than at the next poll. It never blocks.
func (u *Uplink) Notify() {
	select {
	case u.notify <- struct{}{}:
	default:
	}
}

// CertificateRotated makes every request from now on go over a new
// connection with a full handshake that presents the certificate
// Config.Cert returns now: a new transport with an empty TLS session cache
// takes over. Closing idle connections alone would not do: over
// HTTP/2 a busy agent's connection is never idle, and new requests would
// keep riding on it under the old certificate. Requests in flight finish
// on their old connection, which is closed once the last of them is done.
func (u *Uplink) CertificateRotated() {
	if rt, ok := u.client.Transport.(*rotatingTransport); ok {
		if err := rt.rotate(); err != nil {
			// newTransport failed at New with the same config, so this
			// does not happen; the old transport carries on meanwhile.
			u.log.Error("building a new transport after a certificate rotation failed; busy connections keep the old certificate until they close", "err", err)
		} else {
			return
		}
	}
	u.client.CloseIdleConnections()
}

// rotatingTransport is the uplink's transport: it sends every request
// through the current http.Transport and, at a certificate rotation,
// replaces it with a new one and closes the old one's connections once
// the requests still on them have finished.
type rotatingTransport struct {
	build func() (http.RoundTripper, error)

	mu  sync.Mutex
	cur *transportGen
}

// transportGen is one transport and the requests in flight on it.
type transportGen struct {
	rt       http.RoundTripper
	inFlight int  // requests sent and whose body is not closed yet
	retired  bool // replaced: close its connections when inFlight is 0
}

func newRotatingTransport(build func() (http.RoundTripper, error)) (*rotatingTransport, error) {
	rt, err := build()
	if err != nil {
		return nil, err
	}
	return &rotatingTransport{build: build, cur: &transportGen{rt: rt}}, nil
}

// RoundTrip sends req on the current transport. The request counts as in
// flight until its response body is closed, since the connection carries
// it until then.
func (t *rotatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.mu.Lock()
	g := t.cur
	g.inFlight++
	t.mu.Unlock()
	resp, err := g.rt.RoundTrip(req)
	if err != nil {
		t.done(g)
		return nil, err
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: sync.OnceFunc(func() { t.done(g) })}
	return resp, nil
}

// done ends one request on g and closes g's connections if it was the
// last one of a retired transport.
func (t *rotatingTransport) done(g *transportGen) {
	t.mu.Lock()
	g.inFlight--
	last := g.retired && g.inFlight == 0
	t.mu.Unlock()
	if last {
		closeIdle(g.rt)
	}
}

// rotate puts a new transport in place; the old one's idle connections
// close now, its busy ones when their last request is done.
func (t *rotatingTransport) rotate() error {
	rt, err := t.build()
	if err != nil {
		return err
	}
	t.mu.Lock()
	old := t.cur
	old.retired = true
	t.cur = &transportGen{rt: rt}
	t.mu.Unlock()
	// Closing idle connections also marks an http.Transport so that a
	// connection that turns idle later is closed rather than kept, which
	// covers HTTP/1.1; busy HTTP/2 connections are closed by done.
	closeIdle(old.rt)
	return nil
}

// CloseIdleConnections closes the current transport's idle connections
// (http.Client.CloseIdleConnections calls it).
func (t *rotatingTransport) CloseIdleConnections() {
	t.mu.Lock()
	rt := t.cur.rt
	t.mu.Unlock()
	closeIdle(rt)
}

func closeIdle(rt http.RoundTripper) {
	if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// doneBody is a response body that reports when it is closed.
type doneBody struct {
	io.ReadCloser
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// SendCatalog uploads the point catalogue (JSON, PUT /v1/catalog) over the
// uplink's mTLS transport (proxy, local address and bandwidth cap
// included) with the uplink's per-request timeout, and returns the
// ingest's status and answer. The uplink dials only while Run runs: a
// call made before Run has started waits for it (or for ctx), and one
// made after Run has returned fails.
func (u *Uplink) SendCatalog(ctx context.Context, catalog []byte) (int, []byte, error) {
	return u.call(ctx, http.MethodPut, "v1/catalog", catalog)
}

// RequestRenewal asks the ingest for a renewed certificate (JSON with the
// CSR, POST /v1/renew), as SendCatalog sends.
func (u *Uplink) RequestRenewal(ctx context.Context, request []byte) (int, []byte, error) {
	return u.call(ctx, http.MethodPost, "v1/renew", request)
}

// call sends one JSON request to the ingest and returns its answer.
func (u *Uplink) call(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	// The agent starts Run and the callers (catalogue, renewal) side by
	// side: a call that dialled before Run got under way would be refused
	// as if the uplink had stopped, and wait a whole retry for nothing.
	if u.conns != nil {
		if err := u.conns.waitStarted(ctx); err != nil {
			return 0, nil, fmt.Errorf("%s %s: waiting for the uplink to start: %w", method, path, err)
		}
	}
	a, err := u.exchange(ctx, method, u.base.JoinPath(path).String(), "application/json", body, nil)
	if err != nil {
		return 0, nil, err
	}
	return a.status, a.body, nil
}

// Stats returns a snapshot of the uplink's state.
func (u *Uplink) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stats
}

// Run uploads batches until ctx is done, then returns nil once every
// in-flight upload has finished or been abandoned; an abandoned batch stays
// in the Source and is sent again by the next Run. Only one Run may be
// active at a time.
func (u *Uplink) Run(ctx context.Context) error {
	if !u.running.CompareAndSwap(false, true) {
		return errors.New("running uplink: already running")
	}
	defer u.running.Store(false)
	if u.conns != nil {
		u.conns.start()
		defer u.conns.stop()
	}
	var wg sync.WaitGroup
	// Deferred in this order so connections close after the last upload
	// returned: nothing is left open behind a stopped uplink.
	defer u.client.CloseIdleConnections()
	defer wg.Wait()

	slots := make(chan struct{}, u.cfg.MaxInFlight)
	poll := time.NewTicker(u.cfg.PollInterval)
	defer poll.Stop()
	var after uint64 // highest seq handed to an upload in this Run
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		b, ok, err := u.src.Next(after)
		if err == nil && ok && b.Seq <= after {
			err = fmt.Errorf("source returned seq %d after %d: sequence must increase", b.Seq, after)
		}
		u.sourceError(after, err)
		if err != nil || !ok {
			<-slots
			select {
			case <-ctx.Done():
				return nil
			case <-u.notify:
			case <-poll.C:
			}
			continue
		}
		after = b.Seq
		u.addInFlight(1)
		wg.Go(func() {
			defer func() {
				u.addInFlight(-1)
				<-slots
			}()
			u.deliver(ctx, b)
		})
	}
}

// sourceError logs a failure to read the buffer when it differs from the
// last one, and notes a recovery.
func (u *Uplink) sourceError(after uint64, err error) {
	u.mu.Lock()
	prev := u.srcLogged
	if err == nil {
		u.srcLogged = ""
	} else {
		u.srcLogged = err.Error()
		u.stats.LastError = "reading the buffer: " + err.Error()
		u.stats.LastErrorAt = time.Now()
	}
	u.mu.Unlock()
	switch {
	case err != nil && err.Error() != prev:
		u.log.Error("reading the next batch from the buffer failed; will retry at the next poll",
			"after_seq", after, "err", err)
	case err == nil && prev != "":
		u.log.Info("reading the buffer works again")
	}
}

func (u *Uplink) addInFlight(n int) {
	u.mu.Lock()
	u.stats.InFlight += n
	u.mu.Unlock()
}
