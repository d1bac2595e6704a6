package web

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countChecks makes the server count its password checks.
func (e *env) countChecks() *atomic.Int64 {
	var n atomic.Int64
	e.srv.verify = func(hash, pw string) (bool, error) {
		n.Add(1)
		return VerifyPassword(hash, pw)
	}
	return &n
}

// rawPost sends one form with a fixed cookie header, bypassing the jar: a
// failed sign-in answers with a fresh login cookie, and parallel requests
// sharing a jar would then trip over each other's CSRF tokens instead of
// reaching the check under test. Redirects are not followed: the answer
// is the status, and for a redirect where it leads ("303 /login").
func (e *env) rawPost(path, cookie string, form url.Values) string {
	req, err := http.NewRequest(http.MethodPost, e.ts.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Error(err)
		return ""
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Cookie", cookie)
	hc := &http.Client{Transport: e.ts.Client().Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := hc.Do(req)
	if err != nil {
		e.t.Error(err)
		return ""
	}
	defer r.Body.Close()
	_, _ = io.Copy(io.Discard, r.Body)
	if loc := r.Header.Get("Location"); loc != "" {
		return fmt.Sprint(r.StatusCode, " ", loc)
	}
	return fmt.Sprint(r.StatusCode)
}

// parallel runs n copies of fn at once and returns their statuses.
func parallel(n int, fn func(i int) string) map[string]int {
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			st := fn(i)
			mu.Lock()
			got[st]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return got
}

// loginCookieAndToken is a login form's double-submit pair.
func (c *client) loginCookieAndToken() (string, string) {
	c.e.t.Helper()
	tok := c.csrf("/login")
	u, _ := url.Parse(c.e.ts.URL)
	for _, ck := range c.hc.Jar.Cookies(u) {
		if ck.Name == loginCookie {
			return loginCookie + "=" + ck.Value, tok
		}
	}
	c.e.t.Fatal("no login cookie")
	return "", ""
}

// TestLockoutUnderConcurrency: parallel wrong guesses cannot outrun the
// lockout. Each attempt is recorded before its check, so however many
// arrive at once, at most the limit are checked.
func TestLockoutUnderConcurrency(t *testing.T) {
	const n = 40
	tests := []struct {
		name  string
		user  func(i int) string
		limit func(c Config) int
	}{
		{"one account", func(int) string { return "alice" }, func(c Config) int { return c.MaxFailsPerUser }},
		{"one address, many names", func(i int) string { return fmt.Sprintf("nobody%d", i) }, func(c Config) int { return c.MaxFailsPerAddr }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.PasswordChecks = 2 * n; c.PasswordCheckWait = time.Minute })
			checks := e.countChecks()
			cookie, tok := e.client().loginCookieAndToken()
			got := parallel(n, func(i int) string {
				return e.rawPost("/login", cookie, url.Values{"csrf": {tok}, "name": {tt.user(i)}, "password": {fmt.Sprintf("wrong guess %d", i)}})
			})
			if got["401"] != n {
				t.Fatalf("answers %v, want %d × 401", got, n)
			}
			limit := tt.limit(e.srv.cfg)
			if c := checks.Load(); c > int64(limit) || c == 0 {
				t.Errorf("%d parallel wrong passwords made %d password checks, want 1..%d", n, c, limit)
			}
			e.wantAudit("lockout")
		})
	}
	t.Run("second-factor codes", func(t *testing.T) {
		e := newEnv(t)
		secret := e.enrol("alice")
		c := e.client()
		if r := c.login("alice", testPassword); r.header.Get("Location") != "/login/totp" {
			t.Fatalf("password step: %d %s", r.status, r.header.Get("Location"))
		}
		tok := c.csrf("/login/totp")
		cookie := sessionCookie + "=" + c.sessionCookie()
		got := parallel(n, func(i int) string {
			return e.rawPost("/login/totp", cookie, url.Values{"csrf": {tok}, "code": {wrongCode(secret, e.clk.now(), i)}})
		})
		// Refused with the form again, or (once the lockout ended the
		// half-signed-in session) sent back to the password step.
		if got["401"]+got["303 /login"] != n {
			t.Fatalf("answers %v, want %d × 401 or 303 /login", got, n)
		}
		es, err := e.db.AuditLog(context.Background(), 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		checked := 0
		for _, a := range es {
			if a.Action == "login_failed" && a.Detail == "wrong or reused second-factor code" {
				checked++
			}
		}
		if checked > e.srv.cfg.MaxFailsPerUser || checked == 0 {
			t.Errorf("%d parallel codes: %d checked, want 1..%d", n, checked, e.srv.cfg.MaxFailsPerUser)
		}
	})
	t.Run("current password on the account page", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.PasswordChecks = 2 * n; c.PasswordCheckWait = time.Minute })
		c := e.client()
		c.mustLogin("alice")
		checks := e.countChecks()
		tok := c.csrf("/account")
		cookie := sessionCookie + "=" + c.sessionCookie()
		got := parallel(n, func(i int) string {
			return e.rawPost("/account/password", cookie, url.Values{"csrf": {tok}, "current": {fmt.Sprintf("wrong guess %d", i)},
				"password": {"a brand new passphrase"}, "again": {"a brand new passphrase"}})
		})
		if got["400"] != n {
			t.Fatalf("answers %v, want %d × 400", got, n)
		}
		if c := checks.Load(); c > int64(e.srv.cfg.MaxFailsPerUser) || c == 0 {
			t.Errorf("%d parallel wrong current passwords made %d checks, want 1..%d", n, c, e.srv.cfg.MaxFailsPerUser)
		}
	})
}

// TestPasswordCheckSlots: no more argon2id checks run at once than there
// are slots; a request that finds them all busy waits a little, then is
// answered 503 with Retry-After, and counts against nobody.
func TestPasswordCheckSlots(t *testing.T) {
	const slots = 2
	e := newEnv(t, func(c *Config) { c.PasswordChecks = slots; c.PasswordCheckWait = 50 * time.Millisecond })
	var running, most atomic.Int64
	entered := make(chan struct{}, 16)
	release := make(chan struct{})
	e.srv.verify = func(hash, pw string) (bool, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		entered <- struct{}{}
		<-release
		return VerifyPassword(hash, pw)
	}
	cookie, tok := e.client().loginCookieAndToken()
	form := url.Values{"csrf": {tok}, "name": {"alice"}, "password": {"a wrong password"}}
	var wg sync.WaitGroup
	held := make([]string, slots)
	for i := range slots {
		wg.Add(1)
		go func() { defer wg.Done(); held[i] = e.rawPost("/login", cookie, form) }()
	}
	for range slots {
		select {
		case <-entered:
		case <-time.After(30 * time.Second):
			t.Fatal("the first checks never started")
		}
	}
	// Every slot is held: the next sign-in and a password change wait,
	// then are refused.
	req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Cookie", cookie)
	// Bounded: without the slots this request would wait for the held
	// checks, which wait for this test.
	hc := &http.Client{Transport: e.ts.Client().Transport, Timeout: 20 * time.Second}
	r, err := hc.Do(req)
	if err != nil {
		close(release)
		wg.Wait()
		t.Fatalf("sign-in with every slot busy: %v, want 503", err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Errorf("sign-in with every slot busy: %d, Retry-After %q; want 503 with Retry-After", r.StatusCode, r.Header.Get("Retry-After"))
	}
	close(release)
	wg.Wait()
	for i, st := range held {
		if st != "401" {
			t.Errorf("held sign-in %d: %s, want 401", i, st)
		}
	}
	if m := most.Load(); m > slots {
		t.Errorf("%d checks ran at once, slots %d", m, slots)
	}
	// The refused sign-in was not counted: two failures, not three.
	byName, _, err := e.db.LoginFailures(context.Background(), "alice", "127.0.0.1", e.clk.now().Add(-time.Hour))
	if err != nil || byName != slots {
		t.Errorf("failures of alice: %d, %v; want %d", byName, err, slots)
	}
	if d := (Config{}); true {
		d.setDefaults()
		if d.PasswordChecks < 2 || d.PasswordCheckWait <= 0 {
			t.Errorf("default slots %d, wait %v", d.PasswordChecks, d.PasswordCheckWait)
		}
	}
}
