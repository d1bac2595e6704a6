package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/uplink"
	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/server"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// ingest is an in-process ingest with a registry, on loopback.
type ingest struct {
	url string
	ca  *pki.CA
	db  *store.DB

	mu   sync.Mutex
	from []string // the addresses connections came from, since peers
}

// peers returns the addresses connections came from since the last call.
func (in *ingest) peers() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	p := in.from
	in.from = nil
	return p
}

// recordingListener notes where each connection comes from.
type recordingListener struct {
	net.Listener
	in *ingest
}

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.in.mu.Lock()
		l.in.from = append(l.in.from, c.RemoteAddr().(*net.TCPAddr).IP.String())
		l.in.mu.Unlock()
	}
	return c, err
}

func startIngest(t *testing.T, validity time.Duration) *ingest {
	t.Helper()
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "ingest.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	dir, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(server.Config{Registry: db, AgentValidity: validity}, dir, ca, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in := &ingest{url: "https://" + ln.Addr().String(), ca: ca, db: db}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, recordingListener{ln, in}); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return in
}

func (in *ingest) token(t *testing.T, fp pki.Fingerprint) string {
	t.Helper()
	tok, err := pki.NewEnrollToken(fp)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.db.CreateToken(context.Background(), store.Token{Hash: tok.Hash(), Tenant: "acme", Site: "s-1", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	return tok.String()
}

func noProxy() Options {
	return Options{Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }}
}

func TestEnroll(t *testing.T) {
	in := startIngest(t, 0)
	dir := filepath.Join(t.TempDir(), "cert")
	o := noProxy()
	o.Ingest, o.Token, o.CertDir = in.url, in.token(t, pki.FingerprintOf(in.ca.Certificate())), dir
	res, err := Enroll(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, id, err := pki.LoadAgentBundle(dir)
	if err != nil {
		t.Fatalf("the written bundle does not load: %v", err)
	}
	if id != res.Identity || id.Tenant != "acme" || id.Site != "s-1" {
		t.Errorf("identity %v, result %v", id, res.Identity)
	}
	if fi, err := os.Stat(filepath.Join(dir, pki.AgentKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v (%v), want 0600", fi.Mode(), err)
	}
	if st, _, _, _ := in.db.CertStatus(context.Background(), pki.SerialHex(cert.Leaf)); st != store.CertGood {
		t.Errorf("registry says %v", st)
	}
	// A second enrollment into the same directory refuses to overwrite.
	o.Token = in.token(t, pki.FingerprintOf(in.ca.Certificate()))
	if _, err := Enroll(context.Background(), o); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("enrolling over an existing bundle: %v", err)
	}
}

func TestEnrollRefusesAnotherCA(t *testing.T) {
	in := startIngest(t, 0)
	dir := filepath.Join(t.TempDir(), "cert")
	o := noProxy()
	// The token pins some other CA: the ingest here is an impostor.
	o.Ingest, o.Token, o.CertDir = in.url, in.token(t, pki.Fingerprint{9, 9, 9}), dir
	_, err := Enroll(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "not the CA this token was made for") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("a refused enrollment wrote %s", dir)
	}
	if agents, _ := in.db.Agents(context.Background()); len(agents) != 0 {
		t.Errorf("the token was spent on an impostor check: %v", agents)
	}
}

func TestEnrollErrors(t *testing.T) {
	in := startIngest(t, 0)
	for _, tt := range []struct {
		name, ingest, token, want string
	}{
		{"malformed token", in.url, "hello", "sge1."},
		{"plain http", "http://127.0.0.1:1", in.token(t, pki.FingerprintOf(in.ca.Certificate())), "https://"},
		{"nobody there", "https://127.0.0.1:1", in.token(t, pki.FingerprintOf(in.ca.Certificate())), "fetching the ingest's CA"},
		{"unknown token", in.url, func() string { tk, _ := pki.NewEnrollToken(pki.FingerprintOf(in.ca.Certificate())); return tk.String() }(), "enrollment token refused"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := noProxy()
			o.Ingest, o.Token, o.CertDir, o.Timeout = tt.ingest, tt.token, filepath.Join(t.TempDir(), "c"), 5*time.Second
			if _, err := Enroll(context.Background(), o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// nopSource is an uplink source with nothing to send.
type nopSource struct{}

func (nopSource) Next(uint64) (uplink.Batch, bool, error) { return uplink.Batch{}, false, nil }
func (nopSource) Table(batch.TableHash) ([]byte, error)   { return nil, batch.ErrUnknownTable }
func (nopSource) Ack(uint64) error                        { return nil }
func (nopSource) Reject(uint64, string) error             { return nil }

func TestRenewOnce(t *testing.T) {
	in := startIngest(t, 3*time.Hour)
	dir := filepath.Join(t.TempDir(), "cert")
	o := noProxy()
	o.Ingest, o.Token, o.CertDir = in.url, in.token(t, pki.FingerprintOf(in.ca.Certificate())), dir
	if _, err := Enroll(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	cert, roots, id, err := pki.LoadAgentBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	var current atomic.Pointer[tls.Certificate]
	current.Store(&cert)
	up, err := uplink.New(uplink.Config{URL: in.url, Roots: roots, Cert: func() (*tls.Certificate, error) { return current.Load(), nil },
		Proxy: o.Proxy}, nopSource{})
	if err != nil {
		t.Fatal(err)
	}
	// The uplink dials only while Run runs, as in the agent; a renewal
	// asked before Run is under way waits for it.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- up.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r := &Renewer{Dir: dir, Cert: &current, Up: up, Log: slog.New(slog.DiscardHandler)}
	if err := r.RenewOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	renewed := current.Load()
	if renewed.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
		t.Fatal("the certificate did not change")
	}
	newKey, oldKey := renewed.PrivateKey.(*ecdsa.PrivateKey), cert.PrivateKey.(*ecdsa.PrivateKey)
	if !renewed.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(newKey.Public()) {
		t.Error("the new certificate does not fit the new key")
	}
	if newKey.Equal(oldKey) {
		t.Error("renewal kept the old key")
	}
	onDisk, _, id2, err := pki.LoadAgentBundle(dir)
	if err != nil || id2 != id || onDisk.Leaf.SerialNumber.Cmp(renewed.Leaf.SerialNumber) != 0 {
		t.Errorf("bundle on disk %v %v (%v)", id2, onDisk.Leaf.SerialNumber, err)
	}
	// The renewed certificate works over the uplink right away (the
	// session cache was reset, so this is a full handshake with it), and
	// a revoked agent cannot renew.
	if err := r.RenewOnce(context.Background()); err != nil {
		t.Fatalf("renewing with the renewed certificate: %v", err)
	}
	in.db.Revoke(context.Background(), id.Agent, "test")
	if err := r.RenewOnce(context.Background()); err == nil {
		t.Error("a revoked agent renewed")
	}
}

func TestRenewAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(7 * 24 * time.Hour)
	for _, tt := range []struct {
		name string
		rnd  func(int64) int64
		want time.Time
	}{
		{"earliest", func(int64) int64 { return 0 }, nb.Add(7 * 24 * time.Hour * 2 / 3).Add(-7 * 24 * time.Hour / 20)},
		{"middle", func(n int64) int64 { return n / 2 }, nb.Add(7 * 24 * time.Hour * 2 / 3)},
		{"latest", func(n int64) int64 { return n - 1 }, nb.Add(7 * 24 * time.Hour * 2 / 3).Add(7 * 24 * time.Hour / 20)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &Renewer{Rand: tt.rnd}
			if got := r.RenewAt(nb, na); got.Sub(tt.want).Abs() > time.Second {
				t.Errorf("RenewAt = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestEnrollBindsTheUplink: enrollment dials from the uplink address and
// binds its sockets to the uplink NIC, named or found from the address,
// and a NIC that does not exist stops it before anything is sent.
func TestEnrollBindsTheUplink(t *testing.T) {
	in := startIngest(t, 0)
	fp := pki.FingerprintOf(in.ca.Certificate())
	for _, tt := range []struct {
		name, local, ifname string
		want                string // error fragment; "" for success
	}{
		{"named NIC and address", "127.0.0.2", "lo", ""},
		{"NIC from the address", "127.0.0.2", "", ""},
		{"NIC missing", "127.0.0.2", "nosuchnic0", "nosuchnic0"},
		{"NIC missing, no address", "", "nosuchnic0", "nosuchnic0"},
		{"address on no NIC", "192.0.2.77", "", "no interface of this machine has that address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := noProxy()
			o.Ingest, o.Token, o.CertDir, o.LocalAddr, o.Interface, o.Timeout = in.url, in.token(t, fp), filepath.Join(t.TempDir(), "cert"), tt.local, tt.ifname, 5*time.Second
			in.peers() // forget earlier cases' connections
			_, err := Enroll(context.Background(), o)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v, want it to say %q", err, tt.want)
				}
				if seen := in.peers(); len(seen) != 0 {
					t.Errorf("the ingest saw connections from %v through a NIC that does not exist", seen)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			seen := in.peers()
			if len(seen) == 0 || slices.ContainsFunc(seen, func(a string) bool { return a != tt.local }) {
				t.Errorf("the ingest saw connections from %v, want only %s", seen, tt.local)
			}
		})
	}
}
