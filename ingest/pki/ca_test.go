package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestInitLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := Init(dir, InitOptions{})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	for f, want := range map[string]os.FileMode{
		"": 0o700, CAKeyFile: 0o600, ServerKeyFile: 0o600,
	} {
		if got := mode(t, filepath.Join(dir, f)); got&^want != 0 {
			t.Errorf("mode of %q = %04o, want at most %04o", f, got, want)
		}
	}
	if c := ca.Certificate(); !c.IsCA || c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("root: IsCA=%v algorithm=%v, want an ECDSA CA", c.IsCA, c.PublicKeyAlgorithm)
	}

	loaded, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !bytes.Equal(loaded.CertPEM(), ca.CertPEM()) {
		t.Error("loaded CA certificate differs from the one Init made")
	}
	if !loaded.key.Equal(ca.key) {
		t.Error("loaded CA key differs from the one Init made")
	}
	if iss := loaded.IssuingCertificate(); !iss.IsCA || iss.CheckSignatureFrom(loaded.Certificate()) != nil || iss.Equal(loaded.Certificate()) {
		t.Error("the issuing CA is not a CA signed by the root")
	}
	// The root key can go offline: the CA keeps working without it.
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if offline, err := Load(dir); err != nil {
		t.Errorf("Load without the root key: %v", err)
	} else if _, _, err := offline.IssueAgent(Identity{Tenant: "t", Site: "s", Agent: "ag-1"}, newKey(t).Public(), time.Hour); err != nil {
		t.Errorf("issuing with the root key offline: %v", err)
	}
	a, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	b, err := loaded.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if !a.Leaf.Equal(b.Leaf) {
		t.Error("loaded server certificate differs from the one Init made")
	}
	if !slices.Equal(b.Leaf.DNSNames, []string{"localhost"}) || len(b.Leaf.IPAddresses) != 2 ||
		!b.Leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || !b.Leaf.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Errorf("default server SANs: dns=%v ip=%v, want localhost, 127.0.0.1, ::1", b.Leaf.DNSNames, b.Leaf.IPAddresses)
	}
	if _, err := b.Leaf.Verify(x509.VerifyOptions{
		DNSName: "localhost", Roots: loaded.Pool(), Intermediates: loaded.Intermediates(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		t.Errorf("server certificate does not verify for localhost against the CA: %v", err)
	}
}

func TestInitServerNames(t *testing.T) {
	ca, err := Init(t.TempDir(), InitOptions{ServerNames: []string{"ingest.example.net", "10.1.2.3"}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Leaf.DNSNames, []string{"ingest.example.net"}) || len(c.Leaf.IPAddresses) != 1 || c.Leaf.IPAddresses[0].String() != "10.1.2.3" {
		t.Errorf("server SANs dns=%v ip=%v", c.Leaf.DNSNames, c.Leaf.IPAddresses)
	}
	if _, err := Init(t.TempDir(), InitOptions{ServerNames: []string{""}}); err == nil {
		t.Error("Init accepted an empty server name")
	}
}

func TestInitRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	ca, err := Init(dir, InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Init(dir, InitOptions{})
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second Init: err = %v, want a refusal", err)
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(loaded.CertPEM(), ca.CertPEM()) {
		t.Error("second Init changed the existing CA")
	}
}

func TestLoadErrors(t *testing.T) {
	other, err := Init(t.TempDir(), InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  string
	}{
		{"missing", func(t *testing.T, dir string) { os.RemoveAll(dir) }, "ca init --dir"},
		{"empty dir", func(t *testing.T, dir string) {
			os.RemoveAll(dir)
			os.Mkdir(dir, 0o700)
		}, "ca init --dir"},
		{"issuing key readable by group", func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, IssuingKeyFile), 0o640) }, "chmod 600"},
		{"server key readable by others", func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, ServerKeyFile), 0o604) }, "chmod 600"},
		{"server cert missing", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, ServerCertFile)) }, "incomplete"},
		{"issuing key from another CA", func(t *testing.T, dir string) {
			b, err := os.ReadFile(filepath.Join(other.Dir(), IssuingKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, IssuingKeyFile), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "does not belong"},
		{"server cert from another CA", func(t *testing.T, dir string) {
			for _, f := range []string{ServerCertFile, ServerKeyFile} {
				b, err := os.ReadFile(filepath.Join(other.Dir(), f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}, "not signed by"},
		{"garbage cert", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, CACertFile), []byte("hello"), 0o644)
		}, "no PEM CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			if _, err := Init(dir, InitOptions{}); err != nil {
				t.Fatal(err)
			}
			tt.spoil(t, dir)
			_, err := Load(dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load: err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadRefusesExpiredServerCert(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-3 * 365 * 24 * time.Hour)
	if _, err := Init(dir, InitOptions{Now: func() time.Time { return old }}); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Load: err = %v, want the server certificate reported expired", err)
	}
}

func TestIssueAgent(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	ca, err := Init(t.TempDir(), InitOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{Tenant: "t1", Site: "s-42", Agent: "ag-abc"}
	key := newKey(t)
	cert, certPEM, err := ca.IssueAgent(id, key.Public(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := parseCertPEM(certPEM)
	if err != nil || !parsed.Equal(cert) {
		t.Fatalf("PEM does not hold the returned certificate (err %v)", err)
	}
	if got, err := IdentityFromCert(cert); err != nil || got != id {
		t.Errorf("IdentityFromCert = %v, %v; want %v", got, err, id)
	}
	if !cert.NotBefore.Equal(now.Add(-5*time.Minute)) || !cert.NotAfter.Equal(now.Add(24*time.Hour)) {
		t.Errorf("validity %v..%v, want now-5m..now+24h", cert.NotBefore, cert.NotAfter)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || cert.IsCA {
		t.Errorf("ext key usage %v IsCA %v, want client auth only", cert.ExtKeyUsage, cert.IsCA)
	}
	if n := cert.SerialNumber.BitLen(); n > 128 || cert.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %v: %d bits, want a positive 128-bit number", cert.SerialNumber, n)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: ca.Intermediates(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("agent certificate does not verify against the CA: %v", err)
	}
	again, _, err := ca.IssueAgent(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if again.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}

	bad := []struct {
		name     string
		id       Identity
		validity time.Duration
	}{
		{"zero validity", id, 0},
		{"negative validity", id, -time.Hour},
		{"outlives CA", id, 11 * 365 * 24 * time.Hour},
		{"bad tenant", Identity{Tenant: "T1", Site: "s", Agent: "a"}, time.Hour},
		{"empty site", Identity{Tenant: "t", Site: "", Agent: "a"}, time.Hour},
		{"slash in agent", Identity{Tenant: "t", Site: "s", Agent: "a/b"}, time.Hour},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := ca.IssueAgent(tt.id, key.Public(), tt.validity); err == nil {
				t.Error("IssueAgent succeeded")
			}
		})
	}
}
