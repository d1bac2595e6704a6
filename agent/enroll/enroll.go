// Package enroll is the agent's side of trust: first enrollment with a
// one-time token (the key is made here and never leaves the box), and
// renewal of the certificate before it expires, with a new key each time.
package enroll

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// maxAnswer bounds what is read from the ingest: a certificate and a CA.
const maxAnswer = 64 << 10

// Options are what Enroll needs.
type Options struct {
	// Ingest is the ingest's base URL, https://host:port.
	Ingest string
	// Token is what `sightglass-ingest enroll create` printed.
	Token string
	// CertDir receives agent.crt, agent.key and ca.crt; it must not hold a
	// bundle already.
	CertDir string
	// LocalAddr is the uplink NIC's address to dial from; "" lets the
	// kernel choose.
	LocalAddr string
	// Interface is the uplink NIC (network.uplink.interface): every
	// connection and DNS query of the enrollment is bound to it, as the
	// running agent's are. "" binds to the NIC holding LocalAddr, or to
	// none without LocalAddr.
	Interface string
	// Proxy chooses the proxy; nil means http.ProxyFromEnvironment.
	Proxy func(*http.Request) (*url.URL, error)
	// Timeout bounds each request (30s when zero).
	Timeout time.Duration
}

// Result is what enrollment gave the agent.
type Result struct {
	Identity pki.Identity `json:"identity"`
	NotAfter time.Time    `json:"not_after"`
	CertDir  string       `json:"cert_dir"`
	// CAFingerprint is the pinned CA's SHA-256, hex.
	CAFingerprint string `json:"ca_fingerprint"`
}

// reply is the JSON the ingest answers enrollment and renewal with.
type reply struct {
	Tenant      string    `json:"tenant"`
	Site        string    `json:"site"`
	Agent       string    `json:"agent"`
	Certificate string    `json:"certificate"`
	CA          string    `json:"ca"`
	NotAfter    time.Time `json:"not_after"`
	Error       string    `json:"error"`
	Code        string    `json:"code"`
}

// Enroll makes the agent's key, fetches the ingest's CA and checks it
// against the fingerprint in the token before trusting anything, sends a
// CSR with the token over TLS verified against that CA, and writes the
// bundle. Nothing is written unless every step succeeded.
func Enroll(ctx context.Context, o Options) (Result, error) {
	tok, err := pki.ParseEnrollToken(o.Token)
	if err != nil {
		return Result{}, err
	}
	base, err := url.Parse(strings.TrimRight(o.Ingest, "/"))
	if err != nil || base.Scheme != "https" || base.Host == "" {
		return Result{}, fmt.Errorf("--ingest %q: want https://host:port", o.Ingest)
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	// 1. The CA, over a connection we cannot verify yet: what it returns is
	// checked against the token's fingerprint, so a man in the middle
	// can only make enrollment fail, never make us trust him.
	probe, err := client(o, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}) //nolint:gosec // verified by fingerprint below
	if err != nil {
		return Result{}, err
	}
	status, caPEM, err := call(ctx, probe, o.Timeout, http.MethodGet, base.JoinPath("v1", "ca.crt").String(), nil)
	if err != nil {
		return Result{}, fmt.Errorf("fetching the ingest's CA from %s: %w (check --ingest and that this box reaches it)", base, err)
	}
	if status != http.StatusOK {
		return Result{}, fmt.Errorf("fetching the ingest's CA from %s: %d: is this a Sightglass ingest with enrollment enabled?", base, status)
	}
	ca, err := parseCert(caPEM)
	if err != nil {
		return Result{}, fmt.Errorf("the ingest's CA: %w", err)
	}
	if !tok.MatchesCA(ca) {
		return Result{}, fmt.Errorf("the ingest at %s presents CA %s, not the CA this token was made for (%s): wrong address, or someone in between; enroll with the right ingest", base, pki.FingerprintOf(ca), tok.CA)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	// 2. The CSR, over TLS verified against the pinned CA.
	key, csr, err := pki.NewAgentKey()
	if err != nil {
		return Result{}, err
	}
	c, err := client(o, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots})
	if err != nil {
		return Result{}, err
	}
	body, _ := json.Marshal(map[string]any{"token": tok.String(), "csr": csr})
	status, data, err := call(ctx, c, o.Timeout, http.MethodPost, base.JoinPath("v1", "enroll").String(), body)
	if err != nil {
		return Result{}, fmt.Errorf("enrolling at %s: %w", base, err)
	}
	var r reply
	if err := json.Unmarshal(data, &r); err != nil {
		return Result{}, fmt.Errorf("enrolling at %s: %d with an answer that is not JSON", base, status)
	}
	if status != http.StatusOK {
		return Result{}, fmt.Errorf("enrolling at %s: %s (%d %s)", base, r.Error, status, r.Code)
	}
	if !bytes.Equal(bytes.TrimSpace([]byte(r.CA)), bytes.TrimSpace(caPEM)) {
		return Result{}, errors.New("enrolling: the ingest answered with a CA other than the one pinned: refusing it")
	}
	b, err := pki.NewBundle(key, []byte(r.Certificate), caPEM)
	if err != nil {
		return Result{}, fmt.Errorf("enrolling: %w", err)
	}
	if err := b.WriteDir(o.CertDir); err != nil {
		return Result{}, err
	}
	return Result{Identity: b.Identity, NotAfter: r.NotAfter, CertDir: o.CertDir, CAFingerprint: tok.CA.String()}, nil
}

func client(o Options, tc *tls.Config) (*http.Client, error) {
	d, err := dialer(o)
	if err != nil {
		return nil, err
	}
	proxy := o.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	return &http.Client{
		Transport: &http.Transport{Proxy: proxy, DialContext: d.DialContext, TLSClientConfig: tc, ForceAttemptHTTP2: true},
		// A redirect would send the token somewhere nobody configured.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// dialer is the uplink's dialer: bound to the uplink NIC and address, its
// DNS queries too (see nicbind.DialerFrom, which the agent's uplink and
// check use as well), so enrollment takes the path the agent will take,
// and sends nothing out of the control NIC.
func dialer(o Options) (*net.Dialer, error) {
	d, err := nicbind.DialerFrom(o.Interface, o.LocalAddr)
	if err != nil {
		return nil, fmt.Errorf("enrolling from the uplink side: %w", err)
	}
	d.Timeout = o.Timeout
	return d, nil
}

func call(ctx context.Context, c *http.Client, timeout time.Duration, method, target string, body []byte) (int, []byte, error) {
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "sightglass-agent")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	return resp.StatusCode, data, err
}

func parseCert(p []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(p)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}
