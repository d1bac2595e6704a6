package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// URIScheme and uriHost make the URI SAN that names an agent:
// sightglass://agent/{tenant}/{site}/{agent}.
const (
	URIScheme = "sightglass"
	uriHost   = "agent"
)

// idPattern is the shape of tenant, site and agent ids. They are opaque on
// purpose: a site id never names a building (building names live in the
// dashboard store), so nothing archived under it can either.
var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Identity is who an agent certificate speaks for.
type Identity struct {
	Tenant, Site, Agent string
}

// Validate reports every id that does not match ^[a-z0-9][a-z0-9-]{0,62}$.
func (id Identity) Validate() error {
	var errs []error
	for _, f := range []struct{ name, v string }{
		{"tenant", id.Tenant}, {"site", id.Site}, {"agent", id.Agent},
	} {
		if !idPattern.MatchString(f.v) {
			errs = append(errs, fmt.Errorf("invalid %s id %q: want 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", f.name, f.v))
		}
	}
	return errors.Join(errs...)
}

// URI is the certificate SAN for the identity.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: URIScheme, Host: uriHost, Path: "/" + id.Tenant + "/" + id.Site + "/" + id.Agent}
}

// String is the URI form, for logs.
func (id Identity) String() string { return id.URI().String() }

// ParseIdentityURI parses sightglass://agent/{tenant}/{site}/{agent}. Only the
// canonical form is accepted (no escapes, query, fragment, user or port), so
// one identity has exactly one spelling.
func ParseIdentityURI(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Identity{}, fmt.Errorf("parsing identity uri %q: %w", s, err)
	}
	if u.Scheme != URIScheme || u.Host != uriHost {
		return Identity{}, fmt.Errorf("parsing identity uri %q: want %s://%s/{tenant}/{site}/{agent}", s, URIScheme, uriHost)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 3 {
		return Identity{}, fmt.Errorf("parsing identity uri %q: want 3 path segments {tenant}/{site}/{agent}, got %d", s, len(parts))
	}
	id := Identity{Tenant: parts[0], Site: parts[1], Agent: parts[2]}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("parsing identity uri %q: %w", s, err)
	}
	if id.URI().String() != s {
		return Identity{}, fmt.Errorf("parsing identity uri %q: not in canonical form %q", s, id.URI())
	}
	return id, nil
}

// IdentityFromCert reads the identity of an agent certificate. The
// certificate must carry exactly one URI SAN, the sightglass one; its
// CommonName must equal the agent id; it must allow client authentication
// and must not be a CA. It does not verify the signature: the TLS handshake
// (ServerTLSConfig) does that before this is called.
func IdentityFromCert(c *x509.Certificate) (Identity, error) {
	if c == nil {
		return Identity{}, errors.New("reading agent identity: no certificate")
	}
	subject := "certificate serial " + c.SerialNumber.Text(16)
	if len(c.URIs) != 1 {
		return Identity{}, fmt.Errorf("reading agent identity from %s: want exactly one URI SAN %s://%s/{tenant}/{site}/{agent}, got %d", subject, URIScheme, uriHost, len(c.URIs))
	}
	id, err := ParseIdentityURI(c.URIs[0].String())
	if err != nil {
		return Identity{}, fmt.Errorf("reading agent identity from %s: %w", subject, err)
	}
	if c.Subject.CommonName != id.Agent {
		return Identity{}, fmt.Errorf("reading agent identity from %s: common name %q does not match agent id %q in the URI SAN", subject, c.Subject.CommonName, id.Agent)
	}
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return Identity{}, fmt.Errorf("reading agent identity from %s: certificate is not valid for client authentication (extended key usage clientAuth missing)", subject)
	}
	if c.IsCA {
		return Identity{}, fmt.Errorf("reading agent identity from %s: a CA certificate cannot be an agent certificate", subject)
	}
	return id, nil
}

// PeerIdentity is the identity of the verified client certificate of a TLS
// connection, as the ingest server sees it (r.TLS in an http.Handler).
func PeerIdentity(cs *tls.ConnectionState) (Identity, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, errors.New("reading peer identity: no verified client certificate on the connection")
	}
	return IdentityFromCert(cs.VerifiedChains[0][0])
}
