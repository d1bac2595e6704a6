package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// Batch statuses of a 200 answer to POST /v1/batches.
const (
	StatusStored    = "stored"    // archived now
	StatusDuplicate = "duplicate" // these very bytes were archived before
)

// batchReply is the JSON of a 200 answer to POST /v1/batches.
type batchReply struct {
	Status string `json:"status"`
	Seq    uint64 `json:"seq"`
}

// handleBatch is POST /v1/batches. Nothing is written to the store until
// the batch has decoded in full and passed every check, so a refused batch
// leaves no trace in the archive.
func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request, id pki.Identity) {
	body, rf := readBody(w, r, s.cfg.MaxBatchBytes, "batch")
	if rf == nil {
		// The archive's calls (tables the batch names, its claim, the
		// blob) share one deadline: a hanging store answers 503.
		sctx, cancel := context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
		defer cancel()
		var b *batch.Batch
		b, rf = s.checkBatch(sctx, body, id)
		if rf == nil {
			var status string
			status, rf = s.storeBatch(sctx, body, b, id)
			if rf == nil {
				// A duplicate too: if the first attempt stopped between
				// the archive and the Observer, the retry heals it; the
				// Observer ignores a batch it has seen.
				if rf = s.observe(r.Context(), id, b); rf == nil {
					// Counted as answered: a batch observe turned into a
					// 503 is counted once, as refused, and its retry as
					// the duplicate it is answered as.
					s.count(func(st *Stats) {
						if status == StatusStored {
							st.BatchesStored++
							st.Samples += uint64(len(b.Samples))
							st.Bytes += uint64(len(body))
						} else {
							st.BatchesDuplicate++
						}
					})
					writeJSON(w, http.StatusOK, batchReply{Status: status, Seq: b.Seq})
					return
				}
			}
		}
	}
	s.count(func(st *Stats) { st.Refused[rf.code]++ })
	switch rf.code {
	case CodeUnknownTable, CodeStoreUnavailable, CodeInternal:
		// The protocol's normal flow, or our own trouble: not the agent's doing.
	default:
		s.auditRefusal(r.Context(), id.Agent, "batch_refused", rf)
	}
	writeRefusal(w, rf)
}

// checkBatch decodes body and checks it against the agent's identity and
// the time window.
func (s *Server) checkBatch(ctx context.Context, body []byte, id pki.Identity) (*batch.Batch, *refusal) {
	var look tableLookup
	b, err := batch.Decode(body, s.resolver(ctx, id, &look), s.cfg.Limits)
	if err != nil {
		switch {
		case look.storeErr != nil:
			s.log.Warn("reading point table failed", "tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "err", look.storeErr)
			return nil, refuse(http.StatusServiceUnavailable, CodeStoreUnavailable,
				"the archive cannot be read right now: retry in %d seconds", retryAfterStoreSeconds)
		case errors.Is(err, batch.ErrUnknownTable):
			rf := refuse(http.StatusUnprocessableEntity, CodeUnknownTable,
				"the batch refers to point table %s, which this site has not uploaded: PUT it to /v1/tables/%s, then send the batch again",
				look.missing, look.missing)
			rf.table = look.missing.String()
			return nil, rf
		case errors.Is(err, batch.ErrTooLarge):
			return nil, refuse(http.StatusRequestEntityTooLarge, CodeTooLarge, "%v: send smaller batches", err)
		case errors.Is(err, batch.ErrVersion):
			return nil, refuse(http.StatusBadRequest, CodeBadVersion, "%v: upgrade the ingest or downgrade the agent", err)
		default:
			return nil, refuse(http.StatusBadRequest, CodeBadBatch, "%v: the batch is damaged; do not resend these bytes", err)
		}
	}
	if b.AgentID != id.Agent || b.Site != id.Site {
		return nil, refuse(http.StatusForbidden, CodeIdentityMismatch,
			"the batch is from agent %q of site %q but your certificate is agent %q of site %q: an agent sends only its own batches",
			b.AgentID, b.Site, id.Agent, id.Site)
	}
	now := s.cfg.Now()
	lo, hi := now.Add(-s.cfg.MaxAge), now.Add(s.cfg.MaxSkew)
	first, last := timeRange(b)
	if first.Before(lo) || last.After(hi) {
		return nil, refuse(http.StatusBadRequest, CodeBadTime,
			"sample times %s to %s are outside the accepted window %s to %s (ingest clock %s): check the agent's clock",
			first.UTC().Format(time.RFC3339Nano), last.UTC().Format(time.RFC3339Nano),
			lo.UTC().Format(time.RFC3339), hi.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return b, nil
}

// timeRange is the earliest and latest sample time, from the samples
// themselves rather than the header; a batch of no samples (health only)
// is placed at its SentAt.
func timeRange(b *batch.Batch) (first, last time.Time) {
	if len(b.Samples) == 0 {
		t := time.UnixMilli(b.SentAt)
		return t, t
	}
	lo, hi := b.Samples[0].Time, b.Samples[0].Time
	for _, smp := range b.Samples[1:] {
		lo, hi = min(lo, smp.Time), max(hi, smp.Time)
	}
	return time.UnixMilli(lo), time.UnixMilli(hi)
}

// storeBatch archives a checked batch idempotently, in three create-if-
// absent writes:
//
//  1. a claim named by (agent, seq) holding the body's hash and the batch
//     blob's name, so a second upload under the same seq is recognised
//     whatever its time range: the same bytes are a duplicate, different
//     bytes a conflict;
//  2. the batch blob;
//  3. a stored marker beside the claim (storedName), which says that step
//     2 completed.
//
// A retry whose claim matches is a duplicate at once when the marker is
// there: the batch is archived, maybe by now inside a compacted day part
// (compaction deletes the batch blob but keeps claims and markers), and
// writing the blob again would put its samples in the archive twice.
// Without the marker an earlier attempt stopped before it was written, so
// the blob (which may be missing) and the marker are written now.
func (s *Server) storeBatch(ctx context.Context, body []byte, b *batch.Batch, id pki.Identity) (string, *refusal) {
	sum := sha256.Sum256(body)
	first, _ := timeRange(b)
	name := blob.BatchName(id.Tenant, id.Site, id.Agent, b.Seq, first)
	claimName := blob.ClaimName(id.Tenant, id.Site, id.Agent, b.Seq)
	claim := []byte(hex.EncodeToString(sum[:]) + " " + name + "\n")
	log := s.log.With("tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "batch_seq", b.Seq)

	claimed, err := s.store.Put(ctx, claimName, claim)
	switch {
	case err == nil && claimed:
	case err == nil:
		// These very bytes claimed this seq before: a retry.
		if status, rf := s.retried(ctx, log, claimName); status != "" || rf != nil {
			return status, rf
		}
	case errors.Is(err, blob.ErrConflict):
		old, gerr := s.store.Get(ctx, claimName)
		if gerr != nil {
			return "", s.storeFailed(log, "reading batch claim", gerr)
		}
		oldSum, oldName, ok := parseClaim(old)
		if !ok {
			log.Error("batch claim is damaged", "claim", claimName)
			return "", refuse(http.StatusInternalServerError, CodeInternal,
				"the archive's record of batch %d is damaged: an operator must repair %s", b.Seq, claimName)
		}
		if !bytes.Equal(oldSum, sum[:]) {
			log.Warn("batch conflict: a different batch was already stored under this seq",
				"stored_sha256", hex.EncodeToString(oldSum), "new_sha256", hex.EncodeToString(sum[:]), "blob", oldName)
			return "", refuse(http.StatusConflict, CodeConflict,
				"a different batch was already stored as seq %d of agent %s: the agent's buffer and the archive disagree; do not resend, call an operator",
				b.Seq, id.Agent)
		}
		// The same bytes: keep the name recorded first, so a change in
		// naming between versions cannot store the batch twice.
		name = oldName
		if status, rf := s.retried(ctx, log, claimName); status != "" || rf != nil {
			return status, rf
		}
	default:
		return "", s.storeFailed(log, "writing batch claim", err)
	}

	created, err := s.store.Put(ctx, name, body)
	switch {
	case err == nil:
	case errors.Is(err, blob.ErrConflict):
		// The claim matched, so the blob under its name should too.
		log.Error("batch blob differs from its claim", "blob", name)
		return "", refuse(http.StatusConflict, CodeConflict,
			"a different batch is stored under %s although this one was claimed: do not resend, call an operator", name)
	default:
		return "", s.storeFailed(log, "writing batch", err)
	}
	// A marker is a marker whatever it holds: ErrConflict means one is
	// there already.
	if _, err := s.store.Put(ctx, storedName(claimName), []byte(name+"\n")); err != nil && !errors.Is(err, blob.ErrConflict) {
		return "", s.storeFailed(log, "writing batch stored marker", err)
	}
	if !created {
		return StatusDuplicate, nil
	}
	log.Debug("batch stored", "blob", name, "samples", len(b.Samples), "bytes", len(body))
	return StatusStored, nil
}

// retried answers a retry of the batch claimed under claimName:
// StatusDuplicate when its stored marker is there, "" when the earlier
// attempt stopped before the marker and the batch must be written now.
func (s *Server) retried(ctx context.Context, log *slog.Logger, claimName string) (string, *refusal) {
	_, err := s.store.Get(ctx, storedName(claimName))
	switch {
	case err == nil:
		return StatusDuplicate, nil
	case errors.Is(err, blob.ErrNotFound):
		return "", nil
	default:
		return "", s.storeFailed(log, "reading batch stored marker", err)
	}
}

// storedName is the stored marker of a batch claim: {claim}.stored, beside
// the claim, so that whatever keeps claims keeps markers, and whatever
// reads batches (names ending in .sgb) passes them by.
func storedName(claimName string) string { return blob.StoredName(claimName) }

// storeFailed answers a store error: 503, since a store that fails now may
// answer later, unless the store refused the name itself, which is a bug
// here that retrying will not cure.
func (s *Server) storeFailed(log *slog.Logger, op string, err error) *refusal {
	if errors.Is(err, blob.ErrBadName) {
		log.Error(op+" failed: the store refused the name", "err", err)
		return refuse(http.StatusInternalServerError, CodeInternal, "the archive refused a blob name (%s): this is a bug; report it", op)
	}
	log.Warn(op+" failed", "err", err)
	return refuse(http.StatusServiceUnavailable, CodeStoreUnavailable,
		"the archive is unavailable (%s): retry in %d seconds", op, retryAfterStoreSeconds)
}

// parseClaim splits a claim into the body's SHA-256 and the blob name.
func parseClaim(c []byte) (sum []byte, name string, ok bool) {
	hexSum, name, found := strings.Cut(strings.TrimSuffix(string(c), "\n"), " ")
	sum, err := hex.DecodeString(hexSum)
	if !found || err != nil || len(sum) != sha256.Size || name == "" {
		return nil, "", false
	}
	return sum, name, true
}

// observe hands an archived batch to the Observer. The batch is
// archived already, so neither an error nor the agent hanging up may undo
// that: the context is detached, and a failure is counted and recorded in
// the ObserveQueue for a later retry. Only when that record cannot be
// written either is the answer a refusal (503): the agent keeps the batch
// and its retry shows it to the Observer again, so the hot store never
// silently misses an acknowledged batch. A run of failures (a hot-store
// outage fails every batch) is logged at its first failure and once more
// when the Observer works again (see observeOutage).
func (s *Server) observe(ctx context.Context, id pki.Identity, b *batch.Batch) *refusal {
	if s.cfg.Observer == nil {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	err := s.cfg.Observer.Observe(ctx, id, b)
	if err == nil {
		s.observeOutage.ok(s.log, s.cfg.CertNow())
		return nil
	}
	s.count(func(st *Stats) { st.ObserveErrors++ })
	log := s.log.With("tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "batch_seq", b.Seq)
	if s.cfg.ObserveQueue == nil {
		s.observeOutage.fail(log, s.cfg.CertNow(), observeLost, err, nil)
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	qerr := s.cfg.ObserveQueue.Add(qctx, id, b.Seq)
	if qerr == nil {
		s.observeOutage.fail(log, s.cfg.CertNow(), observeQueued, err, nil)
		return nil
	}
	s.observeOutage.fail(log, s.cfg.CertNow(), observeRefused, err, qerr)
	return refuse(http.StatusServiceUnavailable, CodeStoreUnavailable,
		"the batch is archived but the dashboard could not take it and the archive could not record that: retry in %d seconds", retryAfterStoreSeconds)
}

// What became of a batch the Observer failed on.
const (
	observeQueued  = iota // recorded in the ObserveQueue for a retry
	observeRefused        // not recorded either: answered 503, the agent sends it again
	observeLost           // no ObserveQueue: the hot store misses it until a rebuild or a resend
	observeOutcomes
)

// observeOutage logs a run of Observer failures the way the ObserveQueue
// logs its own: the first failure of each outcome once, the repeats only
// counted (Stats.ObserveErrors, Refused), and one line when the Observer
// works again with how many failed meanwhile. During a hot-store outage
// every batch fails; a line for each would bury everything else in the log.
type observeOutage struct {
	failing atomic.Bool // the only cost on the path of a batch observed
	mu      sync.Mutex
	since   time.Time               // the run's first failure
	counts  [observeOutcomes]uint64 // failures of the run by outcome
}

// fail counts a failure with its outcome and logs it when it is the
// run's first of that outcome.
func (o *observeOutage) fail(log *slog.Logger, now time.Time, outcome int, err, qerr error) {
	o.mu.Lock()
	if !o.failing.Load() {
		o.since = now
		o.failing.Store(true)
	}
	o.counts[outcome]++
	first := o.counts[outcome] == 1
	o.mu.Unlock()
	if !first {
		return
	}
	const repeats = "; repeats are counted, not logged, until the hot store works again"
	switch outcome {
	case observeQueued:
		log.Warn("updating the hot store failed; the batch is archived and queued for a retry"+repeats, "err", err)
	case observeRefused:
		log.Error("updating the hot store failed and the batch could not be queued for a retry; the agent is told to send it again"+repeats,
			"err", err, "queue_err", qerr)
	default:
		log.Error("updating the hot store failed; the batch is archived but the dashboard misses it until the agent resends it or "+
			"the site is rebuilt (sightglass-ingest store rebuild)"+repeats, "err", err)
	}
}

// ok ends a run of failures, logging what it came to.
func (o *observeOutage) ok(log *slog.Logger, now time.Time) {
	if !o.failing.Load() {
		return
	}
	o.mu.Lock()
	if !o.failing.Load() {
		o.mu.Unlock()
		return
	}
	counts, since := o.counts, o.since
	o.counts = [observeOutcomes]uint64{}
	o.failing.Store(false)
	o.mu.Unlock()
	log.Info("updating the hot store works again", "failed_for", now.Sub(since).Round(time.Millisecond),
		"queued", counts[observeQueued], "refused", counts[observeRefused], "missed", counts[observeLost])
}
