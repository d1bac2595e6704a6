package uplink

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// testCA is a throwaway CA made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue makes a leaf certificate: for 127.0.0.1 when server, else a client
// certificate named cn.
func (ca *testCA) issue(t testing.TB, cn string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// memSource is an in-memory Source that reports every ack and reject on
// done.
type memSource struct {
	mu       sync.Mutex
	pending  []Batch // sorted by Seq
	tables   map[batch.TableHash][]byte
	acked    []uint64
	rejected map[uint64]string
	done     chan uint64
}

func newMemSource() *memSource {
	return &memSource{
		tables:   map[batch.TableHash][]byte{},
		rejected: map[uint64]string{},
		done:     make(chan uint64, 1000),
	}
}

// add queues batches first..last, all referencing table h.
func (s *memSource) add(first, last uint64, h batch.TableHash, size int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for seq := first; seq <= last; seq++ {
		s.pending = append(s.pending, testBatch(seq, h, size))
	}
}

// testBatch makes a batch whose bytes start with its table hash, so the
// fake ingest can tell which table it needs without the codec.
func testBatch(seq uint64, h batch.TableHash, size int) Batch {
	data := fmt.Appendf(nil, "%s|%d|", h, seq)
	for len(data) < size {
		data = append(data, byte(seq))
	}
	return Batch{Seq: seq, Data: data, TableHash: h, Samples: 10}
}

func (s *memSource) Next(after uint64) (Batch, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.pending {
		if b.Seq > after {
			return b, true, nil
		}
	}
	return Batch{}, false, nil
}

func (s *memSource) Table(h batch.TableHash) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[h]
	if !ok {
		return nil, fmt.Errorf("table %s: %w", h, batch.ErrUnknownTable)
	}
	return t, nil
}

func (s *memSource) remove(seq uint64) error {
	i := slices.IndexFunc(s.pending, func(b Batch) bool { return b.Seq == seq })
	if i < 0 {
		return fmt.Errorf("batch %d is not pending", seq)
	}
	s.pending = slices.Delete(s.pending, i, i+1)
	return nil
}

func (s *memSource) Ack(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.remove(seq); err != nil {
		return err
	}
	s.acked = append(s.acked, seq)
	s.done <- seq
	return nil
}

func (s *memSource) Reject(seq uint64, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.remove(seq); err != nil {
		return err
	}
	s.rejected[seq] = reason
	s.done <- seq
	return nil
}

// wait blocks until n batches were acked or rejected.
func (s *memSource) wait(n int) {
	for range n {
		<-s.done
	}
}

func (s *memSource) snapshot() (acked []uint64, rejected map[uint64]string, pending int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rej := map[uint64]string{}
	for k, v := range s.rejected {
		rej[k] = v
	}
	return slices.Clone(s.acked), rej, len(s.pending)
}

// fakeIngest is the server side of the protocol, kept in memory.
type fakeIngest struct {
	mu     sync.Mutex
	tables map[string][]byte
	stored map[uint64][]byte
	posts  map[uint64]int // POST /v1/batches per seq
	puts   map[string]int // PUT /v1/tables per hash
	order  []uint64       // seqs in arrival order
	cur    int            // requests being served
	maxCur int
	protos map[string]int
	cns    []string // client certificate names, per request
	// requireTables makes a batch whose table is unknown get a 422.
	requireTables bool
	// before, if set, runs first and may answer the request itself.
	before func(w http.ResponseWriter, r *http.Request) (answered bool)
}

func newFakeIngest() *fakeIngest {
	return &fakeIngest{
		tables: map[string][]byte{},
		stored: map[uint64][]byte{},
		posts:  map[uint64]int{},
		puts:   map[string]int{},
		protos: map[string]int{},
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeIngest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.cur++
	f.maxCur = max(f.maxCur, f.cur)
	f.protos[r.Proto]++
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		f.cns = append(f.cns, r.TLS.PeerCertificates[0].Subject.CommonName)
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.cur--
		f.mu.Unlock()
	}()
	if f.before != nil && f.before(w, r) {
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error(), "code": "bad_body"})
		return
	}
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/tables/"):
		h := strings.TrimPrefix(r.URL.Path, "/v1/tables/")
		f.mu.Lock()
		f.tables[h] = body
		f.puts[h]++
		f.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/batches":
		f.postBatch(w, r, body)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such endpoint", "code": "not_found"})
	}
}

func (f *fakeIngest) postBatch(w http.ResponseWriter, r *http.Request, body []byte) {
	if ct := r.Header.Get("Content-Type"); ct != BatchContentType {
		writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": "content type " + ct, "code": "bad_type"})
		return
	}
	seq, err := strconv.ParseUint(r.Header.Get(SeqHeader), 10, 64)
	table, _, ok := bytes.Cut(body, []byte("|"))
	if err != nil || !ok {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "malformed batch", "code": "corrupt"})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.posts[seq]++
	f.order = append(f.order, seq)
	if _, known := f.tables[string(table)]; f.requireTables && !known {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{
			"error": "unknown point table", "code": codeUnknownTable, "table": string(table)})
		return
	}
	if old, dup := f.stored[seq]; dup {
		if !bytes.Equal(old, body) {
			writeJSON(w, http.StatusConflict, map[string]string{
				"error": fmt.Sprintf("different bytes already stored under seq %d", seq), "code": "conflict"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "duplicate", "seq": seq})
		return
	}
	f.stored[seq] = bytes.Clone(body)
	writeJSON(w, http.StatusOK, map[string]any{"status": "stored", "seq": seq})
}

// startIngest serves h over TLS 1.3 with HTTP/2 on 127.0.0.1, requiring a
// client certificate from clientCAs. ln, if not nil, replaces the listener.
func startIngest(t testing.TB, h http.Handler, serverCert tls.Certificate, clientCAs *x509.CertPool, ln net.Listener, hello func()) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	if ln != nil {
		s.Listener.Close()
		s.Listener = ln
	}
	s.EnableHTTP2 = true
	s.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		Certificates: []tls.Certificate{serverCert},
	}
	if hello != nil {
		s.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			hello()
			return nil, nil
		}
	}
	// Refused handshakes are what some tests are about; keep them quiet.
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// noProxy keeps the tests off any proxy set in the environment.
func noProxy(*http.Request) (*url.URL, error) { return nil, nil }

// testEnv is a CA, an agent certificate, a fake ingest behind real TLS and
// a config pointing at it.
type testEnv struct {
	ca     *testCA
	ingest *fakeIngest
	server *httptest.Server
	src    *memSource
	logs   *logRecorder
	cfg    Config
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	ca := newTestCA(t, "sightglass test CA")
	client := ca.issue(t, "agent-1", false)
	e := &testEnv{ca: ca, ingest: newFakeIngest(), src: newMemSource(), logs: &logRecorder{}}
	e.server = startIngest(t, e.ingest, ca.issue(t, "ingest", true), ca.pool, nil, nil)
	e.cfg = Config{
		URL:         e.server.URL,
		Cert:        func() (*tls.Certificate, error) { return &client, nil },
		Roots:       ca.pool,
		Proxy:       noProxy,
		BackoffBase: time.Millisecond,
		BackoffMax:  20 * time.Millisecond,
		Logger:      slog.New(e.logs),
	}
	return e
}

// run starts u.Run and stops it at cleanup, checking it returned nil.
func run(t testing.TB, u *Uplink) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- u.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// logRecorder is a slog.Handler keeping every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

// count returns how many records at level have a message containing msg.
func (l *logRecorder) count(level slog.Level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Level == level && strings.Contains(r.Message, msg) {
			n++
		}
	}
	return n
}

func (l *logRecorder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, r := range l.recs {
		fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
		r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
		b.WriteByte('\n')
	}
	return b.String()
}

// handlerTransport serves requests in memory with h, so that an Uplink can
// run inside a synctest bubble, where real sockets are not allowed.
type handlerTransport struct{ h http.Handler }

func (ht handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.RequestURI = req.URL.RequestURI()
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	rec := httptest.NewRecorder()
	ht.h.ServeHTTP(rec, r)
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	return rec.Result(), nil
}

// memUplink is an Uplink over handlerTransport, for synctest.
func memUplink(t *testing.T, cfg Config, src Source, h http.Handler) *Uplink {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = "https://ingest.test"
	}
	u, err := newUplink(cfg, src, handlerTransport{h})
	if err != nil {
		t.Fatal(err)
	}
	return u
}
