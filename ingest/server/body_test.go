package server

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
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
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 2<<20 {
		t.Errorf("reading an empty body announced as %d bytes allocated %d bytes", limit, grew)
	}
}
