package web

import (
	"encoding/csv"
	"errors"
	"fmt"
	"html"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// maxTrendPoints caps the series of one chart: more is unreadable.
const maxTrendPoints = 8

// ranges are the presets offered, shortest first.
var ranges = []struct {
	Key string
	D   time.Duration
}{
	{"1h", time.Hour}, {"6h", 6 * time.Hour}, {"24h", 24 * time.Hour}, {"7d", 7 * 24 * time.Hour},
	{"30d", 30 * 24 * time.Hour}, {"90d", 90 * 24 * time.Hour}, {"365d", 365 * 24 * time.Hour},
}

// maxSpan is the longest range a chart or export covers.
const maxSpan = 366 * 24 * time.Hour

// resolution picks the rollup width for a span so a chart holds a few
// hundred to a few thousand buckets: 5 minutes up to two days, hours up to
// sixty days, days beyond.
func resolution(span time.Duration) time.Duration {
	switch {
	case span <= 48*time.Hour:
		return store.Res5Min
	case span <= 60*24*time.Hour:
		return store.ResHour
	}
	return store.ResDay
}

// window is a chart's time range.
type window struct {
	From, To time.Time
	Res      time.Duration
	Key      string // the preset, when one was chosen
}

// parseWindow reads range=1h..365d, or from/to in Unix milliseconds (what
// the chart's zoom sends). The default is the last 24 hours.
func parseWindow(q url.Values, now time.Time) (window, error) {
	var w window
	if f, t := q.Get("from"), q.Get("to"); f != "" || t != "" {
		fm, err1 := strconv.ParseInt(f, 10, 64)
		tm, err2 := strconv.ParseInt(t, 10, 64)
		if err1 != nil || err2 != nil || tm <= fm {
			return w, fmt.Errorf("%w: from and to must be Unix milliseconds with from before to", errBadRequest)
		}
		w.From, w.To = time.UnixMilli(fm).UTC(), time.UnixMilli(tm).UTC()
		if w.To.Sub(w.From) > maxSpan {
			w.From = w.To.Add(-maxSpan)
		}
		// Zooming in past one bucket shows nothing: keep at least 30 min.
		if w.To.Sub(w.From) < 30*time.Minute {
			w.From = w.To.Add(-30 * time.Minute)
		}
	} else {
		key := q.Get("range")
		if key == "" {
			key = "24h"
		}
		var d time.Duration
		for _, r := range ranges {
			if r.Key == key {
				d = r.D
			}
		}
		if d == 0 {
			return w, fmt.Errorf("%w: range %q: choose one of 1h, 6h, 24h, 7d, 30d, 90d, 365d", errBadRequest, key)
		}
		w.Key, w.To = key, now.UTC()
		w.From = w.To.Add(-d)
	}
	w.Res = resolution(w.To.Sub(w.From))
	// 5-minute rollups are kept for Keep5Min only: an old window, even a
	// short one, is drawn from hours.
	if w.Res == store.Res5Min && w.From.Before(now.Add(-store.Keep5Min+time.Hour)) {
		w.Res = store.ResHour
	}
	// Align to the buckets so the first one shown is whole.
	w.From = w.From.Truncate(w.Res)
	return w, nil
}

// query is the window as from/to, even for a preset: a link that said
// range=6h would be read against a later "now" and cover other buckets
// than the ones shown. From is aligned already, so reading it back
// yields the same window and resolution.
func (w window) query() url.Values {
	v := url.Values{}
	v.Set("from", strconv.FormatInt(w.From.UnixMilli(), 10))
	v.Set("to", strconv.FormatInt(w.To.UnixMilli(), 10))
	return v
}

// series is one point's buckets over a window.
type series struct {
	pointView
	Rows  []store.Rollup
	Class string // the line's CSS class, s0..s7
}

// trendData reads the chart's series: the points named by p (hex ids)
// that exist in the building.
func (s *Server) trendData(r *http.Request, b building) (window, []series, error) {
	q := r.URL.Query()
	w, err := parseWindow(q, s.cfg.Now())
	if err != nil {
		return w, nil, err
	}
	ids := q["p"]
	if len(ids) == 0 {
		return w, nil, fmt.Errorf("%w: choose at least one point on the building page", errBadRequest)
	}
	if len(ids) > maxTrendPoints {
		return w, nil, fmt.Errorf("%w: at most %d points fit one chart", errBadRequest, maxTrendPoints)
	}
	pts, err := s.points(r, b)
	if err != nil {
		return w, nil, err
	}
	byHex := make(map[string]pointView, len(pts))
	for _, p := range pts {
		byHex[p.Hex] = p
	}
	var out []series
	for _, h := range ids {
		p, ok := byHex[strings.ToLower(h)]
		if !ok {
			return w, nil, fmt.Errorf("%w: this building has no point %q", errNoPoint, clip(h))
		}
		rows, err := s.st.Rollups(r.Context(), b.SiteRef, p.ID, w.Res, w.From, w.To)
		if err != nil {
			return w, nil, err
		}
		out = append(out, series{pointView: p, Rows: rows, Class: fmt.Sprintf("s%d", len(out))})
	}
	return w, out, nil
}

var errNoPoint = errors.New("no such point")

// queryError answers a trend or export request that failed.
func (s *Server) queryError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, errNoPoint):
		s.errorPage(w, r, http.StatusNotFound, "There is no such point in this building.")
	case errors.Is(err, errBadRequest):
		s.errorPage(w, r, http.StatusBadRequest, strings.TrimPrefix(err.Error(), errBadRequest.Error()+": "))
	default:
		s.serverError(w, r, err)
	}
}

type trendPage struct {
	building
	Window   window
	Series   []series
	Chart    template.HTML
	Ranges   []rangeLink
	CSVURL   string
	ZoomOut  string
	CanCSV   bool
	Buckets  int
	ResLabel string
}

type rangeLink struct {
	Key, URL string
	Active   bool
}

func (s *Server) handleTrend(w http.ResponseWriter, r *http.Request, rq *request, b building) {
	win, ser, err := s.trendData(r, b)
	if err != nil {
		s.queryError(w, r, err)
		return
	}
	page := trendPage{building: b, Window: win, Series: ser, CanCSV: roleAtLeast(rq.user.Role, store.RoleEngineer), ResLabel: resLabel(win.Res)}
	pq := url.Values{"p": r.URL.Query()["p"]}
	with := func(v url.Values) string {
		for k, vs := range pq {
			v[k] = vs
		}
		return v.Encode()
	}
	for _, rg := range ranges {
		page.Ranges = append(page.Ranges, rangeLink{Key: rg.Key, URL: b.Path + "/trend?" + with(url.Values{"range": {rg.Key}}), Active: rg.Key == win.Key})
	}
	page.CSVURL = b.Path + "/trend.csv?" + with(win.query())
	span := win.To.Sub(win.From)
	mid := win.From.Add(span / 2)
	out := url.Values{"from": {strconv.FormatInt(mid.Add(-span).UnixMilli(), 10)}, "to": {strconv.FormatInt(minTime(mid.Add(span), s.cfg.Now()).UnixMilli(), 10)}}
	page.ZoomOut = b.Path + "/trend?" + with(out)
	for _, sr := range ser {
		page.Buckets += len(sr.Rows)
	}
	page.Chart = chartSVG(win, ser, b.Path+"/trend?"+with(url.Values{}))
	s.render(w, r, http.StatusOK, "trend", rq, page)
}

func resLabel(d time.Duration) string {
	switch d {
	case store.Res5Min:
		return "5-minute"
	case store.ResHour:
		return "hourly"
	}
	return "daily"
}

// handleExport writes exactly the rows the chart with the same query
// draws, as CSV, and audits the export.
func (s *Server) handleExport(w http.ResponseWriter, r *http.Request, rq *request, b building) {
	win, ser, err := s.trendData(r, b)
	if err != nil {
		s.queryError(w, r, err)
		return
	}
	var ids []string
	rows := 0
	for _, sr := range ser {
		ids = append(ids, sr.Hex)
		rows += len(sr.Rows)
	}
	s.audit(r.Context(), "user:"+rq.user.Name, "export", b.SiteRef.String(),
		fmt.Sprintf("points=%s from=%s to=%s resolution=%s rows=%d", strings.Join(ids, ","), win.From.Format(time.RFC3339), win.To.Format(time.RFC3339), win.Res, rows))
	h := w.Header()
	h.Set("Content-Type", "text/csv; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="trend-%s-%s.csv"`, b.Site.Site, win.From.Format("20060102T1504Z")))
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"time", "point_id", "name", "unit", "resolution_s", "samples", "bad", "min", "max", "mean", "last"})
	for _, sr := range ser {
		for _, row := range sr.Rows {
			rec := []string{row.Bucket.Format(time.RFC3339), sr.Hex, csvSafe(sr.Name), csvSafe(sr.Unit), strconv.Itoa(int(win.Res / time.Second)),
				strconv.FormatInt(row.N, 10), strconv.FormatInt(row.Bad, 10), "", "", "", ""}
			if row.Good > 0 {
				rec[7], rec[8], rec[9], rec[10] = fmtF(row.Min), fmtF(row.Max), fmtF(row.Mean), fmtF(row.Last)
			}
			_ = cw.Write(rec)
		}
	}
	cw.Flush()
}

func fmtF(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// csvSafe defuses a name a spreadsheet would run as a formula.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// Chart geometry, in SVG user units.
const (
	chartW, chartH                     = 960.0, 340.0
	padL, padR, padT, padB             = 64.0, 16.0, 12.0, 36.0
	plotW, plotH                       = chartW - padL - padR, chartH - padT - padB
	yTicks                             = 5
	xTicks                             = 6
	gapFactor                          = 1.5
	chartMinBand                       = 1e-9
	chartClassBand, chartClassLinePref = "band", "line "
)

// chartSVG draws the series as an SVG: the mean as a line per point,
// broken where buckets are missing, and for a single point the min..max
// band. base is the trend URL without a range; the zoom script adds
// from/to to it. Every number is formatted here and every text escaped.
func chartSVG(w window, ser []series, base string) template.HTML {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, sr := range ser {
		for _, r := range sr.Rows {
			if r.Good == 0 {
				continue
			}
			v0, v1 := r.Mean, r.Mean
			if len(ser) == 1 {
				v0, v1 = r.Min, r.Max
			}
			lo, hi = math.Min(lo, v0), math.Max(hi, v1)
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 0, 1
	}
	if hi-lo < chartMinBand {
		lo, hi = lo-1, hi+1
	}
	pad := (hi - lo) * 0.05
	lo, hi = lo-pad, hi+pad
	t0, t1 := float64(w.From.UnixMilli()), float64(w.To.UnixMilli())
	x := func(t time.Time) float64 { return padL + (float64(t.UnixMilli())-t0)/(t1-t0)*plotW }
	y := func(v float64) float64 { return padT + (hi-v)/(hi-lo)*plotH }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" id="chart" viewBox="0 0 %g %g" role="img" aria-label="trend chart" data-from="%d" data-to="%d" data-left="%g" data-width="%g" data-base="%s">`,
		chartW, chartH, w.From.UnixMilli(), w.To.UnixMilli(), padL, plotW, html.EscapeString(base))
	fmt.Fprintf(&b, `<rect class="plot" x="%g" y="%g" width="%g" height="%g"/>`, padL, padT, plotW, plotH)
	for i := 0; i <= yTicks; i++ {
		v := lo + (hi-lo)*float64(i)/yTicks
		yy := y(v)
		fmt.Fprintf(&b, `<line class="grid" x1="%g" y1="%.1f" x2="%g" y2="%.1f"/><text class="ylabel" x="%g" y="%.1f">%s</text>`,
			padL, yy, padL+plotW, yy, padL-6, yy+4, html.EscapeString(strconv.FormatFloat(v, 'g', 4, 64)))
	}
	layout := "15:04"
	switch span := w.To.Sub(w.From); {
	case span > 60*24*time.Hour:
		layout = "2006-01-02"
	case span > 2*24*time.Hour:
		layout = "01-02 15:04"
	}
	for i := 0; i <= xTicks; i++ {
		t := w.From.Add(time.Duration(float64(w.To.Sub(w.From)) * float64(i) / xTicks))
		xx := x(t)
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%g" x2="%.1f" y2="%g"/><text class="xlabel" x="%.1f" y="%g">%s</text>`,
			xx, padT, xx, padT+plotH, xx, padT+plotH+20, html.EscapeString(t.UTC().Format(layout)))
	}
	gap := time.Duration(float64(w.Res) * gapFactor)
	for _, sr := range ser {
		if len(ser) == 1 {
			// The band: each run of consecutive buckets is one polygon.
			var top, bottom []string
			flush := func() {
				if len(top) > 0 {
					for i := len(bottom) - 1; i >= 0; i-- {
						top = append(top, bottom[i])
					}
					fmt.Fprintf(&b, `<polygon class="%s" points="%s"/>`, chartClassBand, strings.Join(top, " "))
				}
				top, bottom = top[:0], bottom[:0]
			}
			var prev time.Time
			for _, r := range sr.Rows {
				if r.Good == 0 {
					continue
				}
				if !prev.IsZero() && r.Bucket.Sub(prev) > gap {
					flush()
				}
				xx := x(r.Bucket.Add(w.Res / 2))
				top = append(top, fmt.Sprintf("%.1f,%.1f", xx, y(r.Max)))
				bottom = append(bottom, fmt.Sprintf("%.1f,%.1f", xx, y(r.Min)))
				prev = r.Bucket
			}
			flush()
		}
		var d strings.Builder
		var prev time.Time
		for _, r := range sr.Rows {
			if r.Good == 0 {
				continue
			}
			cmd := "L"
			if prev.IsZero() || r.Bucket.Sub(prev) > gap {
				cmd = "M"
			}
			fmt.Fprintf(&d, "%s%.1f %.1f", cmd, x(r.Bucket.Add(w.Res/2)), y(r.Mean))
			prev = r.Bucket
		}
		if d.Len() > 0 {
			fmt.Fprintf(&b, `<path class="%s%s" d="%s"/>`, chartClassLinePref, sr.Class, d.String())
		}
	}
	b.WriteString(`<rect class="zoom" id="zoom" x="0" y="0" width="0" height="0"/></svg>`)
	return template.HTML(b.String()) //nolint:gosec // built above from numbers and escaped text only
}

type completenessRow struct {
	pointView
	Expected, Received, Bad, Missing int64
	Percent                          float64
	Verdict                          string
	Class                            string
}

type completenessPage struct {
	building
	Window       window
	Rows         []completenessRow
	Counts       map[string]int // rows by verdict, over every page
	Total        int
	PageNo       int
	Pages        int
	PrevURL      string
	NextURL      string
	Ranges       []rangeLink
	AgentOffline bool
	LastUpload   time.Time
	// Capped is set when the range asked for was longer than
	// maxCompletenessSpan and only its end is shown.
	Capped bool
}

// maxCompletenessSpan caps the work of one completeness page: its one
// query reads a row per point per bucket of the window (hourly past two
// days), so a year of a 300-point building was 2.6 million rows and a
// second; 30 days of 1,000 points are 720,000 rows (see
// store.BenchmarkReceivedAll). Longer ranges show their last 30 days, and
// say so; from/to step through older months.
const maxCompletenessSpan = 30 * 24 * time.Hour

// Completeness verdicts: what an engineer needs to tell apart.
const (
	verdictComplete = "complete"
	verdictDevice   = "device down"   // samples arrived, flagged as failed reads
	verdictAgent    = "agent offline" // nothing arrived lately: the agent may hold it
	verdictMissing  = "samples missing"
	verdictUnknown  = "interval unknown"
)

// handleCompleteness compares, per point, the samples expected from its
// observed interval since it first reported with the samples received.
func (s *Server) handleCompleteness(w http.ResponseWriter, r *http.Request, rq *request, b building) {
	win, err := parseWindow(r.URL.Query(), s.cfg.Now())
	if err != nil {
		s.queryError(w, r, err)
		return
	}
	capped := win.To.Sub(win.From) > maxCompletenessSpan
	if capped {
		win.From = win.To.Add(-maxCompletenessSpan)
	}
	// Counts come from the 5-minute rollups for short or recent spans,
	// else from the hourly ones.
	res := store.Res5Min
	if win.Res != store.Res5Min {
		res = store.ResHour
	}
	from := win.From.Truncate(res)
	pts, err := s.points(r, b)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	got, err := s.st.ReceivedAll(r.Context(), b.SiteRef, res, from, win.To)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	healths, err := s.st.AgentHealths(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	page := completenessPage{building: b, Window: win, Capped: capped}
	for _, h := range healths {
		if h.Site == b.SiteRef && h.LastUpload.After(page.LastUpload) {
			page.LastUpload = h.LastUpload
		}
	}
	now := s.cfg.Now()
	page.AgentOffline = now.Sub(page.LastUpload) > s.cfg.AgentOffline
	latest, _ := s.st.LatestValues(r.Context(), b.SiteRef)
	first := make(map[uint64]time.Time, len(latest))
	for _, l := range latest {
		first[l.PointID] = l.FirstTime
	}
	for _, p := range pts {
		c := completenessRow{pointView: p, Received: got[p.ID][0], Bad: got[p.ID][1]}
		start := maxTime(from, first[p.ID])
		// While the agent uploads, samples newer than the point's latest
		// are still on their way (the agent seals a batch every few
		// seconds): count up to the latest only. Once it is offline,
		// everything since is missing, and counted; so is the time since
		// a stale point's latest value.
		end := minTime(win.To, now)
		if !page.AgentOffline && !p.Stale {
			end = minTime(end, p.Time)
		}
		switch {
		case p.Interval <= 0:
			c.Verdict, c.Class = verdictUnknown, "warn"
		case end.After(start):
			c.Expected = int64(end.Sub(start)/p.Interval) + 1
		}
		if c.Expected > 0 {
			c.Missing = max(0, c.Expected-c.Received)
			c.Percent = math.Min(100, 100*float64(c.Received-c.Bad)/float64(c.Expected))
			// Up to one interval per batch may still be in flight.
			slack := max(2, c.Expected/100)
			switch {
			// Failed reads that are still failing, or most of them:
			// the agent runs, the device does not answer.
			case c.Bad > 0 && (p.Status == telemetry.StatusCommFailure.String() || p.Status == telemetry.StatusFault.String() || c.Bad*2 >= c.Received):
				c.Verdict, c.Class = verdictDevice, "bad"
			case c.Missing > slack && page.AgentOffline:
				c.Verdict, c.Class = verdictAgent, "bad"
			case c.Missing > slack || c.Bad > 0:
				c.Verdict, c.Class = verdictMissing, "warn"
			default:
				c.Verdict, c.Class = verdictComplete, "ok"
			}
		}
		page.Rows = append(page.Rows, c)
	}
	// Problems first, then by name; a page at a time, as on the
	// building page.
	rank := map[string]int{"bad": 0, "warn": 1, "ok": 2}
	slices.SortStableFunc(page.Rows, func(a, b completenessRow) int { return rank[a.Class] - rank[b.Class] })
	page.Counts = map[string]int{}
	for _, row := range page.Rows {
		page.Counts[row.Verdict]++
	}
	page.Total = len(page.Rows)
	page.Pages = max(1, (len(page.Rows)+pageSize-1)/pageSize)
	page.PageNo, _ = strconv.Atoi(r.URL.Query().Get("page"))
	page.PageNo = min(max(page.PageNo, 1), page.Pages)
	lo := (page.PageNo - 1) * pageSize
	page.Rows = page.Rows[lo:min(lo+pageSize, len(page.Rows))]
	link := func(n int) string {
		v := r.URL.Query()
		v.Set("page", strconv.Itoa(n))
		return b.Path + "/completeness?" + v.Encode()
	}
	if page.PageNo > 1 {
		page.PrevURL = link(page.PageNo - 1)
	}
	if page.PageNo < page.Pages {
		page.NextURL = link(page.PageNo + 1)
	}
	for _, rg := range ranges {
		if rg.D <= maxCompletenessSpan {
			page.Ranges = append(page.Ranges, rangeLink{Key: rg.Key, URL: b.Path + "/completeness?range=" + rg.Key, Active: rg.Key == win.Key})
		}
	}
	s.render(w, r, http.StatusOK, "completeness", rq, page)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
