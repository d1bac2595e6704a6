package web

import (
	"context"
	"encoding/csv"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
)

// TestWindowQueryRoundTrip: every preset's link reads back as the same
// window at the same resolution.
func TestWindowQueryRoundTrip(t *testing.T) {
	nows := []time.Time{time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC), time.Date(2026, 6, 1, 12, 7, 31, 5e8, time.UTC), time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC)}
	for _, rg := range ranges {
		for _, now := range nows {
			t.Run(rg.Key+" "+now.Format(time.RFC3339), func(t *testing.T) {
				w, err := parseWindow(url.Values{"range": {rg.Key}}, now)
				if err != nil {
					t.Fatal(err)
				}
				q := w.query()
				if q.Has("range") {
					t.Errorf("the link names the preset (%s), not the window", q.Encode())
				}
				back, err := parseWindow(q, now.Add(time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				if !back.From.Equal(w.From) || !back.To.Equal(w.To) || back.Res != w.Res {
					t.Errorf("window %v..%v at %v reads back as %v..%v at %v", w.From, w.To, w.Res, back.From, back.To, back.Res)
				}
			})
		}
	}
}

// TestCSVIsTheShownWindow: the export of a preset range, fetched after the
// clock moved on, holds exactly the buckets the chart showed.
func TestCSVIsTheShownWindow(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("bob")
	r := c.get("/b/acme/s-bbbb/trend?p=0000000000000065&range=1h")
	if r.status != http.StatusOK || !strings.Contains(r.body, "(12 shown)") {
		t.Fatalf("trend: %d, shown %q", r.status, regexpFind(`\(\d+ shown\)`, r.body))
	}
	link := strings.ReplaceAll(regexpFind(`href="([^"]+)" id="csv"`, r.body), "&amp;", "&")
	from, to := regexpFind(`data-from="(\d+)"`, r.body), regexpFind(`data-to="(\d+)"`, r.body)
	u, err := url.Parse(link)
	if err != nil || u.Query().Get("from") != from || u.Query().Get("to") != to {
		t.Fatalf("CSV link %q does not carry the chart's window %s..%s", link, from, to)
	}
	// Time passes between looking and exporting: a bucket's worth and more.
	e.clk.add(7 * time.Minute)
	x := c.get(link)
	recs, err := csv.NewReader(strings.NewReader(x.body)).ReadAll()
	if err != nil || x.status != http.StatusOK {
		t.Fatalf("CSV: %d %v", x.status, err)
	}
	if len(recs) != 1+12 {
		t.Fatalf("the CSV has %d buckets, the chart showed 12", len(recs)-1)
	}
	first, _ := time.Parse(time.RFC3339, recs[1][0])
	if want := e.start.Add(-time.Hour); !first.Equal(want) {
		t.Errorf("the CSV starts at %v, the chart at %v", first, want)
	}
}

// windowRecorder records the windows the completeness page asks for.
type windowRecorder struct {
	*store.DB
	mu   sync.Mutex
	from []time.Time
	to   []time.Time
}

func (w *windowRecorder) ReceivedAll(ctx context.Context, ref store.SiteRef, res time.Duration, from, to time.Time) (map[uint64][2]int64, error) {
	w.mu.Lock()
	w.from, w.to = append(w.from, from), append(w.to, to)
	w.mu.Unlock()
	return w.DB.ReceivedAll(ctx, ref, res, from, to)
}

// TestCompletenessCapped: a range longer than maxCompletenessSpan is read
// for its last 30 days only, and the page says so.
func TestCompletenessCapped(t *testing.T) {
	var rec *windowRecorder
	e := newEnv(t, func(c *Config) {
		rec = &windowRecorder{DB: c.Store.(*store.DB)}
		c.Store = rec
	})
	c := e.client()
	c.mustLogin("bob")
	tests := []struct {
		query  string
		span   time.Duration
		capped bool
	}{
		{"range=7d", 7 * 24 * time.Hour, false},
		{"range=365d", maxCompletenessSpan, true},
		{"from=" + ms(e.start.Add(-200*24*time.Hour)) + "&to=" + ms(e.start.Add(-100*24*time.Hour)), maxCompletenessSpan, true},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			rec.mu.Lock()
			rec.from, rec.to = nil, nil
			rec.mu.Unlock()
			r := c.get("/b/acme/s-bbbb/completeness?" + tt.query)
			if r.status != http.StatusOK {
				t.Fatalf("completeness: %d", r.status)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.from) != 1 {
				t.Fatalf("%d count queries", len(rec.from))
			}
			if span := rec.to[0].Sub(rec.from[0]); span > tt.span || span < tt.span-time.Hour {
				t.Errorf("counted over %v, want %v", span, tt.span)
			}
			if got := strings.Contains(r.body, "completeness covers at most 30 days"); got != tt.capped {
				t.Errorf("the page says capped: %v, want %v", got, tt.capped)
			}
		})
	}
	if r := c.get("/b/acme/s-bbbb/completeness"); strings.Contains(r.body, "range=365d") {
		t.Error("the completeness page offers a range it does not cover")
	}
}
