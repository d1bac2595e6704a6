// Package server is the ingest's agent listener: agents upload point tables
// and batches over HTTP/2 with TLS 1.3 and a client certificate; every batch
// is decoded and checked in full before it is archived, and archived under a
// name derived from the agent and its sequence number so that a retry is
// idempotent.
//
// The protocol:
//
//	PUT  /v1/tables/{hash}  a point table (batch.EncodePointTable); 201 stored, 200 already there
//	POST /v1/batches        a batch (batch.Encode) with Sightglass-Sent-At; 200 {"status":"stored"|"duplicate","seq":N}
//
// With a Registry, also: POST /v1/enroll, GET /v1/ca.crt, GET /v1/crl and
// GET /v1/certs/{serial} without a client certificate (enrollment and the
// status query rate-limited per remote address), and POST /v1/renew and
// PUT /v1/catalog with one.
//
// Every error is JSON {"error": "...", "code": "..."} with a 4xx or 5xx
// status; the codes are the Code* constants. A 503 carries Retry-After.
// The agent's identity (tenant, site, agent) comes only from its verified
// certificate, never from what it sends.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// Defaults for the Config fields left zero.
const (
	DefaultMaxBatchBytes   = 8 << 20
	DefaultMaxTableBytes   = 16 << 20
	DefaultMaxSkew         = 15 * time.Minute
	DefaultMaxAge          = 10 * 365 * 24 * time.Hour
	DefaultShutdownTimeout = 30 * time.Second
	// DefaultStoreTimeout bounds the archive's work for one request, well
	// inside the agent's upload timeout (30s by default), so a hanging
	// store answers 503 and the agent retries later instead of every
	// upload running into its own deadline with no answer.
	DefaultStoreTimeout = 20 * time.Second
)

// Timeouts of the agent listener. A batch of a few MiB over a slow building
// uplink can take a while, hence the generous read timeout; the header
// timeout stops idle half-open connections from piling up.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 2 * time.Minute
	writeTimeout      = 2 * time.Minute
	idleTimeout       = 2 * time.Minute
	readyTimeout      = 5 * time.Second
)

// Config tunes a Server. A zero field means its default.
type Config struct {
	// MaxBatchBytes caps a batch body (DefaultMaxBatchBytes); larger ones
	// get 413.
	MaxBatchBytes int64
	// MaxTableBytes caps a point table body (DefaultMaxTableBytes).
	MaxTableBytes int64
	// MaxSkew is how far after now a sample time may be (DefaultMaxSkew).
	MaxSkew time.Duration
	// MaxAge is how far before now a sample time may be (DefaultMaxAge).
	MaxAge time.Duration
	// Limits bound the batch decoder (its own defaults when zero).
	Limits batch.Limits
	// ShutdownTimeout is how long Serve waits for in-flight requests once
	// its context is done (DefaultShutdownTimeout).
	ShutdownTimeout time.Duration
	// StoreTimeout bounds the archive calls one request makes (point
	// tables, claims, the batch blob): past it the request is answered
	// 503 with Retry-After (DefaultStoreTimeout).
	StoreTimeout time.Duration
	// Now is the clock for the sample time window and the request's send
	// time (time.Now).
	Now func() time.Time
	// CertNow is the clock agent certificates are judged by, at the
	// handshake and again at every request (time.Now). It is apart from
	// Now because certificates are made with the real time while tests
	// pin Now to judge sample times. The anonymous rate limiter and the
	// audit throttle run on it too: they measure real time.
	CertNow func() time.Time
	// Registry, when set, enables enrollment, renewal, the CRL, status
	// queries and the catalogue, checks every agent against it at every
	// handshake and request (revocation), and receives the audit log.
	// Without it only certificates from the CA are checked.
	Registry Registry
	// AnonymousLimit rate-limits, per remote address, the routes that
	// answer without a client certificate and cost a database look-up:
	// enrollment and the certificate status query (DefaultAnonymousBurst,
	// DefaultAnonymousEvery). The address is the TCP peer's, so a load
	// balancer in front must pass the client's address through (TLS
	// passthrough with the source address kept), or every agent shares
	// one bucket.
	AnonymousLimit Limit
	// AgentValidity is the lifetime of certificates issued at enrollment
	// and renewal (pki.DefaultAgentValidity).
	AgentValidity time.Duration
	// CatalogPolicy caps what point metadata is kept: CatalogFull (the
	// default), CatalogTagsOnly or CatalogNone.
	CatalogPolicy string
	// Observer, when set, is shown every batch once it is archived,
	// retries included (never a refused one), e.g. to update the
	// dashboard's hot store. Its error is logged and counted
	// (Stats.ObserveErrors); it never undoes the archive, which is the
	// truth. With an ObserveQueue the batch is then recorded there and
	// retried later; without one the dashboard misses that batch unless
	// the agent retries it or an operator runs `sightglass-ingest store
	// rebuild`.
	Observer Observer
	// ObserveQueue, when set with an Observer, records every batch the
	// Observer failed on before the agent is answered, so that the batch
	// is observed later (observequeue.Queue). If the record cannot be
	// written either, the agent is answered 503 and keeps the batch: its
	// retry is a duplicate that is shown to the Observer again. A batch
	// the Observer takes is answered as before, at the same cost.
	ObserveQueue ObserveQueue
}

// ObserveQueue records archived batches the Observer failed on, durably,
// for a later retry.
type ObserveQueue interface {
	// Add records batch seq of id; it returns once the record is
	// durable, and adding one twice is not an error.
	Add(ctx context.Context, id pki.Identity, seq uint64) error
	// Pending is the number of batches recorded and not yet observed.
	Pending() int
}

// Observer receives every batch the server has archived, each time the
// agent sends it: a retry of a stored batch is shown again, so Observe
// must be idempotent per (agent, seq). It runs on the request's goroutine
// before the agent is answered, so it must be quick; it may be called
// concurrently.
type Observer interface {
	Observe(ctx context.Context, id pki.Identity, b *batch.Batch) error
}

var _ Observer = (*store.DB)(nil)

func (c *Config) setDefaults() {
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.MaxTableBytes <= 0 {
		c.MaxTableBytes = DefaultMaxTableBytes
	}
	if c.MaxSkew <= 0 {
		c.MaxSkew = DefaultMaxSkew
	}
	if c.MaxAge <= 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.StoreTimeout <= 0 {
		c.StoreTimeout = DefaultStoreTimeout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.CertNow == nil {
		c.CertNow = time.Now
	}
	if c.AgentValidity <= 0 {
		c.AgentValidity = pki.DefaultAgentValidity
	}
	if c.CatalogPolicy == "" {
		c.CatalogPolicy = CatalogFull
	}
}

// Server serves agents and the internal health endpoints. Beyond a cache
// of immutable point tables it holds only the rate limits and the audit
// throttle, which are per node, so any number of replicas can share one
// blob store; they must share one Registry too, or an agent enrolled on one
// is refused by the others.
type Server struct {
	cfg    Config
	store  blob.Store
	ca     *pki.CA
	tls    *tls.Config
	log    *slog.Logger
	tables *pointtable.Cache // decoded point tables: a batch costs no store read for its table
	// anonLimit rate-limits enrollment and status queries per address.
	anonLimit *ipLimiter

	// draining turns /readyz to 503 once shutdown starts, so a load
	// balancer stops sending new work while in-flight batches finish.
	draining atomic.Bool

	mu    sync.Mutex
	stats Stats
	// refusalsAudited throttles the audit of refused requests (see
	// auditRefusal); guarded by mu.
	refusalsAudited map[refusalKey]*refusalRun
	// observeOutage logs a run of Observer failures once (batches.go).
	observeOutage observeOutage
}

// New returns a Server archiving into store and accepting agents whose
// certificates ca issued (pki.ServerTLSConfig: TLS 1.3, client certificate
// required and verified, h2).
func New(cfg Config, store blob.Store, ca *pki.CA, logger *slog.Logger) (*Server, error) {
	if store == nil || ca == nil || logger == nil {
		return nil, errors.New("creating ingest server: store, CA and logger are required")
	}
	switch cfg.CatalogPolicy {
	case "", CatalogFull, CatalogTagsOnly, CatalogNone:
	default:
		return nil, fmt.Errorf("creating ingest server: catalogue policy %q: want %s, %s or %s", cfg.CatalogPolicy, CatalogFull, CatalogTagsOnly, CatalogNone)
	}
	cfg.setDefaults()
	s := &Server{
		cfg:       cfg,
		store:     store,
		ca:        ca,
		log:       logger,
		tables:    pointtable.NewCache(pointtable.DefaultMaxPoints),
		anonLimit: newIPLimiter(cfg.AnonymousLimit),
		stats:     Stats{Refused: map[string]uint64{}},
	}
	// Without a registry there is no enrollment, so every connection must
	// bring a certificate; with one, enrollment and the CRL need none and
	// every other route refuses a connection without one.
	tlsCfg, err := pki.ServerTLSConfig(ca, pki.ServerOptions{
		AllowAnonymous: cfg.Registry != nil,
		Check: func(id pki.Identity, leaf *x509.Certificate) error {
			if err := s.checkAgent(context.Background(), id, leaf); err != nil {
				s.log.Warn("refused a revoked or unknown agent at the handshake", "agent", id.Agent, "err", err)
				return err
			}
			return nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating ingest server: %w", err)
	}
	// The identity is read from the verified chain; a config that did not
	// verify one would let anybody in, so refuse to run with it.
	if (tlsCfg.ClientAuth != tls.RequireAndVerifyClientCert && tlsCfg.ClientAuth != tls.VerifyClientCertIfGiven) || tlsCfg.MinVersion < tls.VersionTLS13 {
		return nil, errors.New("creating ingest server: TLS config must verify client certificates and require TLS 1.3")
	}
	// The handshake judges certificate validity by the same clock as
	// every later request (checkValidity).
	tlsCfg.Time = s.cfg.CertNow
	s.tls = tlsCfg
	return s, nil
}

// Serve serves agents on ln (a plain TCP listener; Serve adds TLS) until
// ctx is done, then stops accepting and waits up to ShutdownTimeout for
// in-flight requests to finish. It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// Refusal counts the audit throttle held back are written every
	// minute and when Serve returns.
	defer s.startRefusalFlush(ctx)()
	srv := &http.Server{
		Handler:           s.agentHandler(),
		TLSConfig:         s.tls.Clone(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		// Refused handshakes (wrong CA, no certificate) land here; an
		// operator chasing a misconfigured agent needs to see them.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelInfo),
	}
	return s.run(ctx, "agent listener", srv, func() error { return srv.ServeTLS(ln, "", "") })
}

// ServeInternal serves the plain-HTTP health endpoints on ln until ctx is
// done: /healthz answers 200 while the process runs (with the
// ObserveQueue's pending count when there is one); /readyz answers 200
// when the blob store answers and shutdown has not begun, else 503. Keep ln
// on loopback or a private network: it is not authenticated.
func (s *Server) ServeInternal(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.internalHandler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return s.run(ctx, "internal listener", srv, func() error { return srv.Serve(ln) })
}

// Run serves agents on agentLn and, when internalLn is not nil, the health
// endpoints on internalLn, until ctx is done or one of them fails, which
// stops the other.
func (s *Server) Run(ctx context.Context, agentLn, internalLn net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var internalErr error
	if internalLn != nil {
		wg.Go(func() {
			internalErr = s.ServeInternal(ctx, internalLn)
			cancel()
		})
	}
	err := s.Serve(ctx, agentLn)
	cancel()
	wg.Wait()
	return errors.Join(err, internalErr)
}

func (s *Server) run(ctx context.Context, what string, srv *http.Server, serve func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving %s: %w", what, err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	// The parent context is done; shutdown gets its own deadline so that
	// in-flight batches can still be stored and acknowledged.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		srv.Close()
		return fmt.Errorf("shutting down %s: %w", what, err)
	}
	return nil
}

// Stats are the server's counters since it started.
type Stats struct {
	BatchesStored    uint64 // batches archived for the first time
	BatchesDuplicate uint64 // retries of batches already archived
	// Refused counts refused batch and table requests by error code.
	Refused         map[string]uint64
	Samples         uint64 // samples in stored batches
	Bytes           uint64 // bytes of stored batches
	TablesStored    uint64
	TablesDuplicate uint64
	ObserveErrors   uint64 // batches the Observer failed on
	// ObservePending is the ObserveQueue's count of batches recorded
	// for a retry and not yet observed (0 without a queue).
	ObservePending int
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	pending := 0
	if s.cfg.ObserveQueue != nil {
		pending = s.cfg.ObserveQueue.Pending()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ObservePending = pending
	st.Refused = make(map[string]uint64, len(s.stats.Refused))
	for k, v := range s.stats.Refused {
		st.Refused[k] = v
	}
	return st
}

func (s *Server) count(f func(st *Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}
