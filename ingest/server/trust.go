package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

// Registry is what the listener needs from the agent registry: the
// revocation check on every handshake and request, enrollment, renewal,
// certificate status, the catalogue and the audit log. *store.DB
// implements it.
type Registry interface {
	AgentAllowed(ctx context.Context, agentID, serial string) error
	Enroll(ctx context.Context, tokenHash []byte, issue func(tenant, site string) (store.Agent, store.Cert, error)) (store.Agent, store.Cert, error)
	Renew(ctx context.Context, agentID string, issue func(store.Agent) (store.Cert, error)) (store.Cert, error)
	CertStatus(ctx context.Context, serial string) (store.CertStatus, store.Cert, store.Agent, error)
	RevokedCerts(ctx context.Context) ([]store.Cert, []time.Time, error)
	PutCatalog(ctx context.Context, tenant, site, agentID string, points []store.CatalogPoint) error
	Audit(ctx context.Context, actor, action, subject, detail string) (store.AuditEntry, error)
}

var _ Registry = (*store.DB)(nil)

// Catalogue policies: how much point metadata the ingest keeps. The agent
// applies its own site policy before sending; the ingest's is a ceiling.
const (
	CatalogFull     = "full"      // names, descriptions, units, kinds, tags
	CatalogTagsOnly = "tags-only" // units, kinds and tags; no names or descriptions
	CatalogNone     = "none"      // nothing is stored
)

// More error codes, for the trust routes.
const (
	CodeRevoked      = "revoked"       // 403: the agent was revoked; enroll anew
	CodeBadToken     = "bad_token"     // 403: unknown, used or expired token
	CodeBadCSR       = "bad_csr"       // 400: the certificate request is unusable
	CodeWrongCA      = "wrong_ca"      // 403: the token was made for another CA
	CodeUnauthorized = "unauthorized"  // 401: this route needs the agent's certificate
	CodeNoRegistry   = "no_registry"   // 501: this ingest runs without a registry
	CodeBadCatalog   = "bad_catalog"   // 400: the catalogue JSON is malformed
	CodeBadClock     = "bad_clock"     // 400: the request's Sightglass-Sent-At is far from our clock
	CodeNoSentAt     = "no_sent_at"    // 400: a batch without Sightglass-Sent-At
	CodeCertExpired  = "cert_expired"  // 403: the client certificate is past its NotAfter (or before its NotBefore)
	CodeBadSerial    = "bad_serial"    // 400: GET /v1/certs/{serial} with a serial that is not hex
	maxTrustBody     = 64 << 10        // enrollment and renewal bodies are a CSR and a token
	maxCatalogBody   = 32 << 20        // a catalogue of 100,000 points with tags
	crlValidity      = 24 * time.Hour  // agents and relying parties refetch daily
	registryTimeout  = 5 * time.Second // a handshake must not hang on a slow database
)

// checkAgent is the revocation check, run at every handshake (through
// pki.ServerOptions.Check) and at every request.
func (s *Server) checkAgent(ctx context.Context, id pki.Identity, leaf *x509.Certificate) error {
	if s.cfg.Registry == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	return s.cfg.Registry.AgentAllowed(ctx, id.Agent, pki.SerialHex(leaf))
}

// checkRegistry runs checkAgent for a request and turns its error into
// the answer: a revoked or unknown agent is refused for good, a registry
// that cannot say is refused as something to retry (fail closed).
func (s *Server) checkRegistry(ctx context.Context, id pki.Identity, leaf *x509.Certificate) *refusal {
	err := s.checkAgent(ctx, id, leaf)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrRevoked) || errors.Is(err, store.ErrNotFound):
		return refuse(http.StatusForbidden, CodeRevoked, "%v: this agent may no longer upload; enroll it anew", err)
	default:
		s.log.Warn("checking an agent against the registry failed", "agent", id.Agent, "err", err)
		return refuse(http.StatusServiceUnavailable, CodeStoreUnavailable, "the agent registry cannot be read right now: retry in %d seconds", retryAfterStoreSeconds)
	}
}

// checkValidity refuses a request whose client certificate is outside its
// validity period. The handshake checked it, but certificates live days
// and an HTTP/2 connection can stay open past the end of one.
func (s *Server) checkValidity(leaf *x509.Certificate) *refusal {
	now := s.cfg.CertNow()
	switch {
	case now.After(leaf.NotAfter):
		return refuse(http.StatusForbidden, CodeCertExpired,
			"your client certificate (serial %s) expired at %s (ingest clock %s): an agent renews its certificate well before that; once it has expired, enroll the agent again with a new token (`sightglass-agent enroll`)",
			pki.SerialHex(leaf), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return refuse(http.StatusForbidden, CodeCertExpired,
			"your client certificate (serial %s) is not valid before %s (ingest clock %s): check the ingest's and the agent's clocks (NTP)",
			pki.SerialHex(leaf), leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// audit writes an audit entry; a failure is logged, not returned: the
// operation it records has happened. A burst of entries cannot take the
// registry's connections from the revocation check: the store's writes
// take turns before they take a connection (ingest/store, DB.turn).
func (s *Server) audit(ctx context.Context, actor, action, subject, detail string) {
	if s.cfg.Registry == nil {
		return
	}
	if _, err := s.cfg.Registry.Audit(context.WithoutCancel(ctx), actor, action, subject, detail); err != nil {
		s.log.Error("writing the audit log failed", "action", action, "subject", subject, "err", err)
	}
}

// errIdentityMoved means a renewing agent's certificate and the registry
// disagree on its tenant or site.
var errIdentityMoved = errors.New("identity moved")

// refusalAuditEvery is how often the same refusal of the same agent goes
// to the audit log: an agent retries a refused request (a bad clock, an
// identity mismatch) for as long as the cause lasts, and the append-only
// log must record that it happened, not every retry.
const refusalAuditEvery = 10 * time.Minute

// refusalFlushEvery is how often the runs that ended (no entry for
// refusalAuditEvery) have their counts written: a burst that stops is
// counted within refusalAuditEvery and this, not at the next refusal like
// it, which may never come.
const refusalFlushEvery = time.Minute

// refusalKey is one run of refusals: who (an agent id, or "ip:" and an
// anonymous caller's address), what it asked and why it was refused.
type refusalKey struct{ who, action, code string }

// refusalRun is a run's state: when its last entry was written and the
// refusals left out since, with the newest of them, which the entry that
// counts them describes.
type refusalRun struct {
	last       time.Time
	suppressed int
	// Of the newest refusal left out.
	actor, subject, detail string
	at                     time.Time
}

// maxRefusalRuns bounds the runs tracked at once; refusals beyond it share
// one run per action and reason, so a flood from many addresses is still
// audited, once per refusalAuditEvery.
const maxRefusalRuns = 10_000

// refusalPruneSample is how many runs a refusal from a new caller looks at
// when the runs are full: a bounded cost under the lock (the periodic
// flush ends the rest), never a scan of all of them per request.
const refusalPruneSample = 64

// auditRefusal writes a refused agent request to the audit log, throttled
// (auditThrottled). A body cut off on the way (CodeBadRequest) is the
// network's doing and is not audited.
func (s *Server) auditRefusal(ctx context.Context, agent, action string, rf *refusal) {
	if rf.code == CodeBadRequest {
		return
	}
	s.auditThrottled(ctx, refusalKey{agent, action, rf.code}, "agent:"+agent, agent, rf.code+": "+rf.msg)
}

// auditEnrollRefused writes a refused enrollment to the audit log,
// throttled per remote address and reason: anybody can send enrollment
// requests, and the append-only log must not be theirs to fill.
func (s *Server) auditEnrollRefused(r *http.Request, subject, why string) {
	ip := remoteKey(r.RemoteAddr).Addr().String()
	s.auditThrottled(r.Context(), refusalKey{"ip:" + ip, "enroll_refused", why}, "anonymous:"+ip, subject, why)
}

// auditThrottled writes an audit entry for the first refusal of a run,
// then at most once per refusalAuditEvery with the count of those not
// written since. A run with no entry for refusalAuditEvery has ended: the
// periodic flush (startRefusalFlush), a refusal from a new caller finding
// the runs full, or FlushAudit writes its count and forgets it. The
// window is real time (CertNow): tests pin Now to judge sample times.
func (s *Server) auditThrottled(ctx context.Context, k refusalKey, actor, subject, detail string) {
	now := s.cfg.CertNow()
	s.mu.Lock()
	if s.refusalsAudited == nil {
		s.refusalsAudited = map[refusalKey]*refusalRun{}
	}
	var ended []endedRun
	run := s.refusalsAudited[k]
	if run == nil && len(s.refusalsAudited) >= maxRefusalRuns {
		ended = s.endRefusalRuns(now, refusalPruneSample, false)
		if len(s.refusalsAudited) >= maxRefusalRuns {
			k.who, actor = "*", "anonymous:*"
			run = s.refusalsAudited[k]
		}
	}
	if run != nil && now.Sub(run.last) < refusalAuditEvery {
		run.suppressed++
		run.actor, run.subject, run.detail, run.at = actor, subject, detail, now
		s.mu.Unlock()
		s.writeEnded(ctx, ended)
		return
	}
	suppressed := 0
	if run != nil {
		suppressed = run.suppressed
	}
	s.refusalsAudited[k] = &refusalRun{last: now}
	s.mu.Unlock()
	s.writeEnded(ctx, ended)
	if suppressed > 0 {
		detail += fmt.Sprintf(" (and %d more like it since the last entry)", suppressed)
	}
	s.audit(ctx, actor, k.action, subject, detail)
}

// endedRun is the entry that counts a run's refusals left out.
type endedRun struct {
	action string
	run    refusalRun
}

// endRefusalRuns forgets the runs whose last entry is refusalAuditEvery
// old or older (every run when all is set), looking at up to limit of
// them (every one when limit < 0), and returns those with refusals left
// out, whose counts must be written (writeEnded); s.mu is held.
func (s *Server) endRefusalRuns(now time.Time, limit int, all bool) []endedRun {
	var ended []endedRun
	for k, run := range s.refusalsAudited {
		if limit == 0 {
			break
		}
		limit--
		if !all && now.Sub(run.last) < refusalAuditEvery {
			continue
		}
		delete(s.refusalsAudited, k)
		if run.suppressed > 0 {
			ended = append(ended, endedRun{k.action, *run})
		}
	}
	return ended
}

// writeEnded writes the entries of runs that ended; s.mu is not held.
func (s *Server) writeEnded(ctx context.Context, ended []endedRun) {
	for _, e := range ended {
		s.audit(ctx, e.run.actor, e.action, e.run.subject, fmt.Sprintf("%s (%d more like it since the last entry, the last at %s)",
			e.run.detail, e.run.suppressed, e.run.at.UTC().Format(time.RFC3339)))
	}
}

// FlushAudit writes to the audit log the count of every refusal the
// throttle has left out so far and forgets the runs, so that none is lost
// when the process ends. Serve's lifetime does it when Serve returns.
func (s *Server) FlushAudit(ctx context.Context) { s.flushRefusals(ctx, true) }

// flushRefusals writes the counts of the runs that ended (of every run
// when all is set) and forgets them.
func (s *Server) flushRefusals(ctx context.Context, all bool) {
	s.mu.Lock()
	ended := s.endRefusalRuns(s.cfg.CertNow(), -1, all)
	s.mu.Unlock()
	s.writeEnded(ctx, ended)
}

// startRefusalFlush writes the counts of ended refusal runs every
// refusalFlushEvery until ctx is done or stop is called; stop waits for
// that and then writes every count left (FlushAudit). Serve runs it for
// its lifetime: defer s.startRefusalFlush(ctx)().
func (s *Server) startRefusalFlush(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(refusalFlushEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.flushRefusals(ctx, false)
			}
		}
	}()
	return func() {
		cancel()
		<-done
		s.FlushAudit(context.WithoutCancel(ctx))
	}
}

type enrollRequest struct {
	Token string `json:"token"`
	CSR   []byte `json:"csr"` // DER, base64 in JSON
}

// readTrustRequest reads an enrollment or renewal body, or answers why not.
func readTrustRequest(w http.ResponseWriter, r *http.Request, what, want string) (enrollRequest, bool) {
	var req enrollRequest
	body, rf := readBody(w, r, maxTrustBody, what)
	if rf == nil {
		if err := json.Unmarshal(body, &req); err != nil {
			rf = refuse(http.StatusBadRequest, CodeBadRequest, "%s: %v: send %s", what, err, want)
		}
	}
	if rf != nil {
		writeRefusal(w, rf)
		return req, false
	}
	return req, true
}

// EnrollReply is the answer to POST /v1/enroll and POST /v1/renew.
type EnrollReply struct {
	Tenant      string    `json:"tenant"`
	Site        string    `json:"site"`
	Agent       string    `json:"agent"`
	Certificate string    `json:"certificate"` // PEM
	CA          string    `json:"ca"`          // PEM: the root the agent trusts from now on
	NotAfter    time.Time `json:"not_after"`
}

// handleCACert is GET /v1/ca.crt: the root certificate, which the agent
// checks against the fingerprint in its token before it trusts this server.
func (s *Server) handleCACert(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(s.ca.CertPEM())
}

// handleEnroll is POST /v1/enroll: a one-time token and a CSR become an
// agent certificate. The agent's key never leaves the box; the requested
// subject is ignored and the certificate names the token's tenant and site
// and a fresh agent id.
func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	reg := s.cfg.Registry
	req, ok := readTrustRequest(w, r, "enrollment request", `{"token": "sge1…", "csr": base64 DER}`)
	if !ok {
		return
	}
	tok, err := pki.ParseEnrollToken(req.Token)
	if err != nil {
		s.auditEnrollRefused(r, "", "malformed token")
		writeRefusal(w, refuse(http.StatusForbidden, CodeBadToken, "%v", err))
		return
	}
	subject := fmt.Sprintf("token:%x", tok.Hash()[:6])
	if !tok.MatchesCA(s.ca.Certificate()) {
		s.auditEnrollRefused(r, subject, "token for another CA")
		writeRefusal(w, refuse(http.StatusForbidden, CodeWrongCA, "this token was made for another ingest's CA: ask for a token from the ingest at this address"))
		return
	}
	pub, err := pki.ParseCSR(req.CSR)
	if err != nil {
		writeRefusal(w, refuse(http.StatusBadRequest, CodeBadCSR, "%v", err))
		return
	}
	var certPEM []byte
	var leaf *x509.Certificate
	agent, _, err := reg.Enroll(r.Context(), tok.Hash(), func(tenant, site string) (store.Agent, store.Cert, error) {
		agentID, err := pki.NewAgentID()
		if err != nil {
			return store.Agent{}, store.Cert{}, err
		}
		id := pki.Identity{Tenant: tenant, Site: site, Agent: agentID}
		leaf, certPEM, err = s.ca.IssueAgent(id, pub, s.cfg.AgentValidity)
		if err != nil {
			return store.Agent{}, store.Cert{}, err
		}
		return store.Agent{ID: agentID, Tenant: tenant, Site: site},
			store.Cert{Serial: pki.SerialHex(leaf), AgentID: agentID, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, nil
	})
	if err != nil {
		why := "unknown"
		switch {
		case errors.Is(err, store.ErrTokenUsed):
			why = "already used"
		case errors.Is(err, store.ErrTokenExpired):
			why = "expired"
		case errors.Is(err, store.ErrNotFound):
		default:
			s.log.Error("enrollment failed", "err", err)
			writeRefusal(w, refuse(http.StatusServiceUnavailable, CodeStoreUnavailable, "enrollment failed on our side; try again shortly"))
			return
		}
		s.auditEnrollRefused(r, subject, "token "+why)
		// One answer for every bad token: a guesser learns nothing.
		writeRefusal(w, refuse(http.StatusForbidden, CodeBadToken, "enrollment token refused (unknown, already used or expired): ask the operator for a new one"))
		return
	}
	s.audit(r.Context(), "agent:"+agent.ID, "enroll", agent.ID, fmt.Sprintf("tenant=%s site=%s serial=%s not_after=%s %s", agent.Tenant, agent.Site, pki.SerialHex(leaf), leaf.NotAfter.UTC().Format(time.RFC3339), subject))
	s.log.Info("agent enrolled", "agent", agent.ID, "tenant", agent.Tenant, "site", agent.Site, "not_after", leaf.NotAfter)
	writeJSON(w, http.StatusOK, EnrollReply{Tenant: agent.Tenant, Site: agent.Site, Agent: agent.ID,
		Certificate: string(certPEM), CA: string(s.ca.CertPEM()), NotAfter: leaf.NotAfter})
}

// handleRenew is POST /v1/renew over mTLS: a new CSR (a new key) becomes a
// new certificate for the same identity, unless the agent was revoked.
func (s *Server) handleRenew(w http.ResponseWriter, r *http.Request, id pki.Identity) {
	req, ok := readTrustRequest(w, r, "renewal request", `{"csr": base64 DER}`)
	if !ok {
		return
	}
	pub, err := pki.ParseCSR(req.CSR)
	if err != nil {
		writeRefusal(w, refuse(http.StatusBadRequest, CodeBadCSR, "%v", err))
		return
	}
	var certPEM []byte
	var leaf *x509.Certificate
	_, err = s.cfg.Registry.Renew(r.Context(), id.Agent, func(a store.Agent) (store.Cert, error) {
		if a.Tenant != id.Tenant || a.Site != id.Site {
			return store.Cert{}, fmt.Errorf("the certificate names %s/%s but the registry has %s/%s: %w", id.Tenant, id.Site, a.Tenant, a.Site, errIdentityMoved)
		}
		var err error
		leaf, certPEM, err = s.ca.IssueAgent(id, pub, s.cfg.AgentValidity)
		if err != nil {
			return store.Cert{}, err
		}
		return store.Cert{Serial: pki.SerialHex(leaf), AgentID: id.Agent, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, store.ErrRevoked), errors.Is(err, store.ErrNotFound), errors.Is(err, errIdentityMoved):
		s.audit(r.Context(), "agent:"+id.Agent, "renew_refused", id.Agent, err.Error())
		writeRefusal(w, refuse(http.StatusForbidden, CodeRevoked, "renewal refused: %v", err))
		return
	default:
		// Our side failed (a locked database, the CA): the agent keeps
		// its certificate and asks again; the details stay in our log.
		s.log.Error("renewing an agent's certificate failed", "agent", id.Agent, "err", err)
		writeRefusal(w, refuse(http.StatusServiceUnavailable, CodeStoreUnavailable, "renewal failed on our side; ask again shortly"))
		return
	}
	s.audit(r.Context(), "agent:"+id.Agent, "renew", id.Agent, fmt.Sprintf("serial=%s not_after=%s", pki.SerialHex(leaf), leaf.NotAfter.UTC().Format(time.RFC3339)))
	s.log.Info("agent certificate renewed", "agent", id.Agent, "not_after", leaf.NotAfter)
	writeJSON(w, http.StatusOK, EnrollReply{Tenant: id.Tenant, Site: id.Site, Agent: id.Agent,
		Certificate: string(certPEM), CA: string(s.ca.CertPEM()), NotAfter: leaf.NotAfter})
}

// handleCRL is GET /v1/crl: a CRL of every unexpired certificate of a
// revoked agent, signed by the CA, DER.
func (s *Server) handleCRL(w http.ResponseWriter, r *http.Request) {
	certs, at, err := s.cfg.Registry.RevokedCerts(r.Context())
	if err != nil {
		s.log.Error("listing revoked certificates failed", "err", err)
		writeRefusal(w, refuse(http.StatusServiceUnavailable, CodeStoreUnavailable, "the registry is unavailable; try again shortly"))
		return
	}
	revoked := make([]pki.Revoked, len(certs))
	for i, c := range certs {
		revoked[i] = pki.Revoked{Serial: c.Serial, At: at[i]}
	}
	der, err := s.ca.CRL(revoked, crlValidity)
	if err != nil {
		s.log.Error("signing the CRL failed", "err", err)
		writeRefusal(w, refuse(http.StatusInternalServerError, CodeInternal, "signing the CRL failed"))
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Write(der)
}

// CertStatusReply is the answer to GET /v1/certs/{serial}.
type CertStatusReply struct {
	Serial   string           `json:"serial"`
	Status   store.CertStatus `json:"status"`
	NotAfter time.Time        `json:"not_after,omitzero"`
}

// handleCertStatus is GET /v1/certs/{serial}: good, revoked, expired or
// unknown for any serial, to any client, like the CRL. Serials are 128
// random bits, so the answer tells nothing about an agent one does not
// already hold the certificate of; the route is rate-limited per address.
func (s *Server) handleCertStatus(w http.ResponseWriter, r *http.Request) {
	serial := strings.ToLower(strings.TrimPrefix(r.URL.Path, "/v1/certs/"))
	if !validSerial(serial) {
		writeRefusal(w, refuse(http.StatusBadRequest, CodeBadSerial,
			"%q is not a certificate serial: want 1 to %d hex digits, as `sightglass-ingest agents status` shows it", serial, maxSerialHex))
		return
	}
	st, c, _, err := s.cfg.Registry.CertStatus(r.Context(), serial)
	if err != nil {
		s.log.Warn("looking up a certificate status failed", "serial", serial, "err", err)
		writeRefusal(w, refuse(http.StatusServiceUnavailable, CodeStoreUnavailable, "the registry is unavailable; try again shortly"))
		return
	}
	writeJSON(w, http.StatusOK, CertStatusReply{Serial: serial, Status: st, NotAfter: c.NotAfter})
}

// maxSerialHex is the longest serial X.509 allows (20 bytes).
const maxSerialHex = 40

func validSerial(s string) bool {
	if s == "" || len(s) > maxSerialHex {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

type catalogRequest struct {
	Points []store.CatalogPoint `json:"points"`
}

// handleCatalog is PUT /v1/catalog: the agent's point metadata, as far as
// the site's policy lets it share, into the relational store (never the
// blob archive). The ingest's own policy is a ceiling.
func (s *Server) handleCatalog(w http.ResponseWriter, r *http.Request, id pki.Identity) {
	body, rf := readBody(w, r, maxCatalogBody, "catalogue")
	if rf != nil {
		writeRefusal(w, rf)
		return
	}
	var req catalogRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeRefusal(w, refuse(http.StatusBadRequest, CodeBadCatalog, "catalogue: %v", err))
		return
	}
	for i, p := range req.Points {
		if err := checkCatalogPoint(p); err != nil {
			writeRefusal(w, refuse(http.StatusBadRequest, CodeBadCatalog, "catalogue: point %d: %v", i, err))
			return
		}
	}
	switch s.cfg.CatalogPolicy {
	case CatalogNone:
		req.Points = nil
	case CatalogTagsOnly:
		for i := range req.Points {
			req.Points[i].Name, req.Points[i].Description = "", ""
		}
	}
	if err := s.cfg.Registry.PutCatalog(r.Context(), id.Tenant, id.Site, id.Agent, req.Points); err != nil {
		s.log.Error("storing the catalogue failed", "agent", id.Agent, "err", err)
		writeRefusal(w, refuse(http.StatusServiceUnavailable, CodeStoreUnavailable, "storing the catalogue failed on our side; try again shortly"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "stored", "points": len(req.Points)})
}

// Bounds of one catalogue entry: generous for real BMS names, small enough
// that a broken agent cannot fill the store.
const (
	maxCatalogString = 1024
	maxCatalogTags   = 64
)

func checkCatalogPoint(p store.CatalogPoint) error {
	if p.ID == 0 {
		return errors.New("no id")
	}
	for _, f := range []struct{ name, v string }{{"name", p.Name}, {"description", p.Description}, {"unit", p.Unit}, {"kind", p.Kind}} {
		if len(f.v) > maxCatalogString {
			return fmt.Errorf("%s is %d bytes, longer than %d", f.name, len(f.v), maxCatalogString)
		}
	}
	if len(p.Tags) > maxCatalogTags {
		return fmt.Errorf("%d tags, more than %d", len(p.Tags), maxCatalogTags)
	}
	for _, t := range p.Tags {
		if t == "" || len(t) > maxCatalogString {
			return fmt.Errorf("tag of %d bytes: want 1 to %d", len(t), maxCatalogString)
		}
	}
	return nil
}

// SentAtHeader is the request header in which the agent says when it sent
// the request (Unix milliseconds).
const SentAtHeader = "Sightglass-Sent-At"

// checkClock refuses a request sent at a time far from the ingest's clock
// (more than MaxSkew either way). It judges the request, not the samples:
// a batch sealed days ago during an outage is normal backlog, but a
// request that says it was sent hours away from now comes from a box whose
// clock is wrong, and every sample time it reports is suspect. A batch
// must carry the header, or the check could be skipped by leaving it out;
// other requests (renewal, the catalogue, a status probe) are judged only
// when they carry it.
func (s *Server) checkClock(r *http.Request) *refusal {
	v := r.Header.Get(SentAtHeader)
	if v == "" {
		if r.URL.Path == "/v1/batches" {
			return refuse(http.StatusBadRequest, CodeNoSentAt,
				"a batch needs the %s header (Unix milliseconds when this attempt was sent), and this request has none: send it as sightglass-agent does", SentAtHeader)
		}
		return nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return refuse(http.StatusBadRequest, CodeBadClock, "%s %q is not Unix milliseconds", SentAtHeader, v)
	}
	now := s.cfg.Now()
	off := time.UnixMilli(ms).Sub(now)
	if off.Abs() > s.cfg.MaxSkew {
		return refuse(http.StatusBadRequest, CodeBadClock,
			"this request says it was sent at %s, %s from the ingest's clock (%s; at most %s allowed): fix the agent's time sync (NTP) and it will be sent again",
			time.UnixMilli(ms).UTC().Format(time.RFC3339), off.Round(time.Second), now.UTC().Format(time.RFC3339), s.cfg.MaxSkew)
	}
	return nil
}
