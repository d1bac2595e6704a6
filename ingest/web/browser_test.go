package web

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// chromium finds Debian's chromium: the binary itself rather than the
// /usr/bin wrapper script, when it is there.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/lib/chromium/chromium"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed, and CI must not skip the browser tests: apt-get install chromium (.ci/run does)")
	}
	t.Skip("chromium is not installed: apt-get install chromium to run the browser tests")
	return ""
}

// browserEnv is the dashboard on a real TLS listener and a headless
// chromium driving it.
type browserEnv struct {
	*env
	base   string
	shots  string
	ctx    context.Context
	mu     sync.Mutex
	issues []string // CSP violations and script errors the browser reported
}

// sel is a CSS selector.
func sel(s string) chromedp.CSS { return chromedp.CSS(s) }

func newBrowserEnv(t *testing.T) *browserEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test skipped under -short")
	}
	exe := chromium(t)
	e := newEnv(t, func(c *Config) { c.IdleTimeout, c.AbsoluteTimeout = 24*time.Hour, 48*time.Hour })
	// The real listener, with a certificate from a test CA, as serve runs it.
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	e.srv.cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	shots := t.ArtifactDir()
	t.Logf("screenshots in %s", shots)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("metrics-recording-only", true),
		// Our test CA is not in the browser's store; in tests only.
		chromedp.IgnoreCertErrors,
		// No name resolves: the browser reaches loopback addresses only.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelA)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(cancelB)
	// The one bound on the browser, for a hang only: every step waits
	// for its event, and a loaded machine under -race is slow to start
	// chromium and to draw.
	ctx, cancelT := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(cancelT)
	b := &browserEnv{env: e, base: "https://" + ln.Addr().String(), shots: shots, ctx: ctx}
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	// Collect every error the page reports (a CSP violation is a browser
	// log entry of level error) until the test ends.
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			// The 401s and 404s the test asks for are logged by the
			// network; anything else (a CSP refusal is "security") counts.
			if (m.Type == "error" && m.Source != "network") || m.IsException() {
				b.mu.Lock()
				b.issues = append(b.issues, m.String())
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// nav runs steps that navigate and waits for the new page; it returns
// the page's HTTP status.
func (b *browserEnv) nav(what string, steps ...chromedp.Action[chromedp.Void]) int64 {
	b.t.Helper()
	r, err := chromedp.RunResponse(b.ctx, steps...)
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return r.Status
}

func (b *browserEnv) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// shot saves a full-page PNG screenshot as name.png.
func (b *browserEnv) shot(name string) {
	b.t.Helper()
	buf, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), buf, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browserEnv) text(s string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Text(sel(s)))
	if err != nil {
		b.t.Fatalf("reading %s: %v", s, err)
	}
	return v
}

func (b *browserEnv) login(name, pw string) {
	b.t.Helper()
	b.do("login page for "+name,
		chromedp.Navigate(b.base+"/login"),
		chromedp.WaitVisible(sel("#login-form")),
		chromedp.SetValue(sel("#name"), name),
		chromedp.SetValue(sel("#password"), pw),
	)
	b.nav("login as "+name, chromedp.Click(sel("#signin")))
}

func (b *browserEnv) location() string {
	b.t.Helper()
	u, err := chromedp.Run(b.ctx, chromedp.Location())
	if err != nil {
		b.t.Fatal(err)
	}
	return u
}

// TestBrowserIntegration signs in with a real browser, is locked out after
// failures, sees a building, opens and zooms a trend, exports CSV, is
// refused another building, visits the admin pages and turns a second
// factor on and signs in with it, taking a screenshot of each page.
func TestBrowserIntegration(t *testing.T) {
	b := newBrowserEnv(t)

	b.do("login page", chromedp.Navigate(b.base+"/login"), chromedp.WaitVisible(sel("#login-form")))
	b.shot("01-login")

	// Lockout: vera fails five times, then her right password is refused.
	for i := range DefaultMaxFailsPerUser {
		b.login("vera", fmt.Sprintf("wrong password number %d", i))
	}
	b.login("vera", testPassword)
	if msg := b.text("#login-message"); !strings.Contains(msg, "Sign-in failed") {
		t.Errorf("locked account: message %q", msg)
	}
	if !strings.HasSuffix(b.location(), "/login") {
		t.Errorf("a locked account got past the login page: %s", b.location())
	}
	b.shot("02-lockout")
	b.wantAudit("lockout vera")

	// Bob signs in and sees his building in the portfolio.
	b.login("bob", testPassword)
	b.do("portfolio", chromedp.WaitVisible(sel("#buildings")))
	if txt := b.text("#buildings"); !strings.Contains(txt, "Building B") || strings.Contains(txt, "s-aaaa") {
		t.Errorf("portfolio: %q", txt)
	}
	b.shot("03-portfolio")

	b.nav("building", chromedp.Click(sel(`a[href="/b/acme/s-bbbb"]`)))
	if txt := b.text("#points"); !strings.Contains(txt, secretName) || !strings.Contains(txt, "B-return") {
		t.Errorf("building points: %q", txt)
	}
	b.shot("04-building")
	b.do("filter", chromedp.SetValue(sel("#q"), "secret"))
	b.nav("filter", chromedp.Submit(sel("#q")))
	if txt := b.text("#points"); !strings.Contains(txt, secretName) || strings.Contains(txt, "B-return") {
		t.Errorf("filtered points: %q", txt)
	}
	b.shot("05-building-filtered")

	// Chart the point, then drag across the chart to zoom.
	b.do("select a point", chromedp.Click(sel(`input[name="p"]`)))
	b.nav("trend", chromedp.Click(sel("#chart-selected")))
	lines, err := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("#chart path.line").length`))
	if err != nil || lines != 1 {
		t.Errorf("the chart has %d lines (%v), want 1", lines, err)
	}
	b.shot("06-trend")
	// Six hours, then zoom into the last part of it, where the data is.
	b.nav("6 hours", chromedp.Click(sel(`p.ranges a:nth-of-type(2)`)))
	before := b.location()
	box, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]float64](`(() => { const r = document.getElementById("chart").getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()`))
	if err != nil || len(box) != 4 {
		t.Fatalf("chart box: %v %v", box, err)
	}
	y := box[1] + box[3]/2
	b.nav("zoom", chromedp.DragAndDropXY(box[0]+box[2]*0.6, y, box[0]+box[2]*0.95, y, 15))
	if after := b.location(); after == before || !strings.Contains(after, "from=") {
		t.Errorf("dragging did not zoom: %s -> %s", before, after)
	}
	b.shot("07-trend-zoomed")

	// CSV export of what is shown, downloaded by the browser.
	dl := t.TempDir()
	if _, err := chromedp.CallBrowser(b.ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dl}); err != nil {
		t.Fatalf("download behaviour: %v", err)
	}
	b.do("export", chromedp.Click(sel("#csv")))
	var csvText string
	// Until the download is there; 60 s only bounds a browser that never
	// writes it (15 s was close to a deadline for a loaded machine).
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && csvText == ""; time.Sleep(100 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(dl, "*.csv")); len(m) > 0 {
			if data, err := os.ReadFile(m[0]); err == nil {
				csvText = string(data)
			}
		}
	}
	if !strings.HasPrefix(csvText, "time,point_id,name") || strings.Count(csvText, secretName) < 5 {
		t.Errorf("downloaded CSV: %q", csvText)
	}
	b.wantAudit("export acme/s-bbbb")

	b.do("completeness", chromedp.Navigate(b.base+"/b/acme/s-bbbb/completeness"), chromedp.WaitVisible(sel("#completeness")))
	b.shot("08-completeness")

	// Another building: refused, nothing of it shown.
	if st := b.nav("other building", chromedp.Navigate(b.base+"/b/acme/s-aaaa")); st != 404 {
		t.Errorf("another building: status %d", st)
	}
	if txt := b.text("main"); !strings.Contains(txt, "404") || strings.Contains(txt, "0000000000000001") {
		t.Errorf("another building: %q", txt)
	}
	b.shot("09-refused")
	if st := b.nav("other building's trend", chromedp.Navigate(b.base+"/b/acme/s-aaaa/trend?p=0000000000000001")); st != 404 {
		t.Errorf("another building's trend: status %d", st)
	}
	if txt := b.text("main"); !strings.Contains(txt, "404") {
		t.Errorf("another building's trend: %q", txt)
	}

	// The admin pages, as root.
	b.do("portfolio again", chromedp.Navigate(b.base+"/"))
	b.nav("logout", chromedp.Click(sel("#logout")))
	b.login("root", testPassword)
	b.do("admin", chromedp.Navigate(b.base+"/admin"), chromedp.WaitVisible(sel("#users")))
	if txt := b.text("#audit-recent"); !strings.Contains(txt, "lockout") || !strings.Contains(txt, "export") {
		t.Errorf("admin audit: %q", txt)
	}
	b.shot("10-admin")
	b.do("account", chromedp.Navigate(b.base+"/account"), chromedp.WaitVisible(sel("#password-form")))
	b.shot("11-account")
	b.nav("second factor set-up", chromedp.Click(sel("#totp-start")))
	b.do("QR code", chromedp.WaitVisible(sel("#totp-qr svg")))
	b.shot("12-totp-setup")
	// Turn it on with the code an authenticator app would show, then sign
	// in again with it: the secret is stored sealed and opens.
	secret, err := ParseTOTPSecret(b.text("#totp-secret"))
	if err != nil {
		t.Fatal(err)
	}
	b.do("second factor code",
		chromedp.SetValue(sel("#totp-code"), TOTPCode(secret, b.clk.now())),
		chromedp.SetValue(sel("#totp-current"), testPassword))
	b.nav("second factor on", chromedp.Click(sel("#totp-on")))
	b.do("second factor is on", chromedp.WaitVisible(sel("#totp-is-on")))
	b.shot("13-totp-on")
	b.nav("logout as root", chromedp.Click(sel("#logout")))
	b.clk.add(totpStep)
	b.login("root", testPassword)
	b.do("code form", chromedp.WaitVisible(sel("#totp-form")), chromedp.SetValue(sel("#code"), TOTPCode(secret, b.clk.now())))
	b.shot("14-totp-login")
	b.nav("code", chromedp.Submit(sel("#totp-form")))
	if loc := b.location(); loc != b.base+"/" {
		t.Errorf("after the second factor the browser is at %s, want the portfolio", loc)
	}
	if raw := b.rawTOTP("root"); !strings.HasPrefix(string(raw), "v1:") {
		t.Errorf("root's TOTP secret is stored as %q, not sealed", raw)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.issues {
		t.Errorf("browser reported: %s", m)
	}
}
