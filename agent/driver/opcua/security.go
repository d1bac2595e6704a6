package opcua

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
)

// ErrServerCertChanged means the server presented a certificate other than
// the pinned one: someone replaced the server, or its certificate was
// renewed. The connection stops until an installer confirms the new one.
var ErrServerCertChanged = errors.New("OPC UA server certificate changed")

// appURI is the agent's OPC UA application URI; servers match it against
// the certificate's URI SAN.
func appURI() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return "urn:sightglass-bms:agent:" + host
}

// identity is the agent's application-instance certificate.
type identity struct {
	cert []byte // DER
	key  *rsa.PrivateKey
	uri  string
}

// loadIdentity reads the agent's certificate and key from dir/own, making
// them on first use. The key file is 0600 and a key readable by others is
// refused: it is the agent's identity on the control network.
func loadIdentity(dir string) (identity, error) {
	own := filepath.Join(dir, "own")
	certFile, keyFile := filepath.Join(own, "cert.der"), filepath.Join(own, "key.pem")
	certDER, cerr := os.ReadFile(certFile)
	keyPEM, kerr := os.ReadFile(keyFile)
	if errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist) {
		return newIdentity(own, certFile, keyFile)
	}
	if cerr != nil || kerr != nil {
		return identity{}, fmt.Errorf("reading the agent's OPC UA certificate in %s: %w (remove both cert.der and key.pem to make a new one)", own, errors.Join(cerr, kerr))
	}
	if st, err := os.Stat(keyFile); err == nil && st.Mode().Perm()&0o077 != 0 {
		return identity{}, fmt.Errorf("the agent's OPC UA key %s is readable by others (mode %v): chmod 600 it", keyFile, st.Mode().Perm())
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return identity{}, fmt.Errorf("reading %s: %w", keyFile, err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return identity{}, fmt.Errorf("reading %s: %w", certFile, err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return identity{}, fmt.Errorf("%s and %s do not belong together: remove both to make a new pair", certFile, keyFile)
	}
	uri := appURI()
	if len(cert.URIs) > 0 {
		uri = cert.URIs[0].String()
	}
	return identity{cert: certDER, key: key, uri: uri}, nil
}

// newIdentity makes a self-signed application-instance certificate as OPC
// UA Part 6 describes it: RSA 2048, SHA-256, the application URI as a URI
// SAN, and the key usages the RSA policies need.
func newIdentity(own, certFile, keyFile string) (identity, error) {
	if err := os.MkdirAll(own, 0o700); err != nil {
		return identity{}, fmt.Errorf("making %s for the agent's OPC UA certificate: %w", own, err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return identity{}, fmt.Errorf("generating the agent's OPC UA key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return identity{}, fmt.Errorf("generating a certificate serial: %w", err)
	}
	uri := appURI()
	u, err := url.Parse(uri)
	if err != nil {
		return identity{}, fmt.Errorf("application URI %q: %w", uri, err)
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Sightglass agent", Organization: []string{"Sightglass"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
	}
	if host != "" {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return identity{}, fmt.Errorf("making the agent's OPC UA certificate: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	// Key first, then the certificate: a crash in between leaves a key
	// without certificate, which loadIdentity reports instead of reusing.
	if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
		return identity{}, err
	}
	if err := atomicfile.Write(certFile, der, 0o644); err != nil {
		return identity{}, err
	}
	return identity{cert: der, key: key, uri: uri}, nil
}

// parseKey reads an RSA private key in PEM (PKCS #1 or #8) or DER.
func parseKey(b []byte) (*rsa.PrivateKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	if k, err := x509.ParsePKCS1PrivateKey(b); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("not an RSA private key in PEM or DER: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the key is %T; OPC UA's RSA policies need an RSA key", k)
	}
	return rk, nil
}

// readCert reads a certificate in PEM or DER and returns its DER.
func readCert(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	if _, err := x509.ParseCertificate(b); err != nil {
		return nil, fmt.Errorf("%s is not a certificate in PEM or DER: %w", file, err)
	}
	return b, nil
}

// pinFile is where the certificate of the server at endpoint is pinned.
// The name keeps host and port readable for the installer.
func pinFile(dir, endpoint string) string {
	name := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		name = u.Host + u.Path
	}
	name = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '_'
	}, name)
	return filepath.Join(dir, "trusted", name+".der")
}

// thumbprint is how certificates are named in errors: SHA-256, hex.
func thumbprint(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

// pinner decides whether a server certificate is the one to trust: the one
// the installer gave, or the one seen first (trust on first use).
type pinner struct {
	given []byte // from settings.server_certificate; nil for first use
	file  string // the pin on disk
}

// check accepts cert if it matches the pin, pinning it when there is none
// yet. It reports whether it pinned a new certificate.
func (p pinner) check(cert []byte) (pinned bool, err error) {
	if len(cert) == 0 {
		return false, fmt.Errorf("the server sent no certificate for a secure endpoint")
	}
	want := p.given
	if want == nil {
		b, err := os.ReadFile(p.file)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.MkdirAll(filepath.Dir(p.file), 0o700); err != nil {
				return false, fmt.Errorf("pinning the server certificate: %w", err)
			}
			if err := atomicfile.Write(p.file, cert, 0o644); err != nil {
				return false, fmt.Errorf("pinning the server certificate: %w", err)
			}
			return true, nil
		case err != nil:
			return false, fmt.Errorf("reading the pinned server certificate: %w", err)
		}
		want = b
	}
	if !bytes.Equal(want, cert) {
		how := "pinned in " + p.file + " on first use; if the change is expected, remove that file"
		if p.given != nil {
			how = "given in settings.server_certificate; if the change is expected, replace that file"
		}
		return false, fmt.Errorf("%w: the server now presents sha256 %s, but the trusted one is sha256 %s (%s)",
			ErrServerCertChanged, thumbprint(cert), thumbprint(want), how)
	}
	return false, nil
}

// selectEndpoint picks the endpoint with the configured policy and mode.
func selectEndpoint(eps []*ua.EndpointDescription, policyURI string, mode ua.MessageSecurityMode) (*ua.EndpointDescription, error) {
	var offered []string
	for _, ep := range eps {
		if ep.SecurityPolicyURI == policyURI && ep.SecurityMode == mode {
			return ep, nil
		}
		offered = append(offered, policyName(ep.SecurityPolicyURI)+"/"+ep.SecurityMode.String())
	}
	return nil, fmt.Errorf("the server offers no endpoint with %s/%s (it offers %s): change security_policy and security_mode",
		policyName(policyURI), mode, strings.Join(offered, ", "))
}

// policyName is the short name of a policy URI.
func policyName(uri string) string {
	return strings.TrimPrefix(uri, ua.SecurityPolicyURIPrefix)
}

// userPolicy finds the endpoint's user-token policy of type t.
func userPolicy(ep *ua.EndpointDescription, t ua.UserTokenType) (*ua.UserTokenPolicy, error) {
	var offered []string
	for _, p := range ep.UserIdentityTokens {
		if p.TokenType == t {
			return p, nil
		}
		offered = append(offered, p.TokenType.String())
	}
	return nil, fmt.Errorf("the endpoint accepts no %s user token (it accepts %s): change auth.type", t, strings.Join(offered, ", "))
}

// readPrivate reads a private key file, refusing one that others can read.
func readPrivate(file string) ([]byte, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", file, st.Mode().Perm())
	}
	return os.ReadFile(file)
}
