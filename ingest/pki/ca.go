// Package pki is the ingest's certificate authority: an ECDSA P-256 root
// that can be kept offline, an online issuing CA it signs, and the ingest's
// TLS server certificate, in a directory. It issues short-lived agent client
// certificates that name an Identity in a URI SAN, enrollment tokens and
// CRLs, and builds the TLS 1.3 mutual-authentication configs both ends use.
//
// Files in a CA directory (keys are PKCS#8 PEM, mode 0600):
//
//	ca.crt ca.key           the root CA; agents and the ingest trust only it.
//	                        ca.key is needed only by `ca init`: move it offline.
//	issuing.crt issuing.key the online issuing CA, signed by the root; it signs
//	                        agent certificates, the server certificate and CRLs
//	server.crt server.key   the ingest listener's certificate and chain
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
)

// File names inside a CA directory.
const (
	CACertFile      = "ca.crt"
	CAKeyFile       = "ca.key"
	ServerCertFile  = "server.crt"
	ServerKeyFile   = "server.key"
	IssuingCertFile = "issuing.crt"
	IssuingKeyFile  = "issuing.key"
)

// Lifetimes of what Init creates. The server certificate is shorter-lived
// than the root because it sits on every replica's disk.
const (
	caValidity      = 10 * 365 * 24 * time.Hour
	issuingValidity = 5 * 365 * 24 * time.Hour
	serverValidity  = 2 * 365 * 24 * time.Hour
	// backdate absorbs clock skew between the ingest and agents.
	backdate = 5 * time.Minute
)

// DefaultServerNames are the server certificate's SANs when InitOptions
// names none: the loopback names, enough for a single-box setup.
var DefaultServerNames = []string{"localhost", "127.0.0.1", "::1"}

// InitOptions tune Init. The zero value is usable.
type InitOptions struct {
	// ServerNames are the DNS names and IP addresses the ingest is reached
	// at, written as SANs into the server certificate. Empty means
	// DefaultServerNames.
	ServerNames []string
	// Now is the clock for validity periods, also used by the returned CA
	// when it issues certificates. Nil means time.Now.
	Now func() time.Time
}

// CA is an issuing certificate authority loaded from a directory. It is safe
// for concurrent use: it is read-only after Init or Load.
type CA struct {
	dir     string
	cert    *x509.Certificate // the root
	certPEM []byte
	// issuer and key sign everything the CA issues: the issuing CA, or the
	// root itself in a directory made before the issuing CA existed.
	issuer     *x509.Certificate
	issuerPEM  []byte // empty when the root issues
	key        *ecdsa.PrivateKey
	serverCert []byte // PEM
	serverKey  []byte // PEM
	now        func() time.Time
}

// Init creates a new CA in dir (created with mode 0700 if absent): a root
// certificate and key, and a server certificate for the ingest's TLS
// listener. It refuses to touch a directory that already holds any CA file.
func Init(dir string, opts InitOptions) (*CA, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	names := opts.ServerNames
	if len(names) == 0 {
		names = DefaultServerNames
	}
	for _, f := range []string{CACertFile, CAKeyFile, IssuingCertFile, IssuingKeyFile, ServerCertFile, ServerKeyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("initialising CA in %s: %s already exists; refusing to overwrite an existing CA: use it as is (load it with --dir %s) or choose another directory", dir, f, dir)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("initialising CA in %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("initialising CA: creating directory: %w", err)
	}

	t := now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: generating root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("initialising CA: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial,
		// The serial in the name tells two CAs apart in error messages
		// ("signed by unknown authority") without naming anything else.
		Subject:               pkix.Name{CommonName: "Sightglass ingest CA " + serial.Text(16)[:8]},
		NotBefore:             t.Add(-backdate),
		NotAfter:              t.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1, // the issuing CA, then leaves
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: creating root certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: parsing root certificate: %w", err)
	}
	ca := &CA{dir: dir, cert: caCert, certPEM: pemCert(caDER), now: now}

	issKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: generating issuing key: %w", err)
	}
	issSerial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("initialising CA: %w", err)
	}
	issDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber:          issSerial,
		Subject:               pkix.Name{CommonName: "Sightglass issuing CA " + issSerial.Text(16)[:8]},
		NotBefore:             t.Add(-backdate),
		NotAfter:              minTime(t.Add(issuingValidity), caCert.NotAfter),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, caCert, &issKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: creating issuing certificate: %w", err)
	}
	if ca.issuer, err = x509.ParseCertificate(issDER); err != nil {
		return nil, fmt.Errorf("initialising CA: parsing issuing certificate: %w", err)
	}
	ca.issuerPEM, ca.key = pemCert(issDER), issKey

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: generating server key: %w", err)
	}
	srvDER, err := ca.signServer(names, srvKey.Public(), t)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: %w", err)
	}
	ca.serverCert = ca.chain(srvDER)
	caKeyPEM, err := pemKey(caKey)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: %w", err)
	}
	issKeyPEM, err := pemKey(issKey)
	if err != nil {
		return nil, fmt.Errorf("initialising CA: %w", err)
	}
	if ca.serverKey, err = pemKey(srvKey); err != nil {
		return nil, fmt.Errorf("initialising CA: %w", err)
	}

	// Keys first: if we crash midway, Load reports the missing certificate
	// and Init refuses, so a half-made CA is noticed, never silently reused.
	for _, f := range []struct {
		name string
		data []byte
		mode fs.FileMode
	}{
		{CAKeyFile, caKeyPEM, 0o600},
		{IssuingKeyFile, issKeyPEM, 0o600},
		{ServerKeyFile, ca.serverKey, 0o600},
		{CACertFile, ca.certPEM, 0o644},
		{IssuingCertFile, ca.issuerPEM, 0o644},
		{ServerCertFile, ca.serverCert, 0o644},
	} {
		if err := writeNew(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return nil, fmt.Errorf("initialising CA in %s: %w", dir, err)
		}
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, fmt.Errorf("initialising CA in %s: %w", dir, err)
	}
	return ca, nil
}

// signServer makes the ingest listener's certificate for names (DNS names or
// IP literals).
func (ca *CA) signServer(names []string, pub crypto.PublicKey, t time.Time) ([]byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    t.Add(-backdate),
		NotAfter:     minTime(t.Add(serverValidity), ca.issuer.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n == "" {
			return nil, errors.New("creating server certificate: empty server name")
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.issuer, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("creating server certificate: %w", err)
	}
	return der, nil
}

// Load opens the CA that Init created in dir. It refuses key files that
// group or others can read, and a CA or server certificate that has expired.
func Load(dir string) (*CA, error) {
	read := func(name string, secret bool) ([]byte, error) {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			if _, derr := os.Stat(filepath.Join(dir, CACertFile)); errors.Is(derr, fs.ErrNotExist) {
				return nil, fmt.Errorf("loading CA: no CA in %s: run `sightglass-ingest ca init --dir %s` first", dir, dir)
			}
			return nil, fmt.Errorf("loading CA: %s is missing from %s; the CA directory is incomplete (was `ca init` interrupted?): restore it from backup or initialise a new CA in an empty directory", name, dir)
		}
		if err != nil {
			return nil, fmt.Errorf("loading CA: %w", err)
		}
		if secret {
			if err := checkKeyMode(p, fi); err != nil {
				return nil, fmt.Errorf("loading CA: %w", err)
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("loading CA: %w", err)
		}
		return b, nil
	}
	ca := &CA{dir: dir, now: time.Now}
	var err error
	if ca.certPEM, err = read(CACertFile, false); err != nil {
		return nil, err
	}
	if ca.cert, err = parseCertPEM(ca.certPEM); err != nil {
		return nil, fmt.Errorf("loading CA: %s: %w", filepath.Join(dir, CACertFile), err)
	}
	if !ca.cert.IsCA {
		return nil, fmt.Errorf("loading CA: %s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	// The issuing CA signs; the root key may be offline. A directory made
	// before the issuing CA existed has none, and its root signs.
	issuerFile, keyFile := IssuingCertFile, IssuingKeyFile
	if _, err := os.Stat(filepath.Join(dir, IssuingCertFile)); errors.Is(err, fs.ErrNotExist) {
		issuerFile, keyFile = CACertFile, CAKeyFile
		ca.issuer = ca.cert
	} else {
		if ca.issuerPEM, err = read(IssuingCertFile, false); err != nil {
			return nil, err
		}
		if ca.issuer, err = parseCertPEM(ca.issuerPEM); err != nil {
			return nil, fmt.Errorf("loading CA: %s: %w", filepath.Join(dir, IssuingCertFile), err)
		}
		if !ca.issuer.IsCA {
			return nil, fmt.Errorf("loading CA: %s is not a CA certificate", filepath.Join(dir, IssuingCertFile))
		}
		if err := ca.issuer.CheckSignatureFrom(ca.cert); err != nil {
			return nil, fmt.Errorf("loading CA: %s is not signed by %s: %w", filepath.Join(dir, IssuingCertFile), filepath.Join(dir, CACertFile), err)
		}
	}
	keyPEM, err := read(keyFile, true)
	if err != nil {
		return nil, err
	}
	if ca.serverCert, err = read(ServerCertFile, false); err != nil {
		return nil, err
	}
	if ca.serverKey, err = read(ServerKeyFile, true); err != nil {
		return nil, err
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading CA: %s: %w", filepath.Join(dir, keyFile), err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok || !ecKey.PublicKey.Equal(ca.issuer.PublicKey) {
		return nil, fmt.Errorf("loading CA: %s does not belong to %s", filepath.Join(dir, keyFile), filepath.Join(dir, issuerFile))
	}
	ca.key = ecKey

	srv, err := ca.ServerCertificate()
	if err != nil {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	if err := srv.Leaf.CheckSignatureFrom(ca.issuer); err != nil {
		return nil, fmt.Errorf("loading CA: %s is not signed by %s: %w", filepath.Join(dir, ServerCertFile), filepath.Join(dir, issuerFile), err)
	}
	now := ca.now()
	for _, c := range []struct {
		file string
		cert *x509.Certificate
	}{{CACertFile, ca.cert}, {issuerFile, ca.issuer}, {ServerCertFile, srv.Leaf}} {
		if now.After(c.cert.NotAfter) {
			return nil, fmt.Errorf("loading CA: %s expired on %s", filepath.Join(dir, c.file), c.cert.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return ca, nil
}

// chain is a leaf's PEM followed by the issuing CA's, so that a peer that
// trusts only the root can build the path.
func (ca *CA) chain(der []byte) []byte {
	return append(pemCert(der), ca.issuerPEM...)
}

// Intermediates is a pool holding the issuing CA, for verifying a leaf
// outside a TLS handshake (where the peer sends it).
func (ca *CA) Intermediates() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.issuer)
	return p
}

// IssuingCertificate is the certificate that signs agent certificates and
// CRLs: the issuing CA, or the root in a directory without one.
func (ca *CA) IssuingCertificate() *x509.Certificate { return ca.issuer }

// Dir is the directory the CA lives in.
func (ca *CA) Dir() string { return ca.dir }

// Certificate is the root CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Pool is a pool holding only the root, for verifying agent certificates.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// CertPEM is the root certificate in PEM, which agents trust to verify the
// ingest server.
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// ServerCertificate is the ingest listener's certificate and key.
func (ca *CA) ServerCertificate() (tls.Certificate, error) {
	c, err := tls.X509KeyPair(ca.serverCert, ca.serverKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("reading server certificate in %s: %w", ca.dir, err)
	}
	return c, nil
}

// IssueAgent signs an agent certificate for id and pub, valid for client
// authentication only, from five minutes ago (clock skew) for validity. It
// refuses a validity that would outlive the CA.
func (ca *CA) IssueAgent(id Identity, pub crypto.PublicKey, validity time.Duration) (*x509.Certificate, []byte, error) {
	if err := id.Validate(); err != nil {
		return nil, nil, fmt.Errorf("issuing agent certificate: %w", err)
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("issuing agent certificate for %s: validity %v must be positive", id, validity)
	}
	t := ca.now()
	notAfter := t.Add(validity)
	if notAfter.After(ca.issuer.NotAfter) {
		return nil, nil, fmt.Errorf("issuing agent certificate for %s: validity %v would outlive the issuing CA, which expires on %s: choose a shorter validity", id, validity, ca.issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("issuing agent certificate for %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id.Agent},
		NotBefore:    t.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URI()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.issuer, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issuing agent certificate for %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("issuing agent certificate for %s: %w", id, err)
	}
	return cert, ca.chain(der), nil
}

// randomSerial is a positive 128-bit random serial number.
func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	if n.Sign() == 0 {
		n.SetInt64(1) // serials must be positive (RFC 5280 4.1.2.2)
	}
	return n, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(k crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKeyPEM(b []byte) (crypto.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	return x509.ParsePKCS8PrivateKey(blk.Bytes)
}

// checkKeyMode refuses a private key file that group or others may access.
func checkKeyMode(path string, fi fs.FileInfo) error {
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("private key %s has mode %04o, readable beyond its owner: run `chmod 600 %s`", path, m, path)
	}
	return nil
}

// writeNew writes a file that must not exist yet, and syncs it.
func writeNew(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
