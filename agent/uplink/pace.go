package uplink

import (
	"bytes"
	"context"
	"io"
	"sync"
	"time"
)

// paceChunk is the most a paced body hands the transport at once, so the
// cap smooths traffic rather than letting bursts of a whole batch through.
const paceChunk = 16 << 10

// pacer caps the upload bandwidth of all requests together. Each chunk
// reserves its share of the line: chunk k may leave once the chunks before
// it had time to drain at rate. Unused time is not saved up, so there is no
// burst after a quiet spell.
//
// (golang.org/x/time/rate would do; this is the one formula we need, and it
// keeps a dependency out.)
type pacer struct {
	rate float64 // bytes per second
	mu   sync.Mutex
	next time.Time // when the line is free again
}

// duration is how long n bytes take at the cap.
func (p *pacer) duration(n int) time.Duration {
	return time.Duration(float64(n) / p.rate * float64(time.Second))
}

// wait blocks until n more bytes may be sent.
func (p *pacer) wait(ctx context.Context, n int) error {
	p.mu.Lock()
	now := time.Now()
	start := p.next
	if start.Before(now) {
		start = now
	}
	p.next = start.Add(p.duration(n))
	p.mu.Unlock()
	d := start.Sub(now)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reader returns a request body that sends body at the cap.
func (p *pacer) reader(ctx context.Context, body []byte) io.ReadCloser {
	return &pacedReader{ctx: ctx, p: p, r: bytes.NewReader(body)}
}

// pacedReader is a request body read at the pacer's rate. It holds the
// request's context because io.Reader has no other way to be cancelled.
type pacedReader struct {
	ctx context.Context
	p   *pacer
	r   *bytes.Reader
}

func (r *pacedReader) Read(b []byte) (int, error) {
	n := min(len(b), paceChunk, r.r.Len())
	if n == 0 {
		return r.r.Read(b)
	}
	if err := r.p.wait(r.ctx, n); err != nil {
		return 0, err
	}
	return r.r.Read(b[:n])
}

func (r *pacedReader) Close() error { return nil }
