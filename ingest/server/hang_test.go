package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// hangStore is a blob store that, while hang says so for a name, neither
// answers nor fails: the call blocks until its context ends, as a store
// behind a dead network path does (no RST, no timeout of its own).
type hangStore struct {
	blob.Store
	mu   sync.Mutex
	hang func(name string) bool // nil: no hang
	// blocked counts calls blocked now; hung counts every call that hung.
	blocked, hung atomic.Int64
}

func (h *hangStore) setHang(f func(name string) bool) {
	h.mu.Lock()
	h.hang = f
	h.mu.Unlock()
}

// wait blocks until ctx ends when name hangs, and says whether it did.
// A call that does not hang gets ctx without its deadline: the test's
// StoreTimeout is short so that hung calls end quickly, and a directory
// store that syncs every write can take longer than that on a loaded
// machine (it failed so here: "writing batch stored marker" answered 503
// before the hang began). Only the hang is the store's slowness here.
func (h *hangStore) wait(ctx context.Context, name string) (context.Context, error) {
	h.mu.Lock()
	f := h.hang
	h.mu.Unlock()
	if f == nil || !f(name) {
		return context.WithoutCancel(ctx), nil
	}
	h.blocked.Add(1)
	h.hung.Add(1)
	defer h.blocked.Add(-1)
	<-ctx.Done()
	return nil, fmt.Errorf("blob store call for %s never answered: %w", name, ctx.Err())
}

func (h *hangStore) Put(ctx context.Context, name string, data []byte) (bool, error) {
	ctx, err := h.wait(ctx, name)
	if err != nil {
		return false, err
	}
	return h.Store.Put(ctx, name, data)
}

func (h *hangStore) Get(ctx context.Context, name string) ([]byte, error) {
	ctx, err := h.wait(ctx, name)
	if err != nil {
		return nil, err
	}
	return h.Store.Get(ctx, name)
}

func (h *hangStore) List(ctx context.Context, prefix string) ([]string, error) {
	ctx, err := h.wait(ctx, prefix)
	if err != nil {
		return nil, err
	}
	return h.Store.List(ctx, prefix)
}

// hangWait is how long an agent in the hang test waits for an answer
// before it gives up and keeps the batch for later, as the uplink's
// per-upload timeout does. It only bounds a server that never answers
// (its StoreTimeout broken): a working one answers 503 after StoreTimeout,
// and however slow the machine, the test never waits for hangWait.
const hangWait = 30 * time.Second

// TestStoreHangThenRecover: the blob store hangs for a while (every call,
// the batch's claim, or only the batch blob after its claim was written:
// the table is stored already and its write answers), while three agents
// upload. No upload during the hang may be acknowledged or refused as the
// agent's fault: with the server's StoreTimeout shorter than the agent's
// patience, each gets 503 with Retry-After, and every store call held for
// it is let go. Once the store answers again the agents resend what was
// not acknowledged, and every sample is in the archive exactly once.
func TestStoreHangThenRecover(t *testing.T) {
	tests := []struct {
		name string
		hang func(name string) bool
	}{
		{"every call hangs", func(string) bool { return true }},
		{"the batch claim hangs", func(n string) bool { return strings.Contains(n, "/claims/") }},
		{"the batch blob hangs after its claim is written", func(n string) bool {
			return strings.HasSuffix(n, ".sgb") && !strings.Contains(n, "/claims/")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs := &hangStore{}
			e := newEnv(t, func(c *Config, s *blob.Store) {
				c.StoreTimeout = 250 * time.Millisecond // far inside hangWait; calls that do not hang are not bound by it (see wait)
				hs.Store = *s
				*s = hs
			})
			agents := []string{"a", "b", "c"}
			clients := map[string]*http.Client{}
			for _, a := range agents {
				clients[a] = e.client(a)
			}
			// Each agent's batches, by seq; times differ per seq so every
			// sample is distinct per agent.
			const before, during = 2, 3
			sent := map[string][]batch.Encoded{}
			for _, a := range agents {
				for seq := 1; seq <= before+during; seq++ {
					sent[a] = append(sent[a], e.encode(a, uint64(seq), samples(20, now.Add(-time.Duration(seq)*time.Hour))))
				}
			}
			for _, a := range agents {
				for seq := 1; seq <= before; seq++ {
					wantReply(t, e.upload(a, sent[a][seq-1]), http.StatusOK, "")
				}
			}

			hs.setHang(tt.hang)
			type outcome struct {
				agent string
				seq   int
				what  string // "503", "no answer", or what went wrong
			}
			out := make(chan outcome, len(agents)*during)
			var wg sync.WaitGroup
			for _, a := range agents {
				for seq := before + 1; seq <= before+during; seq++ {
					wg.Go(func() {
						out <- outcome{a, seq, hungUpload(e, clients[a], sent[a][seq-1])}
					})
				}
			}
			wg.Wait()
			close(out)
			answers := map[string]int{}
			for o := range out {
				answers[o.what]++
				if o.what != "503" {
					t.Errorf("agent %s seq %d during the hang: %s", o.agent, o.seq, o.what)
				}
			}
			t.Logf("uploads during the hang: %v; store calls that hung: %d", answers, hs.hung.Load())
			if hs.hung.Load() == 0 {
				t.Fatal("no store call hung: the test proves nothing")
			}
			// The agents gave up: nothing of theirs may stay blocked in the
			// store, or a long hang would pile up goroutines and memory.
			for deadline := time.Now().Add(60 * time.Second); hs.blocked.Load() > 0; {
				if time.Now().After(deadline) {
					t.Fatalf("%d store calls still blocked after every agent gave up", hs.blocked.Load())
				}
				time.Sleep(10 * time.Millisecond)
			}

			hs.setHang(nil)
			for _, a := range agents {
				for seq := before + 1; seq <= before+during; seq++ {
					wantReply(t, e.upload(a, sent[a][seq-1]), http.StatusOK, "")
				}
			}
			archivedOnce(t, e, agents, sent)
		})
	}
}

// hungUpload sends a batch's table and the batch as the agent does, giving
// up after hangWait, and says what came back: "503" (with Retry-After),
// "no answer", or what went wrong.
func hungUpload(e *env, c *http.Client, enc batch.Encoded) string {
	for _, req := range []struct {
		method, path string
		body         []byte
	}{
		{http.MethodPut, "/v1/tables/" + enc.TableHash.String(), enc.Table},
		{http.MethodPost, "/v1/batches", enc.Data},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), hangWait)
		r, err := http.NewRequestWithContext(ctx, req.method, e.base+req.path, bytes.NewReader(req.body))
		if err != nil {
			cancel()
			return err.Error()
		}
		resp, err := c.Do(r)
		cancel()
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return "no answer"
		case err != nil:
			return fmt.Sprintf("%s %s: %v", req.method, req.path, err)
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
			return "503"
		case req.method == http.MethodPut && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated):
			continue // the table was there already and the store answered for it
		default:
			return fmt.Sprintf("%s %s: %d", req.method, req.path, resp.StatusCode)
		}
	}
	return "acknowledged while the store hung"
}

// archivedOnce checks that the archive holds exactly one batch blob per
// (agent, seq) sent, and in them every sample sent exactly once.
func archivedOnce(t *testing.T, e *env, agents []string, sent map[string][]batch.Encoded) {
	t.Helper()
	ctx := context.Background()
	tables := batch.Tables{}
	var batches []string
	for _, n := range e.list() {
		switch {
		case strings.HasSuffix(n, ".sgt"):
			data, err := e.dir.Get(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			ids, h, err := batch.DecodePointTable(data)
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			tables[h] = ids
		case strings.HasSuffix(n, ".sgb") && !strings.Contains(n, "/claims/"):
			batches = append(batches, n)
		}
	}
	type key struct {
		agent string
		point uint64
		t     int64
	}
	seen := map[key]int{}
	perSeq := map[string]int{}
	for _, n := range batches {
		data, err := e.dir.Get(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		b, err := batch.Decode(data, tables, batch.Limits{})
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		perSeq[fmt.Sprintf("%s/%d", b.AgentID, b.Seq)]++
		for _, s := range b.Samples {
			seen[key{b.AgentID, s.PointID, s.Time}]++
		}
	}
	want := 0
	for _, a := range agents {
		id := e.agents[a].Identity.Agent
		for i, enc := range sent[a] {
			if n := perSeq[fmt.Sprintf("%s/%d", id, i+1)]; n != 1 {
				t.Errorf("agent %s seq %d is in %d batch blobs, want 1", a, i+1, n)
			}
			b, err := batch.Decode(enc.Data, batch.Tables{enc.TableHash: tablesOf(t, enc)}, batch.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range b.Samples {
				want++
				if n := seen[key{id, s.PointID, s.Time}]; n != 1 {
					t.Errorf("agent %s point %d at %d is archived %d times, want once", a, s.PointID, s.Time, n)
				}
			}
		}
	}
	if len(seen) != want {
		t.Errorf("the archive holds %d distinct samples, %d were sent", len(seen), want)
	}
}

// tablesOf decodes an encoded batch's own point table.
func tablesOf(t *testing.T, enc batch.Encoded) []uint64 {
	t.Helper()
	ids, _, err := batch.DecodePointTable(enc.Table)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}
