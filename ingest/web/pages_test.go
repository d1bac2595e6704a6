package web

import (
	"context"
	"encoding/csv"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// buildingURLs are every URL of building B, GET and POST, that a user of
// building A must be refused.
var buildingURLs = []struct{ method, path string }{
	{"GET", "/b/acme/s-bbbb"},
	{"GET", "/b/acme/s-bbbb?q=secret"},
	{"GET", "/b/acme/s-bbbb/trend?p=0000000000000065"},
	{"GET", "/b/acme/s-bbbb/trend?p=0000000000000065&range=365d"},
	{"GET", "/b/acme/s-bbbb/trend.csv?p=0000000000000065"},
	{"GET", "/b/acme/s-bbbb/trend.csv?p=0000000000000065&from=0&to=9999999999999"},
	{"GET", "/b/acme/s-bbbb/completeness"},
	{"GET", "/b/acme/s-bbbb/completeness?range=7d"},
	// A's own building with B's point: the point is not A's.
	{"GET", "/b/acme/s-aaaa/trend?p=0000000000000065"},
	{"GET", "/b/acme/s-aaaa/trend.csv?p=0000000000000065"},
	// Paths that try to escape the pattern.
	{"GET", "/b/acme/s-bbbb/../s-bbbb"},
	{"GET", "/b/acme/S-BBBB"},
	{"GET", "/b/acme%2Fs-bbbb/x"},
	// Admin pages and actions.
	{"GET", "/admin"},
	{"GET", "/admin/audit"},
	{"POST", "/admin/users"},
	{"POST", "/admin/users/bob/sites"},
	{"POST", "/admin/users/alice/role"},
	{"POST", "/admin/users/bob/disable"},
	{"POST", "/admin/sites/acme/s-bbbb/name"},
	{"POST", "/admin/tokens"},
	{"POST", "/admin/agents/ag-s-bbbb/revoke"},
}

// TestBuildingScope walks every URL of another building as alice, an
// engineer of building A only: each is refused (403 or 404) and no answer
// carries building B's data.
func TestBuildingScope(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("alice")
	csrf := c.csrf("/")
	for _, u := range buildingURLs {
		t.Run(u.method+" "+u.path, func(t *testing.T) {
			var r resp
			if u.method == "POST" {
				r = c.do("POST", u.path, url.Values{"csrf": {csrf}, "role": {"admin"}, "site": {"acme/s-bbbb"}, "name": {"x"}, "reason": {"x"},
					"tenant": {"acme"}, "ttl": {"1h"}, "password": {testPassword}})
			} else {
				r = c.get(u.path)
				// The mux cleans a path with a redirect; follow it.
				if r.status == http.StatusTemporaryRedirect || r.status == http.StatusMovedPermanently {
					r = c.get(r.header.Get("Location"))
				}
			}
			if r.status != http.StatusNotFound && r.status != http.StatusForbidden {
				t.Fatalf("status %d, want 403 or 404", r.status)
			}
			for _, leak := range []string{secretName, "B-return", "Building B", "s-bbbb", "0000000000000065"} {
				if strings.Contains(r.body, leak) {
					t.Errorf("answer contains %q", leak)
				}
			}
		})
	}
	// Nothing changed.
	if u, _ := e.db.User(context.Background(), "alice"); u.Role != store.RoleEngineer || len(u.Sites) != 1 {
		t.Errorf("alice changed: %+v", u)
	}
	if a, _ := e.db.Agent(context.Background(), "ag-s-bbbb"); a.Revoked() {
		// the agent was never in the registry; a revoke would have
		// failed, but must not even be tried
		t.Error("agent revoked")
	}
	// The portfolio lists only A.
	p := c.get("/")
	if !strings.Contains(p.body, "s-aaaa") || strings.Contains(p.body, "s-bbbb") || strings.Contains(p.body, "Building B") {
		t.Errorf("alice's portfolio shows the wrong buildings")
	}
	// Bob sees B, with names from the catalogue.
	b := e.client()
	b.mustLogin("bob")
	if r := b.get("/b/acme/s-bbbb"); r.status != http.StatusOK || !strings.Contains(r.body, secretName) {
		t.Errorf("bob's own building: %d", r.status)
	}
	if r := b.get("/b/acme/s-aaaa"); r.status != http.StatusNotFound {
		t.Errorf("bob at A: %d", r.status)
	}
}

func TestBuildingFilters(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("bob")
	// Point 101 failed its last read.
	if err := e.db.ObserveBatch(context.Background(), siteB, "ag-s-bbbb", &batch.Batch{Header: batch.Header{Seq: 2},
		Samples: []telemetry.Sample{{PointID: 101, Time: e.clk.now().UnixMilli(), Status: telemetry.StatusCommFailure}}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		query    string
		has, not []string
	}{
		{"", []string{secretName, "B-return"}, nil},
		{"?q=secret", []string{secretName}, []string{"B-return"}},
		{"?q=0000000000000066", []string{"B-return"}, []string{secretName}},
		{"?tag=supply", []string{secretName}, []string{">B-return<"}},
		{"?status=comm-failure", []string{secretName}, []string{">B-return<"}},
		{"?status=ok", []string{"B-return"}, []string{">" + secretName + "<"}},
		{"?status=old", nil, []string{">" + secretName + "<", ">B-return<"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := c.get("/b/acme/s-bbbb" + tt.query)
			if r.status != http.StatusOK {
				t.Fatalf("status %d", r.status)
			}
			for _, h := range tt.has {
				if !strings.Contains(r.body, h) {
					t.Errorf("lacks %q", h)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(r.body, n) {
					t.Errorf("has %q", n)
				}
			}
		})
	}
	// Building A has no catalogue: pseudonymous ids are shown.
	a := e.client()
	a.mustLogin("alice")
	if r := a.get("/b/acme/s-aaaa"); !strings.Contains(r.body, "0000000000000001") {
		t.Error("building A does not show the hex ids")
	}
}

func TestTrendAndExport(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("bob")
	tests := []struct {
		name, query string
		rows        int // CSV rows per point
		res         string
	}{
		{"6 hours at 5 minutes", "range=6h", 24, "300"},
		{"zoomed to one hour", "from=" + ms(e.start.Add(-90*time.Minute)) + "&to=" + ms(e.start.Add(-30*time.Minute)), 12, "300"},
		{"a week, hourly", "range=7d", 2, "3600"},
		{"a year, daily", "range=365d", 1, "86400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := "p=0000000000000065&p=0000000000000066&" + tt.query
			r := c.get("/b/acme/s-bbbb/trend?" + q)
			if r.status != http.StatusOK || !strings.Contains(r.body, `<svg class="chart"`) || !strings.Contains(r.body, `class="line s1"`) {
				t.Fatalf("trend: %d", r.status)
			}
			// The CSV link carries the same window as the chart.
			link := regexpFind(`href="([^"]+)" id="csv"`, r.body)
			link = strings.ReplaceAll(link, "&amp;", "&")
			if link == "" {
				t.Fatal("no CSV link for an engineer")
			}
			x := c.get(link)
			if x.status != http.StatusOK || !strings.HasPrefix(x.header.Get("Content-Type"), "text/csv") {
				t.Fatalf("CSV: %d %s", x.status, x.header.Get("Content-Type"))
			}
			recs, err := csv.NewReader(strings.NewReader(x.body)).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1+2*tt.rows {
				t.Fatalf("CSV has %d rows, want %d: %v", len(recs), 1+2*tt.rows, recs[:min(4, len(recs))])
			}
			// The chart says how many buckets it drew: the same count.
			if !strings.Contains(r.body, "("+itoa(2*tt.rows)+" shown)") {
				t.Errorf("the chart does not show %d buckets", 2*tt.rows)
			}
			if recs[1][1] != "0000000000000065" || recs[1][2] != secretName || recs[1][4] != tt.res {
				t.Errorf("first row %v", recs[1])
			}
		})
	}
	e.wantAudit("export acme/s-bbbb")
	// A viewer sees the chart, has no CSV link and is refused the export.
	v := e.client()
	v.mustLogin("vera")
	r := v.get("/b/acme/s-bbbb/trend?p=0000000000000065")
	if r.status != http.StatusOK || strings.Contains(r.body, `id="csv"`) {
		t.Errorf("viewer trend: %d", r.status)
	}
	if r := v.get("/b/acme/s-bbbb/trend.csv?p=0000000000000065"); r.status != http.StatusForbidden {
		t.Errorf("viewer export: %d", r.status)
	}
	for _, bad := range []string{"", "p=0000000000000065&range=2y", "p=0000000000000065&from=5&to=1", "p=1&p=2&p=3&p=4&p=5&p=6&p=7&p=8&p=9"} {
		if r := c.get("/b/acme/s-bbbb/trend?" + bad); r.status != http.StatusBadRequest && r.status != http.StatusNotFound {
			t.Errorf("trend?%s: %d", bad, r.status)
		}
	}
}

func ms(t time.Time) string { return itoa(int(t.UnixMilli())) }

func itoa(n int) string { return strconv.Itoa(n) }

func TestCompleteness(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.IdleTimeout, c.AbsoluteTimeout = 24*time.Hour, 48*time.Hour })
	ctx := context.Background()
	c := e.client()
	c.mustLogin("bob")
	// Point 102 reports failed reads for the last half hour.
	b := &batch.Batch{Header: batch.Header{Seq: 2}}
	for k := range 30 {
		b.Samples = append(b.Samples, telemetry.Sample{PointID: 102, Time: e.start.Add(time.Duration(k) * time.Minute).UnixMilli(), Status: telemetry.StatusCommFailure})
		b.Samples = append(b.Samples, telemetry.Sample{PointID: 101, Time: e.start.Add(time.Duration(k) * time.Minute).UnixMilli(), Value: 1})
	}
	if err := e.db.ObserveBatch(ctx, siteB, "ag-s-bbbb", b); err != nil {
		t.Fatal(err)
	}
	e.clk.add(30 * time.Minute)
	r := c.get("/b/acme/s-bbbb/completeness?range=6h")
	if r.status != http.StatusOK {
		t.Fatalf("completeness: %d", r.status)
	}
	row := func(name string) string { return regexpFind(`<tr><td>`+name+`</td>(.*?)</tr>`, r.body) }
	if got := row(secretName); !strings.Contains(got, verdictComplete) || !strings.Contains(got, ">150<") {
		t.Errorf("101 row: %s", got)
	}
	if got := row("B-return"); !strings.Contains(got, verdictDevice) {
		t.Errorf("102 row: %s", got)
	}
	// Problems come first, and the counts cover every page.
	if strings.Index(r.body, "<td>B-return</td>") > strings.Index(r.body, "<td>"+secretName+"</td>") {
		t.Error("the device-down point is not listed first")
	}
	if !strings.Contains(r.body, "2 points: 1 complete; 1 device down;") {
		t.Errorf("verdict counts: %s", regexpFind(`<p id="verdicts">([^<]*)</p>`, r.body))
	}
	// Samples in flight are not missing: the agent uploads, the latest
	// value is seconds old, the count runs up to it.
	// Four minutes after the last sample, with the agent uploading just
	// now (a health-only batch), four samples are in flight, not lost.
	e.clk.add(4 * time.Minute)
	if err := e.db.ObserveBatch(ctx, siteB, "ag-s-bbbb", &batch.Batch{Header: batch.Header{Seq: 3}}); err != nil {
		t.Fatal(err)
	}
	r = c.get("/b/acme/s-bbbb/completeness?range=6h")
	if got := row(secretName); !strings.Contains(got, verdictComplete) {
		t.Errorf("with samples in flight: %s", got)
	}
	// Three hours later with nothing uploaded: the agent is offline.
	e.clk.add(3 * time.Hour)
	r = c.get("/b/acme/s-bbbb/completeness?range=6h")
	if got := row(secretName); !strings.Contains(got, verdictAgent) || !strings.Contains(r.body, "the agent looks offline") {
		t.Errorf("after an outage: %s", got)
	}
	// A has one point with a gap in the middle: samples missing.
	a := e.client()
	a.mustLogin("alice")
	gap := &batch.Batch{Header: batch.Header{Seq: 2}}
	for k := range 30 {
		gap.Samples = append(gap.Samples, telemetry.Sample{PointID: 1, Time: e.start.Add(time.Duration(k+60) * time.Minute).UnixMilli(), Value: 2})
	}
	if err := e.db.ObserveBatch(ctx, siteA, "ag-s-aaaa", gap); err != nil {
		t.Fatal(err)
	}
	r = a.get("/b/acme/s-aaaa/completeness?range=6h")
	if got := row("0000000000000001"); !strings.Contains(got, verdictMissing) {
		t.Errorf("gap: %s", got)
	}
}

func TestAdmin(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.CAFingerprint[0] = 1 })
	ctx := context.Background()
	if err := e.db.AddAgent(ctx, store.Agent{ID: "ag-1", Tenant: "acme", Site: "s-aaaa"}, store.Cert{Serial: "0a", AgentID: "ag-1", NotAfter: e.start.Add(48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	c := e.client()
	c.mustLogin("root")
	steps := []struct {
		name   string
		path   string
		form   url.Values
		status int
		audit  string
	}{
		{"add a user", "/admin/users", url.Values{"name": {"carl"}, "role": {"viewer"}, "password": {testPassword}}, http.StatusSeeOther, "user_add carl"},
		{"weak password refused", "/admin/users", url.Values{"name": {"dora"}, "role": {"viewer"}, "password": {"password"}}, http.StatusBadRequest, ""},
		{"bad name refused", "/admin/users", url.Values{"name": {"<script>"}, "role": {"viewer"}, "password": {testPassword}}, http.StatusBadRequest, ""},
		{"duplicate refused", "/admin/users", url.Values{"name": {"carl"}, "role": {"viewer"}, "password": {testPassword}}, http.StatusConflict, ""},
		{"role change", "/admin/users/carl/role", url.Values{"role": {"engineer"}}, http.StatusSeeOther, "role_change carl"},
		{"own admin role kept", "/admin/users/root/role", url.Values{"role": {"viewer"}}, http.StatusBadRequest, ""},
		{"assign buildings", "/admin/users/carl/sites", url.Values{"site": {"acme/s-aaaa", "acme/s-bbbb"}}, http.StatusSeeOther, "sites_assign carl"},
		{"rename a building", "/admin/sites/acme/s-aaaa/name", url.Values{"name": {"Annex"}}, http.StatusSeeOther, "site_name acme/s-aaaa"},
		{"reset a password", "/admin/users/carl/password", url.Values{"password": {"another fine passphrase"}}, http.StatusSeeOther, "password_change carl"},
		{"make a token", "/admin/tokens", url.Values{"tenant": {"acme"}, "site": {"s-cccc"}, "ttl": {"2h"}}, http.StatusOK, "token_create"},
		{"unknown user", "/admin/users/nobody/role", url.Values{"role": {"viewer"}}, http.StatusNotFound, ""},
		{"revoke an agent", "/admin/agents/ag-1/revoke", url.Values{"reason": {"box stolen"}}, http.StatusSeeOther, "revoke ag-1"},
		{"unknown agent", "/admin/agents/ag-nope/revoke", url.Values{"reason": {"lost"}}, http.StatusNotFound, ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			r := c.post(st.path, "/admin", st.form)
			if r.status != st.status {
				t.Fatalf("status %d, want %d", r.status, st.status)
			}
			if st.audit != "" {
				e.wantAudit(st.audit)
			}
			if st.name == "make a token" && !strings.Contains(r.body, `id="new-token"`) {
				t.Error("the new token is not shown")
			}
		})
	}
	if a, _ := e.db.Agent(ctx, "ag-1"); !a.Revoked() || a.RevokeReason != "box stolen" {
		t.Errorf("agent not revoked: %+v", a)
	}
	u, err := e.db.User(ctx, "carl")
	if err != nil || u.Role != store.RoleEngineer || len(u.Sites) != 2 {
		t.Errorf("carl: %+v %v", u, err)
	}
	if r := c.get("/"); !strings.Contains(r.body, "Annex") {
		t.Error("the renamed building is not shown")
	}
	if r := c.get("/admin"); !strings.Contains(r.body, "role_change") || !strings.Contains(r.body, "carl") {
		t.Error("the admin page does not show the audit log")
	}
	// An engineer has no admin page.
	a := e.client()
	a.mustLogin("alice")
	if r := a.get("/admin"); r.status != http.StatusForbidden {
		t.Errorf("engineer at /admin: %d", r.status)
	}
}

func TestParseWindow(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).UnixMilli(), 10) }
	tests := []struct {
		query string
		res   time.Duration
		span  time.Duration
		err   bool
	}{
		{"", store.Res5Min, 24 * time.Hour, false},
		{"range=1h", store.Res5Min, time.Hour, false},
		{"range=7d", store.ResHour, 7 * 24 * time.Hour, false},
		{"range=365d", store.ResDay, 365 * 24 * time.Hour, false},
		{"range=2y", 0, 0, true},
		{"from=" + at(-3*time.Hour) + "&to=" + at(-time.Hour), store.Res5Min, 2 * time.Hour, false},
		// A short window past the 5-minute retention is drawn from hours.
		{"from=" + at(-200*24*time.Hour) + "&to=" + at(-199*24*time.Hour), store.ResHour, 24 * time.Hour, false},
		// Zoomed in past one bucket: widened to 30 minutes.
		{"from=" + at(-time.Minute) + "&to=" + at(0), store.Res5Min, 30 * time.Minute, false},
		// Longer than a year: cut to a year.
		{"from=" + at(-1000*24*time.Hour) + "&to=" + at(0), store.ResDay, maxSpan, false},
		{"from=x&to=1", 0, 0, true},
		{"from=" + at(0) + "&to=" + at(-time.Hour), 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			w, err := parseWindow(q, now)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v", err)
			}
			if err != nil {
				return
			}
			// From is aligned down to a bucket: allow one bucket more.
			if span := w.To.Sub(w.From); w.Res != tt.res || span < tt.span || span > tt.span+w.Res {
				t.Errorf("window %v..%v at %v, want %v over %v", w.From, w.To, w.Res, tt.res, tt.span)
			}
		})
	}
}

// TestBuildingDevices: with a full catalogue the building page has a row
// per device (from the points' device: tags) above the points, with its
// points, stale points and failed reads; a building whose catalogue names
// no device says so.
func TestBuildingDevices(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.db.PutCatalog(ctx, siteB.Tenant, siteB.Site, "ag-s-bbbb", []store.CatalogPoint{
		{ID: 101, Name: secretName, Unit: "degC", Tags: []string{"chw", "device:chiller-1"}},
		{ID: 102, Name: "B-return", Unit: "degC", Tags: []string{"chw", "device:chiller-1"}},
		{ID: 103, Name: "B-fan", Tags: []string{"device:ahu-2"}},
		{ID: 104, Name: "B-loose"},
	}); err != nil {
		t.Fatal(err)
	}
	// 103 fails its reads now; 104 last reported long ago.
	b := &batch.Batch{Header: batch.Header{Seq: 5}, Samples: []telemetry.Sample{
		{PointID: 103, Time: e.start.UnixMilli(), Status: telemetry.StatusCommFailure},
		{PointID: 104, Time: e.start.Add(-5 * time.Hour).UnixMilli(), Value: 1},
	}}
	if err := e.db.ObserveBatch(ctx, siteB, "ag-s-bbbb", b); err != nil {
		t.Fatal(err)
	}
	c := e.client()
	c.mustLogin("bob")
	r := c.get("/b/acme/s-bbbb")
	if r.status != http.StatusOK {
		t.Fatalf("building: %d", r.status)
	}
	table := regexpFind(`(?s)<table class="grid" id="devices">(.*?)</table>`, r.body)
	rows := regexp.MustCompile(`<tr class="(\w+)"><td><a href="([^"]+)">([^<]+)</a></td><td class="num">(\d+)</td><td class="num">(\d+)</td><td class="num">(\d+)</td></tr>`).FindAllStringSubmatch(table, -1)
	var got []string
	for _, m := range rows {
		got = append(got, strings.Join(m[1:], " "))
	}
	want := []string{
		"bad /b/acme/s-bbbb?tag=device%3Aahu-2 ahu-2 1 0 1",
		"ok /b/acme/s-bbbb?tag=device%3Achiller-1 chiller-1 2 0 0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("device rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(r.body, "1 points name no device") {
		t.Error("the point without a device is not counted")
	}
	if strings.Index(r.body, `id="devices"`) > strings.Index(r.body, `id="points"`) {
		t.Error("the devices are not above the points")
	}
	// A device's link lists its points only.
	f := c.get("/b/acme/s-bbbb?tag=device%3Achiller-1")
	if !strings.Contains(f.body, secretName) || !strings.Contains(f.body, "B-return") || strings.Contains(f.body, ">B-fan<") {
		t.Error("the device filter does not list exactly its points")
	}
	// Building A has no catalogue: no device table, and the page says why.
	a := e.client()
	a.mustLogin("alice")
	if r := a.get("/b/acme/s-aaaa"); strings.Contains(r.body, `id="devices"`) || !strings.Contains(r.body, `id="no-devices"`) {
		t.Error("building A, without a catalogue, does not say it names no devices")
	}
}
