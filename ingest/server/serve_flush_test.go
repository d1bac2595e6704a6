package server

import (
	"net/http"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// TestServeWritesRefusalCountsAtShutdown: refusals the throttle left out
// are counted in the audit log when Serve returns.
func TestServeWritesRefusalCountsAtShutdown(t *testing.T) {
	e := newTrustEnv(t)
	_, csr, _ := pki.NewAgentKey()
	for range 3 {
		wantReply(t, postJSON(t, e.env, e.anonymous(), "/v1/enroll", map[string]any{"token": "sge1.nope", "csr": csr}), http.StatusForbidden, CodeBadToken)
	}
	if n, _ := e.auditCount("enroll_refused"); n != 1 {
		t.Fatalf("%d entries before shutdown, want 1", n)
	}
	e.stop()
	n, last := e.auditCount("enroll_refused")
	if n != 2 || !strings.Contains(last.Detail, "(2 more like it since the last entry") {
		t.Errorf("after shutdown: %d entries, the last %+v; want one counting the 2 left out", n, last)
	}
}
