package opcua

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// historyPageSize is how many values one HistoryRead asks for per node at
// most; historyMinPage is the least it shrinks to for a slow server.
// historyMaxPages bounds the pages read for one gap.
const (
	historyPageSize = 1000
	historyMinPage  = 10
	historyMaxPages = 100
)

// backfillPagesPerRead is how many HistoryRead requests (or Historizing
// checks) one Read makes at most, so the live values of a poll never wait
// long behind history.
const backfillPagesPerRead = 4

// maxJobFailures is how many requests in a row may fail transiently (time
// out, find the connection gone, find the server busy) before a gap is
// given up.
const maxJobFailures = 10

// transient reports failures worth trying again at a later Read.
func transient(err error) bool {
	return isConnGone(err) || isBusy(err) || errors.Is(err, ua.StatusBadTimeout) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// maxJobsPerPoint bounds the gaps waiting per point: a server that drops
// the session again and again while its history is slow cannot pile up
// work (and memory) without end. The oldest gap goes first.
const maxJobsPerPoint = 3

// A backfill job is one point's gap still to read from the server's
// history: values logged in [from, to). Jobs are made when a session opens
// and worked off page by page by later Reads (runBackfill), never by
// Connect, so a long history cannot keep a device from coming up. They
// live in memory: Close and Connect keep them (except the progress of a
// Read not committed, which Close rewinds). Across agent restarts the
// history points' jobs and marks travel in the driver's checkpoint
// (checkpoint.go), which the agent stores with the samples and restores,
// so a restart backfills only the gap since the last committed time; a
// subscribed point's gap without history: true is not carried.
type backfillJob struct {
	p driver.Point
	// from is the earliest time still to read; it moves past each page.
	from time.Time
	// to is the end, exclusive: the point's first live sample after the
	// session opened (or the opening itself when that sample was left
	// out), zero until known.
	to time.Time
	// opened is when the session that made the job opened (agent time).
	opened time.Time
	// session is the session cont belongs to; cont is the server's
	// continuation point, only valid in that session, and contFrom the
	// start time of the request that began that chain of pages (a
	// continued request repeats its details).
	session  int
	cont     []byte
	contFrom time.Time
	pages    int
	samples  int
	// failures counts the requests in a row that failed transiently.
	failures int
	// subscribed: the gap is a subscription's (values queued on the
	// server when the session dropped); one not filled is counted.
	subscribed bool
	// check: whether the server historizes the node is not known yet (a
	// subscribed point without history: true).
	check bool
}

// planBackfill makes the jobs for a session that just opened, the
// session-th: on the driver's first session, the configured window
// (backfill_max) of every history: true point; after a reconnect, each
// history: true point's and each subscribed point's gap since its last
// sample. Jobs left from earlier sessions stay, their continuation points
// forgotten. The caller holds d.mu.
func (d *Driver) planBackfill(first bool, session int, opened time.Time) {
	floor := opened.Add(-d.cfg.backfillMax)
	open := d.closeEnds()
	d.tl.newSession()
	added := 0
	for _, p := range d.pointList {
		pc := d.points[p.Ref]
		if !pc.history && !pc.subscribe {
			continue
		}
		j := &backfillJob{p: p, opened: opened, session: session, subscribed: pc.subscribe && !first, check: !pc.history}
		if o := open[p.ID]; o != nil {
			// The point was not heard since o was made: o's gap goes on
			// into this session and ends at its first sample, covering
			// the gap a new job would (which would read it twice).
			o.subscribed = o.subscribed || j.subscribed
			continue
		}
		// A point restored from a checkpoint has a place already: its
		// first session fills the gap since, like a reconnect.
		if first && !d.resumed[p.Ref] {
			if !pc.history {
				continue
			}
			j.from = floor
		} else {
			last := d.tl.of(p.ID).last
			// Values a retired subscription left for the next Read are
			// not lost: the gap starts after the newest of them.
			for _, dv := range d.carry[p.Ref] {
				if ms, ok := valueTime(dv); ok && ms > last {
					last = ms
				}
			}
			if last == 0 {
				continue // nothing read before: no gap known
			}
			j.from = time.UnixMilli(last + 1)
			if j.from.Before(floor) {
				j.from = floor
			}
		}
		d.addJob(j)
		added++
	}
	for _, j := range d.jobs {
		if j.session != session {
			j.cont = nil
		}
	}
	if added > 0 {
		d.log.Info("backfilling from the server's history over the next reads", "points", added, "first_session", first)
	}
}

// closeEnds fixes, before a new session makes the marks forget what the
// last one heard, the end of every job no Read fixed in that session (none
// got as far as its backfill): else the new session's first sample would
// end it, and it would read again from history what the last session
// read live, and the new session's own gap. It returns, by point, the
// jobs whose point was not heard, which stay open. Jobs a rewind or a
// checkpoint made (session -1) are left alone: a rewound window must read
// again up to the next session, the uncommitted live samples included.
// The caller holds d.mu.
func (d *Driver) closeEnds() map[uint64]*backfillJob {
	open := map[uint64]*backfillJob{}
	for _, j := range d.jobs {
		if !j.to.IsZero() || j.session < 0 {
			continue
		}
		if !d.fixEnd(j, false) {
			open[j.p.ID] = j
		}
	}
	// Values a retired subscription left for the next Read were received
	// in the session that is over: a gap still open ends at the first of
	// them (the gap after them is the new session's job).
	for id, j := range open {
		for _, dv := range d.carry[j.p.Ref] {
			if ms, ok := valueTime(dv); ok && ms > j.from.UnixMilli() && (j.to.IsZero() || ms < j.to.UnixMilli()) {
				j.to = time.UnixMilli(ms)
			}
		}
		if !j.to.IsZero() {
			delete(open, id)
		}
	}
	return open
}

// fixEnd fixes the end of j from its point's mark in the current session
// and reports whether it is known: the point's first live sample since
// the session opened, or the opening when that sample was left out (a
// repeat: the value did not move). waited allows what only a Read in the
// session may conclude: the point was not heard for request_timeout, so
// the gap ends where the session began. The caller holds d.mu.
func (d *Driver) fixEnd(j *backfillJob, waited bool) bool {
	m := d.tl.of(j.p.ID)
	switch {
	case m.heard && m.first > 0:
		j.to = time.UnixMilli(m.first)
	case m.heard || waited:
		j.to = j.opened
	default:
		return false
	}
	return true
}

// addJob queues j, dropping the point's oldest job when it has too many.
// The caller holds d.mu.
func (d *Driver) addJob(j *backfillJob) {
	n := 0
	for _, o := range d.jobs {
		if o.p.ID == j.p.ID {
			n++
		}
	}
	if n >= maxJobsPerPoint {
		for i, o := range d.jobs {
			if o.p.ID == j.p.ID {
				d.jobs = append(d.jobs[:i], d.jobs[i+1:]...)
				d.abandon(o, "too many gaps waiting for this point")
				break
			}
		}
	}
	d.jobs = append(d.jobs, j)
}

// abandon gives up job j, counting it when it was a subscription's gap.
// The caller holds d.mu.
func (d *Driver) abandon(j *backfillJob, why string) {
	if j.subscribed {
		d.subGaps++
	}
	d.log.Warn("history backfill given up; the gap stays", "point", j.p.Ref, "from", j.from.UTC().Format(time.RFC3339Nano), "reason", why)
}

// runBackfill works off backfill jobs for at most backfillPagesPerRead
// requests, within ctx: it starts no request it expects not to finish
// before ctx's deadline, and a request the deadline cuts off loses
// nothing but time (the job starts that page again). It returns the
// history samples read. Failures never fail the Read: a job the server
// refuses is given up, anything else is tried again by the next Read.
func (d *Driver) runBackfill(ctx context.Context) []telemetry.Sample {
	if !d.bfMu.TryLock() {
		return nil // a concurrent Read is at it
	}
	defer d.bfMu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		// Keep a tenth of what is left for the answer to travel back.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-time.Until(dl)/10))
		defer cancel()
	}
	var out []telemetry.Sample
	for req := 0; req < backfillPagesPerRead; req++ {
		if !d.fits(ctx) {
			if req == 0 {
				// Nothing fits after this Read's live values: forget a
				// little of how slow the last requests were, so a later
				// Read tries again rather than never.
				d.mu.Lock()
				d.pageTook = d.pageTook * 3 / 4
				d.mu.Unlock()
			}
			break
		}
		d.mu.Lock()
		checks := d.pendingChecks()
		var j *backfillJob
		if len(checks) == 0 {
			j = d.nextJob()
		}
		d.mu.Unlock()
		var err error
		switch {
		case len(checks) > 0:
			err = d.checkHistorizing(ctx, checks)
		case j != nil:
			var samples []telemetry.Sample
			samples, err = d.backfillPage(ctx, j)
			out = append(out, samples...)
		default:
			return out
		}
		if err != nil {
			if ctx.Err() == nil {
				d.log.Debug("history backfill paused until the next read", "err", err)
			}
			break
		}
	}
	return out
}

// fits reports whether a request taking as long as the last ones did
// still ends before ctx's deadline.
func (d *Driver) fits(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	if !ok {
		return ctx.Err() == nil
	}
	d.mu.Lock()
	est := d.pageTook
	d.mu.Unlock()
	return time.Until(dl) > est*3/2
}

// pendingChecks returns the jobs whose node's Historizing attribute is not
// known yet. The caller holds d.mu.
func (d *Driver) pendingChecks() []*backfillJob {
	var out []*backfillJob
	for _, j := range d.jobs {
		if j.check {
			out = append(out, j)
		}
	}
	return out
}

// nextJob returns the first job whose end is known, fixing ends from the
// points' first live samples since their session opened. The caller holds
// d.mu.
func (d *Driver) nextJob() *backfillJob {
	now := d.now()
	for _, j := range d.jobs {
		if j.to.IsZero() && !d.fixEnd(j, now.Sub(j.opened) > d.cfg.requestTimeout) {
			continue
		}
		return j
	}
	return nil
}

// checkHistorizing reads the Historizing attribute of the jobs' nodes and
// gives up the jobs of nodes the server keeps no history of: a
// subscription's values lost with the session are then counted
// (subscription_gaps) and logged once, with how many nodes lost them.
func (d *Driver) checkHistorizing(ctx context.Context, jobs []*backfillJob) error {
	d.mu.Lock()
	maxNodes := max(1, d.maxNodes)
	d.mu.Unlock()
	historized := make([]bool, len(jobs))
	for start := 0; start < len(jobs); start += maxNodes {
		chunk := jobs[start:min(start+maxNodes, len(jobs))]
		req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnNeither, NodesToRead: make([]*ua.ReadValueID, len(chunk))}
		for i, j := range chunk {
			req.NodesToRead[i] = &ua.ReadValueID{NodeID: d.nodeOf(j.p), AttributeID: ua.AttributeIDHistorizing, DataEncoding: &ua.QualifiedName{}}
		}
		t0 := time.Now()
		res, err := d.g.Read(ctx, req)
		d.took(time.Since(t0))
		if err != nil && (ctx.Err() != nil || transient(err)) {
			return fmt.Errorf("reading whether the server keeps history of %d nodes: %w", len(chunk), err)
		}
		if err != nil {
			// The server will not say: take it as keeping no history
			// rather than asking again at every Read.
			d.log.Warn("the server refused to say whether it keeps history; taking it as not", "nodes", len(chunk), "err", err)
			continue
		}
		copy(historized[start:], historizedResults(res, len(chunk)))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	lost := 0
	for i, j := range jobs {
		j.check = false
		if historized[i] {
			continue
		}
		d.removeJob(j)
		if j.subscribed {
			d.subGaps++
			lost++
		}
	}
	if lost > 0 {
		d.log.Warn("values the subscription had queued when the session dropped are lost: the server keeps no history of these nodes (counted as subscription_gaps)", "nodes", lost, "subscribed", len(d.subs))
	}
	return nil
}

// historizedResults reads the answer to a Read of n nodes' Historizing
// attribute: true only for a good Boolean true; a missing, bad or other
// result is taken as no history.
func historizedResults(res *ua.ReadResponse, n int) []bool {
	out := make([]bool, n)
	if res == nil || (res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK) {
		return out
	}
	for i := range min(n, len(res.Results)) {
		if r := res.Results[i]; r != nil && r.Status == ua.StatusOK && r.Value != nil {
			out[i], _ = r.Value.Value().(bool)
		}
	}
	return out
}

// removeJob drops j from the queue. The caller holds d.mu.
func (d *Driver) removeJob(j *backfillJob) {
	for i, o := range d.jobs {
		if o == j {
			d.jobs = append(d.jobs[:i], d.jobs[i+1:]...)
			return
		}
	}
}

// took folds the duration of one backfill request into the estimate fits
// uses: the larger of the last one and a decaying average, so one slow
// answer is remembered for a while.
func (d *Driver) took(t time.Duration) {
	d.mu.Lock()
	d.pageTook = max(t, (d.pageTook*3+t)/4)
	d.mu.Unlock()
}

// backfillPage reads the next page of job j and returns its samples. A
// page the server answers moves the job on (and ends it at the last page);
// a page cut off by ctx is read again next time, in smaller pages when the
// server is that slow; a page the server refuses gives the job up.
func (d *Driver) backfillPage(ctx context.Context, j *backfillJob) ([]telemetry.Sample, error) {
	d.mu.Lock()
	session, size := d.sessions, d.pageSize
	from, to, cont := j.from, j.to, j.cont
	if j.session != session {
		cont = nil
	}
	if cont != nil {
		from = j.contFrom
	}
	if !from.Before(to) {
		// Nothing between (clocks apart, or the gap was closed by the
		// live sample that ended it).
		d.removeJob(j)
		d.mu.Unlock()
		return nil, nil
	}
	if j.pages >= historyMaxPages {
		d.removeJob(j)
		pages, total := j.pages, j.samples
		d.mu.Unlock()
		d.log.Warn("history backfill stopped at its page limit; the rest of the gap stays", "point", j.p.Ref, "pages", pages, "samples", total, "from", from.UTC().Format(time.RFC3339Nano), "until", to.UTC().Format(time.RFC3339Nano))
		if cont != nil {
			_, _, _ = d.historyStep(ctx, j.p, from, to, cont, uint32(size), true)
		}
		return nil, nil
	}
	d.mu.Unlock()
	t0 := time.Now()
	samples, next, err := d.historyStep(ctx, j.p, from, to, cont, uint32(size), false)
	d.took(time.Since(t0))
	d.mu.Lock()
	if err != nil {
		j.cont = nil // the server may have moved it on: start the page again
		j.failures++
		switch {
		case (ctx.Err() != nil || transient(err)) && j.failures < maxJobFailures:
			if ctx.Err() != nil || errors.Is(err, ua.StatusBadTimeout) {
				d.pageSize = max(historyMinPage, size/2)
			}
		default:
			d.removeJob(j)
			d.abandon(j, err.Error())
		}
		d.mu.Unlock()
		return nil, err
	}
	j.failures = 0
	d.pageSize = min(historyPageSize, size*2)
	j.pages++
	j.samples += len(samples)
	if cont == nil {
		j.contFrom = from
	}
	j.session, j.cont = session, next
	if len(samples) > 0 {
		j.from = time.UnixMilli(samples[len(samples)-1].Time + 1)
	}
	d.histSamples += uint64(len(samples))
	done := len(next) == 0 || !j.from.Before(to)
	if done {
		d.removeJob(j)
	}
	pages, total := j.pages, j.samples
	d.mu.Unlock()
	if !done {
		d.log.Debug("history backfill page", "point", j.p.Ref, "samples", len(samples), "next_from", j.from.UTC().Format(time.RFC3339Nano), "until", to.UTC().Format(time.RFC3339Nano))
		return samples, nil
	}
	d.log.Info("backfilled a gap from the server's history", "point", j.p.Ref, "to", to.UTC().Format(time.RFC3339Nano), "samples", total, "pages", pages)
	if len(next) > 0 && d.fits(ctx) {
		// The gap is over but the server holds a continuation point (its
		// last page ended just short of the gap's end): hand it back.
		_, _, _ = d.historyStep(ctx, j.p, from, to, next, uint32(size), true)
	}
	return samples, nil
}

// History reads the raw values the server logged for p in [start, end),
// following continuation points (at most historyMaxPages), through the
// guard.
func (d *Driver) History(ctx context.Context, p driver.Point, start, end time.Time) ([]telemetry.Sample, error) {
	var out []telemetry.Sample
	var cont []byte
	for page := 0; ; page++ {
		release := page >= historyMaxPages
		samples, next, err := d.historyStep(ctx, p, start, end, cont, historyPageSize, release)
		out = append(out, samples...)
		if err != nil {
			return out, err
		}
		if release {
			d.log.Warn("history read stopped at its page limit", "point", p.Ref, "samples", len(out))
			return out, nil
		}
		if len(next) == 0 {
			return out, nil
		}
		cont = next
	}
}

// historyStep sends one HistoryRead of p's raw values in [start, end), at
// most size of them, continuing at cont when not nil, and returns the
// samples and the server's next continuation point. With release it only
// hands cont back to the server.
func (d *Driver) historyStep(ctx context.Context, p driver.Point, start, end time.Time, cont []byte, size uint32, release bool) ([]telemetry.Sample, []byte, error) {
	pc, ok := d.points[p.Ref]
	if !ok {
		var err error
		if pc, err = parsePoint(p); err != nil {
			return nil, nil, err
		}
	}
	var res *ua.HistoryReadResponse
	err := d.g.Send(ctx, &ua.HistoryReadRequest{
		HistoryReadDetails: ua.NewExtensionObject(&ua.ReadRawModifiedDetails{
			StartTime:        start,
			EndTime:          end,
			NumValuesPerNode: size,
		}),
		TimestampsToReturn:        ua.TimestampsToReturnBoth,
		ReleaseContinuationPoints: release,
		NodesToRead:               []*ua.HistoryReadValueID{{NodeID: pc.node, DataEncoding: &ua.QualifiedName{}, ContinuationPoint: cont}},
	}, func(v ua.Response) error { return assign(v, &res) })
	if err != nil {
		return nil, nil, fmt.Errorf("history of %s: %w", p.Ref, err)
	}
	if release {
		return nil, nil, nil
	}
	samples, r, err := d.historyPage(p, res, start, end)
	if err != nil {
		return samples, nil, err
	}
	return samples, r.ContinuationPoint, nil
}

// historyPage turns one HistoryRead answer for p into samples within
// [start, end), and returns the node's result for its continuation point.
func (d *Driver) historyPage(p driver.Point, res *ua.HistoryReadResponse, start, end time.Time) ([]telemetry.Sample, *ua.HistoryReadResult, error) {
	if res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
		return nil, nil, fmt.Errorf("history of %s: %w", p.Ref, res.ResponseHeader.ServiceResult)
	}
	if len(res.Results) != 1 || res.Results[0] == nil {
		return nil, nil, fmt.Errorf("history of %s: the server answered %d results for 1 node", p.Ref, len(res.Results))
	}
	r := res.Results[0]
	if r.StatusCode&0x80000000 != 0 {
		return nil, nil, fmt.Errorf("history of %s: %w", p.Ref, r.StatusCode)
	}
	if r.HistoryData == nil || r.HistoryData.Value == nil {
		return nil, r, nil
	}
	hd, ok := r.HistoryData.Value.(*ua.HistoryData)
	if !ok {
		return nil, nil, fmt.Errorf("history of %s: unexpected history data %T", p.Ref, r.HistoryData.Value)
	}
	now := d.now()
	var out []telemetry.Sample
	for _, dv := range hd.DataValues {
		s := d.sample(p, dv, now)
		if t := time.UnixMilli(s.Time); t.Before(start) || !t.Before(end) {
			continue // bounds, or a server that ignores the range
		}
		out = append(out, s)
	}
	return out, r, nil
}
