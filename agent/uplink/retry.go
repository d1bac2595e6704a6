package uplink

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// backoff returns the wait before the next attempt after n consecutive
// failures (n >= 1): a random duration in [0, min(max, base·2^(n-1))], "full
// jitter", so that many agents cut off by the same outage do not come back in
// step. rnd(k) returns a number in [0, k).
func backoff(n int, base, max time.Duration, rnd func(int64) int64) time.Duration {
	ceil := max
	if n < 1 {
		n = 1
	}
	if shift := n - 1; shift < 63 {
		// Shifting back checks that base·2^shift did not overflow.
		if c := base << shift; c>>shift == base && c < max {
			ceil = c
		}
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rnd(int64(ceil) + 1))
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date. ok is
// false when there is none or it cannot be read.
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil {
		// Clamped before multiplying so an absurd value cannot overflow;
		// the caller caps it far lower anyway.
		const maxSecs = 1 << 31
		return time.Duration(min(secs, maxSecs)) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// deliver uploads one batch until the ingest stores or refuses it, or ctx is
// done (the batch then stays in the Source).
func (u *Uplink) deliver(ctx context.Context, b Batch) {
	for {
		gen, err := u.waitTurn(ctx)
		if err != nil {
			return
		}
		res := u.attempt(ctx, b)
		if ctx.Err() != nil && res.verdict != stored && res.verdict != rejected {
			return // cancelled: not a failure of the ingest
		}
		switch res.verdict {
		case stored:
			u.succeeded(b, res)
			return
		case rejected:
			u.rejected(b, res)
			return
		default:
			u.failed(b, gen, res)
		}
	}
}

// waitTurn blocks until the shared backoff allows an attempt and returns the
// failure generation the attempt belongs to.
func (u *Uplink) waitTurn(ctx context.Context) (uint64, error) {
	for {
		u.mu.Lock()
		gen, wait, wake := u.gen, time.Until(u.retryAt), u.recovered
		u.mu.Unlock()
		if wait <= 0 {
			return gen, ctx.Err()
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-wake: // another upload got through: so may this one
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		}
		t.Stop()
	}
}

// failureKind groups transport errors whose text differs in details that
// do not matter to an operator (ephemeral ports, EOF or reset), so that a
// flapping outage is logged once, and a change of cause again.
func failureKind(err error) string {
	var certErr *tls.CertificateVerificationError
	var alert tls.AlertError
	var netErr net.Error
	switch {
	case errors.As(err, &certErr):
		return "server certificate not trusted"
	case errors.As(err, &alert):
		return "tls alert " + alert.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	default:
		return "network"
	}
}

// failed records a failed attempt. Uploads in flight together usually fail
// together (the ingest is down); only the first failure of a round (same
// generation) counts and sets the backoff, the others just wait for it —
// except that a Retry-After is always honoured.
func (u *Uplink) failed(b Batch, gen uint64, res result) {
	now := time.Now()
	msg := res.err.Error()
	u.mu.Lock()
	if gen < u.okGen {
		// The attempt began before the last success: the outage it met is
		// over, and logging it after "recovered" would say otherwise. The
		// batch is simply tried again.
		u.mu.Unlock()
		return
	}
	u.stats.LastError = msg
	u.stats.LastErrorAt = now
	var wait time.Duration
	if gen == u.gen {
		u.gen++
		u.stats.ConsecutiveFailures++
		wait = backoff(u.stats.ConsecutiveFailures, u.cfg.BackoffBase, u.cfg.BackoffMax, u.rnd)
	}
	if res.hasRetryAfter {
		wait = min(res.retryAfter, u.cfg.RetryAfterMax)
	}
	if at := now.Add(wait); at.After(u.retryAt) {
		u.retryAt = at
	}
	wait = u.retryAt.Sub(now)
	failures := u.stats.ConsecutiveFailures
	kind := res.kind
	if kind == "" {
		kind = failureKind(res.err)
	}
	changed := kind != u.logged
	u.logged = kind
	u.mu.Unlock()
	if changed {
		u.log.Warn("upload failed; retrying", "batch_seq", b.Seq, "err", res.err,
			"failures", failures, "retry_in", wait.Round(time.Millisecond))
	}
}

// succeeded acks a stored batch and ends any backoff.
func (u *Uplink) succeeded(b Batch, res result) {
	u.mu.Lock()
	failures := u.stats.ConsecutiveFailures
	u.stats.ConsecutiveFailures = 0
	u.retryAt = time.Time{}
	u.logged = ""
	u.gen++
	u.okGen = u.gen
	close(u.recovered)
	u.recovered = make(chan struct{})
	u.stats.LastSuccess = time.Now()
	u.stats.Batches++
	u.stats.Samples += uint64(max(b.Samples, 0))
	u.stats.Bytes += uint64(len(b.Data) + res.tableBytes)
	if res.tableBytes > 0 {
		u.stats.Tables++
	}
	if res.duplicate {
		u.stats.Duplicates++
	}
	u.mu.Unlock()
	if failures > 0 {
		u.log.Info("uplink recovered after "+strconv.Itoa(failures)+" failures", "failures", failures)
	}
	if err := u.src.Ack(b.Seq); err != nil {
		// The batch stays in the buffer and goes again after a restart;
		// the ingest answers "duplicate", so nothing is stored twice.
		u.log.Error("acknowledging a stored batch in the buffer failed; it will be sent again",
			"batch_seq", b.Seq, "err", err)
	}
}

// rejected quarantines a batch the ingest refused for good.
func (u *Uplink) rejected(b Batch, res result) {
	reason := res.err.Error()
	u.mu.Lock()
	u.stats.Rejected++
	u.stats.LastError = reason
	u.stats.LastErrorAt = time.Now()
	u.mu.Unlock()
	u.log.Error("ingest refused a batch for good; quarantining it", "batch_seq", b.Seq,
		"samples", b.Samples, "err", res.err)
	if err := u.src.Reject(b.Seq, reason); err != nil {
		u.log.Error("quarantining a refused batch in the buffer failed; it will be sent again",
			"batch_seq", b.Seq, "err", err)
	}
}
