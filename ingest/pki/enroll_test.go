package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnrollTokenRoundTrip(t *testing.T) {
	tok, err := NewEnrollToken(Fingerprint{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseEnrollToken("  " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("ParseEnrollToken = %v, %v", got, err)
	}
	secret := tok.String()[len(tokenPrefix):][:10]
	for _, bad := range []string{"", "sge2.x.y", "sge1.abc", "sge1.a.b.c", tok.String()[:len(tok.String())-2], strings.Replace(tok.String(), "sge1.", "sge1.!", 1)} {
		_, err := ParseEnrollToken(bad)
		if err == nil {
			t.Errorf("ParseEnrollToken(%q) succeeded", bad)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("the error echoes the token: %v", err)
		}
	}
	if string(tok.Hash()) == string(tok.Secret[:]) {
		t.Error("the hash is the secret")
	}
}

func TestParseCSR(t *testing.T) {
	_, good, err := NewAgentKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCSR(good); err != nil {
		t.Errorf("a good CSR: %v", err)
	}
	weak, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weakCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, weak)
	broken := append([]byte(nil), good...)
	broken[len(broken)-3] ^= 0xff
	for name, der := range map[string][]byte{"garbage": []byte("nope"), "P-224": weakCSR, "bad signature": broken} {
		if _, err := ParseCSR(der); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRotationSurvivesCrashes checks each point a crash can interrupt
// RotateAgentCert: LoadAgentBundle always finds a matching pair.
func TestRotationSurvivesCrashes(t *testing.T) {
	ca, err := Init(t.TempDir(), InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.NewAgentBundle("t1", "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, newCert, err := ca.IssueAgent(b.Identity, newKey.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newKeyPEM, _ := pemKey(newKey)
	for _, tt := range []struct {
		name    string
		prepare func(dir string)
		wantNew bool
	}{
		{"both written, none renamed", func(dir string) {
			os.WriteFile(filepath.Join(dir, AgentKeyFile+nextSuffix), newKeyPEM, 0o600)
			os.WriteFile(filepath.Join(dir, AgentCertFile+nextSuffix), newCert, 0o644)
		}, false},
		{"key renamed, certificate not", func(dir string) {
			os.WriteFile(filepath.Join(dir, AgentKeyFile), newKeyPEM, 0o600)
			os.WriteFile(filepath.Join(dir, AgentCertFile+nextSuffix), newCert, 0o644)
		}, true},
		{"completed", func(dir string) {
			if err := RotateAgentCert(dir, newKey, newCert); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cert")
			if err := b.WriteDir(dir); err != nil {
				t.Fatal(err)
			}
			tt.prepare(dir)
			cert, _, id, err := LoadAgentBundle(dir)
			if err != nil {
				t.Fatalf("LoadAgentBundle: %v", err)
			}
			if id != b.Identity {
				t.Errorf("identity %v", id)
			}
			isNew := cert.PrivateKey.(*ecdsa.PrivateKey).Equal(newKey)
			if isNew != tt.wantNew {
				t.Errorf("new pair loaded = %v, want %v", isNew, tt.wantNew)
			}
			if m, _ := filepath.Glob(filepath.Join(dir, "*"+nextSuffix)); len(m) != 0 {
				t.Errorf("left behind: %v", m)
			}
		})
	}
	if err := RotateAgentCert(t.TempDir(), newKey, b.CertPEM); err == nil {
		t.Error("rotating to a certificate of another key succeeded")
	}
}

func TestCRL(t *testing.T) {
	ca, err := Init(t.TempDir(), InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.CRL([]Revoked{{Serial: "0abc", At: time.Now()}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.IssuingCertificate()); err != nil || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Text(16) != "abc" {
		t.Errorf("CRL %+v, %v", crl.RevokedCertificateEntries, err)
	}
	if _, err := ca.CRL([]Revoked{{Serial: "xyz"}}, time.Hour); err == nil {
		t.Error("a non-hex serial was accepted")
	}
}
