package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// Enrollment lifetimes. Agent certificates are short-lived so that a lost
// box stops working within days even if nobody revokes it; agents renew on
// their own at about two thirds of the lifetime.
const (
	// DefaultAgentValidity is how long an enrolled agent's certificate lasts.
	DefaultAgentValidity = 7 * 24 * time.Hour
	// MaxTokenValidity bounds an enrollment token's life.
	MaxTokenValidity = 24 * time.Hour
)

// tokenPrefix versions the token format and makes a pasted token
// recognisable in a support ticket without revealing it.
const tokenPrefix = "sge1."

// Fingerprint is the SHA-256 of a certificate's DER bytes.
type Fingerprint [sha256.Size]byte

// FingerprintOf returns c's fingerprint.
func FingerprintOf(c *x509.Certificate) Fingerprint { return sha256.Sum256(c.Raw) }

// String is the fingerprint in lower-case hex.
func (f Fingerprint) String() string { return hex.EncodeToString(f[:]) }

// EnrollToken is a one-time enrollment token: a 256-bit secret that the
// ingest stores only as a hash, and the fingerprint of the CA the agent must
// find at the ingest, so the agent can pin it before it trusts anything the
// ingest says.
type EnrollToken struct {
	Secret [32]byte
	CA     Fingerprint
}

// NewEnrollToken makes a token for the CA with fingerprint ca.
func NewEnrollToken(ca Fingerprint) (EnrollToken, error) {
	t := EnrollToken{CA: ca}
	if _, err := rand.Read(t.Secret[:]); err != nil {
		return EnrollToken{}, fmt.Errorf("generating enrollment token: %w", err)
	}
	return t, nil
}

// String is the token as the installer types or pastes it:
// "sge1.<secret>.<ca fingerprint>", both base64url without padding.
func (t EnrollToken) String() string {
	enc := base64.RawURLEncoding
	return tokenPrefix + enc.EncodeToString(t.Secret[:]) + "." + enc.EncodeToString(t.CA[:])
}

// Hash is what the ingest stores and looks the token up by.
func (t EnrollToken) Hash() []byte { return TokenHash(t.Secret[:]) }

// TokenHash is the stored form of a token secret.
func TokenHash(secret []byte) []byte {
	h := sha256.Sum256(append([]byte("sightglass enrollment token\x00"), secret...))
	return h[:]
}

// ParseEnrollToken parses what EnrollToken.String printed. Errors never
// echo the token, which is a secret.
func ParseEnrollToken(s string) (EnrollToken, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, tokenPrefix) {
		return EnrollToken{}, errors.New("enrollment token: does not start with sge1.: copy the whole token that `sightglass-ingest enroll create` printed")
	}
	parts := strings.Split(s[len(tokenPrefix):], ".")
	if len(parts) != 2 {
		return EnrollToken{}, errors.New("enrollment token: malformed (want sge1.SECRET.FINGERPRINT): copy it again, whole")
	}
	var t EnrollToken
	for i, dst := range [][]byte{t.Secret[:], t.CA[:]} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil || len(b) != len(dst) {
			return EnrollToken{}, errors.New("enrollment token: malformed (a part has the wrong length or characters): copy it again, whole")
		}
		copy(dst, b)
	}
	return t, nil
}

// MatchesCA reports whether c is the CA the token names, in constant time.
func (t EnrollToken) MatchesCA(c *x509.Certificate) bool {
	f := FingerprintOf(c)
	return subtle.ConstantTimeCompare(f[:], t.CA[:]) == 1
}

// NewAgentKey makes the agent's private key (ECDSA P-256) and a CSR for it.
// The CSR's subject is empty: the CA decides what the certificate names.
func NewAgentKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the agent's key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the certificate request: %w", err)
	}
	return key, csr, nil
}

// ParseCSR parses a DER certificate request, checks that it is signed by
// the key it carries (so the requester holds that key) and that the key is
// of a kind and size we issue for. Everything else in it, the subject and
// any extensions included, is ignored.
func ParseCSR(der []byte) (crypto.PublicKey, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("certificate request: ECDSA curve %s is not accepted: use P-256", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("certificate request: RSA key of %d bits is too small: use ECDSA P-256", k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("certificate request: key type %T is not accepted: use ECDSA P-256", csr.PublicKey)
	}
	return csr.PublicKey, nil
}

// SerialHex is a certificate serial as the registry keys it.
func SerialHex(c *x509.Certificate) string { return strings.ToLower(c.SerialNumber.Text(16)) }

// Revoked is one CRL entry.
type Revoked struct {
	Serial string // hex, as SerialHex
	At     time.Time
}

// CRL signs a certificate revocation list of revoked, valid for validity
// from now. Its number is the current time in milliseconds, which grows
// with every CRL any replica makes (RFC 5280 asks only that it increase).
func (ca *CA) CRL(revoked []Revoked, validity time.Duration) ([]byte, error) {
	now := ca.now()
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	for _, r := range revoked {
		n, ok := new(big.Int).SetString(r.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("building the CRL: serial %q is not hex", r.Serial)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: r.At})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(now.UnixMilli()),
		ThisUpdate:                now,
		NextUpdate:                now.Add(validity),
		RevokedCertificateEntries: entries,
	}, ca.issuer, ca.key)
	if err != nil {
		return nil, fmt.Errorf("signing the CRL: %w", err)
	}
	return der, nil
}
