// Package compact merges a site's small batch blobs into day blobs: one
// generation of one or more parts per site per day, in the same batch
// format, sorted and deduplicated. Small blobs are good for freshness and
// bad for storage and analytics; a day blob of the real trend data costs
// well under a byte per sample.
//
// Compaction is safe to run on several ingest replicas at once and is
// idempotent: the output is a pure function of the inputs, written
// create-if-absent, so two replicas that read the same sources write the
// same bytes; a replica that read other sources collides on the name and
// starts over. A source blob is deleted only after the day blob holding
// it has been stored, read back and decoded to exactly the merged
// samples.
//
// Before writing a generation's parts a compactor claims it, create-if-
// absent, under a name without the part count ({dd}.g{gen}.claim): of two
// compactors that merged different sources, the second to claim starts
// over on top of the first's output instead of writing a rival generation.
//
// Layout: {tenant}/{site}/days/{yyyy}/{mm}/{dd}.g{gen}.p{part}-of-{parts}.sgb,
// the point tables beside the batches' in {tenant}/{site}/tables/. A day is
// in generation gen until a later compaction (a late backlog) merges it with
// new sources into gen+1 and deletes gen.
package compact

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Store is the archive as compaction needs it: the blob store plus Delete,
// which only compaction uses.
type Store interface {
	blob.Store
	Delete(ctx context.Context, name string) error
}

// AgentID marks day blobs in the batch header: they hold the samples of
// every agent a site had that day. Real agent ids start with "ag-".
const AgentID = "compacted"

// DefaultPartSamples caps the samples of one day part, well inside the
// batch format's limits (batch.DefaultMaxSamples and a 64 MiB payload).
const DefaultPartSamples = 2_000_000

// maxAttempts bounds the restarts when another replica compacts the same
// day at the same moment.
const maxAttempts = 5

// ErrRace means another compactor changed the day while this one worked;
// Day starts over by itself, up to a bound, and returns it only after that.
var ErrRace = errors.New("another compactor changed the day")

// Options tune a Compactor. The zero value is usable.
type Options struct {
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
	// PartSamples caps the samples of one day part (DefaultPartSamples).
	PartSamples int
	// Limits bound the decoder reading the sources.
	Limits batch.Limits
	// Tables caches the point tables read; nil means a cache of the
	// Compactor's own (pointtable.DefaultMaxPoints).
	Tables *pointtable.Cache
	// Lookback is how long before the start of a range ReadRange looks
	// for batches that may hold samples in it (DefaultLookback).
	Lookback time.Duration
	// MergeSamples is how many decoded samples a merge keeps in memory
	// (DefaultMergeSamples): a day with more is merged a range of point
	// ids at a time, decoding its blobs once per range.
	MergeSamples int
	// Owed, when set, names the batches of a site that must stay as they
	// are for now: the hot store still owes them (observequeue.Owed),
	// and its retry reads the batch blob, which compaction would delete.
	// They are left for a later compaction; readers merge them anyway.
	Owed OwedFunc
}

// OwedFunc reports which batches of tenant/site to leave uncompacted: the
// returned func says, per agent and seq, whether to hold the batch.
type OwedFunc func(ctx context.Context, tenant, site string) (func(agent string, seq uint64) bool, error)

// DefaultMergeSamples is Options.MergeSamples's default: 4M samples, 128
// MiB of decoded samples; a day of 2,800 points at one minute fits, one of
// 10,000 is merged in four ranges.
const DefaultMergeSamples = 4_000_000

// DefaultLookback is Options.Lookback's default: a day, so a day's export
// reads the day before for the batches that crossed midnight into it. A
// batch spanning more (a long trend export read in one go) is warned about.
const DefaultLookback = 24 * time.Hour

// Compactor compacts days of one archive.
type Compactor struct {
	store    Store
	log      *slog.Logger
	part     int
	lim      batch.Limits
	tables   *pointtable.Archive
	lookback time.Duration
	// mergeSamples is Options.MergeSamples.
	mergeSamples int
	owed         OwedFunc
	now          func() time.Time
}

// New returns a Compactor over store.
func New(store Store, o Options) *Compactor {
	c := &Compactor{store: store, log: o.Logger, part: o.PartSamples, lim: o.Limits, lookback: o.Lookback,
		mergeSamples: o.MergeSamples, tables: pointtable.New(store, o.Tables), owed: o.Owed, now: time.Now}
	if c.mergeSamples <= 0 {
		c.mergeSamples = DefaultMergeSamples
	}
	if c.lookback <= 0 {
		c.lookback = DefaultLookback
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.part <= 0 {
		c.part = DefaultPartSamples
	}
	return c
}

// Result says what compacting one day did.
type Result struct {
	Day         string `json:"day"` // yyyy-mm-dd
	Generation  int    `json:"generation"`
	Parts       int    `json:"parts"`
	Sources     int    `json:"sources"`    // batch blobs merged (and deleted)
	Samples     int    `json:"samples"`    // in the day blob
	Duplicates  int    `json:"duplicates"` // identical samples seen twice (retries, re-uploads)
	Conflicts   int    `json:"conflicts"`  // same point and time, different value: the first kept
	SourceBytes int    `json:"source_bytes"`
	Bytes       int    `json:"bytes"`          // of the day blob's parts
	Skipped     bool   `json:"skipped"`        // nothing new to merge
	Held        int    `json:"held,omitempty"` // batches left for later: the hot store still owes them
}

// DayPrefix is where a day's batch blobs are: {tenant}/{site}/{yyyy}/{mm}/{dd}/.
func DayPrefix(tenant, site string, day time.Time) string {
	d := day.UTC()
	return fmt.Sprintf("%s/%s/%04d/%02d/%02d/", tenant, site, d.Year(), d.Month(), d.Day())
}

// dayBlobPrefix is where a day's compacted parts are.
func dayBlobPrefix(tenant, site string, day time.Time) string {
	d := day.UTC()
	return fmt.Sprintf("%s/%s/days/%04d/%02d/%02d.", tenant, site, d.Year(), d.Month(), d.Day())
}

// MonthPrefix is where the compacted parts of a month's days are:
// {tenant}/{site}/days/{yyyy}/{mm}/.
func MonthPrefix(tenant, site string, month time.Time) string {
	m := month.UTC()
	return fmt.Sprintf("%s/%s/days/%04d/%02d/", tenant, site, m.Year(), m.Month())
}

// NewestGeneration picks from names (a listing of the day's parts, or of
// a wider prefix such as MonthPrefix) the parts of the newest complete
// generation of tenant/site on day, in part order; nil if the day was
// never compacted. Readers of the archive take these parts together with
// the batch blobs still under DayPrefix as what is filed under the day, as
// ReadRange does: a batch blob may also be in the parts, when a compaction
// stopped between storing them and deleting it. What is filed under a day
// may hold samples of the days after it (see ReadRange).
func NewestGeneration(names []string, tenant, site string, day time.Time) []string {
	gens, _ := generations(dayBlobPrefix(tenant, site, day), names)
	if len(gens) == 0 {
		return nil
	}
	return gens[len(gens)-1].parts
}

// PartName is the name of part (1-based) of parts of generation gen.
func PartName(tenant, site string, day time.Time, gen, part, parts int) string {
	return fmt.Sprintf("%sg%06d.p%03d-of-%03d.sgb", dayBlobPrefix(tenant, site, day), gen, part, parts)
}

// ClaimName is the claim of generation gen: written create-if-absent before
// any of its parts, it makes one compactor the writer of that generation.
// Part names carry the part count, so two compactors that merged different
// sources into different counts would otherwise both "succeed" and each
// delete its sources, and readers would see only one of their outputs.
func ClaimName(tenant, site string, day time.Time, gen int) string {
	return fmt.Sprintf("%sg%06d.claim", dayBlobPrefix(tenant, site, day), gen)
}

// staleClaim is how old the claim of a generation still incomplete must be
// before another compactor takes it for abandoned (a crash): compacting a
// day takes seconds.
const staleClaim = time.Hour

// claim is what a claim blob says: the part count and when it was made.
type claim struct {
	parts int
	at    time.Time
}

func (c claim) encode() []byte {
	return fmt.Appendf(nil, "parts %d\nclaimed %s\n", c.parts, c.at.UTC().Format(time.RFC3339Nano))
}

func parseClaim(b []byte) (claim, bool) {
	var c claim
	var at string
	if _, err := fmt.Sscanf(string(b), "parts %d\nclaimed %s\n", &c.parts, &at); err != nil || c.parts < 1 {
		return c, false
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	c.at = t
	return c, err == nil
}

// generation is one complete generation of a day's parts.
type generation struct {
	gen   int
	parts []string
}

// parsePart reads gen, part and parts from a part's name.
func parsePart(prefix, name string) (gen, part, parts int, ok bool) {
	rest, found := strings.CutPrefix(name, prefix)
	if !found || !strings.HasSuffix(rest, ".sgb") {
		return 0, 0, 0, false
	}
	var err error
	f := strings.FieldsFunc(strings.TrimSuffix(rest, ".sgb"), func(r rune) bool { return r == '.' || r == '-' })
	if len(f) != 4 || f[0][0] != 'g' || f[1][0] != 'p' || f[2] != "of" {
		return 0, 0, 0, false
	}
	if gen, err = strconv.Atoi(f[0][1:]); err != nil {
		return 0, 0, 0, false
	}
	if part, err = strconv.Atoi(f[1][1:]); err != nil {
		return 0, 0, 0, false
	}
	if parts, err = strconv.Atoi(f[3]); err != nil || part < 1 || part > parts {
		return 0, 0, 0, false
	}
	return gen, part, parts, true
}

// generations lists a day's complete generations, oldest first, and every
// part name found (complete or not), for clean-up.
func generations(prefix string, names []string) (complete []generation, all []string) {
	type acc struct {
		parts map[int]string
		n     int
	}
	byGen := map[int]*acc{}
	for _, n := range names {
		g, p, np, ok := parsePart(prefix, n)
		if !ok {
			continue
		}
		all = append(all, n)
		a := byGen[g]
		if a == nil {
			a = &acc{parts: map[int]string{}, n: np}
			byGen[g] = a
		}
		if a.n == np {
			a.parts[p] = n
		}
	}
	for g, a := range byGen {
		if len(a.parts) != a.n {
			continue // still being written, or abandoned by a crash
		}
		gen := generation{gen: g}
		for p := 1; p <= a.n; p++ {
			gen.parts = append(gen.parts, a.parts[p])
		}
		complete = append(complete, gen)
	}
	sort.Slice(complete, func(i, j int) bool { return complete[i].gen < complete[j].gen })
	return complete, all
}

// Day compacts the batches of tenant/site on day (UTC) into a new day
// generation and deletes what it replaced.
func (c *Compactor) Day(ctx context.Context, tenant, site string, day time.Time) (Result, error) {
	for attempt := 1; ; attempt++ {
		res, err := c.day(ctx, tenant, site, day)
		if !errors.Is(err, ErrRace) || attempt == maxAttempts {
			return res, err
		}
		c.log.Info("another compactor changed the day; starting over", "day", res.Day, "attempt", attempt)
	}
}

// holdOwed takes the batches Options.Owed holds out of names, counting
// them in res.Held.
func (c *Compactor) holdOwed(ctx context.Context, tenant, site string, names []string, res *Result) ([]string, error) {
	if c.owed == nil || len(names) == 0 {
		return names, nil
	}
	owed, err := c.owed(ctx, tenant, site)
	if err != nil {
		return nil, fmt.Errorf("compacting %s/%s %s: finding the batches the hot store still owes: %w (no batch was deleted; run compact again)", tenant, site, res.Day, err)
	}
	kept := make([]string, 0, len(names))
	for _, n := range names {
		if _, _, agent, seq, ok := blob.ParseBatchName(n); ok && owed(agent, seq) {
			res.Held++
			continue
		}
		kept = append(kept, n)
	}
	return kept, nil
}

func (c *Compactor) day(ctx context.Context, tenant, site string, day time.Time) (Result, error) {
	day = day.UTC().Truncate(24 * time.Hour)
	res := Result{Day: day.Format(time.DateOnly)}
	log := c.log.With("tenant", tenant, "site", site, "day", res.Day)
	srcNames, prefix, existing, err := c.listDay(ctx, tenant, site, day)
	if err != nil {
		return res, fmt.Errorf("compacting %s/%s %s: %w", tenant, site, res.Day, err)
	}
	if srcNames, err = c.holdOwed(ctx, tenant, site, srcNames, &res); err != nil {
		return res, err
	}
	if res.Held > 0 {
		log.Info("left batches the hot store still owes for a later compaction", "batches", res.Held)
	}
	gens, allParts := generations(prefix, existing)
	for _, n := range existing {
		if strings.HasSuffix(n, ".claim") && strings.HasPrefix(n, prefix) {
			allParts = append(allParts, n) // cleaned with the parts of its generation
		}
	}
	var prev *generation
	if len(gens) > 0 {
		prev = &gens[len(gens)-1]
		res.Generation = prev.gen
	}
	// The next generation is normally the one after the newest complete
	// one; a compactor writing it at the same moment holds its claim, and
	// the claim decides (below). Numbers above it that only an abandoned
	// compaction used (a crash, its claim over an hour old) are skipped.
	nextGen, maxGen, fresh := res.Generation+1, res.Generation, false
	for _, n := range existing {
		g, ok := genOf(n)
		if !ok || g <= res.Generation {
			continue
		}
		maxGen = max(maxGen, g)
		if !strings.HasSuffix(n, ".claim") {
			continue
		}
		data, err := c.store.Get(ctx, n)
		if err != nil && !errors.Is(err, blob.ErrNotFound) {
			return res, fmt.Errorf("compacting %s: reading %s: %w", res.Day, n, err)
		}
		if cl, ok := parseClaim(data); err == nil && (!ok || c.now().Sub(cl.at) < staleClaim) {
			fresh = true
		}
	}
	if !fresh && maxGen > res.Generation {
		log.Warn("skipping day generations an abandoned compaction left incomplete", "above", res.Generation, "up_to", maxGen)
		nextGen = maxGen + 1
	}
	if len(srcNames) == 0 {
		res.Skipped = true
		return res, c.cleanOld(ctx, allParts, prev, log)
	}

	tables := c.tables.Resolver(ctx, tenant, site)
	m, err := c.merge(ctx, tables, prev, srcNames, &res)
	if err != nil {
		return res, err
	}
	res.Generation = nextGen
	gen := res.Generation

	// Encode every part as the merge streams it, then store: tables
	// first, so every stored part is decodable the moment it exists. Only
	// the decoded sources and one part's samples are in memory at once,
	// not a second copy of the day.
	type part struct {
		name string
		enc  batch.Encoded
		n    int
	}
	var parts []part
	err = m.each(c.part, &res, func(chunk []telemetry.Sample) error {
		enc, err := batch.Encode(&batch.Batch{
			Header: batch.Header{
				AgentID: AgentID, Site: site, Seq: uint64(gen),
				// Deterministic, so replicas write identical bytes.
				SentAt: day.Add(24*time.Hour - time.Millisecond).UnixMilli(),
			},
			Samples: chunk,
		})
		if err != nil {
			return fmt.Errorf("compacting %s: encoding part %d: %w", res.Day, len(parts)+1, err)
		}
		parts = append(parts, part{enc: enc, n: len(chunk)})
		res.Samples += len(chunk)
		res.Bytes += len(enc.Data)
		return nil
	})
	if err != nil {
		return res, err
	}
	nparts := len(parts)
	res.Parts = nparts
	for i := range parts {
		parts[i].name = PartName(tenant, site, day, gen, i+1, nparts)
	}
	// Claim the generation: a compactor that claimed it first with another
	// part count merged other sources, and this one starts over on top of
	// its output. The same count is a twin that read the same sources; if
	// it did not, the parts' create-if-absent writes collide below.
	claimName := ClaimName(tenant, site, day, gen)
	if _, err := c.store.Put(ctx, claimName, claim{parts: nparts, at: c.now()}.encode()); errors.Is(err, blob.ErrConflict) {
		data, gerr := c.store.Get(ctx, claimName)
		if gerr != nil {
			return res, fmt.Errorf("compacting %s: reading %s: %w", res.Day, claimName, gerr)
		}
		if cl, ok := parseClaim(data); !ok || cl.parts != nparts {
			return res, fmt.Errorf("compacting %s: generation %d was claimed by another compactor: %w", res.Day, gen, ErrRace)
		}
	} else if err != nil {
		return res, fmt.Errorf("compacting %s: claiming generation %d: %w", res.Day, gen, err)
	}
	for _, p := range parts {
		if _, err := c.store.Put(ctx, blob.TableName(tenant, site, p.enc.TableHash.String()), p.enc.Table); err != nil {
			return res, fmt.Errorf("compacting %s: storing a point table: %w", res.Day, err)
		}
	}
	for _, p := range parts {
		_, err := c.store.Put(ctx, p.name, p.enc.Data)
		if errors.Is(err, blob.ErrConflict) {
			return res, fmt.Errorf("compacting %s: %s holds another compactor's output: %w", res.Day, p.name, ErrRace)
		}
		if err != nil {
			return res, fmt.Errorf("compacting %s: storing %s: %w", res.Day, p.name, err)
		}
	}
	// Verify before deleting anything: read every part back and decode it
	// to exactly the samples merged, which the merge streams again part by
	// part.
	i, k := 0, 0
	err = m.each(c.part, nil, func(chunk []telemetry.Sample) error {
		if k == len(parts) {
			return fmt.Errorf("compacting %s: the merge gave more samples the second time; nothing was deleted", res.Day)
		}
		p := parts[k]
		k++
		data, err := c.store.Get(ctx, p.name)
		if err != nil {
			return fmt.Errorf("compacting %s: reading back %s: %w; nothing was deleted", res.Day, p.name, err)
		}
		b, err := batch.Decode(data, tables, c.lim)
		if err != nil {
			return fmt.Errorf("compacting %s: %s does not decode: %w; nothing was deleted", res.Day, p.name, err)
		}
		if len(b.Samples) != len(chunk) {
			return fmt.Errorf("compacting %s: %s holds %d samples, %d merged into it; nothing was deleted", res.Day, p.name, len(b.Samples), len(chunk))
		}
		for j, s := range b.Samples {
			w := chunk[j]
			if s.PointID != w.PointID || s.Time != w.Time || math.Float64bits(s.Value) != math.Float64bits(w.Value) || s.Status != w.Status {
				return fmt.Errorf("compacting %s: %s differs from the merged samples at sample %d; nothing was deleted", res.Day, p.name, i+j)
			}
		}
		i += len(chunk)
		return nil
	})
	if err != nil {
		return res, err
	}
	if i != res.Samples || k != len(parts) {
		return res, fmt.Errorf("compacting %s: the stored parts hold %d samples, %d merged; nothing was deleted", res.Day, i, res.Samples)
	}
	// Asked again: a batch listed above may have become owed while the
	// day was merged (its Observe failed a moment later). Its samples are
	// in the day blob already; its blob stays for the retry, and readers
	// deduplicate.
	if srcNames, err = c.holdOwed(ctx, tenant, site, srcNames, &res); err != nil {
		return res, err
	}
	for _, n := range srcNames {
		// The batch's stored marker first: a retry of it from an agent
		// that never saw the ingest's answer must be told duplicate, and
		// without the blob only the marker says it was stored.
		if tenant, site, agent, seq, ok := blob.ParseBatchName(n); ok {
			if _, err := c.store.Put(ctx, blob.StoredName(blob.ClaimName(tenant, site, agent, seq)), []byte(n+"\n")); err != nil && !errors.Is(err, blob.ErrConflict) {
				return res, fmt.Errorf("compacting %s: marking merged batch %s stored: %w (nothing more was deleted; run compact again)", res.Day, n, err)
			}
		}
		if err := c.store.Delete(ctx, n); err != nil {
			return res, fmt.Errorf("compacting %s: deleting merged batch %s: %w (the day blob has it; run compact again)", res.Day, n, err)
		}
	}
	kept := &generation{gen: gen}
	for _, p := range parts {
		kept.parts = append(kept.parts, p.name)
	}
	if err := c.cleanOld(ctx, append(append(allParts, claimName), kept.parts...), kept, log); err != nil {
		return res, err
	}
	log.Info("day compacted", "generation", gen, "parts", nparts, "sources", res.Sources, "samples", res.Samples,
		"duplicates", res.Duplicates, "conflicts", res.Conflicts, "source_bytes", res.SourceBytes, "bytes", res.Bytes)
	return res, nil
}

// listDay lists what is filed under a day: its batch blobs, and every name
// under its day blobs' prefix (parts of every generation, and claims).
func (c *Compactor) listDay(ctx context.Context, tenant, site string, day time.Time) (batches []string, prefix string, dayBlobs []string, err error) {
	batches, err = c.store.List(ctx, DayPrefix(tenant, site, day))
	if err != nil {
		return nil, "", nil, fmt.Errorf("listing batches: %w", err)
	}
	batches = slices.DeleteFunc(batches, func(n string) bool { return !strings.HasSuffix(n, ".sgb") })
	prefix = dayBlobPrefix(tenant, site, day)
	if dayBlobs, err = c.store.List(ctx, prefix); err != nil {
		return nil, "", nil, fmt.Errorf("listing day blobs: %w", err)
	}
	return batches, prefix, dayBlobs, nil
}

// merge reads the parts of prev (if any) and the sources, in that order,
// and returns a merger holding their samples; its each streams them sorted
// and deduplicated: the first sample for a point and time wins, and later
// ones count as duplicates (the same value and status) or conflicts.
func (c *Compactor) merge(ctx context.Context, tables batch.TableResolver, prev *generation, srcNames []string, res *Result) (*merger, error) {
	m := c.newMerger(tables, res, math.MinInt64, math.MaxInt64)
	if prev != nil {
		if err := m.addParts(ctx, prev.parts); err != nil {
			return nil, err
		}
	}
	if err := m.addSources(ctx, srcNames); err != nil {
		return nil, err
	}
	m.added()
	return m, nil
}

// merger merges the samples of blobs, first one wins, keeping those whose
// time is in [from, to).
//
// It keeps each blob's decoded samples as a run, in the order the blobs
// were added, and merges the runs only when asked (each): a run is sorted
// by point and time already, so the merge needs no map of the day and no
// second copy of it. A whole day in a map cost about 115 bytes a sample at
// its peak (1.6 GB for 10,000 points at one minute); the runs cost the 32
// bytes of the samples themselves.
//
// Past a budget of samples (Options.MergeSamples) it keeps the blobs'
// bytes instead, a few bytes a sample, and each decodes them again for one
// range of point ids at a time, ranges holding about a budget each: the
// memory is bounded by the budget whatever the day holds, at the price of
// a decode of every blob per range. Duplicates are of one point, so they
// meet within a range; ranges go in point order, so the stream is the same.
type merger struct {
	c        *Compactor
	tables   batch.TableResolver
	res      *Result
	from, to int64
	runs     [][]telemetry.Sample
	total    int // samples in [from, to), duplicates included
	// blobs are the bytes of every blob added, in order, and ranged says
	// the runs were dropped for them (past the budget).
	blobs  []namedBlob
	ranged bool
	// perPoint counts the samples in [from, to) of each point, to cut the
	// point ids into ranges.
	perPoint map[uint64]int
	// op names what the merge is for in errors: compacting or reading.
	op string
	// spanned is called with each blob's header, for ReadRange's check
	// of its lookback; nil when not needed.
	spanned func(name string, part bool, h *batch.Header)
}

// namedBlob is a blob's bytes, kept for a ranged merge.
type namedBlob struct {
	name string
	data []byte
}

func (c *Compactor) newMerger(tables batch.TableResolver, res *Result, from, to int64) *merger {
	return &merger{c: c, tables: tables, res: res, from: from, to: to, op: "compacting", perPoint: map[uint64]int{}}
}

func (m *merger) add(name string, part bool, data []byte) error {
	b, err := batch.Decode(data, m.tables, m.c.lim)
	if err != nil {
		return fmt.Errorf("decoding %s: %w", name, err)
	}
	if m.spanned != nil {
		m.spanned(name, part, &b.Header)
	}
	run := m.cut(b.Samples, 0, math.MaxUint64)
	if len(run) == 0 {
		return nil
	}
	m.blobs = append(m.blobs, namedBlob{name, data})
	m.total += len(run)
	for _, s := range run {
		m.perPoint[s.PointID]++
	}
	if m.ranged {
		return nil
	}
	if m.total > m.c.mergeSamples {
		// Past the budget: from here on the runs are made per range.
		m.runs, m.ranged = nil, true
		return nil
	}
	m.runs = append(m.runs, run)
	return nil
}

// added is called once every blob is added: under the budget, the runs
// are all each needs.
func (m *merger) added() {
	if !m.ranged {
		m.blobs, m.perPoint = nil, nil
	}
}

// cut keeps of a decoded blob's samples those in [from, to) of the points
// in [lo, hi], in point and time order, in a slice of their own when they
// are a small part of the blob.
func (m *merger) cut(samples []telemetry.Sample, lo, hi uint64) []telemetry.Sample {
	run := slices.DeleteFunc(samples, func(s telemetry.Sample) bool {
		return s.Time < m.from || s.Time >= m.to || s.PointID < lo || s.PointID > hi
	})
	if len(run) < cap(run)/2 {
		// Most of the blob is outside the range (a day read for its
		// lookback, a range of points): keep only what is in it.
		run = slices.Clone(run)
	}
	if !slices.IsSortedFunc(run, compareKey) {
		// Decode promises point and time order; the merge depends on it,
		// so a decoder that broke it must not make a wrong day blob.
		slices.SortStableFunc(run, compareKey)
	}
	return run
}

// pointRanges cuts the points seen into ranges [lo, hi] of about the
// budget of samples each (a point holding more is a range of its own), in
// point order.
func (m *merger) pointRanges() [][2]uint64 {
	ids := make([]uint64, 0, len(m.perPoint))
	for id := range m.perPoint {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out [][2]uint64
	for i := 0; i < len(ids); {
		n, j := m.perPoint[ids[i]], i+1
		for j < len(ids) && n+m.perPoint[ids[j]] <= m.c.mergeSamples {
			n += m.perPoint[ids[j]]
			j++
		}
		out = append(out, [2]uint64{ids[i], ids[j-1]})
		i = j
	}
	return out
}

// rangeRuns decodes every blob again and returns its samples of the
// points in [lo, hi] as runs, in the order the blobs were added.
func (m *merger) rangeRuns(lo, hi uint64) ([][]telemetry.Sample, int, error) {
	var runs [][]telemetry.Sample
	total := 0
	for _, b := range m.blobs {
		d, err := batch.Decode(b.data, m.tables, m.c.lim)
		if err != nil {
			return nil, 0, fmt.Errorf("%s %s: decoding %s again for points %016x to %016x: %w%s", m.op, m.res.Day, b.name, lo, hi, err, m.nothingDeleted())
		}
		if run := m.cut(d.Samples, lo, hi); len(run) > 0 {
			runs = append(runs, run)
			total += len(run)
		}
	}
	return runs, total, nil
}

// compareKey orders samples by point, then time.
func compareKey(a, b telemetry.Sample) int {
	if c := cmp.Compare(a.PointID, b.PointID); c != 0 {
		return c
	}
	return cmp.Compare(a.Time, b.Time)
}

func (m *merger) read(ctx context.Context, name string) ([]byte, error) {
	data, err := m.c.store.Get(ctx, name)
	if errors.Is(err, blob.ErrNotFound) {
		// Another compactor deleted it after merging it elsewhere.
		return nil, fmt.Errorf("%s vanished: %w", name, ErrRace)
	}
	return data, err
}

// addParts merges the parts of a day generation.
func (m *merger) addParts(ctx context.Context, parts []string) error {
	for _, n := range parts {
		data, err := m.read(ctx, n)
		if err == nil {
			err = m.add(n, true, data)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", m.op, m.res.Day, err)
		}
	}
	return nil
}

// addSources merges batch blobs.
func (m *merger) addSources(ctx context.Context, srcNames []string) error {
	for _, n := range srcNames {
		data, err := m.read(ctx, n)
		if err != nil {
			return fmt.Errorf("%s %s: %w", m.op, m.res.Day, err)
		}
		m.res.SourceBytes += len(data)
		if err := m.add(n, false, data); err != nil {
			var te *pointtable.Error
			if ctx.Err() != nil || errors.As(err, &te) && !te.Missing() && !errors.Is(err, pointtable.ErrDamaged) {
				// Interrupted, or the store failed to give its table:
				// the batch may well be sound.
				return fmt.Errorf("%s %s: %w%s", m.op, m.res.Day, err, m.nothingDeleted())
			}
			// A batch that does not decode was refused by the ingest
			// before it was stored; finding one means damage at rest,
			// which an operator must see: stop, delete nothing.
			return fmt.Errorf("%s %s: %w: the archive holds a damaged batch: restore it from a backup or move it out of the archive%s", m.op, m.res.Day, err, m.nothingDeleted())
		}
		m.res.Sources++
	}
	return nil
}

// nothingDeleted is what a failed compaction adds to its error.
func (m *merger) nothingDeleted() string {
	if m.op == "compacting" {
		return "; nothing was deleted"
	}
	return ""
}

// each merges the runs and calls fn with the merged samples, sorted by
// point, then time, and deduplicated, in consecutive chunks of chunk
// samples (the last may be shorter). The chunk is reused: fn must not keep
// it. Where runs hold the same point and time, the earliest run's sample
// wins (within a run, the first), as the blobs' filing order says; when
// stats is not nil, each later copy counts in it as a duplicate or a
// conflict. each can be called again and streams the same samples.
func (m *merger) each(chunk int, stats *Result, fn func([]telemetry.Sample) error) error {
	e := emitter{buf: make([]telemetry.Sample, 0, min(chunk, m.total, m.c.mergeSamples)), chunk: chunk, stats: stats, fn: fn}
	if !m.ranged {
		if err := e.merge(m.runs); err != nil {
			return err
		}
		return e.flush()
	}
	ranges := m.pointRanges()
	for i, r := range ranges {
		runs, n, err := m.rangeRuns(r[0], r[1])
		if err != nil {
			return err
		}
		m.c.log.Debug("merging a range of points", "day", m.res.Day, "range", i+1, "of", len(ranges), "samples", n)
		if err := e.merge(runs); err != nil {
			return err
		}
	}
	return e.flush()
}

// emitter deduplicates merged samples and hands them on in chunks.
type emitter struct {
	buf   []telemetry.Sample
	chunk int
	stats *Result
	fn    func([]telemetry.Sample) error
	last  telemetry.Sample // the sample kept for its point and time
	have  bool             // last was set
}

// merge emits the samples of runs, each sorted by point and time, merged.
func (e *emitter) merge(runs [][]telemetry.Sample) error {
	h := runHeap{runs: runs, pos: make([]int, len(runs))}
	for r := range runs {
		h.heap = append(h.heap, r)
	}
	for i := len(h.heap)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
	for len(h.heap) > 0 {
		r := h.heap[0]
		s := h.runs[r][h.pos[r]]
		h.advance()
		if e.have && s.PointID == e.last.PointID && s.Time == e.last.Time {
			if e.stats != nil {
				if math.Float64bits(e.last.Value) == math.Float64bits(s.Value) && e.last.Status == s.Status {
					e.stats.Duplicates++
				} else {
					e.stats.Conflicts++
				}
			}
			continue
		}
		e.last, e.have = s, true
		e.buf = append(e.buf, s)
		if len(e.buf) == e.chunk {
			if err := e.fn(e.buf); err != nil {
				return err
			}
			e.buf = e.buf[:0]
		}
	}
	return nil
}

// flush hands on the last, short chunk.
func (e *emitter) flush() error {
	if len(e.buf) == 0 {
		return nil
	}
	return e.fn(e.buf)
}

// sorted returns the merged samples sorted by point, then time, in one
// slice, and lets go of the runs.
func (m *merger) sorted() ([]telemetry.Sample, error) {
	out := make([]telemetry.Sample, 0, m.total)
	// Small chunks: each's buffer is not a third copy of the day.
	err := m.each(64<<10, m.res, func(chunk []telemetry.Sample) error {
		out = append(out, chunk...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.runs, m.blobs = nil, nil
	if len(out) < cap(out)*9/10 {
		out = slices.Clone(out) // many duplicates: give the rest back
	}
	return out, nil
}

// runHeap is a min-heap of runs by their next sample's point and time, then
// by run: the run filed first wins a tie.
type runHeap struct {
	runs [][]telemetry.Sample
	pos  []int // next sample of each run
	heap []int // runs not exhausted
}

func (h *runHeap) less(a, b int) bool {
	x, y := h.runs[a][h.pos[a]], h.runs[b][h.pos[b]]
	if x.PointID != y.PointID {
		return x.PointID < y.PointID
	}
	if x.Time != y.Time {
		return x.Time < y.Time
	}
	return a < b
}

func (h *runHeap) down(i int) {
	n := len(h.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h.less(h.heap[r], h.heap[l]) {
			c = r
		}
		if !h.less(h.heap[c], h.heap[i]) {
			return
		}
		h.heap[i], h.heap[c] = h.heap[c], h.heap[i]
		i = c
	}
}

// advance moves the top run past its next sample.
func (h *runHeap) advance() {
	r := h.heap[0]
	h.pos[r]++
	if h.pos[r] == len(h.runs[r]) {
		last := len(h.heap) - 1
		h.heap[0] = h.heap[last]
		h.heap = h.heap[:last]
	}
	if len(h.heap) > 0 {
		h.down(0)
	}
}

// ReadDay returns the samples of tenant/site whose time is in day (UTC,
// from 00:00 to the next 00:00), sorted by point and time and
// deduplicated, as readers of the archive should see them: ReadRange over
// the day.
func (c *Compactor) ReadDay(ctx context.Context, tenant, site string, day time.Time) ([]telemetry.Sample, error) {
	d := day.UTC().Truncate(24 * time.Hour)
	return c.ReadRange(ctx, tenant, site, d, d.Add(24*time.Hour))
}

// ReadRange returns the samples of tenant/site whose time is in [from,
// to), sorted by point and time and deduplicated.
//
// The archive files a batch under the day and hour of its first sample,
// and a day generation under the day of the batches it merged, so a blob
// filed under one day can hold samples of the days after it, and none of
// the days before. ReadRange therefore reads the days from that of from
// minus Options.Lookback to that of the range's last instant — each day's
// newest generation and the batches not compacted yet — and cuts their
// samples to the range. Where the same point and time is in several
// blobs, the one filed first wins (within a day, the generation before
// the batches, as compaction does). A blob that spans more than the
// lookback is logged as a warning: batches like it filed before the days
// read would be missed.
//
// A compaction running meanwhile (on another replica) may delete a batch
// between the listing and the read, having merged it into a day blob:
// ReadRange then starts over, up to a bound, as Day does.
func (c *Compactor) ReadRange(ctx context.Context, tenant, site string, from, to time.Time) ([]telemetry.Sample, error) {
	m, err := c.gather(ctx, tenant, site, from, to)
	if err != nil {
		return nil, err
	}
	return m.sorted()
}

// EachRangeChunk is how many samples EachRange hands its fn at a time.
const EachRangeChunk = 64 << 10

// EachRange streams what ReadRange returns: it reads the same blobs, then
// calls fn with the samples sorted by point and time and deduplicated, in
// consecutive chunks of at most EachRangeChunk. fn must not keep a chunk:
// it is reused. An error from fn stops the stream and is returned. It
// returns how many samples it streamed.
//
// ReadRange holds the decoded blobs and a sorted copy of the range at
// once; EachRange holds only the decoded blobs and one chunk, about half
// the memory, so an export of a large site's day should stream.
// Every blob is read before fn is first called, so a start over (a
// compaction deleting a batch meanwhile) never repeats a chunk.
func (c *Compactor) EachRange(ctx context.Context, tenant, site string, from, to time.Time, fn func([]telemetry.Sample) error) (int, error) {
	m, err := c.gather(ctx, tenant, site, from, to)
	if err != nil {
		return 0, err
	}
	n := 0
	err = m.each(EachRangeChunk, m.res, func(chunk []telemetry.Sample) error {
		n += len(chunk)
		return fn(chunk)
	})
	return n, err
}

// EachDay is EachRange over day (UTC), as ReadDay is ReadRange over it.
func (c *Compactor) EachDay(ctx context.Context, tenant, site string, day time.Time, fn func([]telemetry.Sample) error) (int, error) {
	d := day.UTC().Truncate(24 * time.Hour)
	return c.EachRange(ctx, tenant, site, d, d.Add(24*time.Hour), fn)
}

// gather reads what ReadRange and EachRange merge, starting over when a
// compaction changed the archive meanwhile.
func (c *Compactor) gather(ctx context.Context, tenant, site string, from, to time.Time) (*merger, error) {
	if !from.Before(to) {
		return nil, fmt.Errorf("reading %s/%s from %s to %s: the range is empty: the start must be before the end", tenant, site, from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339))
	}
	for attempt := 1; ; attempt++ {
		m, err := c.readRange(ctx, tenant, site, from, to)
		if !errors.Is(err, ErrRace) || attempt == maxAttempts {
			return m, err
		}
		c.log.Info("a compaction changed the archive while it was read; starting over", "tenant", tenant, "site", site, "attempt", attempt)
	}
}

func (c *Compactor) readRange(ctx context.Context, tenant, site string, from, to time.Time) (*merger, error) {
	first := from.Add(-c.lookback).UTC().Truncate(24 * time.Hour)
	last := to.Add(-time.Millisecond).UTC().Truncate(24 * time.Hour)
	res := Result{Day: from.UTC().Format(time.DateOnly)}
	m := c.newMerger(c.tables.Resolver(ctx, tenant, site), &res, from.UnixMilli(), to.UnixMilli())
	m.op = "reading " + tenant + "/" + site
	var (
		filed   time.Time
		long    int // blobs spanning more than the lookback
		longest time.Duration
		example string
	)
	m.spanned = func(name string, part bool, h *batch.Header) {
		// A batch's span is its own; a day part's is that of the batches
		// it merged, which began on its day, so only a part reaching past
		// the lookback after its day's end proves a long batch.
		start := h.Start
		if part {
			start = filed.Add(24*time.Hour - time.Millisecond).UnixMilli()
		}
		if span := time.Duration(h.End-start) * time.Millisecond; span > c.lookback {
			long++
			if span > longest {
				longest, example = span, name
			}
		}
	}
	for d := first; !d.After(last); d = d.Add(24 * time.Hour) {
		filed = d
		res.Day = d.Format(time.DateOnly)
		srcNames, prefix, existing, err := c.listDay(ctx, tenant, site, d)
		if err != nil {
			return nil, fmt.Errorf("reading %s/%s %s: %w", tenant, site, res.Day, err)
		}
		if gens, _ := generations(prefix, existing); len(gens) > 0 {
			if err := m.addParts(ctx, gens[len(gens)-1].parts); err != nil {
				return nil, err
			}
		}
		if err := m.addSources(ctx, srcNames); err != nil {
			return nil, err
		}
	}
	if long > 0 {
		c.log.Warn("blobs span more than the lookback: samples of blobs like them filed before the days read are missing from the range; raise the lookback",
			"tenant", tenant, "site", site, "blobs", long, "longest", longest.String(), "blob", example,
			"lookback", c.lookback.String(), "first_day_read", first.Format(time.DateOnly))
	}
	m.added()
	return m, nil
}

// cleanOld deletes every day part (and claim) but those of keep: older
// generations, merged into keep, and incomplete ones a crash left behind. An incomplete
// generation newer than keep may be another compactor's work in progress,
// so it is left alone.
func (c *Compactor) cleanOld(ctx context.Context, all []string, keep *generation, log *slog.Logger) error {
	if keep == nil {
		return nil
	}
	for _, n := range all {
		if slices.Contains(keep.parts, n) {
			continue
		}
		if g, ok := genOf(n); ok && (g > keep.gen || g == keep.gen && strings.HasSuffix(n, ".claim")) {
			// Newer: maybe another compactor's work in progress. The
			// claim of the generation kept stays as long as it does, so
			// no compactor that listed the day before it was complete
			// can write a rival generation under the same number.
			continue
		}
		if err := c.store.Delete(ctx, n); err != nil {
			return fmt.Errorf("deleting superseded day part %s: %w", n, err)
		}
		log.Debug("deleted superseded day part", "blob", n)
	}
	return nil
}

// genOf reads the generation from a part name.
func genOf(name string) (int, bool) {
	i := strings.LastIndex(name, ".g")
	if i < 0 {
		return 0, false
	}
	j := strings.IndexByte(name[i+2:], '.')
	if j < 0 {
		return 0, false
	}
	g, err := strconv.Atoi(name[i+2 : i+2+j])
	return g, err == nil
}
