package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// ServerTLSConfig is the ingest listener's TLS config: TLS 1.3 only, a
// client certificate required and verified against the CA, and the verified
// certificate required to carry a valid agent identity, so a handshake that
// succeeds always yields one (read it with PeerIdentity). It offers h2 and
// http/1.1.
func ServerTLSConfig(ca *CA) (*tls.Config, error) {
	cert, err := ca.ServerCertificate()
	if err != nil {
		return nil, fmt.Errorf("building server TLS config: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		NextProtos:   []string{"h2", "http/1.1"},
		// Refusing a badly-formed identity at the handshake keeps every
		// handler from having to, and is where revocation checks will go.
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := PeerIdentity(&cs)
			return err
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
