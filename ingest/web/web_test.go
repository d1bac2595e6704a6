package web

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/secretbox"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// cheap keeps argon2id fast in tests; production uses DefaultHashParams.
var cheap = HashParams{Time: 1, Memory: 64, Threads: 1}

// testPassword passes the policy.
const testPassword = "correct horse battery staple"

// clock is the tests' settable clock, shared by the store and the server.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Two buildings of one tenant, each with its own engineer, and an admin.
var (
	siteA = store.SiteRef{Tenant: "acme", Site: "s-aaaa"}
	siteB = store.SiteRef{Tenant: "acme", Site: "s-bbbb"}
)

// secretName is a point of building B whose name must never show to a
// user of building A.
const secretName = "B-secret-chiller-supply"

type env struct {
	t      testing.TB
	db     *store.DB
	dbPath string
	clk    *clock
	srv    *Server
	ts     *httptest.Server
	start  time.Time
}

func newEnv(t testing.TB, opts ...func(*Config)) *env {
	t.Helper()
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	dbPath := filepath.Join(t.TempDir(), "ingest.db")
	db, err := store.Open(ctx, dbPath, store.Options{Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	keys, _, err := secretbox.LoadOrCreate(filepath.Join(t.TempDir(), "totp.key"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Store: db, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clk.now, HashParams: cheap, TOTPKeys: keys}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.StartTLS()
	t.Cleanup(ts.Close)
	e := &env{t: t, db: db, dbPath: dbPath, clk: clk, srv: srv, ts: ts, start: clk.now()}
	e.seed()
	return e
}

func (e *env) addUser(name, role string, sites ...store.SiteRef) {
	e.t.Helper()
	h, err := HashPassword(testPassword, cheap)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := e.db.AddUser(ctx, name, role, h); err != nil {
		e.t.Fatal(err)
	}
	if err := e.db.AssignSites(ctx, name, sites); err != nil {
		e.t.Fatal(err)
	}
}

// seed stores two hours of one-minute samples for two points in each
// building, names for building B's points, and the users.
func (e *env) seed() {
	ctx := context.Background()
	from := e.clk.now().Add(-2 * time.Hour)
	for i, ref := range []store.SiteRef{siteA, siteB} {
		b := &batch.Batch{Header: batch.Header{AgentID: "ag-" + ref.Site, Site: ref.Site, Seq: 1, Health: batch.Health{DevicesUp: 2, BufferSamples: 5}}}
		for p := uint64(1); p <= 2; p++ {
			id := p + uint64(i)*100
			for k := range 120 {
				b.Samples = append(b.Samples, telemetry.Sample{PointID: id, Time: from.Add(time.Duration(k) * time.Minute).UnixMilli(), Value: float64(k) + float64(p)/10})
			}
		}
		if err := e.db.ObserveBatch(ctx, ref, "ag-"+ref.Site, b); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := e.db.PutCatalog(ctx, siteB.Tenant, siteB.Site, "ag-s-bbbb", []store.CatalogPoint{
		{ID: 101, Name: secretName, Unit: "degC", Tags: []string{"chw", "supply"}},
		{ID: 102, Name: "B-return", Unit: "degC", Tags: []string{"chw"}},
	}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.db.PutSite(ctx, siteB, "Building B"); err != nil {
		e.t.Fatal(err)
	}
	e.addUser("alice", store.RoleEngineer, siteA)
	e.addUser("bob", store.RoleEngineer, siteB)
	e.addUser("vera", store.RoleViewer, siteB)
	e.addUser("root", store.RoleAdmin)
}

// client is one browser: a cookie jar and no automatic redirects.
type client struct {
	e  *env
	hc *http.Client
}

func (e *env) client() *client {
	jar, _ := cookiejar.New(nil)
	hc := e.ts.Client()
	hc = &http.Client{Transport: hc.Transport, Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &client{e: e, hc: hc}
}

type resp struct {
	status int
	header http.Header
	body   string
}

func (c *client) do(method, path string, form url.Values) resp {
	c.e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.e.ts.URL+path, body)
	if err != nil {
		c.e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	r, err := c.hc.Do(req)
	if err != nil {
		c.e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return resp{status: r.StatusCode, header: r.Header, body: string(b)}
}

func (c *client) get(path string) resp { c.e.t.Helper(); return c.do(http.MethodGet, path, nil) }

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf reads the CSRF token from a page.
func (c *client) csrf(page string) string {
	c.e.t.Helper()
	m := csrfRE.FindStringSubmatch(c.get(page).body)
	if m == nil {
		c.e.t.Fatalf("no CSRF token on %s", page)
	}
	return m[1]
}

func (c *client) post(path, fromPage string, form url.Values) resp {
	c.e.t.Helper()
	form.Set("csrf", c.csrf(fromPage))
	return c.do(http.MethodPost, path, form)
}

// login signs in and returns the answer to the login POST.
func (c *client) login(name, pw string) resp {
	c.e.t.Helper()
	return c.post("/login", "/login", url.Values{"name": {name}, "password": {pw}})
}

func (c *client) mustLogin(name string) {
	c.e.t.Helper()
	if r := c.login(name, testPassword); r.status != http.StatusSeeOther || r.header.Get("Location") != "/" {
		c.e.t.Fatalf("login %s: %d %s", name, r.status, r.header.Get("Location"))
	}
}

func (c *client) sessionCookie() string {
	u, _ := url.Parse(c.e.ts.URL)
	for _, ck := range c.hc.Jar.Cookies(u) {
		if ck.Name == sessionCookie {
			return ck.Value
		}
	}
	return ""
}

func (e *env) auditActions() []string {
	e.t.Helper()
	es, err := e.db.AuditLog(context.Background(), 0, 10000)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, a := range es {
		out = append(out, a.Action+" "+a.Subject)
	}
	return out
}

func (e *env) wantAudit(want ...string) {
	e.t.Helper()
	have := e.auditActions()
	for _, w := range want {
		found := false
		for _, h := range have {
			if strings.HasPrefix(h, w) {
				found = true
			}
		}
		if !found {
			e.t.Errorf("audit log lacks %q; has %v", w, have)
		}
	}
	if _, err := e.db.VerifyAudit(context.Background()); err != nil {
		e.t.Errorf("audit chain: %v", err)
	}
}

// wrongCode is the i-th six-digit code (counting from "000000") that
// checkTOTP refuses for secret at t. A fixed wrong code is not wrong for a
// random secret about three times in a million (a code and its neighbours
// in the skew), and a test guessing many codes makes that likelier.
func wrongCode(secret []byte, t time.Time, i int) string {
	for n := 0; n < 1_000_000; n++ {
		code := fmt.Sprintf("%06d", n)
		if checkTOTP(secret, code, t) >= 0 {
			continue
		}
		if i == 0 {
			return code
		}
		i--
	}
	panic("no wrong code left")
}

func regexpFind(pattern, s string) string {
	m := regexp.MustCompile(pattern).FindStringSubmatch(s)
	switch len(m) {
	case 0:
		return ""
	case 1:
		return m[0]
	}
	return m[1]
}
