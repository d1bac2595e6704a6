package azure_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
)

// writeServicePrincipal writes a self-signed certificate and its key, as
// `openssl req -x509` makes for an app registration, into one PEM file.
func writeServicePrincipal(t *testing.T, key crypto.Signer) string {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sightglass-ingest"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	data := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	path := filepath.Join(t.TempDir(), "sp.pem")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Building credentials does no network I/O, so these run anywhere; tokens
// themselves are only ever requested in production.
func TestCredential(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM, ecPEM := writeServicePrincipal(t, rsaKey), writeServicePrincipal(t, ecKey)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("eyJ.projected.token"), 0o600); err != nil {
		t.Fatal(err)
	}
	const tenant, client = "72f988bf-86f1-41af-91ab-2d7cd011db47", "0c1f5a3e-aaaa-4bbb-8ccc-123456789abc"
	tests := []struct {
		name string
		c    azure.CredentialConfig
		want string // "" for success
	}{
		{"client certificate RSA", azure.CredentialConfig{Mode: azure.AuthClientCertificate, TenantID: tenant, ClientID: client, CertificateFile: rsaPEM}, ""},
		{"client certificate EC refused", azure.CredentialConfig{Mode: azure.AuthClientCertificate, TenantID: tenant, ClientID: client, CertificateFile: ecPEM}, "not RSA"},
		{"client certificate missing", azure.CredentialConfig{Mode: azure.AuthClientCertificate, TenantID: tenant, ClientID: client, CertificateFile: "/nonexistent.pem"}, "reading the service principal's certificate"},
		{"client certificate garbage", azure.CredentialConfig{Mode: azure.AuthClientCertificate, TenantID: tenant, ClientID: client, CertificateFile: garbage}, "parsing the service principal's certificate"},
		{"client certificate password missing", azure.CredentialConfig{Mode: azure.AuthClientCertificate, TenantID: tenant, ClientID: client, CertificateFile: rsaPEM, CertificatePasswordFile: "/nonexistent"}, "reading the certificate's password"},
		{"managed identity", azure.CredentialConfig{Mode: azure.AuthManagedIdentity}, ""},
		{"user-assigned managed identity", azure.CredentialConfig{Mode: azure.AuthManagedIdentity, ClientID: client}, ""},
		{"workload identity", azure.CredentialConfig{Mode: azure.AuthWorkloadIdentity, TenantID: tenant, ClientID: client, TokenFile: tokenFile}, ""},
		{"shared key is no credential", azure.CredentialConfig{Mode: azure.AuthSharedKeyEmulator}, "not a token credential"},
		{"unknown", azure.CredentialConfig{Mode: "password"}, "unknown auth mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred, err := azure.Credential(tt.c)
			if tt.want == "" {
				if err != nil || cred == nil {
					t.Fatalf("Credential = %v, %v", cred, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Credential: err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}
