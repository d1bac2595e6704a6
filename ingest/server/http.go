package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// Error codes, the "code" of every JSON error body. Agents act on the code,
// people on the message.
const (
	CodeTooLarge           = "too_large"           // 413: body or decoded batch over a limit; split it
	CodeBadRequest         = "bad_request"         // 400: the body could not be read
	CodeBadBatch           = "bad_batch"           // 400: not a valid batch; the message is the decoder's
	CodeBadVersion         = "unsupported_version" // 400: a batch format this ingest does not know
	CodeUnknownTable       = "unknown_point_table" // 422: PUT /v1/tables/{table} then retry
	CodeIdentityMismatch   = "identity_mismatch"   // 403: batch's agent or site is not the certificate's
	CodeNoIdentity         = "no_identity"         // 403: no usable identity on the connection
	CodeBadTime            = "bad_time"            // 400: a sample time outside the accepted window
	CodeConflict           = "conflict"            // 409: another batch was already stored under this seq
	CodeStoreUnavailable   = "store_unavailable"   // 503: retry after Retry-After seconds
	CodeBadTable           = "bad_table"           // 400: not a valid point table
	CodeBadTableHash       = "bad_table_hash"      // 400: the {hash} in the path is malformed
	CodeTableHashMismatch  = "table_hash_mismatch" // 400: the table's hash is not the {hash} in the path
	CodeNotFound           = "not_found"           // 404
	CodeMethodNotAllowed   = "method_not_allowed"  // 405
	CodeInternal           = "internal"            // 500: a bug or damaged archive on our side
	retryAfterStoreSeconds = 5
)

// errorBody is the JSON of every error response.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	Table string `json:"table,omitempty"`
}

// refusal is a request the server turns down, with what to tell the agent.
type refusal struct {
	status int
	code   string
	msg    string
	table  string // for CodeUnknownTable
}

func refuse(status int, code, format string, args ...any) *refusal {
	return &refusal{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	// The status is sent; a failed write means the client went away.
	_ = json.NewEncoder(w).Encode(v)
}

func writeRefusal(w http.ResponseWriter, rf *refusal) {
	if rf.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterStoreSeconds))
	}
	writeJSON(w, rf.status, errorBody{Error: rf.msg, Code: rf.code, Table: rf.table})
}

// agentHandler routes the agent protocol. It is written out rather than
// left to http.ServeMux so that 404 and 405 answer in JSON like every other
// error, and so that no path but these two exists.
func (s *Server) agentHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lw := &logWriter{ResponseWriter: w, status: http.StatusOK}
		body := &countingReader{r: r.Body}
		r.Body = body
		start := time.Now()
		id, idErr := pki.PeerIdentity(r.TLS)
		defer func() {
			s.log.LogAttrs(r.Context(), accessLevel(lw.status), "request",
				slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.Int("status", lw.status), slog.Int64("bytes", body.n),
				slog.Int64("resp_bytes", lw.n), slog.Duration("duration", time.Since(start)),
				slog.String("agent", id.Agent))
		}()

		var handle func(http.ResponseWriter, *http.Request, pki.Identity)
		var anon func(http.ResponseWriter, *http.Request) // routes that need no certificate
		var allow string
		// limited routes answer anybody, so each remote address gets only
		// so many requests (Config.AnonymousLimit).
		var limited bool
		trust := s.cfg.Registry != nil
		p := r.URL.Path
		switch {
		case p == "/v1/batches":
			handle, allow = s.handleBatch, http.MethodPost
		case strings.HasPrefix(p, "/v1/tables/") && !strings.Contains(p[len("/v1/tables/"):], "/"):
			handle, allow = s.handleTable, http.MethodPut
		case trust && p == "/v1/enroll":
			anon, allow, limited = s.handleEnroll, http.MethodPost, true
		case trust && p == "/v1/ca.crt":
			anon, allow = s.handleCACert, http.MethodGet
		case trust && p == "/v1/crl":
			anon, allow = s.handleCRL, http.MethodGet
		case trust && p == "/v1/renew":
			handle, allow = s.handleRenew, http.MethodPost
		case trust && p == "/v1/catalog":
			handle, allow = s.handleCatalog, http.MethodPut
		case trust && strings.HasPrefix(p, "/v1/certs/") && !strings.Contains(p[len("/v1/certs/"):], "/"):
			anon, allow, limited = s.handleCertStatus, http.MethodGet, true
		default:
			writeRefusal(lw, refuse(http.StatusNotFound, CodeNotFound,
				"no such path %q: agents POST /v1/batches and PUT /v1/tables/{hash}", p))
			return
		}
		if r.Method != allow {
			lw.Header().Set("Allow", allow)
			writeRefusal(lw, refuse(http.StatusMethodNotAllowed, CodeMethodNotAllowed,
				"method %s is not allowed on %s: use %s", r.Method, p, allow))
			return
		}
		if anon != nil {
			if !limited || s.limitAnonymous(lw, r) {
				anon(lw, r)
			}
			return
		}
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			writeRefusal(lw, refuse(http.StatusUnauthorized, CodeUnauthorized,
				"%s needs the agent's client certificate: enroll the agent (`sightglass-agent enroll`) and connect with its certificate", p))
			return
		}
		if idErr != nil {
			// ServerTLSConfig refuses such handshakes; this is a second lock.
			writeRefusal(lw, refuse(http.StatusForbidden, CodeNoIdentity,
				"no agent identity on this connection (%v): connect with the certificate issued by `sightglass-ingest agents issue`", idErr))
			return
		}
		// A refused batch is audited as such, any other route's request
		// as a request.
		action := "request_refused"
		if p == "/v1/batches" {
			action = "batch_refused"
		}
		leaf := r.TLS.PeerCertificates[0]
		// The handshake checked validity and revocation; a keep-alive
		// connection can outlive both checks by hours, so every request
		// checks again.
		rf := s.checkValidity(leaf)
		if rf == nil {
			rf = s.checkClock(r)
		}
		if rf == nil {
			rf = s.checkRegistry(r.Context(), id, leaf)
		}
		if rf != nil {
			s.count(func(st *Stats) { st.Refused[rf.code]++ })
			if rf.code != CodeStoreUnavailable { // our trouble, not the agent's doing
				s.auditRefusal(r.Context(), id.Agent, action, rf)
			}
			writeRefusal(lw, rf)
			return
		}
		handle(lw, r, id)
	})
}

// readBody reads at most limit bytes of r's body, or says why not.
// readBodyPrealloc is the most readBody allocates before a body's bytes
// arrive.
const readBodyPrealloc = 256 << 10

// readKnown reads a body announced as n bytes: into a buffer that grows as
// bytes arrive but never past n (so a batch costs about its size, not the
// doubling io.ReadAll or bytes.Buffer do), then checks that the body ends
// there.
func readKnown(rd io.Reader, n int64) ([]byte, error) {
	data := make([]byte, 0, min(n, readBodyPrealloc))
	for int64(len(data)) < n {
		if len(data) == cap(data) {
			// Double, but never past n: slices.Grow would round up.
			grown := make([]byte, len(data), len(data)+int(min(int64(len(data)), n-int64(len(data)))))
			copy(grown, data)
			data = grown
		}
		m, err := rd.Read(data[len(data):min(int64(cap(data)), n)])
		data = data[:len(data)+m]
		switch {
		case err == io.EOF && int64(len(data)) == n:
			return data, nil
		case err == io.EOF:
			return nil, fmt.Errorf("got %d of the %d bytes announced", len(data), n)
		case err != nil:
			return nil, err
		}
	}
	var one [1]byte
	if m, err := rd.Read(one[:]); m > 0 || (err != nil && err != io.EOF) {
		if err == nil {
			err = fmt.Errorf("more than the %d bytes announced", n)
		}
		return nil, err
	}
	return data, nil
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64, what string) ([]byte, *refusal) {
	// A body announced larger than the limit is refused unread. One of
	// known length is read into a buffer sized for it, but at most
	// readBodyPrealloc up front: reading through io.ReadAll's doubling cost
	// twice the limit per oversized request, while allocating the whole
	// announced length before a byte arrives would let one agent hold
	// hundreds of MiB with streams that send nothing.
	if r.ContentLength > limit {
		return nil, refuse(http.StatusRequestEntityTooLarge, CodeTooLarge,
			"%s is larger than the limit of %d bytes: send smaller ones", what, limit)
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	var data []byte
	var err error
	if r.ContentLength >= 0 {
		data, err = readKnown(rd, r.ContentLength)
	} else {
		data, err = io.ReadAll(rd)
	}
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return nil, refuse(http.StatusRequestEntityTooLarge, CodeTooLarge,
				"%s is larger than the limit of %d bytes: send smaller ones", what, limit)
		}
		return nil, refuse(http.StatusBadRequest, CodeBadRequest, "reading the %s: %v: send it again", what, err)
	}
	return data, nil
}

// logWriter remembers the status and size of a response for the access log.
type logWriter struct {
	http.ResponseWriter
	status      int
	n           int64
	wroteHeader bool
}

func (w *logWriter) WriteHeader(status int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = status, true
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.wroteHeader = true
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection (MaxBytesReader
// uses it to close the connection after an oversized body).
func (w *logWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingReader counts the request body bytes read, for the access log.
type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// accessLevel logs server-side failures louder than refusals of bad input,
// which are the agent's problem and already answered.
func accessLevel(status int) slog.Level {
	if status >= http.StatusInternalServerError {
		return slog.LevelWarn
	}
	return slog.LevelInfo
}
