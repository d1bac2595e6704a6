package pki

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBundleRoundTrip(t *testing.T) {
	ca, err := Init(t.TempDir(), InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.NewAgentBundle("t1", "s1", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^ag-[a-z2-7]{12}$`).MatchString(b.Identity.Agent) {
		t.Errorf("agent id %q, want ag- and 12 lowercase base32 characters", b.Identity.Agent)
	}
	other, err := ca.NewAgentBundle("t1", "s1", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if other.Identity.Agent == b.Identity.Agent {
		t.Error("two bundles got the same agent id")
	}

	dir := filepath.Join(t.TempDir(), "agent")
	if err := b.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, filepath.Join(dir, AgentKeyFile)); m != 0o600 {
		t.Errorf("agent key mode %04o, want 0600", m)
	}
	cert, roots, id, err := LoadAgentBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id != b.Identity || id.Tenant != "t1" || id.Site != "s1" {
		t.Errorf("loaded identity %v, want %v", id, b.Identity)
	}
	srv, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(ca.IssuingCertificate())
	if _, err := srv.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Errorf("bundle's CA does not verify the server: %v", err)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("bundle's certificate does not verify against the CA: %v", err)
	}

	if err := other.WriteDir(dir); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("WriteDir over an existing bundle: err = %v, want a refusal", err)
	}
	if _, _, got, _ := LoadAgentBundle(dir); got != b.Identity {
		t.Error("refused WriteDir changed the existing bundle")
	}

	if err := os.Chmod(filepath.Join(dir, AgentKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := LoadAgentBundle(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadAgentBundle with a world-readable key: err = %v", err)
	}
	if _, _, _, err := LoadAgentBundle(t.TempDir()); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("LoadAgentBundle of an empty dir: err = %v", err)
	}
	if _, err := ca.NewAgentBundle("T1", "s1", time.Hour); err == nil {
		t.Error("NewAgentBundle accepted an invalid tenant")
	}
}

// handshake runs one TLS connection over 127.0.0.1 and reports what each
// side saw: the identity the server read, the server's handshake error and
// the client's error. The server writes "ok" only after a successful handshake, so the
// client learns of a refused certificate (which TLS 1.3 reports after the
// client's own handshake finished) when it reads.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config) (Identity, error, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		id  Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		cs := tc.ConnectionState()
		id, err := PeerIdentity(&cs)
		if err != nil {
			// A handshake that succeeds must carry an identity: failing
			// here would mean ServerTLSConfig let a bad certificate in.
			t.Errorf("handshake succeeded without a verified identity: %v", err)
			done <- result{}
			return
		}
		if _, err := tc.Write([]byte("ok")); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{id: id}
	}()
	cerr := func() error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cliCfg)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if c.ConnectionState().Version != tls.VersionTLS13 {
			return errors.New("not TLS 1.3")
		}
		return nil
	}()
	r := <-done
	return r.id, r.err, cerr
}

func TestTLSHandshake(t *testing.T) {
	var now time.Time // the CA's clock; zero means time.Now
	clock := func() time.Time {
		if now.IsZero() {
			return time.Now()
		}
		return now
	}
	ca, err := Init(t.TempDir(), InitOptions{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	srvCfg, err := ServerTLSConfig(ca, ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(srvCfg.NextProtos, []string{"h2", "http/1.1"}) || srvCfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("server config: protos %v min version %x", srvCfg.NextProtos, srvCfg.MinVersion)
	}

	bundleDir := filepath.Join(t.TempDir(), "agent")
	b, err := ca.NewAgentBundle("t1", "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteDir(bundleDir); err != nil {
		t.Fatal(err)
	}
	good, roots, _, err := LoadAgentBundle(bundleDir)
	if err != nil {
		t.Fatal(err)
	}

	otherCA, err := Init(t.TempDir(), InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := otherCA.NewAgentBundle("t1", "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.X509KeyPair(ob.CertPEM, ob.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}

	now = time.Now().Add(-48 * time.Hour)
	eb, err := ca.NewAgentBundle("t1", "s1", 24*time.Hour)
	now = time.Time{}
	if err != nil {
		t.Fatal(err)
	}
	expired, err := tls.X509KeyPair(eb.CertPEM, eb.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}

	// Signed by our CA, a valid identity, but only for server auth.
	key := newKey(t)
	srvOnly := signed(t, ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "ag-1"},
		URIs:        []*url.URL{mustURL(t, "sightglass://agent/t1/s1/ag-1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, key.Public())
	serverOnly := tls.Certificate{Certificate: [][]byte{srvOnly.Raw}, PrivateKey: key, Leaf: srvOnly}

	// Signed by our CA for client auth, but with no identity.
	noID := signed(t, ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "ag-1"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, key.Public())
	noIDCert := tls.Certificate{Certificate: [][]byte{noID.Raw}, PrivateKey: key, Leaf: noID}

	tls12 := ClientTLSConfig(good, roots)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	tests := []struct {
		name   string
		cfg    *tls.Config
		wantOK bool
	}{
		{"bundle certificate", ClientTLSConfig(good, roots), true},
		{"no client certificate", &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots}, false},
		{"certificate from another CA", ClientTLSConfig(foreign, roots), false},
		{"expired certificate", ClientTLSConfig(expired, roots), false},
		{"server-auth-only certificate", ClientTLSConfig(serverOnly, roots), false},
		{"certificate without identity", ClientTLSConfig(noIDCert, roots), false},
		{"TLS 1.2 client", tls12, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, serr, cerr := handshake(t, srvCfg, tt.cfg)
			if !tt.wantOK {
				if serr == nil || cerr == nil {
					t.Fatalf("handshake accepted: server err %v, client err %v", serr, cerr)
				}
				return
			}
			if serr != nil || cerr != nil {
				t.Fatalf("handshake failed: server err %v, client err %v", serr, cerr)
			}
			if id != b.Identity {
				t.Errorf("server saw identity %v, want %v", id, b.Identity)
			}
		})
	}

	t.Run("client refuses a server from another CA", func(t *testing.T) {
		otherSrv, err := ServerTLSConfig(otherCA, ServerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, serr, cerr := handshake(t, otherSrv, ClientTLSConfig(good, roots))
		if serr == nil || cerr == nil || !strings.Contains(cerr.Error(), "unknown authority") {
			t.Fatalf("server err %v, client err %v; want the client to refuse", serr, cerr)
		}
	})
}
