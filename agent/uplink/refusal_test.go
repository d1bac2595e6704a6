package uplink

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRefusedCertificateExplained: an ingest that refuses the agent's
// certificate after the TLS 1.3 handshake (as a revoked agent's is) leaves
// the agent with a closed connection; the uplink asks the ingest's status
// query, without a certificate, and says in its error that the agent was
// revoked and what to do — asking once, not at every retry.
func TestRefusedCertificateExplained(t *testing.T) {
	says := map[string]string{"revoked": "has revoked this agent's certificate", "expired": "certificate has expired", "unknown": "does not know this agent's certificate"}
	for _, verdict := range []string{"revoked", "expired", "unknown", "good"} {
		t.Run(verdict, func(t *testing.T) {
			e := newTestEnv(t)
			var asked, withCert atomic.Int32
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
					withCert.Add(1)
				}
				if !strings.HasPrefix(r.URL.Path, "/v1/certs/") {
					http.Error(w, "only the status query answers here", http.StatusForbidden)
					return
				}
				asked.Add(1)
				writeJSON(w, http.StatusOK, map[string]string{"serial": strings.TrimPrefix(r.URL.Path, "/v1/certs/"), "status": verdict})
			}))
			srv.EnableHTTP2 = true
			srv.TLS = &tls.Config{
				MinVersion:   tls.VersionTLS13,
				ClientAuth:   tls.VerifyClientCertIfGiven,
				ClientCAs:    e.ca.pool,
				Certificates: []tls.Certificate{e.ca.issue(t, "ingest", true)},
				// The registry's verdict on every presented certificate.
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) > 0 {
						return errors.New("certificate revoked")
					}
					return nil
				},
			}
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.StartTLS()
			t.Cleanup(srv.Close)
			e.cfg.URL = srv.URL
			e.src.add(1, 1, tableA, 10)
			u, err := New(e.cfg, e.src)
			if err != nil {
				t.Fatal(err)
			}
			run(t, u)
			deadline := time.Now().Add(20 * time.Second)
			for u.Stats().ConsecutiveFailures < 5 {
				if time.Now().After(deadline) {
					t.Fatalf("the uplink failed %d times in 20s; last error %q", u.Stats().ConsecutiveFailures, u.Stats().LastError)
				}
				time.Sleep(5 * time.Millisecond)
			}
			last := u.Stats().LastError
			if verdict == "good" {
				if strings.Contains(last, "enroll") {
					t.Errorf("a certificate the ingest calls good got advice to enroll again: %q", last)
				}
			} else if !strings.Contains(last, says[verdict]) || !strings.Contains(last, "enroll") {
				t.Errorf("last error %q does not say the certificate is %s and what to do", last, verdict)
			}
			if n := asked.Load(); n != 1 {
				t.Errorf("the status query was asked %d times over %d failures, want once per %v", n, u.Stats().ConsecutiveFailures, refusalProbeEvery)
			}
			if withCert.Load() != 0 {
				t.Error("the status query presented the agent's certificate; it must go without one")
			}
		})
	}
}
