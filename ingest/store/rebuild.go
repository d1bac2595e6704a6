package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Defaults of RebuildOptions.
const (
	// DefaultProgressEvery is how many blobs pass between progress lines.
	DefaultProgressEvery = 1000
	// DefaultPrefetch is how many blobs are fetched ahead of the one
	// being decoded.
	DefaultPrefetch = 8
	// DefaultFlushSamples is how many decoded samples a rebuild holds
	// before writing them in one transaction: memory stays bounded and a
	// transaction short, however large the archive.
	DefaultFlushSamples = 500_000
)

// ArchiveEpoch is the first month a rebuild looks for batches in when
// RebuildOptions.Since is zero. The archive's layout has no index of its
// months, so a rebuild lists month by month; the ingest refuses samples
// older than its MaxAge (ten years by default), and Sightglass archives
// began long after this.
var ArchiveEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// RebuildOptions tune Rebuild. The zero value rebuilds every site of the
// archive.
type RebuildOptions struct {
	// Tenant and Site choose what to rebuild: both set, one site; Tenant
	// alone, every site of that tenant; neither, every site.
	Tenant, Site string
	// DryRun reads and decodes every blob and reports what a rebuild
	// would write, writing nothing.
	DryRun bool
	// Logger receives progress and every skipped blob; nil discards them.
	Logger *slog.Logger
	// ProgressEvery is how many blobs pass between progress lines
	// (DefaultProgressEvery when zero).
	ProgressEvery int
	// FlushSamples is how many samples are held before being written in
	// one transaction (DefaultFlushSamples when zero).
	FlushSamples int
	// Prefetch is how many blobs are fetched ahead of the one being
	// decoded (DefaultPrefetch when zero); each may be held in memory.
	Prefetch int
	// Since is the first month scanned (ArchiveEpoch when zero).
	Since time.Time
	// Limits bound the decoder, as at the ingest.
	Limits batch.Limits
}

// SkippedBlob is a blob a rebuild could not use, and why.
type SkippedBlob struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// RebuildSite says what a rebuild did for one site.
type RebuildSite struct {
	Tenant string `json:"tenant"`
	Site   string `json:"site"`
	// Batches and Parts count the batch blobs and compacted day parts
	// read and decoded.
	Batches int `json:"batches"`
	Parts   int `json:"parts"`
	// Samples counts the samples folded into the hot store (or that
	// would be, in a dry run).
	Samples int64 `json:"samples"`
	// Duplicates counts samples of batch blobs that a day's compacted
	// parts, or an earlier batch blob of the day, hold already: a
	// compaction that stopped before deleting its sources leaves them.
	// They are counted once, as the next compaction would keep them.
	Duplicates int64         `json:"duplicates"`
	Skipped    []SkippedBlob `json:"skipped"`
	// Complete is false when the rebuild stopped (an error or Ctrl-C)
	// before the site was done: run it again.
	Complete bool `json:"complete"`
}

// RebuildReport says what a rebuild did.
type RebuildReport struct {
	DryRun bool          `json:"dry_run"`
	Sites  []RebuildSite `json:"sites"`
	// Totals over Sites.
	Blobs      int   `json:"blobs"`
	Samples    int64 `json:"samples"`
	Duplicates int64 `json:"duplicates"`
	Skipped    int   `json:"skipped"`
}

// Rebuild refills the hot store's latest values and rollups of the chosen
// sites from the blob archive: every batch blob and compacted day part,
// decoded once and folded in through the code ObserveBatch uses, so the
// result is what live ingestion wrote. Each site's latest values and
// rollups are cleared in the transaction that writes its first samples;
// running Rebuild again gives the same store. Users, sessions, agents,
// tokens, the catalogue and the audit log are not touched: the archive
// holds none of them. Agent health is left to the agents' next uploads.
//
// It streams: one month's blob names, RebuildOptions.Prefetch blobs and at most
// RebuildOptions.FlushSamples decoded samples are held at a time, except
// that on a day with both compacted parts and batch blobs left beside them
// the samples of those batch blobs are held to count each sample once.
// Finding the sites (without both Tenant and Site) lists the archive's
// (or the tenant's) names once, and then only the months holding blobs
// are read; a named site is read month by month from Since.
//
// A blob that cannot be read or decoded is logged, recorded in the report
// and skipped; the rest are rebuilt. The exception is a batch whose point
// table the archive fails to give (an outage, not a missing or damaged
// table): it is retried a few times, then the rebuild stops with an error,
// since skipping it would leave the hot store quietly incomplete. A site none of whose blobs could be
// read keeps its old rows. An error is returned only when the
// rebuild cannot go on (the archive cannot be listed, the hot store cannot
// be written, ctx ended); the report then says which site is incomplete.
//
// Run it with no ingest writing to this hot store, or a batch arriving
// while its day is rebuilt may be counted twice.
func (s *DB) Rebuild(ctx context.Context, archive blob.Store, o RebuildOptions) (RebuildReport, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = DefaultProgressEvery
	}
	if o.FlushSamples <= 0 {
		o.FlushSamples = DefaultFlushSamples
	}
	if o.Prefetch <= 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.Since.IsZero() {
		o.Since = ArchiveEpoch
	}
	rep := RebuildReport{DryRun: o.DryRun}
	sites, err := rebuildSites(ctx, archive, o.Tenant, o.Site)
	if err != nil {
		return rep, err
	}
	prog := &progress{every: o.ProgressEvery}
	// One cache for every site: tables are keyed by site, and bounded.
	tables := pointtable.New(archive, nil)
	for _, st := range sites {
		ref := st.ref
		r := &rebuilder{
			db: s, archive: archive, ref: ref, months: st.months, o: o, prog: prog, now: s.now(),
			log:    o.Logger.With("tenant", ref.Tenant, "site", ref.Site),
			tables: tables,
			res:    RebuildSite{Tenant: ref.Tenant, Site: ref.Site, Skipped: []SkippedBlob{}},
		}
		err := r.run(ctx)
		rep.Sites = append(rep.Sites, r.res)
		rep.Blobs += r.res.Batches + r.res.Parts
		rep.Samples += r.res.Samples
		rep.Duplicates += r.res.Duplicates
		rep.Skipped += len(r.res.Skipped)
		if err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// siteMonths is a site to rebuild and the months its blobs are in; nil
// months means not known: every month is listed.
type siteMonths struct {
	ref    SiteRef
	months []time.Time
}

// rebuildSites lists the sites to rebuild, sorted. Finding them takes a
// listing of the archive's names, which also tells the months each site
// has blobs in: a named site is not listed as a whole, since its names
// include a claim for every batch it ever sent.
func rebuildSites(ctx context.Context, archive blob.Store, tenant, site string) ([]siteMonths, error) {
	switch {
	case tenant != "" && site != "":
		return []siteMonths{{ref: SiteRef{Tenant: tenant, Site: site}}}, nil
	case site != "":
		return nil, errors.New("rebuilding a site: the site needs its tenant too")
	}
	prefix := ""
	if tenant != "" {
		prefix = tenant + "/"
	}
	names, err := archive.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("listing the archive's sites: %w", err)
	}
	var out []siteMonths
	seen := map[time.Time]bool{}
	for _, n := range names {
		f := strings.Split(n, "/")
		if len(f) < 3 {
			continue // not under {tenant}/{site}/
		}
		ref := SiteRef{Tenant: f[0], Site: f[1]}
		if len(out) == 0 || out[len(out)-1].ref != ref {
			// Names are sorted, so a site's are together.
			out = append(out, siteMonths{ref: ref, months: []time.Time{}})
			clear(seen)
		}
		if m, ok := monthOfName(f[2:]); ok && !seen[m] {
			seen[m] = true
			cur := &out[len(out)-1]
			cur.months = append(cur.months, m)
		}
	}
	slices.SortFunc(out, func(a, b siteMonths) int {
		return strings.Compare(a.ref.Tenant+"/"+a.ref.Site, b.ref.Tenant+"/"+b.ref.Site)
	})
	for _, s := range out {
		slices.SortFunc(s.months, func(a, b time.Time) int { return a.Compare(b) })
	}
	return out, nil
}

// monthOfName is the month of a batch blob ({yyyy}/{mm}/{dd}/{hh}/…) or a
// day part (days/{yyyy}/{mm}/…), from the segments of its name after the
// site.
func monthOfName(f []string) (time.Time, bool) {
	if len(f) > 0 && f[0] == "days" {
		f = f[1:]
	}
	if len(f) < 3 {
		return time.Time{}, false
	}
	m, err := time.Parse("2006/01", f[0]+"/"+f[1])
	return m, err == nil
}

// progress counts blobs across sites for the progress lines.
type progress struct {
	every, blobs, skipped int
	samples               int64
}

// rebuildItem is one decoded blob waiting to be written.
type rebuildItem struct {
	agent   string // the batch's agent; compact.AgentID for a day part
	seq     uint64
	sentAt  int64
	batch   bool // a batch blob, remembered in observed like a live one
	samples []telemetry.Sample
}

// rebuilder rebuilds one site.
type rebuilder struct {
	db      *DB
	archive blob.Store
	ref     SiteRef
	months  []time.Time // to list; nil: every month from o.Since
	o       RebuildOptions
	log     *slog.Logger
	prog    *progress
	tables  *pointtable.Archive
	now     time.Time
	res     RebuildSite

	pending        []rebuildItem
	pendingSamples int
	cleared        bool // the site's old rows are gone (in a committed transaction)
}

func (r *rebuilder) run(ctx context.Context) error {
	r.log.Info("rebuilding site", "dry_run", r.o.DryRun)
	months := r.months
	if months == nil {
		last := r.now.AddDate(0, 1, 0) // agents' clocks may run a little ahead
		for m := monthOf(r.o.Since); !m.After(last); m = m.AddDate(0, 1, 0) {
			months = append(months, m)
		}
	}
	for _, m := range months {
		if m.Before(monthOf(r.o.Since)) {
			continue
		}
		batches, err := r.archive.List(ctx, fmt.Sprintf("%s/%s/%04d/%02d/", r.ref.Tenant, r.ref.Site, m.Year(), m.Month()))
		if err != nil {
			return r.fail(ctx, fmt.Errorf("listing the batches of %s in %s: %w", r.ref, m.Format("2006-01"), err))
		}
		parts, err := r.archive.List(ctx, compact.MonthPrefix(r.ref.Tenant, r.ref.Site, m))
		if err != nil {
			return r.fail(ctx, fmt.Errorf("listing the day blobs of %s in %s: %w", r.ref, m.Format("2006-01"), err))
		}
		if len(batches) == 0 && len(parts) == 0 {
			continue
		}
		for d := m; d.Month() == m.Month(); d = d.AddDate(0, 0, 1) {
			dayBatches, rest := dayNames(batches, compact.DayPrefix(r.ref.Tenant, r.ref.Site, d))
			batches = rest
			if err := r.day(ctx, d, dayBatches, compact.NewestGeneration(parts, r.ref.Tenant, r.ref.Site, d)); err != nil {
				return r.fail(ctx, err)
			}
		}
	}
	if err := r.flush(ctx, true); err != nil {
		return r.fail(ctx, err)
	}
	r.res.Complete = true
	r.log.Info("site rebuilt", "batches", r.res.Batches, "parts", r.res.Parts, "samples", r.res.Samples,
		"duplicates", r.res.Duplicates, "skipped", len(r.res.Skipped), "dry_run", r.o.DryRun)
	return nil
}

// fail says what stopping now leaves behind.
func (r *rebuilder) fail(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		err = fmt.Errorf("rebuild of %s interrupted: %w", r.ref, ctx.Err())
	}
	if r.cleared {
		return fmt.Errorf("%w: the site's latest values and rollups are only partly rebuilt; run the rebuild again", err)
	}
	return fmt.Errorf("%w: the site's latest values and rollups were not changed", err)
}

// monthOf is the first instant of t's month, UTC.
func monthOf(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// dayNames splits sorted names into the batch blobs under dayPrefix and
// the names after them. Anything else there (a stray file) is not a batch
// and is left out.
func dayNames(names []string, dayPrefix string) (day, rest []string) {
	i := 0
	for i < len(names) && names[i] < dayPrefix {
		i++
	}
	j := i
	for j < len(names) && strings.HasPrefix(names[j], dayPrefix) {
		if strings.HasSuffix(names[j], ".sgb") {
			day = append(day, names[j])
		}
		j++
	}
	return day, names[j:]
}

// day rebuilds one day: its compacted parts, then the batch blobs beside
// them. Without parts, each batch is folded as it was at the ingest. With
// parts, the samples of the batch blobs are held, and only those in no
// part and no earlier batch blob are folded: a compaction merges batch
// blobs into the parts before deleting them, so the same sample may be in
// both.
func (r *rebuilder) day(ctx context.Context, d time.Time, batches, parts []string) error {
	if len(parts) == 0 {
		return r.readEach(ctx, batches, false, func(it rebuildItem) error { return r.add(ctx, it) })
	}
	type at struct{ item, sample int }
	var held []rebuildItem
	var dup [][]bool
	seen := map[[2]int64]at{}
	err := r.readEach(ctx, batches, false, func(it rebuildItem) error {
		marks := make([]bool, len(it.samples))
		for i, smp := range it.samples {
			k := [2]int64{int64(smp.PointID), smp.Time}
			if _, ok := seen[k]; ok {
				marks[i] = true // an earlier batch blob of the day has it: its sample wins, as in compaction
				continue
			}
			seen[k] = at{len(held), i}
		}
		held = append(held, it)
		dup = append(dup, marks)
		return nil
	})
	if err != nil {
		return err
	}
	err = r.readEach(ctx, parts, true, func(it rebuildItem) error {
		for _, smp := range it.samples {
			if a, ok := seen[[2]int64{int64(smp.PointID), smp.Time}]; ok {
				dup[a.item][a.sample] = true
			}
		}
		return r.add(ctx, it)
	})
	if err != nil {
		return err
	}
	for i, it := range held {
		kept := it.samples[:0]
		for j, smp := range it.samples {
			if !dup[i][j] {
				kept = append(kept, smp)
			}
		}
		r.res.Duplicates += int64(len(it.samples) - len(kept))
		it.samples = kept
		if err := r.add(ctx, it); err != nil {
			return err
		}
	}
	if len(held) > 0 {
		r.log.Debug("day has compacted parts and batch blobs beside them", "day", d.Format(time.DateOnly),
			"parts", len(parts), "batches", len(held))
	}
	return nil
}

// readEach reads the blobs named, in order, and calls fn with each one
// that decodes; the others are skipped and recorded by use. Up to
// o.Prefetch Gets are in flight ahead of the one decoded, since on Azure
// a Get is a round trip and the archive holds many small batches; all of
// them have ended when readEach returns.
func (r *rebuilder) readEach(ctx context.Context, names []string, part bool, fn func(rebuildItem) error) error {
	type got struct {
		data []byte
		err  error
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	pending := make(chan chan got, r.o.Prefetch)
	wg.Go(func() {
		defer close(pending)
		for _, n := range names {
			ch := make(chan got, 1)
			select {
			case pending <- ch:
			case <-ctx.Done():
				return
			}
			wg.Go(func() {
				data, err := r.archive.Get(ctx, n)
				ch <- got{data, err}
			})
		}
	})
	i := 0
	for ch := range pending {
		g := <-ch
		it, ok, err := r.use(ctx, names[i], part, g.data, g.err)
		i++
		if err != nil {
			return err
		}
		if ok {
			if err := fn(it); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// use decodes one blob got from the archive (or the error getting it). ok
// is false when the blob was skipped (recorded and logged); err is set
// only when the rebuild must stop.
func (r *rebuilder) use(ctx context.Context, name string, part bool, data []byte, err error) (it rebuildItem, ok bool, _ error) {
	if ctx.Err() != nil {
		return it, false, ctx.Err()
	}
	if err != nil && !errors.Is(err, blob.ErrNotFound) {
		// The archive failing to give the blob says nothing about the
		// blob: skipping it would leave the hot store short after an
		// outage, as a table it failed to give would.
		return it, false, fmt.Errorf("reading %s: %w: the archive did not answer, so the rebuild stopped rather than leave the blob out: check that the archive is reachable, then run the rebuild again", name, err)
	}
	if err == nil {
		it, err = r.decodeRetrying(ctx, name, part, data)
	}
	if ctx.Err() != nil {
		return it, false, ctx.Err()
	}
	if tableUnavailable(err) {
		// The blob is likely sound and the archive failing: skipping it
		// would leave the hot store quietly short of it after an outage.
		return it, false, fmt.Errorf("decoding %s: %w: the archive did not give the batch's point table in %d attempts, so the rebuild stopped rather than leave the batch out: check that the archive is reachable, then run the rebuild again", name, err, tableAttempts)
	}
	r.prog.blobs++
	if err != nil {
		reason := err.Error()
		if errors.Is(err, blob.ErrNotFound) {
			reason += " (a compaction ran during the rebuild: run it again)"
		}
		r.res.Skipped = append(r.res.Skipped, SkippedBlob{Name: name, Reason: reason})
		r.prog.skipped++
		r.log.Error("skipping a blob that cannot be read", "blob", name, "err", err)
	} else if part {
		r.res.Parts++
	} else {
		r.res.Batches++
	}
	if r.prog.blobs%r.prog.every == 0 {
		r.log.Info("rebuild progress", "blobs", r.prog.blobs, "samples", r.prog.samples, "skipped", r.prog.skipped, "at", name)
	}
	return it, err == nil, nil
}

// Retries of a blob whose point table the archive failed to give: a few
// seconds' hiccup of the store is ridden out; a longer outage stops the
// site.
const (
	tableAttempts  = 4
	tableFirstWait = 100 * time.Millisecond // doubled after each attempt
)

// decodeRetrying decodes a blob, again after a short wait while the
// archive fails to give its point table (tableUnavailable). A table that
// failed is not cached, so each attempt reads it anew.
func (r *rebuilder) decodeRetrying(ctx context.Context, name string, part bool, data []byte) (rebuildItem, error) {
	wait := tableFirstWait
	for attempt := 1; ; attempt++ {
		it, err := r.decode(ctx, name, part, data)
		if !tableUnavailable(err) || attempt == tableAttempts || ctx.Err() != nil {
			return it, err
		}
		r.log.Warn("the archive failed to give a batch's point table; retrying", "blob", name, "attempt", attempt, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return it, ctx.Err()
		case <-t.C:
		}
		wait *= 2
	}
}

// decode decodes one blob and checks its header against its name.
func (r *rebuilder) decode(ctx context.Context, name string, part bool, data []byte) (rebuildItem, error) {
	b, err := batch.Decode(data, r.tables.Resolver(ctx, r.ref.Tenant, r.ref.Site), r.o.Limits)
	if err != nil {
		return rebuildItem{}, err
	}
	if err := r.checkHeader(name, part, &b.Header); err != nil {
		return rebuildItem{}, err
	}
	return rebuildItem{agent: b.AgentID, seq: b.Seq, sentAt: b.SentAt, batch: !part, samples: b.Samples}, nil
}

// tableUnavailable reports whether err is the archive failing to give a
// point table, as opposed to the table being missing or damaged (which
// make the blob unusable and are skipped): as in compaction, the blob may
// well be sound.
func tableUnavailable(err error) bool {
	var te *pointtable.Error
	return errors.As(err, &te) && !te.Missing() && !errors.Is(err, pointtable.ErrDamaged)
}

// checkHeader refuses a blob whose header disagrees with where it is
// stored: a batch under another agent's, seq's or site's name was moved
// or damaged at rest, and folding it in would credit the wrong site.
func (r *rebuilder) checkHeader(name string, part bool, h *batch.Header) error {
	if h.Site != r.ref.Site {
		return fmt.Errorf("the blob holds site %q, but it is stored under site %q", h.Site, r.ref.Site)
	}
	if part {
		if h.AgentID != compact.AgentID {
			return fmt.Errorf("a day part's header names agent %q, not %q", h.AgentID, compact.AgentID)
		}
		return nil
	}
	if want := fmt.Sprintf("/%s-%020d.sgb", h.AgentID, h.Seq); !strings.HasSuffix(name, want) {
		return fmt.Errorf("the batch is seq %d of agent %q, which is not the name it is stored under", h.Seq, h.AgentID)
	}
	return nil
}

// add queues a decoded blob and writes the queue once it holds enough.
func (r *rebuilder) add(ctx context.Context, it rebuildItem) error {
	r.pending = append(r.pending, it)
	r.pendingSamples += len(it.samples)
	r.res.Samples += int64(len(it.samples))
	r.prog.samples += int64(len(it.samples))
	if r.pendingSamples >= r.o.FlushSamples {
		return r.flush(ctx, false)
	}
	return nil
}

// flush writes the queued blobs in one transaction; the first also clears
// the site's old rows, and the last (final) names the agents of points
// whose newest sample came from a day part.
func (r *rebuilder) flush(ctx context.Context, final bool) error {
	items := r.pending
	r.pending, r.pendingSamples = nil, 0
	if r.o.DryRun || (len(items) == 0 && (!final || !r.cleared)) {
		return nil
	}
	now := ms(r.now)
	from5 := ms(r.now.Add(-Keep5Min))
	err := r.db.tx(ctx, func(tx *sql.Tx) error {
		if !r.cleared {
			for _, q := range []string{`DELETE FROM latest WHERE tenant = ? AND site = ?`, `DELETE FROM rollups WHERE tenant = ? AND site = ?`} {
				if _, err := tx.ExecContext(ctx, q, r.ref.Tenant, r.ref.Site); err != nil {
					return fmt.Errorf("clearing the old rows: %w", err)
				}
			}
			if err := putSite(ctx, tx, r.ref, "", now); err != nil {
				return err
			}
		}
		for _, it := range items {
			if err := newFold(it.samples, from5).write(ctx, tx, r.ref, it.agent); err != nil {
				return err
			}
			if it.batch {
				// A retry of this batch by its agent must not count twice.
				at := it.sentAt
				if at <= 0 {
					at = now
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO observed (agent_id, seq, at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
					it.agent, int64(it.seq), at); err != nil {
					return err
				}
			}
		}
		if final {
			// A day part does not say which agent read a sample; the
			// catalogue does, for the points it lists.
			_, err := tx.ExecContext(ctx, `UPDATE latest SET agent_id = (SELECT c.agent_id FROM catalog c
					WHERE c.tenant = latest.tenant AND c.site = latest.site AND c.point_id = latest.point_id)
				WHERE tenant = ? AND site = ? AND agent_id = ? AND EXISTS (SELECT 1 FROM catalog c
					WHERE c.tenant = latest.tenant AND c.site = latest.site AND c.point_id = latest.point_id)`,
				r.ref.Tenant, r.ref.Site, compact.AgentID)
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("writing the rebuilt rows of %s: %w", r.ref, err)
	}
	r.cleared = true
	return nil
}
