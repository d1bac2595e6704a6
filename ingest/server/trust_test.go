package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

// trustEnv is an env whose server has a registry.
type trustEnv struct {
	*env
	db *store.DB
}

func newTrustEnv(t testing.TB, opts ...envOpt) *trustEnv {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "ingest.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	// Tests enroll many agents from 127.0.0.1; the limiter's own test
	// sets its limit back.
	opts = append([]envOpt{func(c *Config, _ *blob.Store) {
		c.Registry = db
		c.AnonymousLimit = Limit{Burst: 1 << 20}
	}}, opts...)
	return &trustEnv{env: newEnv(t, opts...), db: db}
}

// token stores a new enrollment token for tenant/site and returns it.
func (e *trustEnv) token(site string, ttl time.Duration) pki.EnrollToken {
	e.t.Helper()
	tok, err := pki.NewEnrollToken(pki.FingerprintOf(e.ca.Certificate()))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.db.CreateToken(context.Background(), store.Token{Hash: tok.Hash(), Tenant: tenant, Site: site, ExpiresAt: time.Now().Add(ttl), CreatedBy: "test"}); err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// anonymous is a client without a certificate that trusts the CA.
func (e *trustEnv) anonymous() *http.Client {
	return clientWith(e.t, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: e.ca.Pool()})
}

func postJSON(t testing.TB, e *env, c *http.Client, path string, v any) reply {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return e.do(c, http.MethodPost, path, b)
}

// enroll enrolls with tok and returns a client holding the new certificate.
func (e *trustEnv) enroll(tok pki.EnrollToken) (*http.Client, EnrollReply, *ecdsa.PrivateKey) {
	e.t.Helper()
	key, csr, err := pki.NewAgentKey()
	if err != nil {
		e.t.Fatal(err)
	}
	r := postJSON(e.t, e.env, e.anonymous(), "/v1/enroll", map[string]any{"token": tok.String(), "csr": csr})
	wantReply(e.t, r, http.StatusOK, "")
	var er EnrollReply
	raw, _ := json.Marshal(r.body)
	if err := json.Unmarshal(raw, &er); err != nil {
		e.t.Fatal(err)
	}
	b, err := pki.NewBundle(key, []byte(er.Certificate), []byte(er.CA))
	if err != nil {
		e.t.Fatal(err)
	}
	e.agents[er.Agent] = b
	return e.client(er.Agent), er, key
}

func TestEnrollThenUpload(t *testing.T) {
	e := newTrustEnv(t)
	tok := e.token("s1", time.Hour)
	c, er, _ := e.enroll(tok)
	if er.Tenant != tenant || er.Site != "s1" || !strings.HasPrefix(er.Agent, "ag-") {
		t.Errorf("enrolled as %+v", er)
	}
	if life := time.Until(er.NotAfter); life > pki.DefaultAgentValidity || life < pki.DefaultAgentValidity-time.Hour {
		t.Errorf("certificate lives %v, want about %v", life, pki.DefaultAgentValidity)
	}
	wantReply(t, e.upload(er.Agent, e.encode(er.Agent, 1, samples(5, now))), http.StatusOK, "")
	_ = c

	// The token is single-use, and a bad token tells nothing about why.
	_, csr, _ := pki.NewAgentKey()
	r := postJSON(t, e.env, e.anonymous(), "/v1/enroll", map[string]any{"token": tok.String(), "csr": csr})
	wantReply(t, r, http.StatusForbidden, CodeBadToken)
	unknown, _ := pki.NewEnrollToken(pki.FingerprintOf(e.ca.Certificate()))
	wantReply(t, postJSON(t, e.env, e.anonymous(), "/v1/enroll", map[string]any{"token": unknown.String(), "csr": csr}), http.StatusForbidden, CodeBadToken)

	entries, err := e.db.AuditLog(context.Background(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, en := range entries {
		actions = append(actions, en.Action)
	}
	if got := strings.Join(actions, ","); got != "enroll,enroll_refused,enroll_refused" {
		t.Errorf("audit actions %q", got)
	}
}

func TestEnrollRefused(t *testing.T) {
	e := newTrustEnv(t)
	_, goodCSR, _ := pki.NewAgentKey()
	otherCA, err := pki.NewEnrollToken(pki.Fingerprint{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	expired := e.token("s1", -time.Minute)
	tests := []struct {
		name   string
		body   any
		status int
		code   string
	}{
		{"not JSON", "{", http.StatusBadRequest, CodeBadRequest},
		{"malformed token", map[string]any{"token": "sge1.nope", "csr": goodCSR}, http.StatusForbidden, CodeBadToken},
		{"token for another CA", map[string]any{"token": otherCA.String(), "csr": goodCSR}, http.StatusForbidden, CodeWrongCA},
		{"expired token", map[string]any{"token": expired.String(), "csr": goodCSR}, http.StatusForbidden, CodeBadToken},
		{"garbage CSR", map[string]any{"token": e.token("s1", time.Hour).String(), "csr": []byte("nope")}, http.StatusBadRequest, CodeBadCSR},
		{"CSR with a broken signature", map[string]any{"token": e.token("s1", time.Hour).String(), "csr": flipLast(goodCSR)}, http.StatusBadRequest, CodeBadCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if s, ok := tt.body.(string); ok {
				body = []byte(s)
			} else {
				body, _ = json.Marshal(tt.body)
			}
			wantReply(t, e.do(e.anonymous(), http.MethodPost, "/v1/enroll", body), tt.status, tt.code)
		})
	}
	if agents, _ := e.db.Agents(context.Background()); len(agents) != 0 {
		t.Errorf("refused enrollments made agents: %+v", agents)
	}
}

func flipLast(b []byte) []byte {
	c := append([]byte(nil), b...)
	c[len(c)-1] ^= 0x55
	return c
}

func TestRouteNeedsCertificate(t *testing.T) {
	e := newTrustEnv(t)
	for _, p := range []struct{ method, path string }{
		{http.MethodPost, "/v1/batches"}, {http.MethodPut, "/v1/tables/0011223344556677"},
		{http.MethodPost, "/v1/renew"}, {http.MethodPut, "/v1/catalog"},
	} {
		wantReply(t, e.do(e.anonymous(), p.method, p.path, []byte("x")), http.StatusUnauthorized, CodeUnauthorized)
	}
	if n := len(e.list()); n != 0 {
		t.Errorf("%d blobs stored by anonymous requests", n)
	}
}

func TestUnregisteredCertificateRefused(t *testing.T) {
	e := newTrustEnv(t)
	// "a" has a certificate from our CA that the registry never recorded
	// (a CA key used outside the ingest): refused at the handshake.
	req, _ := http.NewRequest(http.MethodPost, e.base+"/v1/batches", strings.NewReader("x"))
	if resp, err := e.client("a").Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("an unregistered agent got an answer: %d", resp.StatusCode)
	}
}

func TestRevocationTakesEffectAtOnce(t *testing.T) {
	e := newTrustEnv(t)
	_, er, _ := e.enroll(e.token("s1", time.Hour))
	b := e.agents[er.Agent]
	cert, err := tls.X509KeyPair(b.CertPEM, b.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := pki.ClientTLSConfig(cert, e.ca.Pool())
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	c := clientWith(t, cfg)
	enc := e.encode(er.Agent, 1, samples(3, now))
	wantReply(t, e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")

	if _, err := e.db.Revoke(context.Background(), er.Agent, "test"); err != nil {
		t.Fatal(err)
	}
	// The keep-alive connection from before the revocation is refused at
	// its next request.
	wantReply(t, e.do(c, http.MethodPost, "/v1/batches", enc.Data), http.StatusForbidden, CodeRevoked)
	// A new connection resuming the old TLS session is refused at the
	// handshake: VerifyConnection runs on resumption too.
	c.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, e.base+"/v1/batches", strings.NewReader(string(enc.Data)))
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("a revoked agent got an answer on a new connection: %d", resp.StatusCode)
	}
	if n := len(e.list()); n != 1 { // the table only
		t.Errorf("%d blobs stored, want only the table", n)
	}
}

func TestRenew(t *testing.T) {
	e := newTrustEnv(t)
	c, er, _ := e.enroll(e.token("s1", time.Hour))
	oldSerial := pki.SerialHex(mustLeaf(t, e.agents[er.Agent]))
	key, csr, _ := pki.NewAgentKey()
	r := postJSON(t, e.env, c, "/v1/renew", map[string]any{"csr": csr})
	wantReply(t, r, http.StatusOK, "")
	b, err := pki.NewBundle(key, []byte(r.body["certificate"].(string)), e.ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	if b.Identity != e.agents[er.Agent].Identity {
		t.Errorf("renewed identity %v, want %v", b.Identity, e.agents[er.Agent].Identity)
	}
	e.agents["renewed"] = b
	nc := e.client("renewed")
	wantReply(t, e.do(nc, http.MethodGet, "/v1/certs/"+pki.SerialHex(mustLeaf(t, b)), nil), http.StatusOK, "")
	st := e.do(nc, http.MethodGet, "/v1/certs/"+oldSerial, nil)
	if st.body["status"] != string(store.CertGood) {
		t.Errorf("old certificate status %v", st.body)
	}
	// A revoked agent cannot renew (a fresh DB check, not only the
	// handshake's): revoke, then renew on the open connection.
	wantReply(t, postJSON(t, e.env, nc, "/v1/renew", map[string]any{"csr": []byte("x")}), http.StatusBadRequest, CodeBadCSR)
	e.db.Revoke(context.Background(), er.Agent, "test")
	_, csr2, _ := pki.NewAgentKey()
	wantReply(t, postJSON(t, e.env, nc, "/v1/renew", map[string]any{"csr": csr2}), http.StatusForbidden, CodeRevoked)
}

func mustLeaf(t *testing.T, b pki.Bundle) *x509.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(b.CertPEM, b.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf
}

func TestCRL(t *testing.T) {
	e := newTrustEnv(t)
	_, er, _ := e.enroll(e.token("s1", time.Hour))
	_, kept, _ := e.enroll(e.token("s1", time.Hour))
	e.db.Revoke(context.Background(), er.Agent, "stolen")
	resp, err := e.anonymous().Get(e.base + "/v1/crl")
	if err != nil {
		t.Fatal(err)
	}
	der, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("parsing the CRL: %v", err)
	}
	if err := crl.CheckSignatureFrom(e.ca.IssuingCertificate()); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(mustLeaf(t, e.agents[er.Agent]).SerialNumber) != 0 {
		t.Errorf("CRL entries %+v, want the revoked agent's certificate only", crl.RevokedCertificateEntries)
	}
	_ = kept
}

func TestCatalogPolicy(t *testing.T) {
	points := map[string]any{"points": []map[string]any{
		{"id": 11, "name": "AHU-1 SAT", "description": "supply air", "unit": "°F", "kind": "float", "tags": []string{"air", "temp"}},
		{"id": 12, "name": "AHU-1 Fan", "unit": "", "kind": "bool"},
	}}
	for _, tt := range []struct {
		policy   string
		wantN    int
		wantName string
	}{{CatalogFull, 2, "AHU-1 SAT"}, {CatalogTagsOnly, 2, ""}, {CatalogNone, 0, ""}} {
		t.Run(tt.policy, func(t *testing.T) {
			e := newTrustEnv(t, func(c *Config, _ *blob.Store) { c.CatalogPolicy = tt.policy })
			c, er, _ := e.enroll(e.token("s1", time.Hour))
			b, _ := json.Marshal(points)
			wantReply(t, e.do(c, http.MethodPut, "/v1/catalog", b), http.StatusOK, "")
			got, err := e.db.Catalog(context.Background(), er.Tenant, er.Site)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.wantN {
				t.Fatalf("%d points stored, want %d", len(got), tt.wantN)
			}
			if tt.wantN > 0 && (got[0].Name != tt.wantName || got[0].Unit != "°F" || len(got[0].Tags) != 2) {
				t.Errorf("stored %+v", got[0])
			}
			for _, bad := range []string{`{"points":[{"id":0}]}`, `{"points":[{"id":1,"bogus":2}]}`, `{"points":[{"id":1,"name":"` + strings.Repeat("x", 2000) + `"}]}`} {
				wantReply(t, e.do(c, http.MethodPut, "/v1/catalog", []byte(bad)), http.StatusBadRequest, CodeBadCatalog)
			}
			if n := len(e.list()); n != 0 {
				t.Errorf("the catalogue reached the blob archive: %d blobs", n)
			}
		})
	}
}

func TestRefusedBatchIsAudited(t *testing.T) {
	e := newTrustEnv(t)
	_, er, _ := e.enroll(e.token("s1", time.Hour))
	c := e.client(er.Agent)
	wantReply(t, e.do(c, http.MethodPost, "/v1/batches", []byte("garbage")), http.StatusBadRequest, CodeBadBatch)
	entries, _ := e.db.AuditLog(context.Background(), 0, 100)
	last := entries[len(entries)-1]
	if last.Action != "batch_refused" || last.Subject != er.Agent || !strings.HasPrefix(last.Detail, CodeBadBatch) {
		t.Errorf("last audit entry %+v", last)
	}
	if _, err := e.db.VerifyAudit(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestRequestClockChecked(t *testing.T) {
	e := newTrustEnv(t)
	_, er, _ := e.enroll(e.token("s1", time.Hour))
	c := e.client(er.Agent)
	enc := e.encode(er.Agent, 1, samples(3, now.Add(-30*24*time.Hour))) // a month-old backlog
	wantReply(t, e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")
	send := func(sentAt string) reply {
		req, _ := http.NewRequest(http.MethodPost, e.base+"/v1/batches", strings.NewReader(string(enc.Data)))
		req.Header.Set(SentAtHeader, sentAt)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		r := reply{status: resp.StatusCode}
		json.NewDecoder(resp.Body).Decode(&r.body)
		return r
	}
	ms := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).UnixMilli(), 10) }
	wantReply(t, send(ms(2*time.Hour)), http.StatusBadRequest, CodeBadClock)
	wantReply(t, send(ms(-2*time.Hour)), http.StatusBadRequest, CodeBadClock)
	wantReply(t, send("soon"), http.StatusBadRequest, CodeBadClock)
	if n := len(e.list()); n != 1 {
		t.Errorf("%d blobs after refused requests, want the table only", n)
	}
	// Within the skew, even a batch of old samples is taken: the window is
	// the request's, not the samples'.
	wantReply(t, send(ms(time.Minute)), http.StatusOK, "")
}

// TestRefusalsAuditedOncePerRun: an agent retrying the same refused request
// writes one audit entry, then one per refusalAuditEvery that counts the
// retries left out; a body cut off on the way is not audited at all.
func TestRefusalsAuditedOncePerRun(t *testing.T) {
	var clock fakeClock
	start := time.Now()
	clock.Set(start)
	e := newTrustEnv(t, func(c *Config, _ *blob.Store) { c.CertNow = clock.Now })
	_, er, _ := e.enroll(e.token("s1", time.Hour))
	c := e.client(er.Agent)
	refused := func() int {
		entries, _ := e.db.AuditLog(context.Background(), 0, 1000)
		n := 0
		for _, en := range entries {
			if en.Action == "batch_refused" {
				n++
			}
		}
		return n
	}
	for range 5 {
		wantReply(t, e.do(c, http.MethodPost, "/v1/batches", []byte("garbage")), http.StatusBadRequest, CodeBadBatch)
	}
	if n := refused(); n != 1 {
		t.Fatalf("%d audit entries for 5 retries of one refusal, want 1", n)
	}
	clock.Set(start.Add(refusalAuditEvery))
	wantReply(t, e.do(c, http.MethodPost, "/v1/batches", []byte("garbage")), http.StatusBadRequest, CodeBadBatch)
	entries, _ := e.db.AuditLog(context.Background(), 0, 1000)
	if last := entries[len(entries)-1]; refused() != 2 || !strings.Contains(last.Detail, "and 4 more like it") {
		t.Errorf("after %s: %d entries, last %q; want a second one counting the 4 left out", refusalAuditEvery, refused(), last.Detail)
	}
	var sr Server
	sr.cfg.CertNow = clock.Now
	sr.auditRefusal(context.Background(), "ag-x", "batch_refused", refuse(http.StatusBadRequest, CodeBadRequest, "reading the batch: unexpected EOF"))
	if len(sr.refusalsAudited) != 0 {
		t.Error("a body cut off on the way was audited")
	}
}

// failingRenewals is a registry whose renewals fail on our side.
type failingRenewals struct{ Registry }

func (failingRenewals) Renew(context.Context, string, func(store.Agent) (store.Cert, error)) (store.Cert, error) {
	return store.Cert{}, errors.New("database is locked")
}

// TestRenewFailingOnOurSide: a renewal that fails in the ingest (not a
// revoked agent) answers 503 so the agent asks again, and the database's
// words stay out of the answer.
func TestRenewFailingOnOurSide(t *testing.T) {
	e := newTrustEnv(t, func(c *Config, _ *blob.Store) { c.Registry = failingRenewals{c.Registry} })
	c, _, _ := e.enroll(e.token("s1", time.Hour))
	_, csr, _ := pki.NewAgentKey()
	r := postJSON(t, e.env, c, "/v1/renew", map[string]any{"csr": csr})
	wantReply(t, r, http.StatusServiceUnavailable, CodeStoreUnavailable)
	if msg, _ := r.body["error"].(string); strings.Contains(msg, "locked") {
		t.Errorf("the answer carries the database's error: %q", msg)
	}
}

// fakeClock is a clock tests move by hand, safe to read from handshakes.
type fakeClock struct{ t atomic.Pointer[time.Time] }

func (c *fakeClock) Now() time.Time {
	if t := c.t.Load(); t != nil {
		return *t
	}
	return time.Now()
}

func (c *fakeClock) Set(t time.Time) { c.t.Store(&t) }

// TestCertificateValidityCheckedPerRequest: a certificate that expires (or
// is judged before its start) while its keep-alive connection is open is
// refused at the next request on that connection, and the refusal is
// audited.
func TestCertificateValidityCheckedPerRequest(t *testing.T) {
	for _, tt := range []struct {
		name string
		at   func(leaf *x509.Certificate) time.Time
		want string
	}{
		{"past NotAfter", func(l *x509.Certificate) time.Time { return l.NotAfter.Add(time.Second) }, "expired at"},
		{"before NotBefore", func(l *x509.Certificate) time.Time { return l.NotBefore.Add(-time.Second) }, "not valid before"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var clock fakeClock
			e := newTrustEnv(t, func(c *Config, _ *blob.Store) { c.CertNow = clock.Now })
			c, er, _ := e.enroll(e.token("s1", time.Hour))
			enc := e.encode(er.Agent, 1, samples(3, now))
			wantReply(t, e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")

			clock.Set(tt.at(mustLeaf(t, e.agents[er.Agent])))
			// A new connection would fail its handshake (tls.Config.Time
			// is the same clock), so an answer at all proves that the
			// refusal came on the open connection.
			r := e.do(c, http.MethodPost, "/v1/batches", enc.Data)
			wantReply(t, r, http.StatusForbidden, CodeCertExpired)
			if msg, _ := r.body["error"].(string); !strings.Contains(msg, tt.want) {
				t.Errorf("message %q does not say %q", msg, tt.want)
			}
			if n := len(e.list()); n != 1 {
				t.Errorf("%d blobs stored, want only the table", n)
			}
			entries, _ := e.db.AuditLog(context.Background(), 0, 100)
			if last := entries[len(entries)-1]; last.Action != "batch_refused" || !strings.HasPrefix(last.Detail, CodeCertExpired) {
				t.Errorf("last audit entry %+v, want the refused batch", last)
			}
		})
	}
}

// TestRevokedBatchIsAudited: a batch refused because its agent was revoked
// after the handshake goes to the audit log like every refused batch.
func TestRevokedBatchIsAudited(t *testing.T) {
	e := newTrustEnv(t)
	c, er, _ := e.enroll(e.token("s1", time.Hour))
	enc := e.encode(er.Agent, 1, samples(3, now))
	wantReply(t, e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")
	if _, err := e.db.Revoke(context.Background(), er.Agent, "stolen"); err != nil {
		t.Fatal(err)
	}
	wantReply(t, e.do(c, http.MethodPost, "/v1/batches", enc.Data), http.StatusForbidden, CodeRevoked)
	entries, _ := e.db.AuditLog(context.Background(), 0, 100)
	last := entries[len(entries)-1]
	if last.Action != "batch_refused" || last.Subject != er.Agent || !strings.HasPrefix(last.Detail, CodeRevoked) {
		t.Errorf("last audit entry %+v, want the revoked agent's refused batch", last)
	}
}

// TestBatchNeedsSentAt: leaving Sightglass-Sent-At out does not skip the
// send-time check; the batch is refused and nothing is stored.
func TestBatchNeedsSentAt(t *testing.T) {
	e := newTrustEnv(t)
	_, er, _ := e.enroll(e.token("s1", time.Hour))
	enc := e.encode(er.Agent, 1, samples(3, now))
	wantReply(t, e.do(e.client(er.Agent), http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")
	b := e.agents[er.Agent]
	cert, err := tls.X509KeyPair(b.CertPEM, b.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// A bare transport: clientWith's would add the header.
	tr := &http.Transport{TLSClientConfig: pki.ClientTLSConfig(cert, e.ca.Pool()), ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	r := e.do(&http.Client{Transport: tr}, http.MethodPost, "/v1/batches", enc.Data)
	wantReply(t, r, http.StatusBadRequest, CodeNoSentAt)
	if msg, _ := r.body["error"].(string); !strings.Contains(msg, SentAtHeader) {
		t.Errorf("message %q does not name the missing header", msg)
	}
	if n := len(e.list()); n != 1 {
		t.Errorf("%d blobs stored, want only the table", n)
	}
}

// auditCount counts the audit entries of action and returns the last.
func (e *trustEnv) auditCount(action string) (int, store.AuditEntry) {
	e.t.Helper()
	entries, err := e.db.AuditLog(context.Background(), 0, 10000)
	if err != nil {
		e.t.Fatal(err)
	}
	n, last := 0, store.AuditEntry{}
	for _, en := range entries {
		if en.Action == action {
			n, last = n+1, en
		}
	}
	return n, last
}

// TestEnrollRefusalsThrottled: a flood of bad enrollments from one address
// writes one audit entry per reason, then one per refusalAuditEvery that
// counts those left out; the chain stays whole.
func TestEnrollRefusalsThrottled(t *testing.T) {
	var clock fakeClock
	start := time.Now()
	clock.Set(start)
	e := newTrustEnv(t, func(c *Config, _ *blob.Store) { c.CertNow = clock.Now })
	_, csr, _ := pki.NewAgentKey()
	garbage := func(n int) {
		for range n {
			wantReply(t, postJSON(t, e.env, e.anonymous(), "/v1/enroll", map[string]any{"token": "sge1.nope", "csr": csr}), http.StatusForbidden, CodeBadToken)
		}
	}
	garbage(50)
	unknown, _ := pki.NewEnrollToken(pki.FingerprintOf(e.ca.Certificate()))
	wantReply(t, postJSON(t, e.env, e.anonymous(), "/v1/enroll", map[string]any{"token": unknown.String(), "csr": csr}), http.StatusForbidden, CodeBadToken)
	if n, _ := e.auditCount("enroll_refused"); n != 2 {
		t.Fatalf("%d audit entries for 50 malformed and 1 unknown token, want 2 (one per reason)", n)
	}
	clock.Set(start.Add(refusalAuditEvery))
	garbage(1)
	n, last := e.auditCount("enroll_refused")
	if n != 3 || !strings.Contains(last.Detail, "and 49 more like it") || last.Actor != "anonymous:127.0.0.1" {
		t.Errorf("after %s: %d entries, last %+v; want a third counting the 49 left out, from anonymous:127.0.0.1", refusalAuditEvery, n, last)
	}
	if _, err := e.db.VerifyAudit(context.Background()); err != nil {
		t.Error(err)
	}
}

// TestRefusalRunsBounded: past maxRefusalRuns distinct callers, refusals
// share one run per reason instead of growing the map or the log.
func TestRefusalRunsBounded(t *testing.T) {
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "ingest.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	sr := &Server{log: slog.New(slog.DiscardHandler)}
	sr.cfg.CertNow, sr.cfg.Registry = func() time.Time { return now }, db
	sr.refusalsAudited = map[refusalKey]*refusalRun{}
	for i := range maxRefusalRuns {
		sr.refusalsAudited[refusalKey{"ip:" + strconv.Itoa(i), "enroll_refused", "malformed token"}] = &refusalRun{last: now}
	}
	for i := range 5 {
		sr.auditThrottled(context.Background(), refusalKey{"ip:new" + strconv.Itoa(i), "enroll_refused", "malformed token"}, "anonymous:x", "", "malformed token")
	}
	if n := len(sr.refusalsAudited); n != maxRefusalRuns+1 {
		t.Errorf("%d runs tracked, want %d (the overflow run added once)", n, maxRefusalRuns+1)
	}
	if entries, _ := db.AuditLog(context.Background(), 0, 100); len(entries) != 1 || entries[0].Actor != "anonymous:*" {
		t.Errorf("audit %+v, want one overflow entry", entries)
	}
}

// TestAnonymousRateLimited: enrollment and status queries share a per-
// address bucket; once it is empty both answer 429 with Retry-After until
// it refills, by real time (CertNow): the sample clock (Now) stays pinned,
// as tests pin it.
func TestAnonymousRateLimited(t *testing.T) {
	var clock fakeClock
	start := time.Now()
	clock.Set(start)
	e := newTrustEnv(t, func(c *Config, _ *blob.Store) {
		c.CertNow = clock.Now
		c.AnonymousLimit = Limit{Burst: 3, Every: time.Minute}
	})
	_, csr, _ := pki.NewAgentKey()
	enroll := func() reply {
		return postJSON(t, e.env, e.anonymous(), "/v1/enroll", map[string]any{"token": "sge1.nope", "csr": csr})
	}
	wantReply(t, enroll(), http.StatusForbidden, CodeBadToken)
	wantReply(t, enroll(), http.StatusForbidden, CodeBadToken)
	wantReply(t, e.do(e.anonymous(), http.MethodGet, "/v1/certs/01", nil), http.StatusOK, "")
	for _, r := range []reply{enroll(), e.do(e.anonymous(), http.MethodGet, "/v1/certs/01", nil)} {
		wantReply(t, r, http.StatusTooManyRequests, CodeRateLimited)
		if ra := r.header.Get("Retry-After"); ra != "60" {
			t.Errorf("Retry-After %q, want 60", ra)
		}
	}
	// The CRL is not limited: relying parties fetch it on their own clock.
	if resp, err := e.anonymous().Get(e.base + "/v1/crl"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("CRL: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	clock.Set(start.Add(time.Minute))
	wantReply(t, enroll(), http.StatusForbidden, CodeBadToken)
	wantReply(t, enroll(), http.StatusTooManyRequests, CodeRateLimited)
	if got := e.srv.Stats().Refused[CodeRateLimited]; got != 3 {
		t.Errorf("%d rate-limited requests counted, want 3", got)
	}
}

func TestRemoteKey(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"127.0.0.1:4000", "127.0.0.1/32"},
		{"[::ffff:10.1.2.3]:4000", "10.1.2.3/32"},
		{"[2001:db8:1:2:aaaa::1]:4000", "2001:db8:1::/56"},
		{"[2001:db8:1:2:bbbb::9]:5", "2001:db8:1::/56"},
		{"[2001:db8:1:ff:1::9]:5", "2001:db8:1::/56"}, // another /64 of the same /56
		{"[2001:db8:1:100::1]:5", "2001:db8:1:100::/56"},
		{"nonsense", "invalid Prefix"},
	} {
		if got := remoteKey(tt.addr).String(); got != tt.want {
			t.Errorf("remoteKey(%q) = %s, want %s", tt.addr, got, tt.want)
		}
	}
}

// TestCertStatusOverHTTP: any client, with or without a certificate, gets
// good, revoked, expired or unknown for a serial.
func TestCertStatusOverHTTP(t *testing.T) {
	e := newTrustEnv(t)
	c, good, _ := e.enroll(e.token("s1", time.Hour))
	_, gone, _ := e.enroll(e.token("s1", time.Hour))
	if _, err := e.db.Revoke(context.Background(), gone.Agent, "stolen"); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := e.db.AddAgent(context.Background(), store.Agent{ID: "ag-old", Tenant: tenant, Site: "s1"},
		store.Cert{Serial: "ab12cd", AgentID: "ag-old", NotBefore: old, NotAfter: old.Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	serial := func(er EnrollReply) string { return pki.SerialHex(mustLeaf(t, e.agents[er.Agent])) }
	tests := []struct {
		name, serial string
		want         store.CertStatus
	}{
		{"good", serial(good), store.CertGood},
		{"good, upper case", strings.ToUpper(serial(good)), store.CertGood},
		{"revoked", serial(gone), store.CertRevoked},
		{"expired", "ab12cd", store.CertExpired},
		{"unknown", "0123456789abcdef", store.CertUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for client, hc := range map[string]*http.Client{"anonymous": e.anonymous(), "another agent": c} {
				r := e.do(hc, http.MethodGet, "/v1/certs/"+tt.serial, nil)
				wantReply(t, r, http.StatusOK, "")
				if r.body["status"] != string(tt.want) {
					t.Errorf("%s: status %v, want %s", client, r.body, tt.want)
				}
			}
		})
	}
	for _, bad := range []string{"xyz", strings.Repeat("a", 41)} {
		wantReply(t, e.do(e.anonymous(), http.MethodGet, "/v1/certs/"+bad, nil), http.StatusBadRequest, CodeBadSerial)
	}
}
