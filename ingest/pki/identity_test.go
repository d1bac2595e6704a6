package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"strings"
	"testing"
	"time"
)

// signed makes a certificate from tmpl signed by ca, so tests can build the
// malformed certificates IssueAgent would never make.
func signed(t *testing.T, ca *CA, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.issuer, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestIdentityFromCert(t *testing.T) {
	ca, err := Init(t.TempDir(), InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	good := "sightglass://agent/t1/s1/ag-1"
	tests := []struct {
		name    string
		cn      string
		uris    []string
		eku     []x509.ExtKeyUsage
		isCA    bool
		want    Identity
		wantErr string
	}{
		{"good", "ag-1", []string{good}, client, false, Identity{"t1", "s1", "ag-1"}, ""},
		{"good with server auth too", "ag-1", []string{good}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, false, Identity{"t1", "s1", "ag-1"}, ""},
		{"missing SAN", "ag-1", nil, client, false, Identity{}, "exactly one URI SAN"},
		{"two SANs", "ag-1", []string{good, "sightglass://agent/t1/s1/ag-2"}, client, false, Identity{}, "exactly one URI SAN"},
		{"foreign SAN beside ours", "ag-1", []string{good, "https://example.com/x"}, client, false, Identity{}, "exactly one URI SAN"},
		{"CN mismatch", "ag-2", []string{good}, client, false, Identity{}, "does not match"},
		{"empty CN", "", []string{good}, client, false, Identity{}, "does not match"},
		{"server auth only", "ag-1", []string{good}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, false, Identity{}, "client authentication"},
		{"no ext key usage", "ag-1", []string{good}, nil, false, Identity{}, "client authentication"},
		{"CA certificate", "ag-1", []string{good}, client, true, Identity{}, "CA certificate"},
		{"upper case id", "AG-1", []string{"sightglass://agent/t1/s1/AG-1"}, client, false, Identity{}, "invalid agent id"},
		{"underscore in site", "ag-1", []string{"sightglass://agent/t1/s_1/ag-1"}, client, false, Identity{}, "invalid site id"},
		{"leading dash", "ag-1", []string{"sightglass://agent/-t1/s1/ag-1"}, client, false, Identity{}, "invalid tenant id"},
		{"too long", "ag-1", []string{"sightglass://agent/" + strings.Repeat("a", 64) + "/s1/ag-1"}, client, false, Identity{}, "invalid tenant id"},
		{"wrong scheme", "ag-1", []string{"https://agent/t1/s1/ag-1"}, client, false, Identity{}, "want sightglass://agent/"},
		{"wrong host", "ag-1", []string{"sightglass://user/t1/s1/ag-1"}, client, false, Identity{}, "want sightglass://agent/"},
		{"two segments", "ag-1", []string{"sightglass://agent/t1/ag-1"}, client, false, Identity{}, "3 path segments"},
		{"four segments", "ag-1", []string{"sightglass://agent/t1/s1/x/ag-1"}, client, false, Identity{}, "3 path segments"},
		{"query", "ag-1", []string{good + "?x=1"}, client, false, Identity{}, "canonical"},
		{"escaped", "ag-1", []string{"sightglass://agent/t1/s1/ag-%31"}, client, false, Identity{}, "canonical"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: tt.cn}, ExtKeyUsage: tt.eku}
			for _, u := range tt.uris {
				tmpl.URIs = append(tmpl.URIs, mustURL(t, u))
			}
			if tt.isCA {
				tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
				tmpl.KeyUsage = x509.KeyUsageCertSign
			}
			got, err := IdentityFromCert(signed(t, ca, tmpl, newKey(t).Public()))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if _, err := IdentityFromCert(nil); err == nil {
		t.Error("IdentityFromCert(nil) succeeded")
	}
}

func TestIdentityValidate(t *testing.T) {
	tests := []struct {
		id   Identity
		want []string // field names in the error; none means valid
	}{
		{Identity{"t", "s", "a"}, nil},
		{Identity{"0", "9-", strings.Repeat("z", 63)}, nil},
		{Identity{"", "s", "a"}, []string{"tenant"}},
		{Identity{"t", "S", "a"}, []string{"site"}},
		{Identity{"t", "s", strings.Repeat("z", 64)}, []string{"agent"}},
		{Identity{"t.x", "s/y", "a b"}, []string{"tenant", "site", "agent"}},
		{Identity{"-t", "s", "a"}, []string{"tenant"}},
	}
	for _, tt := range tests {
		t.Run(tt.id.String(), func(t *testing.T) {
			err := tt.id.Validate()
			if (err == nil) != (len(tt.want) == 0) {
				t.Fatalf("Validate = %v, want errors for %v", err, tt.want)
			}
			for _, f := range tt.want {
				if !strings.Contains(err.Error(), "invalid "+f+" id") {
					t.Errorf("error %q does not name the %s", err, f)
				}
			}
		})
	}
}

func TestIdentityURIRoundTrip(t *testing.T) {
	id := Identity{"acme", "s-0001", "ag-abcdefghijkl"}
	if s := id.String(); s != "sightglass://agent/acme/s-0001/ag-abcdefghijkl" {
		t.Fatalf("String = %q", s)
	}
	got, err := ParseIdentityURI(id.String())
	if err != nil || got != id {
		t.Fatalf("ParseIdentityURI = %v, %v", got, err)
	}
}
