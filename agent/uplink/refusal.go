package uplink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// refusalProbeEvery bounds how often a refused connection makes the uplink
// ask the ingest what it holds about the agent's certificate: a revoked
// agent retries for ever, and one question per retry would be a flood.
const refusalProbeEvery = 5 * time.Minute

// refusalProbeTimeout bounds one such question.
const refusalProbeTimeout = 10 * time.Second

// refusalProbe asks the ingest's certificate status query
// (GET /v1/certs/{serial}, answered without a client certificate) why a
// connection was refused. In TLS 1.3 the ingest checks the client
// certificate after the client has finished its handshake, so a revoked or
// expired agent sees only a connection closed under it ("broken pipe",
// "client conn could not be established") and an installer cannot tell it
// from a network fault.
type refusalProbe struct {
	client *http.Client // presents no client certificate
	base   string       // the ingest's base URL
	cert   func() (*tls.Certificate, error)

	mu      sync.Mutex
	at      time.Time // when the last question was asked
	verdict string    // its answer: good, revoked, expired, unknown; "" none
}

// newRefusalProbe returns a probe whose questions go through tr (the
// uplink's own dialer and proxy, so they leave by the uplink NIC) with the
// client certificate left out.
func newRefusalProbe(tr *http.Transport, base string, cert func() (*tls.Certificate, error)) *refusalProbe {
	tc := tr.TLSClientConfig.Clone()
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{}, nil // none: the status query needs none
	}
	tc.ClientSessionCache = nil
	tr.TLSClientConfig = tc
	return &refusalProbe{client: &http.Client{Transport: tr, Timeout: refusalProbeTimeout}, base: strings.TrimSuffix(base, "/"), cert: cert}
}

// looksRefused reports whether err is what a client sees when the ingest
// refuses its certificate after the handshake.
func looksRefused(err error) bool {
	s := err.Error()
	for _, sign := range []string{"client conn could not be established", "broken pipe", "connection reset by peer",
		"tls: bad certificate", "tls: certificate required", "tls: revoked certificate", "tls: expired certificate", "tls: unknown certificate"} {
		if strings.Contains(s, sign) {
			return true
		}
	}
	return false
}

// explain adds to err what the ingest says about the agent's certificate
// when err looks like a refusal and the answer is anything but good.
func (p *refusalProbe) explain(ctx context.Context, err error) error {
	if p == nil || err == nil || !looksRefused(err) {
		return err
	}
	switch p.status(ctx) {
	case "revoked":
		return fmt.Errorf("%w: the ingest has revoked this agent's certificate and accepts nothing from it: enroll the box again with a new token (sightglass-ingest enroll create)", err)
	case "expired":
		return fmt.Errorf("%w: this agent's certificate has expired (the agent could not renew it in time): enroll the box again with a new token", err)
	case "unknown":
		return fmt.Errorf("%w: the ingest does not know this agent's certificate (another ingest, or its registry was replaced): check uplink.url, or enroll again", err)
	}
	return err
}

// status is the ingest's word on the current certificate, asked at most
// every refusalProbeEvery; "" when it could not be asked.
func (p *refusalProbe) status(ctx context.Context) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < refusalProbeEvery {
		return p.verdict
	}
	p.at, p.verdict = time.Now(), ""
	c, err := p.cert()
	if err != nil || c == nil || len(c.Certificate) == 0 {
		return ""
	}
	leaf := c.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return ""
		}
	}
	ctx, cancel := context.WithTimeout(ctx, refusalProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/v1/certs/"+strings.ToLower(leaf.SerialNumber.Text(16)), nil)
	if err != nil {
		return ""
	}
	req.Header.Set("User-Agent", "sightglass-agent")
	resp, err := p.client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var a struct {
		Status string `json:"status"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, maxReplyBytes)).Decode(&a) != nil {
		return ""
	}
	switch a.Status {
	case "good", "revoked", "expired", "unknown":
		p.verdict = a.Status
	}
	return p.verdict
}
