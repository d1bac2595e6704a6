package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// ServerOptions tune ServerTLSConfig. The zero value demands a client
// certificate at every handshake.
type ServerOptions struct {
	// AllowAnonymous lets a client connect without a certificate, for the
	// few routes that need none (enrollment, the CA certificate, the CRL).
	// A certificate that is presented is still verified against the CA and
	// must carry a valid identity, and every other route refuses a
	// connection without one.
	AllowAnonymous bool
	// Check, if set, is called at every handshake that presents a
	// verified agent certificate, new and resumed sessions alike: the
	// revocation check. An error refuses the handshake.
	Check func(id Identity, leaf *x509.Certificate) error
}

// ServerTLSConfig is the ingest listener's TLS config: TLS 1.3 only, a
// client certificate verified against the CA (required unless
// opts.AllowAnonymous), and the verified certificate required to carry a
// valid agent identity, so a handshake that presents one always yields one
// (read it with PeerIdentity). It offers h2 and http/1.1.
func ServerTLSConfig(ca *CA, opts ServerOptions) (*tls.Config, error) {
	cert, err := ca.ServerCertificate()
	if err != nil {
		return nil, fmt.Errorf("building server TLS config: %w", err)
	}
	auth := tls.RequireAndVerifyClientCert
	if opts.AllowAnonymous {
		auth = tls.VerifyClientCertIfGiven
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   auth,
		ClientCAs:    ca.Pool(),
		NextProtos:   []string{"h2", "http/1.1"},
		// VerifyConnection, unlike VerifyPeerCertificate, also runs when a
		// TLS 1.3 session is resumed: a revoked agent cannot come back on
		// a ticket from before its revocation.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 && opts.AllowAnonymous {
				return nil
			}
			id, err := PeerIdentity(&cs)
			if err != nil {
				return err
			}
			if opts.Check != nil {
				return opts.Check(id, cs.PeerCertificates[0])
			}
			return nil
		},
	}, nil
}

// ClientTLSConfig is the agent's TLS config: TLS 1.3 only, presenting cert
// and trusting roots for the server. The caller's transport sets ServerName
// from the URL it dials.
func ClientTLSConfig(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
	}
}
