package uplink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// Content types of the protocol.
const (
	BatchContentType = "application/vnd.sightglass.batch"
	TableContentType = "application/octet-stream"
	// SeqHeader carries the batch's sequence number, for the ingest's logs.
	SeqHeader = "Sightglass-Seq"
	// SentAtHeader carries the time of each request in Unix milliseconds.
	SentAtHeader = "Sightglass-Sent-At"
)

// codeBadClock is the 400 error code saying this box's clock is far off
// the ingest's.
const codeBadClock = "bad_clock"

// codeUnknownTable is the 422 error code asking for a point table.
const codeUnknownTable = "unknown_point_table"

// maxReplyBytes bounds how much of an answer is read: answers are small JSON.
const maxReplyBytes = 64 << 10

// verdict is what to do with a batch after an attempt.
type verdict int

const (
	retry     verdict = iota // transient: try again after the backoff
	stored                   // the ingest has it: ack
	rejected                 // refused for good: quarantine
	needTable                // the ingest lacks the point table: upload it, retry
)

// result is the outcome of an attempt.
type result struct {
	verdict       verdict
	err           error  // why the batch was not stored
	kind          string // err's kind for logging only changes; "" for failureKind(err)
	retryAfter    time.Duration
	hasRetryAfter bool
	duplicate     bool // the ingest already had the batch
	tableBytes    int  // size of a point table uploaded on the way
}

// reply is the JSON the ingest answers with, success or error.
type reply struct {
	Status string `json:"status"`
	Seq    uint64 `json:"seq"`
	Error  string `json:"error"`
	Code   string `json:"code"`
}

// classify maps an HTTP answer to a verdict.
//
// Besides 408, 429 and 5xx, answers that say the endpoint or the agent's
// identity is wrong rather than the batch (401, 403, 404, 405, 407, 421) are
// retried too: quarantining every batch because of a misrouted URL, a proxy
// or a certificate being re-issued would throw away good data.
func classify(status int, code string) verdict {
	switch {
	case status >= 200 && status < 300:
		return stored
	case status == http.StatusUnprocessableEntity && code == codeUnknownTable:
		return needTable
	case status == http.StatusBadRequest && code == codeBadClock:
		// Our clock is off, not the batch: it goes once time sync is fixed.
		return retry
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests,
		status == http.StatusUnauthorized, status == http.StatusForbidden,
		status == http.StatusNotFound, status == http.StatusMethodNotAllowed,
		status == http.StatusProxyAuthRequired, status == http.StatusMisdirectedRequest:
		return retry
	case status >= 400 && status < 500:
		return rejected
	default: // 1xx, 3xx (redirects are not followed), 5xx
		return retry
	}
}

// attempt sends a batch once, uploading its point table first if the
// ingest asks for it.
func (u *Uplink) attempt(ctx context.Context, b Batch) result {
	res := u.postBatch(ctx, b)
	if res.verdict != needTable {
		return res
	}
	table, err := u.src.Table(b.TableHash)
	if err != nil {
		err = fmt.Errorf("reading point table %s of batch %d from the buffer: %w", b.TableHash, b.Seq, err)
		if errors.Is(err, batch.ErrUnknownTable) {
			return result{verdict: rejected, err: err}
		}
		return result{verdict: retry, err: err, kind: "reading a point table"}
	}
	if res := u.putTable(ctx, b.TableHash, table); res.verdict != stored {
		return res
	}
	res = u.postBatch(ctx, b)
	res.tableBytes = len(table)
	if res.verdict == needTable {
		res.verdict = retry
		res.err = fmt.Errorf("ingest still reports point table %s unknown after storing it: %w", b.TableHash, res.err)
		res.kind = "point table unknown after upload"
	}
	return res
}

// postBatch sends POST /v1/batches.
func (u *Uplink) postBatch(ctx context.Context, b Batch) result {
	ans, err := u.exchange(ctx, http.MethodPost, u.batchURL, BatchContentType, b.Data, func(h http.Header) {
		h.Set(SeqHeader, strconv.FormatUint(b.Seq, 10))
	})
	if err != nil {
		return result{verdict: retry, err: err}
	}
	res := ans.result("POST /v1/batches")
	res.duplicate = ans.reply.Status == "duplicate"
	if res.verdict == stored && (ans.reply.Seq != b.Seq || (ans.reply.Status != "stored" && ans.reply.Status != "duplicate")) {
		// A 2xx that is not the ingest's answer to this batch (a proxy's
		// page, an empty body, another batch's seq) must not delete it.
		return result{verdict: retry, kind: "answer not from the ingest",
			err: fmt.Errorf("POST /v1/batches answered %d with status %q for seq %d, not stored or duplicate for seq %d: is something between the agent and the ingest answering for it?", ans.status, ans.reply.Status, ans.reply.Seq, b.Seq)}
	}
	return res
}

// putTable sends PUT /v1/tables/{hash}. A refused table makes every batch
// that needs it unstorable, so the batch is rejected with the reason.
func (u *Uplink) putTable(ctx context.Context, h batch.TableHash, table []byte) result {
	target := u.base.JoinPath("v1", "tables", h.String()).String()
	ans, err := u.exchange(ctx, http.MethodPut, target, TableContentType, table, nil)
	if err != nil {
		return result{verdict: retry, err: err}
	}
	res := ans.result("PUT /v1/tables/" + h.String())
	if res.verdict == needTable { // makes no sense for a table; do not loop on it
		res.verdict = rejected
	}
	return res
}

// answer is an HTTP answer, its body read and closed.
type answer struct {
	status     int
	statusText string
	header     http.Header
	reply      reply
	text       string // the body when it is not JSON
	body       []byte
}

// result turns an answer to op into a result.
func (a answer) result(op string) result {
	res := result{verdict: classify(a.status, a.reply.Code)}
	if res.verdict == stored {
		return res
	}
	detail := a.reply.Error
	if detail == "" {
		detail = a.text
	}
	if a.reply.Code != "" {
		detail += " (code " + a.reply.Code + ")"
	}
	res.err = fmt.Errorf("%s: ingest answered %s: %s", op, a.statusText, strings.TrimSpace(detail))
	res.kind = op + " " + a.statusText + " " + a.reply.Code
	if ra, ok := parseRetryAfter(a.header.Get("Retry-After"), time.Now()); ok && res.verdict == retry {
		res.retryAfter, res.hasRetryAfter = ra, true
	}
	return res
}

// exchange sends one request with its own timeout and reads the answer.
func (u *Uplink) exchange(ctx context.Context, method, target, contentType string, body []byte, header func(http.Header)) (answer, error) {
	timeout := u.cfg.Timeout
	if u.pace != nil {
		timeout += u.pace.duration(len(body))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	if err != nil {
		return answer{}, fmt.Errorf("building %s %s: %w", method, target, err)
	}
	if u.pace != nil {
		req.Body = u.pace.reader(ctx, body)
		req.GetBody = func() (io.ReadCloser, error) { return u.pace.reader(ctx, body), nil }
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("User-Agent", "sightglass-agent")
	// The time of this attempt, not of the batch: the ingest refuses a
	// request from a clock far off its own, while old backlog is normal.
	req.Header.Set(SentAtHeader, strconv.FormatInt(time.Now().UnixMilli(), 10))
	if header != nil {
		header(req.Header)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		// In TLS 1.3 a refused client certificate shows only after the
		// handshake, and HTTP/2 then reports just that the connection
		// could not be established: say what it most likely means.
		if strings.Contains(err.Error(), "client conn could not be established") {
			err = fmt.Errorf("%w (the ingest closed the new connection; it may have refused the agent's certificate: check the ingest's log)", err)
		}
		// The ingest can say why: ask it (at most every few minutes).
		err = u.probe.explain(ctx, err)
		return answer{}, err // *url.Error names the method and URL
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return answer{}, fmt.Errorf("reading the ingest's answer to %s %s: %w", method, target, err)
	}
	a := answer{status: resp.StatusCode, statusText: resp.Status, header: resp.Header, body: data}
	if json.Unmarshal(data, &a.reply) != nil {
		a.reply = reply{}
		a.text = string(data[:min(len(data), 200)])
	}
	return a, nil
}
