package azure_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure/azuritetest"
	"github.com/sightglass-bms/sightglass/ingest/blob/blobtest"
)

// fakeService answers requests from a table and records what it was sent,
// so the unit tests see the exact headers azblob puts on the wire.
type fakeService struct {
	mu       sync.Mutex
	requests []*http.Request
	bodies   [][]byte
	// answer returns the response to the i-th request.
	answer func(i int, r *http.Request) *http.Response
}

func (f *fakeService) Do(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
	}
	f.mu.Lock()
	i := len(f.requests)
	f.requests = append(f.requests, r)
	f.bodies = append(f.bodies, body)
	f.mu.Unlock()
	resp := f.answer(i, r)
	resp.Request = r
	return resp, nil
}

// headerValue looks a header up case-insensitively: azcore sets some under
// their wire spelling (x-ms-blob-type), which Header.Get does not find.
func headerValue(h http.Header, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func reply(status int, code string, body []byte) *http.Response {
	h := http.Header{}
	if code != "" {
		h.Set("x-ms-error-code", code)
	}
	h.Set("Content-Length", fmt.Sprint(len(body)))
	return &http.Response{
		StatusCode:    status,
		Status:        http.StatusText(status),
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
	}
}

// newFakeStore returns a store on a fake service, with a token credential
// that needs no Entra ID and no retries, so each table row is one exchange.
func newFakeStore(t *testing.T, f *fakeService) *azure.Store {
	t.Helper()
	s, err := azure.New(azure.Options{
		AccountURL: "https://acct.blob.core.windows.net",
		Container:  "archive",
		Credential: &azuritetest.TokenCredential{},
		Transport:  f,
		Retry:      policy.RetryOptions{MaxRetries: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPutSendsCreateIfAbsent(t *testing.T) {
	tests := []struct {
		name, blob, contentType string
	}{
		{"batch", "t1/s1/2026/01/02/03/ag-1-00000000000000000001.sgb", azure.ContentType},
		{"claim", "t1/s1/claims/ag-1/00000000000000000001", "application/octet-stream"},
		{"table", "t1/s1/tables/ff.sgt", "application/octet-stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeService{answer: func(int, *http.Request) *http.Response { return reply(http.StatusCreated, "", nil) }}
			data := []byte("batch bytes")
			created, err := newFakeStore(t, f).Put(t.Context(), tt.blob, data)
			if err != nil || !created {
				t.Fatalf("Put = %v, %v; want true, nil", created, err)
			}
			if len(f.requests) != 1 {
				t.Fatalf("%d requests, want 1", len(f.requests))
			}
			r := f.requests[0]
			sum := md5.Sum(data)
			for header, want := range map[string]string{
				"If-None-Match":          "*",
				"X-Ms-Blob-Type":         "BlockBlob",
				"X-Ms-Blob-Content-Type": tt.contentType,
				"Content-Md5":            base64.StdEncoding.EncodeToString(sum[:]),
			} {
				if got := headerValue(r.Header, header); got != want {
					t.Errorf("%s = %q, want %q", header, got, want)
				}
			}
			if r.Method != http.MethodPut || r.URL.Path != "/archive/"+tt.blob {
				t.Errorf("request %s %s, want PUT /archive/%s", r.Method, r.URL.Path, tt.blob)
			}
			if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
				t.Errorf("Authorization %q, want a bearer token", r.Header.Get("Authorization"))
			}
			if !bytes.Equal(f.bodies[0], data) {
				t.Errorf("body %q, want %q", f.bodies[0], data)
			}
		})
	}
}

// A taken name is read back and compared, whichever of the two codes the
// service uses for it.
func TestPutTakenName(t *testing.T) {
	const name = "t1/s1/2026/01/02/03/ag-1-00000000000000000001.sgb"
	offered := []byte("offered")
	tests := []struct {
		name        string
		status      int
		code        string
		stored      []byte
		wantErr     error
		wantCreated bool
	}{
		{"409 same bytes", http.StatusConflict, "BlobAlreadyExists", offered, nil, false},
		{"412 same bytes", http.StatusPreconditionFailed, "ConditionNotMet", offered, nil, false},
		{"409 other bytes", http.StatusConflict, "BlobAlreadyExists", []byte("stored!"), blob.ErrConflict, false},
		{"412 other bytes", http.StatusPreconditionFailed, "ConditionNotMet", []byte("off"), blob.ErrConflict, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeService{answer: func(i int, r *http.Request) *http.Response {
				if i == 0 {
					return reply(tt.status, tt.code, nil)
				}
				if r.Method != http.MethodGet {
					t.Errorf("request %d is %s, want the GET that reads the stored blob", i, r.Method)
				}
				return reply(http.StatusOK, "", tt.stored)
			}}
			created, err := newFakeStore(t, f).Put(t.Context(), name, offered)
			if created != tt.wantCreated || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Put = %v, %v; want %v, %v", created, err, tt.wantCreated, tt.wantErr)
			}
			if len(f.requests) != 2 {
				t.Fatalf("%d requests, want the PUT and one GET", len(f.requests))
			}
		})
	}
}

// Every failure names what failed and what to do.
func TestErrorsSayWhatToDo(t *testing.T) {
	tests := []struct {
		status int
		code   string
		want   string
	}{
		{http.StatusForbidden, "AuthorizationPermissionMismatch", "lacks the Storage Blob Data Contributor role on container archive"},
		{http.StatusForbidden, "AuthorizationFailure", "lacks the Storage Blob Data Contributor role on container archive"},
		{http.StatusForbidden, "KeyBasedAuthenticationNotPermitted", "refuses shared keys"},
		{http.StatusForbidden, "AuthenticationFailed", "refused the ingest's credential"},
		{http.StatusUnauthorized, "InvalidAuthenticationInfo", "refused the ingest's credential"},
		{http.StatusNotFound, "ContainerNotFound", "container archive does not exist"},
		{http.StatusForbidden, "", "network rules"},
		{http.StatusServiceUnavailable, "ServerBusy", "agents keep their batches and retry"},
		{http.StatusInternalServerError, "InternalError", "agents keep their batches and retry"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.status, tt.code), func(t *testing.T) {
			f := &fakeService{answer: func(int, *http.Request) *http.Response { return reply(tt.status, tt.code, nil) }}
			s := newFakeStore(t, f)
			ops := map[string]error{}
			_, ops["put"] = s.Put(t.Context(), "a/b", []byte("x"))
			_, ops["get"] = s.Get(t.Context(), "a/b")
			_, ops["list"] = s.List(t.Context(), "a/")
			ops["ping"] = s.Ping(t.Context())
			for op, err := range ops {
				if err == nil {
					t.Errorf("%s succeeded against HTTP %d", op, tt.status)
					continue
				}
				msg := err.Error()
				if !strings.Contains(msg, tt.want) || !strings.Contains(msg, "acct.blob.core.windows.net") {
					t.Errorf("%s: %q does not say %q and the account", op, msg, tt.want)
				}
				var se *azure.StatusError
				if !errors.As(err, &se) || se.Status != tt.status || se.Code != tt.code {
					t.Errorf("%s: %v does not wrap StatusError{%d %s}", op, err, tt.status, tt.code)
				}
				if strings.Contains(msg, "\n") {
					t.Errorf("%s: message spans lines: %q", op, msg)
				}
			}
		})
	}
}

func TestGetNotFoundAndDamaged(t *testing.T) {
	t.Run("not found", func(t *testing.T) {
		f := &fakeService{answer: func(int, *http.Request) *http.Response { return reply(http.StatusNotFound, "BlobNotFound", nil) }}
		if _, err := newFakeStore(t, f).Get(t.Context(), "a/b"); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
	t.Run("md5 mismatch", func(t *testing.T) {
		f := &fakeService{answer: func(int, *http.Request) *http.Response {
			r := reply(http.StatusOK, "", []byte("damaged"))
			sum := md5.Sum([]byte("original"))
			r.Header.Set("Content-MD5", base64.StdEncoding.EncodeToString(sum[:]))
			return r
		}}
		_, err := newFakeStore(t, f).Get(t.Context(), "a/b")
		if err == nil || !strings.Contains(err.Error(), "do not match the MD5") {
			t.Fatalf("err = %v, want an MD5 mismatch", err)
		}
	})
}

func TestNewRefuses(t *testing.T) {
	key := azure.EmulatorSharedKey()
	tests := []struct {
		name string
		o    azure.Options
		want string
	}{
		{"shared key to a real account", azure.Options{AccountURL: "https://acct.blob.core.windows.net", Container: "archive", SharedKey: key}, "only for a local emulator"},
		{"shared key to a LAN address", azure.Options{AccountURL: "http://10.0.0.5:10000/devstoreaccount1", Container: "archive", SharedKey: key}, "only for a local emulator"},
		{"token over http", azure.Options{AccountURL: "http://127.0.0.1:10000/devstoreaccount1", Container: "archive", Credential: &azuritetest.TokenCredential{}}, "not https"},
		{"both", azure.Options{AccountURL: "https://127.0.0.1/x", Container: "archive", SharedKey: key, Credential: &azuritetest.TokenCredential{}}, "use one"},
		{"neither", azure.Options{AccountURL: "https://acct.blob.core.windows.net", Container: "archive"}, "no credential"},
		{"bad container", azure.Options{AccountURL: "https://acct.blob.core.windows.net", Container: "Archive", Credential: &azuritetest.TokenCredential{}}, "lower-case"},
		{"bad url", azure.Options{AccountURL: "acct.blob.core.windows.net", Container: "archive", Credential: &azuritetest.TokenCredential{}}, "not an http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := azure.New(tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestCheckContainerName(t *testing.T) {
	for name, ok := range map[string]bool{
		"abc": true, "sightglass-archive": true, "a1-b2-c3": true, strings.Repeat("a", 63): true,
		"ab": false, strings.Repeat("a", 64): false, "-abc": false, "abc-": false, "a--b": false,
		"Abc": false, "a_b": false, "a.b": false, "": false,
	} {
		if err := azure.CheckContainerName(name); (err == nil) != ok {
			t.Errorf("CheckContainerName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("Azurite integration test: skipped with -short")
	}
}

func TestSharedKeyIntegration(t *testing.T) {
	skipShort(t)
	srv := azuritetest.Start(t, azuritetest.Options{})
	blobtest.Run(t, func(t *testing.T) blob.Store { return srv.NewStore(t, nil) })
}

func TestTokenIntegration(t *testing.T) {
	skipShort(t)
	srv := azuritetest.Start(t, azuritetest.Options{TLS: true, OAuth: true})
	var creds []*azuritetest.TokenCredential
	blobtest.Run(t, func(t *testing.T) blob.Store {
		return srv.NewStore(t, func(o *azure.Options) {
			c := &azuritetest.TokenCredential{}
			creds = append(creds, c)
			o.Credential = c
		})
	})
	for i, c := range creds {
		if c.Calls() == 0 {
			t.Errorf("store %d never asked its credential for a token: the bearer path did not run", i)
		}
	}
}

// Azurite in OAuth mode really checks tokens, so the token test above
// cannot pass by accident; and a credential that fails says so.
func TestTokenRefusedIntegration(t *testing.T) {
	skipShort(t)
	srv := azuritetest.Start(t, azuritetest.Options{TLS: true, OAuth: true})
	tests := []struct {
		name string
		cred *azuritetest.TokenCredential
		want string
	}{
		{"expired", &azuritetest.TokenCredential{Lifetime: -time.Hour}, "refused the ingest's credential"},
		{"credential fails", &azuritetest.TokenCredential{Fail: errors.New("no token today")}, "no token today"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := azure.New(azure.Options{
				AccountURL: srv.AccountURL, Container: "refused", Credential: tt.cred,
				Transport: srv.Transport(), Retry: policy.RetryOptions{MaxRetries: -1},
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Put(t.Context(), "a/b", []byte("x"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Put: err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestMissingContainerIntegration(t *testing.T) {
	skipShort(t)
	srv := azuritetest.Start(t, azuritetest.Options{})
	s, err := azure.New(azure.Options{AccountURL: srv.AccountURL, Container: "never-made", SharedKey: azure.EmulatorSharedKey()})
	if err != nil {
		t.Fatal(err)
	}
	for op, call := range map[string]func() error{
		"ping": func() error { return s.Ping(t.Context()) },
		"put":  func() error { _, err := s.Put(t.Context(), "a/b", []byte("x")); return err },
	} {
		if err := call(); err == nil || !strings.Contains(err.Error(), "container never-made does not exist") {
			t.Errorf("%s: err = %v, want one naming the missing container", op, err)
		}
	}
}

// Killing Azurite fails calls quickly and clearly (the agent retries);
// after a restart on the same location everything stored is still there.
func TestKilledIntegration(t *testing.T) {
	skipShort(t)
	srv := azuritetest.Start(t, azuritetest.Options{})
	s := srv.NewStore(t, func(o *azure.Options) {
		o.Retry = policy.RetryOptions{MaxRetries: 1, RetryDelay: 50 * time.Millisecond}
	})
	if _, err := s.Put(t.Context(), "before/kill", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	// Azurite keeps its metadata in memory and saves it every 5s, so a
	// kill before the save loses what was written: an emulator's limit
	// (Azure acknowledges a write once it is durable). Let it save first.
	srv.WaitDurable(t, s.Container(), "before/kill")
	srv.Kill()
	start := time.Now()
	_, err := s.Put(t.Context(), "during/kill", []byte("lost"))
	if err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("Put with Azurite dead: err = %v, want one saying the account does not answer", err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a dead store reads as a context error: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Put took %v to fail against a dead store", d)
	}
	if err := s.Ping(t.Context()); err == nil {
		t.Error("Ping succeeded with Azurite dead")
	}
	srv.Restart(t)
	if got, err := s.Get(t.Context(), "before/kill"); err != nil || string(got) != "kept" {
		t.Fatalf("after restart Get = %q, %v; want kept", got, err)
	}
	if created, err := s.Put(t.Context(), "during/kill", []byte("second try")); err != nil || !created {
		t.Fatalf("after restart Put = %v, %v", created, err)
	}
}

// BenchmarkPutAzurite measures batches/s through Put into Azurite, one
// writer at a time and with parallel writers (as concurrent agent uploads),
// over both auth paths. A batch here is 16 KiB, a few minutes of a
// mid-size building.
func BenchmarkPutAzurite(b *testing.B) {
	skipShort(b)
	payload := bytes.Repeat([]byte("sightglass batch"), 1024)
	for _, mode := range []struct {
		name string
		opts azuritetest.Options
	}{
		{"shared-key-http", azuritetest.Options{}},
		{"token-https", azuritetest.Options{TLS: true, OAuth: true}},
	} {
		srv := azuritetest.Start(b, mode.opts)
		for _, par := range []bool{false, true} {
			name := mode.name + "/serial"
			if par {
				name = mode.name + "/parallel"
			}
			b.Run(name, func(b *testing.B) {
				s := srv.NewStore(b, nil)
				var seq atomic.Uint64
				b.SetBytes(int64(len(payload)))
				b.ResetTimer()
				put := func() {
					n := seq.Add(1)
					name := blob.BatchName("t1", "s1", "ag-1", n, time.Unix(1767225600, 0))
					if created, err := s.Put(context.Background(), name, payload); err != nil || !created {
						b.Errorf("Put %d = %v, %v", n, created, err)
					}
				}
				if par {
					b.SetParallelism(4)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							put()
						}
					})
				} else {
					for b.Loop() {
						put()
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
			})
		}
	}
}

// lossyTransport sends every request but loses the answer to the first
// PUT, as a connection cut after the service committed would.
type lossyTransport struct {
	next policy.Transporter
	lost atomic.Bool
}

func (l *lossyTransport) Do(r *http.Request) (*http.Response, error) {
	resp, err := l.next.Do(r)
	if err == nil && r.Method == http.MethodPut && r.URL.Query().Get("restype") == "" && l.lost.CompareAndSwap(false, true) {
		resp.Body.Close()
		return nil, errors.New("connection reset by peer (test)")
	}
	return resp, err
}

// A try whose answer is lost after the service stored the blob is retried
// by azcore, meets 409 from its own write, compares and reports "already
// stored": the bytes are there once and the caller is told no error.
func TestLostAnswerIntegration(t *testing.T) {
	skipShort(t)
	srv := azuritetest.Start(t, azuritetest.Options{})
	lossy := &lossyTransport{next: http.DefaultClient}
	s := srv.NewStore(t, func(o *azure.Options) {
		o.Transport = lossy
		o.Retry = policy.RetryOptions{RetryDelay: 10 * time.Millisecond}
	})
	created, err := s.Put(t.Context(), "t1/s1/claims/ag-1/00000000000000000001", []byte("claim"))
	if err != nil || created {
		t.Fatalf("Put after a lost answer = %v, %v; want false, nil (stored by the first try)", created, err)
	}
	if !lossy.lost.Load() {
		t.Fatal("the transport lost no answer: the test did not exercise the retry")
	}
	if got, err := s.Get(t.Context(), "t1/s1/claims/ag-1/00000000000000000001"); err != nil || string(got) != "claim" {
		t.Fatalf("Get = %q, %v", got, err)
	}
}
