package server

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// unreadable fails the test that reads it: a body announced too large
// must be refused without a byte of it read.
type unreadable struct{ t *testing.T }

func (u unreadable) Read([]byte) (int, error) {
	u.t.Error("the body of a request announced larger than the limit was read")
	return 0, errors.New("unreadable")
}

func TestReadBody(t *testing.T) {
	const limit = 16
	tests := []struct {
		name   string
		body   string
		length int64 // -1: unknown (chunked)
		status int   // 0: read
	}{
		{"known length", "0123456789", 10, 0},
		{"exactly the limit", strings.Repeat("x", limit), limit, 0},
		{"unknown length within the limit", "0123456789", -1, 0},
		{"unknown length over the limit", strings.Repeat("x", limit+1), -1, http.StatusRequestEntityTooLarge},
		{"shorter than announced", "0123", 10, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/v1/batches", strings.NewReader(tt.body))
			r.ContentLength = tt.length
			data, rf := readBody(httptest.NewRecorder(), r, limit, "batch")
			switch {
			case tt.status == 0 && (rf != nil || string(data) != tt.body):
				t.Errorf("read %q, refusal %v; want the body", data, rf)
			case tt.status != 0 && (rf == nil || rf.status != tt.status):
				t.Errorf("refusal %+v, want status %d", rf, tt.status)
			}
		})
	}
	t.Run("announced over the limit", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodPost, "/v1/batches", unreadable{t})
		r.ContentLength = 1 << 30
		if _, rf := readBody(httptest.NewRecorder(), r, limit, "batch"); rf == nil || rf.status != http.StatusRequestEntityTooLarge {
			t.Errorf("refusal %+v, want 413", rf)
		}
	})
}

// TestReadBodyAllocatesAsBytesArrive: a request announcing the limit and
// sending nothing must not make the server allocate the limit, or a few
// idle streams of one agent would hold hundreds of MiB.
func TestReadBodyAllocatesAsBytesArrive(t *testing.T) {
	const limit = 8 << 20
	r := httptest.NewRequest(http.MethodPost, "/v1/batches", strings.NewReader(""))
	r.ContentLength = limit
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, rf := readBody(httptest.NewRecorder(), r, limit, "batch")
	runtime.ReadMemStats(&after)
	if rf == nil || rf.status != http.StatusBadRequest {
		t.Errorf("refusal %+v, want 400 for a body shorter than announced", rf)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 { // the limit is 8 MiB; other goroutines may allocate meanwhile
		t.Errorf("reading an empty body announced as %d bytes allocated %d bytes", limit, grew)
	}
}

// TestReadKnownAllocatesItsSize: a body of known length costs about its
// size, not the doubling of io.ReadAll or bytes.Buffer, and ends in a
// buffer no larger than it, whether it arrives in one piece or many.
func TestReadKnownAllocatesItsSize(t *testing.T) {
	const n = 8 << 20
	body := bytes.Repeat([]byte("x"), n)
	for _, chunk := range []int{n, 4096, 1} {
		t.Run(fmt.Sprint("chunks of ", chunk), func(t *testing.T) {
			if chunk == 1 && testing.Short() {
				t.Skip("byte by byte is slow")
			}
			rd := iotest.OneByteReader(bytes.NewReader(body))
			if chunk > 1 {
				rd = &chunked{r: bytes.NewReader(body), n: chunk}
			}
			data, err := readKnown(rd, n)
			if err != nil || len(data) != n {
				t.Fatalf("read %d bytes, %v", len(data), err)
			}
			if cap(data) > n {
				t.Errorf("a %d-byte body ends in a buffer of %d bytes", n, cap(data))
			}
		})
	}
	if _, err := readKnown(bytes.NewReader(body), n-1); err == nil {
		t.Error("a body longer than announced was taken")
	}
	if _, err := readKnown(bytes.NewReader(body[:10]), 11); err == nil {
		t.Error("a body shorter than announced was taken")
	}
}

// chunked returns at most n bytes per Read, as a network connection does.
type chunked struct {
	r *bytes.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }
