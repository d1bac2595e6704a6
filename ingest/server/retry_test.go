package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// failOnce is a store whose first Put of a name ending in suffix fails, as
// if the ingest had died between two of storeBatch's writes.
type failOnce struct {
	blob.Store
	suffix string
	mu     sync.Mutex
	failed bool
}

func (f *failOnce) Put(ctx context.Context, name string, data []byte) (bool, error) {
	f.mu.Lock()
	fail := f.suffix != "" && !f.failed && strings.HasSuffix(name, f.suffix)
	f.failed = f.failed || fail
	f.mu.Unlock()
	if fail {
		return false, errors.New("connection reset")
	}
	return f.Store.Put(ctx, name, data)
}

// archivedSamples counts the samples in every batch blob and day part of
// the archive, the way a reader of the archive sees them.
func (e *env) archivedSamples() int {
	e.t.Helper()
	ctx := context.Background()
	tables := pointtable.New(e.dir, nil)
	n := 0
	for _, name := range e.list() {
		if !strings.HasSuffix(name, ".sgb") {
			continue
		}
		data, err := e.dir.Get(ctx, name)
		if err != nil {
			e.t.Fatal(err)
		}
		f := strings.SplitN(name, "/", 3)
		b, err := batch.Decode(data, tables.Resolver(ctx, f[0], f[1]), batch.Limits{})
		if err != nil {
			e.t.Fatalf("decoding %s: %v", name, err)
		}
		n += len(b.Samples)
	}
	return n
}

// TestRetryStoresBatchOnce: however an earlier attempt ended — stopped
// after the claim, stopped after the batch blob, or stored and then
// compacted (the batch blob deleted, its samples in a day part) — a retry
// of the same batch leaves its samples in the archive exactly once.
func TestRetryStoresBatchOnce(t *testing.T) {
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		failSuffix string // the first attempt's write that fails
		compact    bool   // compact the day between the attempts
		want       string // the retry's status
	}{
		{"stopped before the batch blob", ".sgb", false, StatusStored},
		{"stopped before the stored marker", ".stored", false, StatusDuplicate},
		{"stored, then compacted", "", true, StatusDuplicate},
		// The marker lost with the first attempt's answer: compaction
		// writes it before it deletes the batch blob.
		{"stopped before the stored marker, then compacted", ".stored", true, StatusDuplicate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(_ *Config, s *blob.Store) { *s = &failOnce{Store: *s, suffix: tt.failSuffix} })
			enc := e.encode("a", 1, samples(10, now.Add(-time.Hour)))
			first := e.upload("a", enc)
			if tt.failSuffix != "" {
				wantReply(t, first, http.StatusServiceUnavailable, CodeStoreUnavailable)
			} else {
				wantReply(t, first, http.StatusOK, "")
			}
			if tt.compact {
				res, err := compact.New(e.dir, compact.Options{}).Day(context.Background(), tenant, "s1", day)
				if err != nil {
					t.Fatal(err)
				}
				if res.Samples == 0 {
					t.Fatalf("compaction merged nothing: %+v", res)
				}
				for _, n := range e.list() {
					if strings.HasPrefix(n, compact.DayPrefix(tenant, "s1", day)) {
						t.Fatalf("compaction left the batch blob %s", n)
					}
				}
			}
			r := e.do(e.client("a"), http.MethodPost, "/v1/batches", enc.Data)
			wantReply(t, r, http.StatusOK, "")
			if r.body["status"] != tt.want {
				t.Errorf("retry answered %v, want %s", r.body["status"], tt.want)
			}
			if n := e.archivedSamples(); n != 10 {
				t.Errorf("the archive holds %d samples, want the batch's 10 once", n)
			}
			id := e.agents["a"].Identity
			if _, err := e.dir.Get(context.Background(), storedName(blob.ClaimName(tenant, "s1", id.Agent, 1))); err != nil {
				t.Errorf("no stored marker after the retry: %v", err)
			}
		})
	}
}
