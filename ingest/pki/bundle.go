package pki

import (
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
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("writing agent bundle to %s: %w", dir, err)
	}
	return nil
}

// LoadAgentBundle reads a bundle that WriteDir wrote: the agent's TLS client
// certificate, the pool of CAs it trusts for the server, and its identity.
// It refuses an agent key that group or others can read.
func LoadAgentBundle(dir string) (tls.Certificate, *x509.CertPool, Identity, error) {
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
