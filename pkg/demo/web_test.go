package demo

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDashboardIntegration signs in to the demo's dashboard with the
// printed login, trusting only the demo CA, and finds the demo building.
func TestDashboardIntegration(t *testing.T) {
	s, _ := newStack(t)
	if s.DashboardURL == "" || len(s.DashboardPassword) < 20 {
		t.Fatalf("no dashboard login: %q %q", s.DashboardURL, s.DashboardPassword)
	}
	pem, err := os.ReadFile(s.CACertFile())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("the demo CA file holds no certificate")
	}
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Jar: jar}
	get := func(path string) string {
		t.Helper()
		resp, err := c.Get(strings.TrimSuffix(s.DashboardURL, "/") + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	tok := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(get("/login"))
	if tok == nil {
		t.Fatal("no login form")
	}
	resp, err := c.PostForm(strings.TrimSuffix(s.DashboardURL, "/")+"/login", url.Values{"csrf": {tok[1]}, "name": {DemoUser}, "password": {s.DashboardPassword}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "Demo Building") {
		t.Errorf("after signing in as %s: %d\n%s", DemoUser, resp.StatusCode, body)
	}
}
