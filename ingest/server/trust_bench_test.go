package server

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// benchHandshake opens a new mTLS connection per iteration and makes one
// request on it, so each op is a handshake (with the registry's revocation
// check) plus a small round trip.
func benchHandshake(b *testing.B, resume bool) {
	e := newTrustEnv(b)
	_, er, _ := e.enroll(e.token("s1", time.Hour))
	bd := e.agents[er.Agent]
	cert, err := tls.X509KeyPair(bd.CertPEM, bd.KeyPEM)
	if err != nil {
		b.Fatal(err)
	}
	cfg := pki.ClientTLSConfig(cert, e.ca.Pool())
	if resume {
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	}
	serial := pki.SerialHex(cert.Leaf)
	b.ResetTimer()
	for b.Loop() {
		tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, DisableKeepAlives: true}
		resp, err := (&http.Client{Transport: tr}).Get(e.base + "/v1/certs/" + serial)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		tr.CloseIdleConnections()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

func BenchmarkHandshakeFull(b *testing.B)    { benchHandshake(b, false) }
func BenchmarkHandshakeResumed(b *testing.B) { benchHandshake(b, true) }

// BenchmarkRenew measures a renewal round trip: the agent makes a key and
// CSR, the ingest checks the registry, signs and records the certificate
// and writes the audit log.
func BenchmarkRenew(b *testing.B) {
	e := newTrustEnv(b)
	c, _, _ := e.enroll(e.token("s1", time.Hour))
	b.ResetTimer()
	for b.Loop() {
		_, csr, err := pki.NewAgentKey()
		if err != nil {
			b.Fatal(err)
		}
		body, _ := json.Marshal(map[string]any{"csr": csr})
		resp, err := c.Post(e.base+"/v1/renew", "application/json", strings.NewReader(string(body)))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("renew: %d", resp.StatusCode)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/renewal")
}
