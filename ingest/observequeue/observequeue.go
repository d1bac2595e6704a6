// Package observequeue keeps the dashboard's hot store from silently
// missing a batch. The ingest shows every archived batch to the hot store
// (server.Observer) before answering the agent; when that fails (SQLite
// busy, a disk briefly full), the batch is archived but not observed. The
// queue then records it durably, in the archive itself, as a create-if-
// absent marker under Prefix, and a background loop retries each marker
// with backoff — reading the batch back from the archive — and deletes it
// once the hot store took the batch.
//
// Markers live in the archive rather than on the node, so a crash or a
// restart loses none (Run picks up what an earlier run left) and every
// replica sharing the archive sees them; Observe is idempotent per (agent,
// seq), so two replicas retrying one marker cannot count it twice.
//
// A marker whose batch blob is no longer in the archive (compaction merged
// it into a day blob and deleted it, since the hot store was failing for
// longer than compaction waits) cannot be replayed: a day blob mixes the
// samples of every agent and batch of the day, and folding all of them
// would count the other batches twice. Such a marker is logged as an error
// that names the `sightglass-ingest store rebuild` to run for its site,
// counted (Stats.Abandoned) and removed, so it does not hold up the others.
// A marker whose batch no longer decodes is handled the same way.
package observequeue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// Prefix is the archive folder of the markers. It names no tenant or
// building (a leading underscore, like _audit/ and _ready/), and a marker
// holds only opaque ids. Each marker is one segment below it
// ({tenant}.{site}.{agent}.{seq:020d}): ids cannot hold '.', and readers
// that look for sites at {tenant}/{site}/… (store rebuild) pass a
// two-segment name by.
const Prefix = "_observe/"

// Defaults of the Options fields left zero.
const (
	// DefaultInterval is how often an idle queue lists the markers: it
	// picks up markers other replicas wrote and retries new ones.
	DefaultInterval = 10 * time.Second
	// DefaultMinBackoff and DefaultMaxBackoff bound the wait after a pass
	// in which a retry failed; it doubles from the one to the other.
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute
	// DefaultPerPass bounds the markers retried in one pass, so a long
	// backlog is worked off in steps that each end soon.
	DefaultPerPass = 100
	// DefaultTimeout bounds one marker's retry (its reads, the Observe,
	// the delete) and one listing.
	DefaultTimeout = 30 * time.Second
)

// Store is the archive as the queue needs it: the blob store plus Delete,
// to remove a marker once its batch is observed. blob.Dir and the Azure
// store have it.
type Store interface {
	blob.Store
	Delete(ctx context.Context, name string) error
}

// Observer is what the queue retries: the ingest server's Observer (the
// hot store). It must be idempotent per (agent, seq).
type Observer interface {
	Observe(ctx context.Context, id pki.Identity, b *batch.Batch) error
}

// Options tune a Queue. A zero field means its default.
type Options struct {
	Interval   time.Duration // DefaultInterval
	MinBackoff time.Duration // DefaultMinBackoff
	MaxBackoff time.Duration // DefaultMaxBackoff
	PerPass    int           // DefaultPerPass
	Timeout    time.Duration // DefaultTimeout
	// Limits bound the batch decoder, as at the ingest (its own defaults
	// when zero).
	Limits batch.Limits
}

func (o *Options) setDefaults() {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.PerPass <= 0 {
		o.PerPass = DefaultPerPass
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
}

// Stats are the queue's figures.
type Stats struct {
	// Pending is the number of markers waiting: as the last listing found
	// them, less those removed since, plus those this node added since.
	Pending int
	// Added counts markers this node wrote (a batch the Observer failed
	// on, first time only).
	Added uint64
	// Observed counts batches the queue's retries got into the hot store.
	Observed uint64
	// Failures counts retries that failed and will be tried again.
	Failures uint64
	// Abandoned counts markers removed without their batch observed (the
	// batch blob is gone or damaged): each was logged with the rebuild
	// that restores its site.
	Abandoned uint64
}

// Queue records batches the hot store missed and retries them. Its methods
// are safe for concurrent use; run one Run per process.
type Queue struct {
	store  Store
	obs    Observer
	log    *slog.Logger
	o      Options
	tables *pointtable.Archive

	mu     sync.Mutex
	stats  Stats
	cursor string          // the last marker a pass tried: the next pass starts after it
	failed map[string]int  // consecutive failures by kind, to log each kind once
	strays map[string]bool // the blobs under Prefix that are not markers, as the last listing found them
}

// New returns a Queue over store retrying into obs.
func New(store Store, obs Observer, logger *slog.Logger, o Options) (*Queue, error) {
	if store == nil || obs == nil || logger == nil {
		return nil, errors.New("creating observe queue: store, observer and logger are required")
	}
	o.setDefaults()
	return &Queue{
		store: store, obs: obs, log: logger, o: o,
		tables: pointtable.New(store, nil),
		failed: map[string]int{},
	}, nil
}

// MarkerName is the marker of batch seq of the agent id:
// _observe/{tenant}.{site}.{agent}.{seq:020d}, zero-padded so markers sort
// by batch.
func MarkerName(id pki.Identity, seq uint64) string {
	return fmt.Sprintf("%s%s.%s.%s.%020d", Prefix, id.Tenant, id.Site, id.Agent, seq)
}

// ParseMarkerName is MarkerName's inverse; it refuses anything MarkerName
// cannot have written.
func ParseMarkerName(name string) (pki.Identity, uint64, error) {
	rest, ok := strings.CutPrefix(name, Prefix)
	f := strings.Split(rest, ".")
	if !ok || len(f) != 4 || len(f[3]) != 20 {
		return pki.Identity{}, 0, fmt.Errorf("%q is not an observe marker: want %s{tenant}.{site}.{agent}.{seq:020d}", name, Prefix)
	}
	seq, err := strconv.ParseUint(f[3], 10, 64)
	if err != nil {
		return pki.Identity{}, 0, fmt.Errorf("%q is not an observe marker: sequence number: %w", name, err)
	}
	id := pki.Identity{Tenant: f[0], Site: f[1], Agent: f[2]}
	if err := id.Validate(); err != nil {
		return pki.Identity{}, 0, fmt.Errorf("%q is not an observe marker: %w", name, err)
	}
	return id, seq, nil
}

// Add records that the Observer failed on the archived batch seq of id, so
// that Run retries it. It returns once the marker is durable in the
// archive; adding a marker that is there already is not an error.
func (q *Queue) Add(ctx context.Context, id pki.Identity, seq uint64) error {
	if err := id.Validate(); err != nil {
		return fmt.Errorf("recording batch %d for the hot store: %w", seq, err)
	}
	name := MarkerName(id, seq)
	// The bytes depend only on the name, so a second Add (an agent's
	// retry, another replica) is create-if-absent's "same bytes".
	claim := blob.ClaimName(id.Tenant, id.Site, id.Agent, seq)
	created, err := q.store.Put(ctx, name, []byte(claim+"\n"))
	if err != nil {
		return fmt.Errorf("recording batch %d of agent %s for a later hot-store update (%s): %w", seq, id.Agent, name, err)
	}
	if created {
		q.mu.Lock()
		q.stats.Added++
		q.stats.Pending++
		q.mu.Unlock()
	}
	return nil
}

// Pending is Stats().Pending.
func (q *Queue) Pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stats.Pending
}

// Stats returns a copy of the figures.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stats
}

// Run retries the markers until ctx is done: a pass at once (markers an
// earlier run left), then another after Interval when the last pass
// emptied the queue, at once while a backlog remains, and after a backoff
// doubling from MinBackoff to MaxBackoff (with jitter, so replicas do not
// retry in step) while retries fail. It returns nil when ctx is done.
func (q *Queue) Run(ctx context.Context) error {
	var backoff, wait time.Duration
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		res, err := q.Pass(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			backoff = min(max(2*backoff, q.o.MinBackoff), q.o.MaxBackoff)
			wait = jitter(backoff)
		case res.Left > 0:
			backoff, wait = 0, 0
		default:
			backoff, wait = 0, jitter(q.o.Interval)
		}
		timer.Reset(wait)
	}
}

// jitter is d give or take a fifth.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()-0.5)*0.4*float64(d))
}

// PassResult says what one pass did.
type PassResult struct {
	Observed  int // markers whose batch the hot store took, removed
	Abandoned int // markers removed without their batch (see the package doc)
	// Left is the number of markers not tried in this pass for want of
	// budget (PerPass), or after a failure stopped it.
	Left int
}

// errPermanent marks a marker that no retry can help.
var errPermanent = errors.New("cannot be retried")

// Pass lists the markers and retries up to PerPass of them, starting after
// the one the previous pass tried last, so a batch that fails every time
// cannot starve those after it. The first failure ends the pass (the hot
// store or the archive is in trouble: retrying the rest now would only
// fail as well) and is returned; Run backs off on it.
func (q *Queue) Pass(ctx context.Context) (PassResult, error) {
	var res PassResult
	lctx, cancel := context.WithTimeout(ctx, q.o.Timeout)
	names, err := q.store.List(lctx, Prefix)
	cancel()
	if err != nil {
		err = fmt.Errorf("listing the markers of batches the hot store missed: %w", err)
		q.fail("list", err)
		return res, err
	}
	q.ok("list")
	names = q.markers(names)
	q.mu.Lock()
	q.stats.Pending = len(names)
	cursor := q.cursor
	q.mu.Unlock()
	if len(names) == 0 {
		return res, nil
	}
	start := sort.SearchStrings(names, cursor)
	if start < len(names) && names[start] == cursor {
		start++
	}
	n := min(q.o.PerPass, len(names))
	res.Left = len(names) - n
	for i := range n {
		name := names[(start+i)%len(names)]
		q.mu.Lock()
		q.cursor = name
		q.mu.Unlock()
		observed, err := q.retry(ctx, name)
		switch {
		case err == nil:
			if observed {
				res.Observed++
			} else {
				res.Abandoned++
			}
			q.mu.Lock()
			q.stats.Pending = max(q.stats.Pending-1, 0)
			q.mu.Unlock()
		default:
			res.Left += n - i
			q.mu.Lock()
			q.stats.Failures++
			q.mu.Unlock()
			return res, err
		}
	}
	return res, nil
}

// markers keeps the names that are markers. Anything else under Prefix (a
// stray) was not written by a queue: it is left alone and logged once, in
// the pass that first finds it. A stray is nothing to retry, so it is not
// one of fail's kinds and never holds up a pass or its backoff.
func (q *Queue) markers(names []string) []string {
	out := names[:0:0]
	var strays, fresh []string
	for _, n := range names {
		if _, _, err := ParseMarkerName(n); err != nil {
			strays = append(strays, n)
			continue
		}
		out = append(out, n)
	}
	q.mu.Lock()
	seen := make(map[string]bool, len(strays))
	for _, n := range strays {
		seen[n] = true
		if !q.strays[n] {
			fresh = append(fresh, n)
		}
	}
	// Only the strays still there are kept, so the set stays as small as
	// the folder's litter, and one removed and put back is logged again.
	q.strays = seen
	q.mu.Unlock()
	if len(fresh) > 0 {
		q.log.Warn("found blobs under "+Prefix+" that are not observe markers: they are ignored, not retried; remove them",
			"new", len(fresh), "strays", len(strays), "first", fresh[0])
	}
	return out
}

// retry retries one marker: it reads the batch back from the archive,
// shows it to the Observer and deletes the marker. It returns true when
// the batch was observed, false with a nil error when the marker was
// abandoned (and removed), and an error when it must be tried again.
func (q *Queue) retry(ctx context.Context, name string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, q.o.Timeout)
	defer cancel()
	id, seq, _ := ParseMarkerName(name) // markers() let only valid names through
	log := q.log.With("tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "batch_seq", seq, "marker", name)
	b, kind, err := q.load(ctx, id, seq)
	if errors.Is(err, errPermanent) {
		// Logged once the marker is gone, so a failing delete (logged
		// once itself) does not repeat this at every pass.
		if derr := q.delete(ctx, name); derr != nil {
			return false, derr
		}
		log.Error("the hot store cannot be given this batch: it lacks the batch's samples until the site is rebuilt; "+
			"with the ingest stopped run: sightglass-ingest store rebuild --tenant "+id.Tenant+" --site "+id.Site, "err", err)
		q.mu.Lock()
		q.stats.Abandoned++
		q.mu.Unlock()
		return false, nil
	}
	if err != nil {
		q.fail(kind, err, "tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "batch_seq", seq)
		return false, err
	}
	for _, k := range loadKinds {
		q.ok(k)
	}
	if err := q.obs.Observe(ctx, id, b); err != nil {
		err = fmt.Errorf("updating the hot store with batch %d of agent %s again: %w", seq, id.Agent, err)
		q.fail("observe", err, "tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "batch_seq", seq)
		return false, err
	}
	q.ok("observe")
	// Observed but the marker stays when the delete fails: the next pass
	// observes again, which the Observer ignores, and deletes.
	if err := q.delete(ctx, name); err != nil {
		return false, err
	}
	q.mu.Lock()
	q.stats.Observed++
	q.mu.Unlock()
	log.Info("hot store updated with a batch it had missed")
	return true, nil
}

func (q *Queue) delete(ctx context.Context, name string) error {
	if err := q.store.Delete(ctx, name); err != nil {
		err = fmt.Errorf("removing observe marker %s: %w", name, err)
		q.fail("delete", err)
		return err
	}
	q.ok("delete")
	return nil
}

// loadKinds are the kinds of failure load tells apart.
var loadKinds = []string{"claim", "batch", "table"}

// load reads batch seq of id back from the archive through its claim,
// which names the batch blob. An error wrapping errPermanent means no
// retry can help; any other error says by its kind what failed.
func (q *Queue) load(ctx context.Context, id pki.Identity, seq uint64) (*batch.Batch, string, error) {
	claimName := blob.ClaimName(id.Tenant, id.Site, id.Agent, seq)
	claim, err := q.store.Get(ctx, claimName)
	switch {
	case errors.Is(err, blob.ErrNotFound):
		return nil, "", fmt.Errorf("batch %d of agent %s has no claim %s in the archive, although it was archived before the marker was written: %w", seq, id.Agent, claimName, errPermanent)
	case err != nil:
		return nil, "claim", fmt.Errorf("reading the claim of batch %d of agent %s: %w", seq, id.Agent, err)
	}
	// A claim is "{sha256 hex} {batch blob name}\n" (see server.storeBatch).
	f := strings.Fields(string(claim))
	if len(f) != 2 || blob.ValidName(f[1]) != nil {
		return nil, "", fmt.Errorf("the claim %s of batch %d is damaged (%q): %w", claimName, seq, claim, errPermanent)
	}
	data, err := q.store.Get(ctx, f[1])
	switch {
	case errors.Is(err, blob.ErrNotFound):
		return nil, "", fmt.Errorf("batch blob %s is no longer in the archive (compacted into its day, or deleted): %w", f[1], errPermanent)
	case err != nil:
		return nil, "batch", fmt.Errorf("reading batch blob %s: %w", f[1], err)
	}
	b, err := batch.Decode(data, q.tables.Resolver(ctx, id.Tenant, id.Site), q.o.Limits)
	if err != nil {
		var te *pointtable.Error
		if errors.As(err, &te) && !te.Missing() && !errors.Is(err, pointtable.ErrDamaged) {
			return nil, "table", fmt.Errorf("decoding batch blob %s: %w", f[1], err)
		}
		return nil, "", fmt.Errorf("decoding batch blob %s: %w: %w", f[1], err, errPermanent)
	}
	if b.AgentID != id.Agent || b.Site != id.Site || b.Seq != seq {
		return nil, "", fmt.Errorf("batch blob %s holds batch %d of agent %s of site %s, not the marker's: %w", f[1], b.Seq, b.AgentID, b.Site, errPermanent)
	}
	return b, "", nil
}

// fail logs err the first time a kind of failure happens in a row; the
// repeats are only counted, and ok says when the kind recovers.
func (q *Queue) fail(kind string, err error, attrs ...any) {
	if errors.Is(err, context.Canceled) {
		return // shutting down: not a failure of the archive or the hot store
	}
	q.mu.Lock()
	q.failed[kind]++
	first := q.failed[kind] == 1
	q.mu.Unlock()
	if first {
		q.log.Error("retrying a batch the hot store missed failed; retrying with backoff, repeats are not logged until it works again",
			append([]any{"kind", kind, "err", err}, attrs...)...)
	}
}

// ok ends a run of failures of kind, logging how long it was.
func (q *Queue) ok(kind string) {
	q.mu.Lock()
	n := q.failed[kind]
	delete(q.failed, kind)
	q.mu.Unlock()
	if n > 0 {
		q.log.Info("retrying batches the hot store missed works again", "kind", kind, "failures", n)
	}
}

// Lister lists blob names by prefix, as blob.Store does.
type Lister interface {
	List(ctx context.Context, prefix string) ([]string, error)
}

// Owed returns, for compaction (compact.Options.Owed), which batches of
// tenant/site have a marker under Prefix in store: the hot store still
// owes them, and the retry needs their blob, which compaction deletes.
func Owed(store Lister) func(ctx context.Context, tenant, site string) (func(agent string, seq uint64) bool, error) {
	return func(ctx context.Context, tenant, site string) (func(agent string, seq uint64) bool, error) {
		// Only this site's markers: {Prefix}{tenant}.{site}.{agent}.{seq}.
		prefix := Prefix + tenant + "." + site + "."
		names, err := store.List(ctx, prefix)
		if err != nil {
			return nil, fmt.Errorf("listing the hot store's owed batches under %s: %w", prefix, err)
		}
		type key struct {
			agent string
			seq   uint64
		}
		owed := map[key]bool{}
		for _, n := range names {
			id, seq, err := ParseMarkerName(n)
			if err == nil && id.Tenant == tenant && id.Site == site {
				owed[key{id.Agent, seq}] = true
			}
		}
		return func(agent string, seq uint64) bool { return owed[key{agent, seq}] }, nil
	}
}
