package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// now is the ingest's clock in every test: sample times are judged
// against it, never against the machine's.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const tenant = "acme"

// env is a running server with its CA, store and two agents of site s1
// and one of site s2.
type env struct {
	t      testing.TB
	ca     *pki.CA
	store  blob.Store
	dir    *blob.Dir
	srv    *Server
	base   string
	agents map[string]pki.Bundle // "a", "b" (site s1), "c" (site s2)
	logger *slog.Logger
	stop   func() // shuts the agent listener down and waits for it
}

type envOpt func(*Config, *blob.Store)

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	return newEnvLog(t, slog.New(slog.NewTextHandler(io.Discard, nil)), opts...)
}

func newEnvLog(t testing.TB, logger *slog.Logger, opts ...envOpt) *env {
	t.Helper()
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatalf("pki.Init: %v", err)
	}
	dir, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatalf("blob.OpenDir: %v", err)
	}
	cfg := Config{Now: func() time.Time { return now }}
	var store blob.Store = dir
	for _, o := range opts {
		o(&cfg, &store)
	}
	srv, err := New(cfg, store, ca, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e := &env{t: t, ca: ca, store: store, dir: dir, srv: srv, agents: map[string]pki.Bundle{}}
	for name, site := range map[string]string{"a": "s1", "b": "s1", "c": "s2"} {
		b, err := ca.NewAgentBundle(tenant, site, 24*time.Hour)
		if err != nil {
			t.Fatalf("NewAgentBundle: %v", err)
		}
		e.agents[name] = b
	}
	var addr string
	addr, e.stop = e.serve(srv.Serve)
	e.base = "https://" + addr
	return e
}

// serve runs fn on a fresh loopback listener until the test ends or stop
// is called, and checks that it shut down cleanly.
func (e *env) serve(fn func(context.Context, net.Listener) error) (addr string, stop func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx, ln) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("serve returned %v after shutdown", err)
		}
	})
	e.t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func (e *env) client(agent string) *http.Client {
	b := e.agents[agent]
	cert, err := tls.X509KeyPair(b.CertPEM, b.KeyPEM)
	if err != nil {
		e.t.Fatal(err)
	}
	return clientWith(e.t, pki.ClientTLSConfig(cert, e.ca.Pool()))
}

func clientWith(t testing.TB, cfg *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: sentAtTransport{tr}}
}

// sentAtTransport stamps every request with SentAtHeader at the test clock,
// as the agent's uplink does, unless the request has one already.
type sentAtTransport struct{ *http.Transport }

func (t sentAtTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get(SentAtHeader) == "" {
		r = r.Clone(r.Context())
		r.Header.Set(SentAtHeader, strconv.FormatInt(now.UnixMilli(), 10))
	}
	return t.Transport.RoundTrip(r)
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
	proto  int
}

func (e *env) do(c *http.Client, method, path string, body []byte) reply {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, proto: resp.ProtoMajor}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		e.t.Fatalf("%s %s: %d with a body that is not JSON: %q", method, path, resp.StatusCode, raw)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	if r.status >= 400 {
		if msg, _ := r.body["error"].(string); msg == "" {
			e.t.Errorf("%s %s: %d without an error message: %v", method, path, r.status, r.body)
		}
	}
	return r
}

func (e *env) list() []string {
	e.t.Helper()
	names, err := e.dir.List(context.Background(), "")
	if err != nil {
		e.t.Fatal(err)
	}
	return names
}

// samples makes n samples of three points, one a minute, ending at end.
func samples(n int, end time.Time) []telemetry.Sample {
	var out []telemetry.Sample
	for i := range n {
		out = append(out, telemetry.Sample{
			PointID: uint64(0x1000 + i%3),
			Time:    end.Add(-time.Duration(n-1-i) * time.Minute).UnixMilli(),
			Value:   20 + float64(i)/4,
			Status:  telemetry.Status(i % 2),
		})
	}
	return out
}

func (e *env) encode(agent string, seq uint64, smp []telemetry.Sample) batch.Encoded {
	e.t.Helper()
	id := e.agents[agent].Identity
	enc, err := batch.Encode(&batch.Batch{
		Header:  batch.Header{AgentID: id.Agent, Site: id.Site, Seq: seq, SentAt: now.UnixMilli()},
		Samples: smp,
	})
	if err != nil {
		e.t.Fatalf("batch.Encode: %v", err)
	}
	return enc
}

// upload sends a batch's table, then the batch.
func (e *env) upload(agent string, enc batch.Encoded) reply {
	e.t.Helper()
	c := e.client(agent)
	if r := e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table); r.status != http.StatusCreated && r.status != http.StatusOK {
		e.t.Fatalf("PUT table: %d %v", r.status, r.body)
	}
	return e.do(c, http.MethodPost, "/v1/batches", enc.Data)
}

func wantReply(t testing.TB, r reply, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.body["code"] != code) {
		t.Fatalf("got %d %v, want %d code %q", r.status, r.body, status, code)
	}
}

func TestBatchStored(t *testing.T) {
	e := newEnv(t)
	smp := samples(30, now.Add(-time.Hour))
	enc := e.encode("a", 7, smp)
	r := e.upload("a", enc)
	wantReply(t, r, http.StatusOK, "")
	if r.body["status"] != StatusStored || r.body["seq"] != float64(7) {
		t.Fatalf("reply %v, want stored seq 7", r.body)
	}
	if r.proto != 2 {
		t.Errorf("served over HTTP/%d, want HTTP/2", r.proto)
	}

	id := e.agents["a"].Identity
	name := blob.BatchName(tenant, "s1", id.Agent, 7, time.UnixMilli(smp[0].Time))
	data, err := e.store.Get(context.Background(), name)
	if err != nil {
		t.Fatalf("batch not at %s: %v (have %v)", name, err, e.list())
	}
	if !bytes.Equal(data, enc.Data) {
		t.Fatal("stored bytes differ from the upload")
	}
	got, err := batch.Decode(data, batch.Tables{enc.TableHash: []uint64{0x1000, 0x1001, 0x1002}}, batch.Limits{})
	if err != nil {
		t.Fatalf("decoding the stored batch: %v", err)
	}
	want := slices.Clone(smp)
	slices.SortStableFunc(want, func(a, b telemetry.Sample) int {
		if a.PointID != b.PointID {
			return int(a.PointID) - int(b.PointID)
		}
		return int(a.Time - b.Time)
	})
	if !reflect.DeepEqual(got.Samples, want) {
		t.Errorf("stored batch decodes to other samples:\n got %v\nwant %v", got.Samples, want)
	}
	st := e.srv.Stats()
	if st.BatchesStored != 1 || st.Samples != 30 || st.Bytes != uint64(len(enc.Data)) || st.TablesStored != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestBatchRetryIsIdempotent(t *testing.T) {
	e := newEnv(t)
	enc := e.encode("a", 1, samples(10, now.Add(-time.Hour)))
	wantReply(t, e.upload("a", enc), http.StatusOK, "")
	before := e.list()

	r := e.do(e.client("a"), http.MethodPost, "/v1/batches", enc.Data)
	wantReply(t, r, http.StatusOK, "")
	if r.body["status"] != StatusDuplicate {
		t.Errorf("retry answered %v, want duplicate", r.body)
	}
	if after := e.list(); !slices.Equal(before, after) {
		t.Errorf("retry changed the store: %v -> %v", before, after)
	}
	if st := e.srv.Stats(); st.BatchesStored != 1 || st.BatchesDuplicate != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestBatchConflict(t *testing.T) {
	e := newEnv(t)
	first := e.encode("a", 5, samples(10, now.Add(-time.Hour)))
	wantReply(t, e.upload("a", first), http.StatusOK, "")
	before := e.list()
	id := e.agents["a"].Identity
	name := blob.BatchName(tenant, "s1", id.Agent, 5, now.Add(-time.Hour-9*time.Minute))

	// Same seq, other samples, and another hour: the claim must catch it
	// although the blob name differs.
	for _, end := range []time.Time{now.Add(-time.Hour), now.Add(-5 * time.Hour)} {
		other := e.encode("a", 5, samples(11, end))
		r := e.upload("a", other)
		wantReply(t, r, http.StatusConflict, CodeConflict)
	}
	after := e.list()
	for _, n := range after {
		if strings.HasSuffix(n, ".sgb") && n != name {
			t.Errorf("a second batch blob appeared: %s", n)
		}
	}
	data, err := e.store.Get(context.Background(), name)
	if err != nil || !bytes.Equal(data, first.Data) {
		t.Errorf("original batch changed or gone (err %v); store %v -> %v", err, before, after)
	}
	if got := e.srv.Stats().Refused[CodeConflict]; got != 2 {
		t.Errorf("refused conflict = %d, want 2", got)
	}
}

func TestHandshakeRefused(t *testing.T) {
	e := newEnv(t)
	other, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.NewAgentBundle(tenant, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, err := tls.X509KeyPair(foreign.CertPEM, foreign.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  *tls.Config
	}{
		{"no client certificate", &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: e.ca.Pool()}},
		{"certificate from another CA", pki.ClientTLSConfig(foreignCert, e.ca.Pool())},
		{"TLS 1.2", &tls.Config{MaxVersion: tls.VersionTLS12, RootCAs: e.ca.Pool()}},
	}
	enc := e.encode("a", 1, samples(3, now.Add(-time.Hour)))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := clientWith(t, tt.cfg)
			resp, err := c.Post(e.base+"/v1/batches", "application/octet-stream", bytes.NewReader(enc.Data))
			if err == nil {
				resp.Body.Close()
				t.Fatalf("request succeeded with status %d", resp.StatusCode)
			}
			if n := e.list(); len(n) != 0 {
				t.Errorf("store not empty: %v", n)
			}
		})
	}
}

// bomb is a batch holding a zstd frame of n zero bytes, laid out as
// pkg/batch/FORMAT.md says: "SGB", version, storage 1 (zstd), the frame
// without its magic number, CRC-32C. With declare the frame states its
// size, which the decoder checks against its limit before decompressing;
// without it the frame is not single-segment, which the format refuses.
func bomb(t *testing.T, n int, declare bool) []byte {
	t.Helper()
	var frame []byte
	if declare {
		enc, err := zstd.NewWriter(nil, zstd.WithSingleSegment(true), zstd.WithEncoderCRC(false))
		if err != nil {
			t.Fatal(err)
		}
		defer enc.Close()
		frame = enc.EncodeAll(make([]byte, n), nil)
	} else {
		var buf bytes.Buffer
		w, err := zstd.NewWriter(&buf, zstd.WithEncoderCRC(false))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		frame = buf.Bytes()
	}
	out := append([]byte{'S', 'G', 'B', batch.Version, 1}, frame[4:]...)
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(out, crc32.MakeTable(crc32.Castagnoli)))
}

func TestBatchRefused(t *testing.T) {
	small := func(c *Config, _ *blob.Store) {
		c.MaxBatchBytes = 2048
		c.Limits = batch.Limits{MaxDecompressed: 1 << 20}
	}
	e := newEnv(t, small)
	// A good batch first, so that the store holds a table and a batch and
	// "nothing stored" means "nothing added".
	wantReply(t, e.upload("a", e.encode("a", 1, samples(5, now.Add(-time.Hour)))), http.StatusOK, "")

	good := e.encode("a", 2, samples(6, now.Add(-time.Hour)))
	wantReply(t, e.do(e.client("a"), http.MethodPut, "/v1/tables/"+good.TableHash.String(), good.Table), http.StatusOK, "")
	random := make([]byte, 4096)
	rand.Read(random)
	idB, idC := e.agents["b"].Identity, e.agents["c"].Identity

	tests := []struct {
		name   string
		body   func() []byte
		status int
		code   string
	}{
		{"empty", func() []byte { return nil }, 400, CodeBadBatch},
		{"garbage", func() []byte { return random[:1000] }, 400, CodeBadBatch},
		{"truncated", func() []byte { return good.Data[:len(good.Data)-7] }, 400, CodeBadBatch},
		{"truncated to the prefix", func() []byte { return good.Data[:4] }, 400, CodeBadBatch},
		{"flipped byte", func() []byte {
			d := bytes.Clone(good.Data)
			d[len(d)/2] ^= 0xff
			return d
		}, 400, CodeBadBatch},
		{"future version", func() []byte {
			d := bytes.Clone(good.Data)
			d[3] = 99
			return d
		}, 400, CodeBadVersion},
		{"decompression bomb with declared size", func() []byte { return bomb(t, 8<<20, true) }, 413, CodeTooLarge},
		{"decompression bomb without declared size", func() []byte { return bomb(t, 8<<20, false) }, 400, CodeBadBatch},
		{"oversized body", func() []byte { return random }, 413, CodeTooLarge},
		{"another agent's batch", func() []byte {
			enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: idB.Agent, Site: "s1", Seq: 3}, Samples: samples(6, now.Add(-time.Hour))})
			if err != nil {
				t.Fatal(err)
			}
			return enc.Data
		}, 403, CodeIdentityMismatch},
		{"another site's batch", func() []byte {
			enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: e.agents["a"].Identity.Agent, Site: idC.Site, Seq: 3}, Samples: samples(6, now.Add(-time.Hour))})
			if err != nil {
				t.Fatal(err)
			}
			return enc.Data
		}, 403, CodeIdentityMismatch},
		{"samples in the future", func() []byte {
			return e.encode("a", 4, samples(6, now.Add(DefaultMaxSkew+time.Minute))).Data
		}, 400, CodeBadTime},
		{"samples too old", func() []byte {
			return e.encode("a", 4, samples(6, now.Add(-DefaultMaxAge-time.Hour))).Data
		}, 400, CodeBadTime},
		{"unknown table", func() []byte {
			return e.encode("a", 4, []telemetry.Sample{{PointID: 99, Time: now.UnixMilli()}}).Data
		}, 422, CodeUnknownTable},
	}
	c := e.client("a")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.body()
			before := e.list()
			r := e.do(c, http.MethodPost, "/v1/batches", body)
			wantReply(t, r, tt.status, tt.code)
			if after := e.list(); !slices.Equal(before, after) {
				t.Errorf("store changed: %v -> %v", before, after)
			}
		})
	}
	if st := e.srv.Stats(); st.Refused[CodeBadTime] != 2 || st.Refused[CodeIdentityMismatch] != 2 || st.BatchesStored != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestSkewAndAgeWindowEdges(t *testing.T) {
	e := newEnv(t)
	// Exactly at the window's edges is accepted.
	wantReply(t, e.upload("a", e.encode("a", 1, samples(1, now.Add(DefaultMaxSkew)))), http.StatusOK, "")
	wantReply(t, e.upload("a", e.encode("a", 2, samples(1, now.Add(-DefaultMaxAge)))), http.StatusOK, "")
	wantReply(t, e.upload("a", e.encode("a", 3, samples(1, now.Add(DefaultMaxSkew+time.Millisecond)))), http.StatusBadRequest, CodeBadTime)
}

func TestUnknownTableThenUpload(t *testing.T) {
	e := newEnv(t)
	enc := e.encode("a", 1, samples(9, now.Add(-time.Minute)))
	c := e.client("a")

	r := e.do(c, http.MethodPost, "/v1/batches", enc.Data)
	wantReply(t, r, http.StatusUnprocessableEntity, CodeUnknownTable)
	if r.body["table"] != enc.TableHash.String() {
		t.Fatalf("422 names table %v, want %s", r.body["table"], enc.TableHash)
	}
	if n := e.list(); len(n) != 0 {
		t.Fatalf("store not empty after 422: %v", n)
	}

	// Another site's copy of the table is no use to this one.
	wantReply(t, e.do(e.client("c"), http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")
	wantReply(t, e.do(c, http.MethodPost, "/v1/batches", enc.Data), http.StatusUnprocessableEntity, CodeUnknownTable)

	r = e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table)
	wantReply(t, r, http.StatusCreated, "")
	if r.body["status"] != StatusStored || r.body["table"] != enc.TableHash.String() {
		t.Errorf("PUT table answered %v", r.body)
	}
	wantReply(t, e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusOK, "")
	wantReply(t, e.do(c, http.MethodPost, "/v1/batches", enc.Data), http.StatusOK, "")
	if _, err := e.store.Get(context.Background(), blob.TableName(tenant, "s1", enc.TableHash.String())); err != nil {
		t.Errorf("table not stored under the agent's site: %v", err)
	}
}

func TestTableRefused(t *testing.T) {
	e := newEnv(t, func(c *Config, _ *blob.Store) { c.MaxTableBytes = 1024 })
	table := batch.EncodePointTable([]uint64{1, 2, 3})
	hash := batch.HashPointTable(table)
	otherHash := batch.HashPointTable(batch.EncodePointTable([]uint64{4}))
	huge := make([]uint64, 1000)
	for i := range huge {
		huge[i] = uint64(i) << 40
	}
	hugeTable := batch.EncodePointTable(huge)
	tests := []struct {
		name   string
		path   string
		body   []byte
		status int
		code   string
	}{
		{"malformed hash", "/v1/tables/nothex", table, 400, CodeBadTableHash},
		{"upper-case hash", "/v1/tables/" + strings.ToUpper(hash.String()), table, 400, CodeBadTableHash},
		{"not a table", "/v1/tables/" + hash.String(), []byte("hello"), 400, CodeBadTable},
		{"truncated table", "/v1/tables/" + hash.String(), table[:len(table)-1], 400, CodeBadTable},
		{"hash mismatch", "/v1/tables/" + otherHash.String(), table, 400, CodeTableHashMismatch},
		{"too large", "/v1/tables/" + batch.HashPointTable(hugeTable).String(), hugeTable, 413, CodeTooLarge},
	}
	c := e.client("a")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantReply(t, e.do(c, http.MethodPut, tt.path, tt.body), tt.status, tt.code)
			if n := e.list(); len(n) != 0 {
				t.Errorf("store not empty: %v", n)
			}
		})
	}
}

func TestRouting(t *testing.T) {
	e := newEnv(t)
	c := e.client("a")
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodGet, "/v1/batches", 405, "POST"},
		{http.MethodPut, "/v1/batches", 405, "POST"},
		{http.MethodPost, "/v1/tables/0011223344556677", 405, "PUT"},
		{http.MethodGet, "/", 404, ""},
		{http.MethodPost, "/v1/batches/", 404, ""},
		{http.MethodPost, "/v1/batch", 404, ""},
		{http.MethodPut, "/v1/tables/a/b", 404, ""},
		{http.MethodGet, "/healthz", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			r := e.do(c, tt.method, tt.path, nil)
			code := CodeNotFound
			if tt.status == 405 {
				code = CodeMethodNotAllowed
			}
			wantReply(t, r, tt.status, code)
			if got := r.header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
}

// flakyStore fails every call with err when failing is set, and can hold
// a Put until released.
type flakyStore struct {
	blob.Store
	mu      sync.Mutex
	failing bool
	hold    chan struct{} // Put waits for it to close, when not nil
	entered chan string   // told each held Put's name
}

var errDown = errors.New("store is down")

func (f *flakyStore) fail() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return errDown
	}
	return nil
}

func (f *flakyStore) Put(ctx context.Context, name string, data []byte) (bool, error) {
	if err := f.fail(); err != nil {
		return false, err
	}
	if f.hold != nil {
		f.entered <- name
		<-f.hold
	}
	return f.Store.Put(ctx, name, data)
}

func (f *flakyStore) Get(ctx context.Context, name string) ([]byte, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, name)
}

func (f *flakyStore) List(ctx context.Context, prefix string) ([]string, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return f.Store.List(ctx, prefix)
}

func TestStoreUnavailable(t *testing.T) {
	var flaky *flakyStore
	e := newEnv(t, func(_ *Config, s *blob.Store) {
		flaky = &flakyStore{Store: *s}
		*s = flaky
	})
	enc := e.encode("a", 1, samples(4, now.Add(-time.Hour)))
	c := e.client("a")
	wantReply(t, e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")
	internalAddr, _ := e.serve(e.srv.ServeInternal)
	internal := "http://" + internalAddr

	flaky.mu.Lock()
	flaky.failing = true
	flaky.mu.Unlock()
	e.srv.tables = pointtable.NewCache(pointtable.DefaultMaxPoints) // make the batch read its table from the store
	for _, tt := range []struct{ name, method, path string }{
		{"table read", http.MethodPost, "/v1/batches"},
		{"table write", http.MethodPut, "/v1/tables/" + enc.TableHash.String()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := enc.Data
			if tt.method == http.MethodPut {
				body = enc.Table
			}
			r := e.do(c, tt.method, tt.path, body)
			wantReply(t, r, http.StatusServiceUnavailable, CodeStoreUnavailable)
			if ra := r.header.Get("Retry-After"); ra != "5" {
				t.Errorf("Retry-After %q, want 5", ra)
			}
		})
	}
	if code := get(t, internal+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with the store down = %d, want 503", code)
	}
	if code := get(t, internal+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}

	flaky.mu.Lock()
	flaky.failing = false
	flaky.mu.Unlock()
	if code := get(t, internal+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with the store back = %d, want 200", code)
	}
	wantReply(t, e.do(c, http.MethodPost, "/v1/batches", enc.Data), http.StatusOK, "")
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestShutdownFinishesInFlightBatch(t *testing.T) {
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	flaky := &flakyStore{Store: dir}
	srv, err := New(Config{Now: func() time.Time { return now }}, flaky, ca, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.NewAgentBundle(tenant, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ca: ca, store: flaky, dir: dir, srv: srv, agents: map[string]pki.Bundle{"a": b}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	iln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.base = "https://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Run(ctx, ln, iln) }()

	enc := e.encode("a", 1, samples(4, now.Add(-time.Hour)))
	c := e.client("a")
	wantReply(t, e.do(c, http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table), http.StatusCreated, "")
	if code := get(t, "http://"+iln.Addr().String()+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d before shutdown", code)
	}

	flaky.hold, flaky.entered = make(chan struct{}), make(chan string, 2)
	var r reply
	uploaded := make(chan struct{})
	go func() {
		// e.do fails the test on a transport error and ends this
		// goroutine: closing uploaded then stops the test instead of
		// leaving it waiting for a store call that never comes.
		defer close(uploaded)
		r = e.do(c, http.MethodPost, "/v1/batches", enc.Data)
	}()
	select {
	case <-flaky.entered: // the batch is being stored
	case <-uploaded:
		t.Fatalf("the upload ended before the batch reached the store: %d %v", r.status, r.body)
	}
	cancel()
	close(flaky.hold)
	<-uploaded
	wantReply(t, r, http.StatusOK, "")
	if err := <-served; err != nil {
		t.Fatalf("Run after shutdown: %v", err)
	}
	if _, err := dir.Get(context.Background(), blob.BatchName(tenant, "s1", b.Identity.Agent, 1, now.Add(-time.Hour-3*time.Minute))); err != nil {
		t.Errorf("in-flight batch not stored: %v", err)
	}
	if !srv.draining.Load() {
		t.Error("not draining after shutdown")
	}
}

func TestNewRefusesMissingParts(t *testing.T) {
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for name, f := range map[string]func() (*Server, error){
		"no store":  func() (*Server, error) { return New(Config{}, nil, ca, log) },
		"no CA":     func() (*Server, error) { return New(Config{}, dir, nil, log) },
		"no logger": func() (*Server, error) { return New(Config{}, dir, ca, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := f(); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

func TestParseClaim(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		in   string
		name string
		ok   bool
	}{
		{sum + " t/s/2026/01/01/00/a-1.sgb\n", "t/s/2026/01/01/00/a-1.sgb", true},
		{sum + " x", "x", true},
		{sum, "", false},
		{sum + " ", "", false},
		{"zz" + sum[2:] + " x\n", "", false},
		{sum[2:] + " x\n", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		_, name, ok := parseClaim([]byte(tt.in))
		if ok != tt.ok || name != tt.name {
			t.Errorf("parseClaim(%q) = %q, %v; want %q, %v", tt.in, name, ok, tt.name, tt.ok)
		}
	}
}

func TestTableCacheBound(t *testing.T) {
	c := pointtable.NewCache(10)
	h := func(i byte) batch.TableHash { return batch.TableHash{i} }
	c.Add("t", "s", h(1), make([]uint64, 4))
	c.Add("t", "s", h(2), make([]uint64, 4))
	c.Add("t", "s", h(3), make([]uint64, 4))  // evicts 1
	c.Add("t", "s", h(4), make([]uint64, 11)) // larger than the cache: not kept
	for i, want := range map[byte]bool{1: false, 2: true, 3: true, 4: false} {
		if _, ok := c.Get("t", "s", h(i)); ok != want {
			t.Errorf("table %d cached = %v, want %v", i, ok, want)
		}
	}
	if _, points := c.Stats(); points != 8 {
		t.Errorf("points = %d, want 8", points)
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines to log to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestAccessLogAndConflictWarning(t *testing.T) {
	var logs syncBuffer
	e := newEnvLog(t, slog.New(slog.NewJSONHandler(&logs, nil)))
	first := e.encode("a", 1, samples(3, now.Add(-time.Hour)))
	wantReply(t, e.upload("a", first), http.StatusOK, "")
	wantReply(t, e.do(e.client("a"), http.MethodPost, "/v1/batches", e.encode("a", 1, samples(4, now.Add(-time.Hour))).Data), http.StatusConflict, CodeConflict)
	wantReply(t, e.do(e.client("a"), http.MethodGet, "/nope", nil), http.StatusNotFound, CodeNotFound)
	e.stop() // the access log is written after the reply; shutdown waits for it

	type line struct {
		Level, Msg, Method, Path, Agent string
		Status                          int
		Bytes                           int64
		Duration                        int64
		BatchSeq                        uint64 `json:"batch_seq"`
	}
	var got []line
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var ln line
		if err := json.Unmarshal([]byte(l), &ln); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		got = append(got, ln)
	}
	agent := e.agents["a"].Identity.Agent
	want := []struct {
		method, path string
		status       int
		bytes        int64
	}{
		{"PUT", "/v1/tables/" + first.TableHash.String(), 201, int64(len(first.Table))},
		{"POST", "/v1/batches", 200, int64(len(first.Data))},
		{"POST", "/v1/batches", 409, -1},
		{"GET", "/nope", 404, 0},
	}
	var access []line
	warned := false
	for _, l := range got {
		if l.Msg == "request" {
			access = append(access, l)
		}
		if l.Level == "WARN" && strings.Contains(l.Msg, "batch conflict") && l.BatchSeq == 1 {
			warned = true
		}
	}
	if len(access) != len(want) {
		t.Fatalf("%d access log lines, want %d:\n%s", len(access), len(want), logs.String())
	}
	for i, w := range want {
		a := access[i]
		if a.Method != w.method || a.Path != w.path || a.Status != w.status || a.Agent != agent || (w.bytes >= 0 && a.Bytes != w.bytes) || a.Duration <= 0 {
			t.Errorf("access line %d: %+v, want %+v agent %s", i, a, w, agent)
		}
	}
	if !warned {
		t.Errorf("no WARN about the conflict:\n%s", logs.String())
	}
}
