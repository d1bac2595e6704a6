package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
)

// File names inside an agent bundle directory.
const (
	AgentCertFile = "agent.crt"
	AgentKeyFile  = "agent.key"
	// BundleCAFile is the CA the agent trusts to verify the ingest server.
	BundleCAFile = "ca.crt"
)

// agentIDPrefix marks ids the CA generated.
const agentIDPrefix = "ag-"

// Bundle is everything an agent needs to talk to the ingest: its
// certificate and key, and the CA that signed the ingest's server
// certificate.
type Bundle struct {
	Identity Identity
	CertPEM  []byte
	KeyPEM   []byte
	CAPEM    []byte
}

// NewAgentID is a random agent id: "ag-" and 12 lowercase base32 characters
// (60 bits), so ids never collide in practice and never say where a box is.
func NewAgentID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating agent id: %w", err)
	}
	s := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
	return agentIDPrefix + strings.ToLower(s[:12]), nil
}

// NewAgentBundle makes a key pair and a certificate for a new agent of
// tenant and site, with a fresh random agent id. The key is made here, on
// the ingest side, which is only acceptable until enrollment with CSRs
// exists (the agent then makes its own key and it never leaves the box).
func (ca *CA) NewAgentBundle(tenant, site string, validity time.Duration) (Bundle, error) {
	agent, err := NewAgentID()
	if err != nil {
		return Bundle{}, fmt.Errorf("creating agent bundle: %w", err)
	}
	id := Identity{Tenant: tenant, Site: site, Agent: agent}
	if err := id.Validate(); err != nil {
		return Bundle{}, fmt.Errorf("creating agent bundle: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Bundle{}, fmt.Errorf("creating agent bundle for %s: generating key: %w", id, err)
	}
	_, certPEM, err := ca.IssueAgent(id, key.Public(), validity)
	if err != nil {
		return Bundle{}, fmt.Errorf("creating agent bundle: %w", err)
	}
	keyPEM, err := pemKey(key)
	if err != nil {
		return Bundle{}, fmt.Errorf("creating agent bundle for %s: %w", id, err)
	}
	return Bundle{Identity: id, CertPEM: certPEM, KeyPEM: keyPEM, CAPEM: ca.CertPEM()}, nil
}

// WriteDir writes agent.crt, agent.key (0600) and ca.crt into dir, creating
// it with mode 0700 if absent. It refuses to overwrite any of the three and
// leaves nothing behind when it fails.
func (b Bundle) WriteDir(dir string) error {
	files := []struct {
		name string
		data []byte
		mode fs.FileMode
	}{
		{AgentKeyFile, b.KeyPEM, 0o600},
		{AgentCertFile, b.CertPEM, 0o644},
		{BundleCAFile, b.CAPEM, 0o644},
	}
	for _, f := range files {
		if len(f.data) == 0 {
			return fmt.Errorf("writing agent bundle to %s: %s is empty", dir, f.name)
		}
		if _, err := os.Lstat(filepath.Join(dir, f.name)); err == nil {
			return fmt.Errorf("writing agent bundle to %s: %s already exists; refusing to overwrite an agent's credentials: choose another directory or remove the old bundle first", dir, f.name)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("writing agent bundle to %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing agent bundle: creating directory: %w", err)
	}
	var written []string
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := writeNew(p, f.data, f.mode); err != nil {
			for _, w := range written {
				os.Remove(w) // best effort; the error below is what matters
			}
			return fmt.Errorf("writing agent bundle to %s: %w", dir, err)
		}
		written = append(written, p)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("writing agent bundle to %s: %w", dir, err)
	}
	return nil
}

// LoadAgentBundle reads a bundle that WriteDir wrote: the agent's TLS client
// certificate, the pool of CAs it trusts for the server, and its identity.
// It refuses an agent key that group or others can read.
func LoadAgentBundle(dir string) (tls.Certificate, *x509.CertPool, Identity, error) {
	if err := finishRotation(dir); err != nil {
		return tls.Certificate{}, nil, Identity{}, fmt.Errorf("loading agent bundle: finishing an interrupted certificate rotation in %s: %w", dir, err)
	}
	read := func(name string, secret bool) ([]byte, error) {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("loading agent bundle: %s is missing from %s: issue a bundle for this agent with sightglass-ingest and copy it there", name, dir)
		}
		if err != nil {
			return nil, fmt.Errorf("loading agent bundle: %w", err)
		}
		if secret {
			if err := checkKeyMode(p, fi); err != nil {
				return nil, fmt.Errorf("loading agent bundle: %w", err)
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("loading agent bundle: %w", err)
		}
		return b, nil
	}
	certPEM, err := read(AgentCertFile, false)
	if err != nil {
		return tls.Certificate{}, nil, Identity{}, err
	}
	keyPEM, err := read(AgentKeyFile, true)
	if err != nil {
		return tls.Certificate{}, nil, Identity{}, err
	}
	caPEM, err := read(BundleCAFile, false)
	if err != nil {
		return tls.Certificate{}, nil, Identity{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, Identity{}, fmt.Errorf("loading agent bundle from %s: %s and %s: %w", dir, AgentCertFile, AgentKeyFile, err)
	}
	id, err := IdentityFromCert(cert.Leaf)
	if err != nil {
		return tls.Certificate{}, nil, Identity{}, fmt.Errorf("loading agent bundle from %s: %w", dir, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, Identity{}, fmt.Errorf("loading agent bundle: %s holds no PEM certificate", filepath.Join(dir, BundleCAFile))
	}
	return cert, pool, id, nil
}

// nextSuffix marks the files of a rotation in progress (RotateAgentCert).
const nextSuffix = ".next"

// NewBundle is the bundle an enrolled agent writes: its own key, the
// certificate the CA issued for it, and the CA it pinned.
func NewBundle(key crypto.Signer, certPEM, caPEM []byte) (Bundle, error) {
	keyPEM, err := pemKey(key)
	if err != nil {
		return Bundle{}, fmt.Errorf("encoding the agent's key: %w", err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return Bundle{}, fmt.Errorf("the certificate the ingest issued does not fit the agent's key: %w", err)
	}
	id, err := IdentityFromCert(c.Leaf)
	if err != nil {
		return Bundle{}, err
	}
	return Bundle{Identity: id, CertPEM: certPEM, KeyPEM: keyPEM, CAPEM: caPEM}, nil
}

// RotateAgentCert replaces the agent's key and certificate in dir with a
// renewed pair. Two files cannot be replaced at once, so both are written
// beside the old ones first and then renamed key first; LoadAgentBundle
// finishes (or undoes) a rotation that a crash interrupted, so the pair on
// disk always matches.
func RotateAgentCert(dir string, key crypto.Signer, certPEM []byte) error {
	keyPEM, err := pemKey(key)
	if err != nil {
		return fmt.Errorf("rotating the agent certificate: %w", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("rotating the agent certificate: the new certificate does not fit the new key: %w", err)
	}
	keyNext := filepath.Join(dir, AgentKeyFile+nextSuffix)
	certNext := filepath.Join(dir, AgentCertFile+nextSuffix)
	for _, p := range []string{keyNext, certNext} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotating the agent certificate: %w", err)
		}
	}
	if err := writeNew(keyNext, keyPEM, 0o600); err != nil {
		return fmt.Errorf("rotating the agent certificate: %w", err)
	}
	if err := writeNew(certNext, certPEM, 0o644); err != nil {
		os.Remove(keyNext)
		return fmt.Errorf("rotating the agent certificate: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("rotating the agent certificate: %w", err)
	}
	// From here on the rotation is committed: a crash after this rename
	// leaves certNext alone, which LoadAgentBundle moves into place.
	if err := os.Rename(keyNext, filepath.Join(dir, AgentKeyFile)); err != nil {
		return fmt.Errorf("rotating the agent certificate: %w", err)
	}
	if err := os.Rename(certNext, filepath.Join(dir, AgentCertFile)); err != nil {
		return fmt.Errorf("rotating the agent certificate: %w", err)
	}
	return atomicfile.SyncDir(dir)
}

// finishRotation completes or undoes an interrupted RotateAgentCert.
func finishRotation(dir string) error {
	keyNext := filepath.Join(dir, AgentKeyFile+nextSuffix)
	certNext := filepath.Join(dir, AgentCertFile+nextSuffix)
	_, kerr := os.Stat(keyNext)
	_, cerr := os.Stat(certNext)
	switch {
	case kerr == nil:
		// The key was not renamed yet: the old pair is intact and still
		// valid; drop the new one (the agent renews again).
		os.Remove(certNext)
		return os.Remove(keyNext)
	case cerr == nil:
		// The key was renamed, the certificate not: finish.
		if err := os.Rename(certNext, filepath.Join(dir, AgentCertFile)); err != nil {
			return err
		}
		return atomicfile.SyncDir(dir)
	}
	return nil
}
