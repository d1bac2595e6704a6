// Package web is the dashboard facility engineers use: server-rendered HTML
// over HTTPS, every asset embedded in the binary (a building's browser may
// have no internet), one small script for chart zoom and nothing inline.
//
// Pages: the portfolio (buildings the user may see, agent health, stale
// points), a building (live values with search and filters), trends drawn
// from the hot store's rollups with CSV export, data completeness per
// point, the user's account (password, second factor) and, for admins,
// users, enrollment tokens, agents and the audit log.
//
// Security, as the product's policy promises: HTTPS only with HSTS (plain
// HTTP answers with a permanent redirect), argon2id password hashes with a
// minimum length and a common-password check, lockout per account and per
// source address, disabled accounts, optional TOTP (its secrets sealed at
// rest under a key file outside the database: totpseal.go), roles and building
// scope enforced by every handler (another building's URL answers 404,
// never data), idle and absolute session timeouts, the session id rotated
// at login and held in a __Host- cookie (HttpOnly, Secure, SameSite=Strict)
// that holds nothing else, CSRF tokens on every form, a strict
// Content-Security-Policy and error pages that leak nothing. Every login
// attempt, failure, lockout, password, role and assignment change, export
// and revocation goes to the audit log.
package web

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/secretbox"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Store is what the dashboard needs of the hot store; *store.DB is one. To
// run on PostgreSQL, implement it over a PostgreSQL database (see
// README.md).
type Store interface {
	User(ctx context.Context, name string) (store.User, error)
	UserByID(ctx context.Context, id int64) (store.User, error)
	Users(ctx context.Context) ([]store.User, error)
	AddUser(ctx context.Context, name, role, hash string) (store.User, error)
	SetPassword(ctx context.Context, name, hash string) error
	SetRole(ctx context.Context, name, role string) error
	SetDisabled(ctx context.Context, name string, disabled bool) error
	SetTOTP(ctx context.Context, name string, secret []byte) error
	ReplaceTOTP(ctx context.Context, userID int64, prev, next []byte) (bool, error)
	UseTOTPStep(ctx context.Context, userID, step int64) (bool, error)
	AssignSites(ctx context.Context, name string, sites []store.SiteRef) error
	// LoginFailure records an attempt and returns the counts with it, in
	// one transaction: the lockout decides from what it returns, so
	// parallel attempts cannot all see a count below the limit.
	LoginFailure(ctx context.Context, name, source string, since time.Time) (byName, bySource int, err error)
	ClearLoginFailures(ctx context.Context, name string) error

	CreateSession(ctx context.Context, id []byte, s store.Session) error
	Session(ctx context.Context, id []byte) (store.Session, error)
	TouchSession(ctx context.Context, id []byte) error
	DeleteSession(ctx context.Context, id []byte) error
	DeleteSessionsBefore(ctx context.Context, created, seen time.Time) error

	Sites(ctx context.Context) ([]store.Site, error)
	PutSite(ctx context.Context, ref store.SiteRef, name string) error
	Catalog(ctx context.Context, tenant, site string) ([]store.CatalogPoint, error)
	LatestValues(ctx context.Context, ref store.SiteRef) ([]store.Latest, error)
	Rollups(ctx context.Context, ref store.SiteRef, point uint64, res time.Duration, from, to time.Time) ([]store.Rollup, error)
	ReceivedAll(ctx context.Context, ref store.SiteRef, res time.Duration, from, to time.Time) (map[uint64][2]int64, error)
	AgentHealths(ctx context.Context) ([]store.AgentHealth, error)

	Agents(ctx context.Context) ([]store.Agent, error)
	Certs(ctx context.Context, agentID string) ([]store.Cert, error)
	Revoke(ctx context.Context, agentID, reason string) (store.Agent, error)
	Tokens(ctx context.Context) ([]store.Token, error)
	CreateToken(ctx context.Context, t store.Token) error
	Audit(ctx context.Context, actor, action, subject, detail string) (store.AuditEntry, error)
	AuditRecent(ctx context.Context, before int64, limit int) ([]store.AuditEntry, error)
}

var _ Store = (*store.DB)(nil)

// Defaults for the Config fields left zero.
const (
	DefaultIdleTimeout     = 30 * time.Minute
	DefaultAbsoluteTimeout = 12 * time.Hour
	DefaultLockoutWindow   = 15 * time.Minute
	DefaultMaxFailsPerUser = 5
	DefaultMaxFailsPerAddr = 20
	// DefaultStaleAfter is the least age at which a point counts as stale;
	// a point sampled slowly gets three of its intervals.
	DefaultStaleAfter = 10 * time.Minute
	// DefaultAgentOffline is how long without an upload before an agent
	// counts as offline.
	DefaultAgentOffline = 10 * time.Minute
)

// Config configures a Server. A zero field means its default.
type Config struct {
	// Store is the hot store (required).
	Store Store
	// Logger receives the access log and errors (required).
	Logger *slog.Logger
	// TOTPKeys seals the users' TOTP secrets in the store (required): a
	// keyring over a key file outside the database
	// (secretbox.LoadOrCreate). Run PrepareTOTPSecrets with it first.
	TOTPKeys *secretbox.Keyring
	// TLS is the listener's certificate configuration for Serve; nil is
	// allowed only when the caller terminates TLS itself (Handler).
	TLS *tls.Config
	// CAFingerprint goes into enrollment tokens made on the admin page;
	// zero disables making them there.
	CAFingerprint pki.Fingerprint
	// Now is the clock (time.Now).
	Now func() time.Time
	// IdleTimeout ends a session unused this long (DefaultIdleTimeout).
	IdleTimeout time.Duration
	// AbsoluteTimeout ends a session this long after login, used or not
	// (DefaultAbsoluteTimeout).
	AbsoluteTimeout time.Duration
	// LockoutWindow is how far back failed logins count
	// (DefaultLockoutWindow); MaxFailsPerUser and MaxFailsPerAddr failures
	// within it lock the account or the source address until they age out.
	LockoutWindow   time.Duration
	MaxFailsPerUser int
	MaxFailsPerAddr int
	// HashParams are the argon2id costs for new passwords
	// (DefaultHashParams).
	HashParams HashParams
	// TrustedProxies are the load balancers in front of the dashboard:
	// from them, X-Forwarded-For names the client (lockout per address,
	// audit). Empty: the connection's peer is the client.
	TrustedProxies []netip.Prefix
	// StaleAfter and AgentOffline tune the portfolio's warnings.
	StaleAfter   time.Duration
	AgentOffline time.Duration
	// PasswordChecks bounds the argon2id checks and hashes running at once
	// (twice GOMAXPROCS); PasswordCheckWait is how long a request waits
	// for a slot before it is answered 503 (DefaultPasswordCheckWait).
	PasswordChecks    int
	PasswordCheckWait time.Duration
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.AbsoluteTimeout, DefaultAbsoluteTimeout)
	def(&c.LockoutWindow, DefaultLockoutWindow)
	def(&c.StaleAfter, DefaultStaleAfter)
	def(&c.AgentOffline, DefaultAgentOffline)
	def(&c.PasswordCheckWait, DefaultPasswordCheckWait)
	if c.PasswordChecks <= 0 {
		c.PasswordChecks = defaultPasswordChecks()
	}
	if c.MaxFailsPerUser <= 0 {
		c.MaxFailsPerUser = DefaultMaxFailsPerUser
	}
	if c.MaxFailsPerAddr <= 0 {
		c.MaxFailsPerAddr = DefaultMaxFailsPerAddr
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.HashParams == (HashParams{}) {
		c.HashParams = DefaultHashParams
	}
}

// Server is the dashboard. It keeps no state of its own beyond parsed
// templates: sessions live in the store, so replicas can share one.
type Server struct {
	cfg   Config
	st    Store
	log   *slog.Logger
	pages map[string]*template.Template
	mux   *http.ServeMux
	// dummyHash is verified against when a sign-in names no user, so the
	// time taken does not tell which names exist.
	dummyHash string
	// hashSem holds a token per password check running (hashslot.go).
	hashSem chan struct{}
	// verify is VerifyPassword; tests count the checks through it.
	verify func(hash, pw string) (bool, error)

	// sweepMu keeps one expired-session sweep at a time.
	sweepMu   sync.Mutex
	lastSweep time.Time
}

// New returns a dashboard over cfg.Store.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Logger == nil || cfg.TOTPKeys == nil {
		return nil, errors.New("creating the dashboard: a store, a logger and a keyring for the TOTP secrets are required")
	}
	cfg.setDefaults()
	s := &Server{cfg: cfg, st: cfg.Store, log: cfg.Logger, pages: map[string]*template.Template{},
		hashSem: make(chan struct{}, cfg.PasswordChecks), verify: VerifyPassword}
	var err error
	if s.dummyHash, err = HashPassword(string(randomBytes(16)), cfg.HashParams); err != nil {
		return nil, fmt.Errorf("creating the dashboard: %w", err)
	}
	if err := s.parseTemplates(); err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

func (s *Server) parseTemplates() error {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return fmt.Errorf("creating the dashboard: parsing the layout: %w", err)
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	for _, n := range names {
		page := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if page == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return fmt.Errorf("creating the dashboard: parsing %s: %w", n, err)
		}
		s.pages[page] = t
	}
	return nil
}

// Handler is the dashboard's handler, security headers included. Serve
// uses it; tests and a TLS-terminating front end may use it directly.
func (s *Server) Handler() http.Handler { return s.secure(s.mux) }

// Timeouts of the dashboard listener: pages are small and quick.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 10 * time.Second
)

// Serve serves the dashboard over TLS (cfg.TLS) on ln until ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.cfg.TLS == nil {
		return errors.New("serving the dashboard: no TLS configuration: the dashboard is served over HTTPS only")
	}
	tlsCfg := s.cfg.TLS.Clone()
	if tlsCfg.MinVersion < tls.VersionTLS12 {
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return serveUntil(ctx, srv, func() error { return srv.ServeTLS(ln, "", "") }, "dashboard")
}

// ServeRedirect answers every plain-HTTP request on ln with a permanent
// redirect to the same path on httpsAddr (host:port; the request's host is
// kept and the port replaced when httpsAddr's host is empty), until ctx is
// done. Nothing but the redirect is ever served over plain HTTP.
func ServeRedirect(ctx context.Context, ln net.Listener, httpsAddr string, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           RedirectHandler(httpsAddr),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return serveUntil(ctx, srv, func() error { return srv.Serve(ln) }, "dashboard redirect")
}

// RedirectHandler is ServeRedirect's handler.
func RedirectHandler(httpsAddr string) http.Handler {
	wantHost, wantPort, _ := net.SplitHostPort(httpsAddr)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := wantHost
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = r.Host
			if h, _, err := net.SplitHostPort(r.Host); err == nil {
				host = h
			}
		}
		target := "https://" + net.JoinHostPort(host, wantPort)
		if wantPort == "443" {
			target = "https://" + host
		}
		// Only the path and query travel: never a host from the request
		// line, so the redirect cannot be pointed elsewhere.
		target += r.URL.EscapedPath()
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		http.Redirect(w, r, target, http.StatusPermanentRedirect)
	})
}

func serveUntil(ctx context.Context, srv *http.Server, serve func() error, what string) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving the %s: %w", what, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		srv.Close()
		return fmt.Errorf("shutting down the %s: %w", what, err)
	}
	return nil
}

// csp allows scripts, styles and images from the dashboard itself only:
// no inline script or style, no other origin, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// secure sets the security headers on every answer and logs each request.
func (s *Server) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
		start := s.cfg.Now()
		lw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			if v := recover(); v != nil {
				// A panic is a bug; the user sees the generic page and
				// a reference, the log the cause.
				s.serverError(lw, r, fmt.Errorf("panic: %v", v))
			}
			s.log.Debug("dashboard request", "method", r.Method, "path", r.URL.Path, "status", lw.status,
				"remote", r.RemoteAddr, "duration_ms", s.cfg.Now().Sub(start).Milliseconds())
		}()
		next.ServeHTTP(lw, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}
