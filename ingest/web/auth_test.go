package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
)

func TestPasswordPolicy(t *testing.T) {
	tests := []struct {
		name, user, pw string
		ok             bool
	}{
		{"long passphrase", "ann", testPassword, true},
		{"too short", "ann", "Tr0ub4dor&3", false},
		{"common", "ann", "qwertyuiop123", false},
		{"common with digits appended", "ann", "password123456", false},
		{"common, other case", "ann", "PASSWORDPASSWORD", false},
		{"contains the user name", "annabelle", "my name is annabelle", false},
		{"one repeated character", "ann", "aaaaaaaaaaaaaaa", false},
		{"too long", "ann", strings.Repeat("ab", 200), false},
		{"unicode counts characters", "ann", "ééééééééééé", false},
		// Found accepted by the requirements check.
		{"digit run", "ann", "123456789012", false},
		{"digit run, longer", "ann", "1234567890123", false},
		{"repeated half", "ann", "qwertyqwerty", false},
		{"alphabet run", "ann", "abcdefghijkl", false},
		{"keyboard columns", "ann", "zaq12wsxcde3", false},
		{"repeated word", "ann", "letmeinletmein", false},
		{"short unit repeated", "ann", "abcabcabcabcab", false},
		{"backwards digit run", "ann", "987654321098", false},
		{"two keyboard rows", "ann", "asdfghjklzxcvb", false},
		{"name with a few characters", "jsmith", "JSmith!20261", false},
		{"e-mail local part", "j.smith@acme.example", "jsmith2026!!x", false},
		{"e-mail domain with a few characters", "j.smith@acmeheating.example", "acmeheating26", false},
		{"e-mail domain inside a passphrase", "j.smith@acme.example", "acme boiler room seven at dusk", true},
		{"passphrase with digits", "ann", "purple 7 otters 23 lamps", true},
		{"random looking", "ann", "v9Lq#2mZ!r8Tk", true},
		{"doubled alphabet run", "ann", "aabbccddeeffgg", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPasswordPolicy(tt.user, tt.pw)
			if (err == nil) != tt.ok {
				t.Fatalf("CheckPasswordPolicy(%q) = %v, want ok=%v", tt.pw, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrWeakPassword) {
				t.Errorf("error %v does not wrap ErrWeakPassword", err)
			}
		})
	}
	if len(commonPasswords) < 100 {
		t.Errorf("only %d common passwords embedded", len(commonPasswords))
	}
}

func TestHashPassword(t *testing.T) {
	h, err := HashPassword(testPassword, DefaultHashParams)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("hash %q is not argon2id with the default parameters", h)
	}
	h2, _ := HashPassword(testPassword, DefaultHashParams)
	if h == h2 {
		t.Error("two hashes of one password are equal: no salt")
	}
	tests := []struct {
		name, hash, pw string
		ok, err        bool
	}{
		{"right", h, testPassword, true, false},
		{"wrong", h, testPassword + "!", false, false},
		{"empty", h, "", false, false},
		{"not argon2id", "$2a$10$abcdefghijklmnopqrstuv", testPassword, false, true},
		{"damaged", strings.Replace(h, "m=19456", "m=x", 1), testPassword, false, true},
		{"huge memory", strings.Replace(h, "m=19456", "m=99999999", 1), testPassword, false, true},
		{"empty hash", "", testPassword, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := VerifyPassword(tt.hash, tt.pw)
			if ok != tt.ok || (err != nil) != tt.err {
				t.Errorf("VerifyPassword = %v, %v; want %v, error %v", ok, err, tt.ok, tt.err)
			}
		})
	}
}

// TestTOTPVectors checks RFC 6238 appendix B (SHA-1), cut to six digits.
func TestTOTPVectors(t *testing.T) {
	secret := []byte("12345678901234567890")
	tests := []struct {
		unix int64
		code string
	}{
		{59, "287082"}, {1111111109, "081804"}, {1111111111, "050471"},
		{1234567890, "005924"}, {2000000000, "279037"}, {20000000000, "353130"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.unix), func(t *testing.T) {
			at := time.Unix(tt.unix, 0)
			if got := TOTPCode(secret, at); got != tt.code {
				t.Errorf("code at %d = %s, want %s", tt.unix, got, tt.code)
			}
			if checkTOTP(secret, tt.code, at.Add(30*time.Second)) < 0 {
				t.Error("the previous step's code was refused")
			}
			if checkTOTP(secret, tt.code, at.Add(95*time.Second)) >= 0 {
				t.Error("a code three steps old was accepted")
			}
		})
	}
	s, err := NewTOTPSecret()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseTOTPSecret(strings.ToLower(TOTPSecretString(s)))
	if err != nil || string(back) != string(s) {
		t.Errorf("secret round trip: %v", err)
	}
	if u := TOTPURI("Sightglass", "ann", s); !strings.HasPrefix(u, "otpauth://totp/Sightglass:ann?") {
		t.Errorf("URI %s", u)
	}
}

func TestLogin(t *testing.T) {
	e := newEnv(t)
	if err := e.db.SetDisabled(context.Background(), "vera", true); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, user, pw string
		ok             bool
		reason         string
	}{
		{"right password", "alice", testPassword, true, ""},
		{"wrong password", "alice", "not the password at all", false, "wrong password"},
		{"unknown user", "mallory", testPassword, false, "unknown user"},
		{"disabled account", "vera", testPassword, false, "account disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.client()
			r := c.login(tt.user, tt.pw)
			if tt.ok {
				if r.status != http.StatusSeeOther || r.header.Get("Location") != "/" {
					t.Fatalf("login: %d to %q", r.status, r.header.Get("Location"))
				}
				if p := c.get("/"); p.status != http.StatusOK || !strings.Contains(p.body, "Portfolio") {
					t.Errorf("portfolio after login: %d", p.status)
				}
				return
			}
			if r.status != http.StatusUnauthorized || !strings.Contains(r.body, "Sign-in failed") {
				t.Errorf("failed login: %d", r.status)
			}
			if c.sessionCookie() != "" {
				t.Error("a failed login set a session cookie")
			}
			// The same words for every failure: nothing to tell them apart.
			if strings.Contains(r.body, "disabled") || strings.Contains(r.body, "unknown") {
				t.Error("the failure page says why")
			}
			e.wantAudit("login_failed " + tt.user)
			es, _ := e.db.AuditRecent(context.Background(), 0, 1)
			if len(es) == 0 || es[0].Detail != tt.reason {
				t.Errorf("audit detail %+v, want %q", es, tt.reason)
			}
		})
	}
	e.wantAudit("login alice")
}

func TestLoginCSRF(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.get("/login")
	// No token, a forged one, and one from another browser.
	other := e.client().csrf("/login")
	for _, tok := range []string{"", "AAAA", other} {
		r := c.do(http.MethodPost, "/login", url.Values{"name": {"alice"}, "password": {testPassword}, "csrf": {tok}})
		if r.status != http.StatusForbidden || c.sessionCookie() != "" {
			t.Errorf("login with csrf %q: %d, session %q", tok, r.status, c.sessionCookie())
		}
	}
	// Signed in, a POST without the session's token is refused.
	c.mustLogin("root")
	for _, path := range []string{"/logout", "/admin/users", "/account/password", "/admin/users/alice/disable", "/admin/agents/ag-s-aaaa/revoke"} {
		r := c.do(http.MethodPost, path, url.Values{"csrf": {other}, "reason": {"x"}})
		if r.status != http.StatusForbidden {
			t.Errorf("POST %s with a wrong CSRF token: %d, want 403", path, r.status)
		}
	}
	if u, _ := e.db.User(context.Background(), "alice"); u.Disabled() {
		t.Error("a forged POST disabled alice")
	}
}

func TestSessionCookieAndRotation(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("alice")
	first := c.sessionCookie()
	// Log in again in the same browser, still holding the first session:
	// a new id, the old one dead.
	u, _ := url.Parse(e.ts.URL)
	c.hc.Jar.SetCookies(u, []*http.Cookie{{Name: loginCookie, Value: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", Path: "/", Secure: true}})
	r := c.do(http.MethodPost, "/login", url.Values{"name": {"alice"}, "password": {testPassword}, "csrf": {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}})
	if r.status != http.StatusSeeOther {
		t.Fatalf("second login: %d", r.status)
	}
	second := c.sessionCookie()
	if first == "" || first == second {
		t.Fatalf("session id not rotated at login: %q then %q", first, second)
	}
	id, _ := b64.DecodeString(first)
	if _, err := e.db.Session(context.Background(), id); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the old session survived the new login: %v", err)
	}
	// The cookie's attributes, from the raw header.
	raw := e.client()
	raw.get("/login")
	resp := raw.post("/login", "/login", url.Values{"name": {"alice"}, "password": {testPassword}})
	var set string
	for _, h := range resp.header.Values("Set-Cookie") {
		if strings.HasPrefix(h, sessionCookie+"=") {
			set = h
		}
	}
	for _, want := range []string{"Path=/", "HttpOnly", "Secure", "SameSite=Strict"} {
		if !strings.Contains(set, want) {
			t.Errorf("session cookie %q lacks %s", set, want)
		}
	}
	if strings.Contains(set, "Domain=") {
		t.Errorf("session cookie %q has a Domain", set)
	}
	// The value is the id only: 32 random bytes, nothing else.
	v := strings.TrimPrefix(strings.SplitN(set, ";", 2)[0], sessionCookie+"=")
	if b, err := b64.DecodeString(v); err != nil || len(b) != 32 {
		t.Errorf("cookie value %q is not a bare 32-byte id", v)
	}
	// Logout ends it on the server.
	c.post("/logout", "/", url.Values{})
	id, _ = b64.DecodeString(second)
	if _, err := e.db.Session(context.Background(), id); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session survived logout: %v", err)
	}
	if r := c.get("/"); r.status != http.StatusSeeOther {
		t.Errorf("portfolio after logout: %d", r.status)
	}
}

func TestSessionTimeouts(t *testing.T) {
	tests := []struct {
		name string
		// steps of time passing, each followed by a request
		steps []time.Duration
		alive []bool
	}{
		{"idle timeout", []time.Duration{10 * time.Minute, 29 * time.Minute, 31 * time.Minute}, []bool{true, true, false}},
		{"absolute timeout despite activity", []time.Duration{25 * time.Minute, 25 * time.Minute, 25 * time.Minute, 20 * time.Minute}, []bool{true, true, true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.IdleTimeout, c.AbsoluteTimeout = 30*time.Minute, 90*time.Minute })
			c := e.client()
			c.mustLogin("alice")
			for i, d := range tt.steps {
				e.clk.add(d)
				r := c.get("/")
				if alive := r.status == http.StatusOK; alive != tt.alive[i] {
					t.Fatalf("after step %d (%v): status %d, want alive=%v", i, d, r.status, tt.alive[i])
				}
			}
		})
	}
}

func TestLockout(t *testing.T) {
	t.Run("per account", func(t *testing.T) {
		e := newEnv(t)
		c := e.client()
		for i := range DefaultMaxFailsPerUser {
			if r := c.login("alice", fmt.Sprintf("wrong password %d", i)); r.status != http.StatusUnauthorized {
				t.Fatalf("failure %d: %d", i, r.status)
			}
		}
		// Now even the right password is refused, from any address.
		if r := e.client().login("alice", testPassword); r.status != http.StatusUnauthorized {
			t.Fatalf("locked account signed in: %d", r.status)
		}
		// Another account is not locked.
		e.client().mustLogin("bob")
		e.wantAudit("lockout alice", "login_failed alice")
		// The lock ends when the failures age out.
		e.clk.add(DefaultLockoutWindow + time.Minute)
		e.client().mustLogin("alice")
	})
	t.Run("per source address", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.MaxFailsPerAddr = 6 })
		c := e.client()
		// Spraying one guess over many names: each name stays under its
		// limit, the address does not.
		for i := range 6 {
			c.login(fmt.Sprintf("user%d", i), "a guessed password")
		}
		if r := c.login("bob", testPassword); r.status != http.StatusUnauthorized {
			t.Fatalf("locked address signed in: %d", r.status)
		}
		e.wantAudit("lockout source:127.0.0.1")
	})
	t.Run("admin unlock", func(t *testing.T) {
		e := newEnv(t)
		for range DefaultMaxFailsPerUser {
			e.client().login("alice", "still the wrong one")
		}
		admin := e.client()
		admin.mustLogin("root")
		if r := admin.post("/admin/users/alice/unlock", "/admin", url.Values{}); r.status != http.StatusSeeOther {
			t.Fatalf("unlock: %d %s", r.status, r.body)
		}
		e.client().mustLogin("alice")
		e.wantAudit("user_unlock alice")
	})
}

func TestDisableEndsSessions(t *testing.T) {
	e := newEnv(t)
	alice := e.client()
	alice.mustLogin("alice")
	admin := e.client()
	admin.mustLogin("root")
	if r := admin.post("/admin/users/alice/disable", "/admin", url.Values{}); r.status != http.StatusSeeOther {
		t.Fatalf("disable: %d", r.status)
	}
	if r := alice.get("/"); r.status != http.StatusSeeOther {
		t.Errorf("a disabled user's session still works: %d", r.status)
	}
	if r := admin.post("/admin/users/root/disable", "/admin", url.Values{}); r.status != http.StatusBadRequest {
		t.Errorf("an admin disabled themselves: %d", r.status)
	}
	e.wantAudit("user_disable alice")
}

func TestPasswordChange(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("alice")
	other := e.client()
	other.mustLogin("alice")
	const next = "a new and longer passphrase"
	tests := []struct {
		name                string
		current, pw, again  string
		status              int
		wantError, wantDone bool
	}{
		{"wrong current password", "nope", next, next, http.StatusBadRequest, true, false},
		{"mismatch", testPassword, next, next + "x", http.StatusBadRequest, true, false},
		{"too short", testPassword, "short", "short", http.StatusBadRequest, true, false},
		{"common", testPassword, "password1234", "password1234", http.StatusBadRequest, true, false},
		{"good", testPassword, next, next, http.StatusSeeOther, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.post("/account/password", "/account", url.Values{"current": {tt.current}, "password": {tt.pw}, "again": {tt.again}})
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
		})
	}
	// This browser stays signed in with a new session; the other is out.
	if r := c.get("/"); r.status != http.StatusOK {
		t.Errorf("own session after the change: %d", r.status)
	}
	if r := other.get("/"); r.status != http.StatusSeeOther {
		t.Errorf("another session survived the change: %d", r.status)
	}
	if r := e.client().login("alice", next); r.status != http.StatusSeeOther {
		t.Errorf("login with the new password: %d", r.status)
	}
	e.wantAudit("password_change_failed alice", "password_change alice")
}

func TestTOTPLogin(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("alice")
	// Set up: the page proposes a secret; a matching code turns it on.
	page := c.post("/account/totp", "/account", url.Values{})
	m := regexpFind(`id="totp-secret">([A-Z2-7]+)<`, page.body)
	if m == "" {
		t.Fatalf("no secret proposed: %s", page.body)
	}
	if !strings.Contains(page.body, `<svg class="qr"`) || !strings.Contains(page.body, "h1v1h-1z") {
		t.Error("no QR code on the set-up page")
	}
	secret, err := ParseTOTPSecret(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, code, current string }{
		{"a wrong set-up code", wrongCode(secret, e.clk.now(), 0), testPassword},
		{"no password", TOTPCode(secret, e.clk.now()), ""},
		{"a wrong password", TOTPCode(secret, e.clk.now()), "not the password at all"},
	} {
		if r := c.post("/account/totp", "/account", url.Values{"secret": {m}, "code": {tc.code}, "current": {tc.current}}); r.status != http.StatusBadRequest {
			t.Errorf("%s: %d", tc.name, r.status)
		}
		if u, _ := e.db.User(context.Background(), "alice"); u.HasTOTP() {
			t.Fatalf("%s turned the second factor on", tc.name)
		}
	}
	if r := c.post("/account/totp", "/account", url.Values{"secret": {m}, "code": {TOTPCode(secret, e.clk.now())}, "current": {testPassword}}); r.status != http.StatusSeeOther {
		t.Fatalf("set-up: %d %s", r.status, r.body)
	}
	e.clk.add(time.Minute)

	d := e.client()
	r := d.login("alice", testPassword)
	if r.status != http.StatusSeeOther || r.header.Get("Location") != "/login/totp" {
		t.Fatalf("password step: %d %s", r.status, r.header.Get("Location"))
	}
	half := d.sessionCookie()
	// Half signed in: no page but the code form.
	if r := d.get("/"); r.status != http.StatusSeeOther {
		t.Errorf("portfolio before the second factor: %d", r.status)
	}
	if r := d.post("/login/totp", "/login/totp", url.Values{"code": {wrongCode(secret, e.clk.now(), 0)}}); r.status != http.StatusUnauthorized {
		t.Errorf("wrong code: %d", r.status)
	}
	code := TOTPCode(secret, e.clk.now())
	if r := d.post("/login/totp", "/login/totp", url.Values{"code": {code}}); r.status != http.StatusSeeOther || r.header.Get("Location") != "/" {
		t.Fatalf("right code: %d", r.status)
	}
	if d.sessionCookie() == half {
		t.Error("the session id was not rotated after the second factor")
	}
	if r := d.get("/"); r.status != http.StatusOK {
		t.Errorf("portfolio after the second factor: %d", r.status)
	}
	// The same code again, in another browser: refused (replay).
	f := e.client()
	f.login("alice", testPassword)
	if r := f.post("/login/totp", "/login/totp", url.Values{"code": {code}}); r.status != http.StatusUnauthorized {
		t.Errorf("a replayed code: %d", r.status)
	}
	// A password left waiting for its code too long must start again.
	g := e.client()
	g.login("alice", testPassword)
	e.clk.add(totpStageTimeout + time.Second)
	if r := g.get("/login/totp"); r.status != http.StatusSeeOther || r.header.Get("Location") != "/login" {
		t.Errorf("an old half-signed-in session: %d %s", r.status, r.header.Get("Location"))
	}
	e.wantAudit("totp_enable_failed alice", "totp_enable alice", "login_password_ok alice", "login alice")
}

// TestReauthLockout: the account page's "current password" checks count
// towards the lockout like sign-ins, so a stolen session cannot guess the
// password without limit.
func TestReauthLockout(t *testing.T) {
	forms := []struct {
		name, path string
		form       func(current string) url.Values
	}{
		{"password change", "/account/password", func(c string) url.Values {
			return url.Values{"current": {c}, "password": {"a brand new passphrase"}, "again": {"a brand new passphrase"}}
		}},
		{"second factor off", "/account/totp", func(c string) url.Values { return url.Values{"remove": {"1"}, "current": {c}} }},
		{"second factor on", "/account/totp", func(c string) url.Values {
			return url.Values{"secret": {"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"}, "code": {"000000"}, "current": {c}}
		}},
	}
	for _, f := range forms {
		t.Run(f.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.client()
			c.mustLogin("alice")
			for i := range e.srv.cfg.MaxFailsPerUser {
				if r := c.post(f.path, "/account", f.form("wrong password number "+fmt.Sprint(i))); r.status != http.StatusBadRequest {
					t.Fatalf("wrong current password %d: %d", i, r.status)
				}
			}
			// Locked now: even the right password is not checked.
			if r := c.post("/account/password", "/account", url.Values{"current": {testPassword}, "password": {"a brand new passphrase"}, "again": {"a brand new passphrase"}}); r.status != http.StatusBadRequest {
				t.Errorf("the right password while locked: %d", r.status)
			}
			if r := e.client().login("alice", testPassword); r.status != http.StatusUnauthorized {
				t.Errorf("sign-in while locked by the account page's failures: %d", r.status)
			}
			e.wantAudit("lockout alice")
		})
	}
}

// TestTOTPChangeEndsSessions: turning a second factor on or off, or an
// admin removing it, ends the user's other sessions; the browser that
// made the change stays signed in with a new session id.
func TestTOTPChangeEndsSessions(t *testing.T) {
	e := newEnv(t)
	c, other := e.client(), e.client()
	c.mustLogin("alice")
	other.mustLogin("alice")
	secret, err := NewTOTPSecret()
	if err != nil {
		t.Fatal(err)
	}
	m := TOTPSecretString(secret)
	steps := []struct {
		name string
		form url.Values
		// relogin signs other in again afterwards.
		relogin func()
	}{
		{"turn on", url.Values{"secret": {m}, "code": {TOTPCode(secret, e.clk.now())}, "current": {testPassword}}, func() {
			e.clk.add(totpStep)
			other.login("alice", testPassword)
			if r := other.post("/login/totp", "/login/totp", url.Values{"code": {TOTPCode(secret, e.clk.now())}}); r.status != http.StatusSeeOther {
				t.Fatalf("sign-in with the new second factor: %d", r.status)
			}
		}},
		{"turn off", url.Values{"remove": {"1"}, "current": {testPassword}}, func() { other.mustLogin("alice") }},
	}
	for _, st := range steps {
		before := c.sessionCookie()
		if r := c.post("/account/totp", "/account", st.form); r.status != http.StatusSeeOther {
			t.Fatalf("%s: %d %s", st.name, r.status, r.body)
		}
		if r := other.get("/"); r.status != http.StatusSeeOther {
			t.Errorf("%s: another session survived: %d", st.name, r.status)
		}
		if r := c.get("/account"); r.status != http.StatusOK {
			t.Errorf("%s: the browser that made the change was signed out: %d", st.name, r.status)
		}
		if c.sessionCookie() == before {
			t.Errorf("%s: the session id was not rotated", st.name)
		}
		st.relogin()
	}
	// An admin's removal ends the user's sessions.
	bob := e.totpClient("bob", e.enrol("bob"))
	admin := e.client()
	admin.mustLogin("root")
	if r := admin.post("/admin/users/bob/totp-reset", "/admin", url.Values{}); r.status != http.StatusSeeOther {
		t.Fatalf("admin totp-reset: %d", r.status)
	}
	if r := bob.get("/"); r.status != http.StatusSeeOther {
		t.Errorf("bob's session survived the admin's reset: %d", r.status)
	}
	e.wantAudit("totp_enable alice", "totp_remove alice", "totp_remove bob")
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	for _, path := range []string{"/login", "/", "/no/such/page", "/static/style.css", "/b/acme/s-bbbb"} {
		r := c.get(path)
		if got := r.header.Get("Strict-Transport-Security"); !strings.Contains(got, "max-age=63072000") {
			t.Errorf("%s: HSTS %q", path, got)
		}
		csp := r.header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: CSP %q", path, csp)
		}
		if r.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", path)
		}
	}
	if r := c.get("/static/"); r.status != http.StatusNotFound || strings.Contains(r.body, `href="style.css"`) {
		t.Errorf("/static/ lists the directory: %d", r.status)
	}
	if r := c.get("/static/chart.js"); r.status != http.StatusOK || !strings.Contains(r.header.Get("Content-Type"), "javascript") {
		t.Errorf("/static/chart.js: %d %s", r.status, r.header.Get("Content-Type"))
	}
	// No page carries an inline script or style.
	c.mustLogin("root")
	for _, path := range []string{"/", "/admin", "/account", "/b/acme/s-bbbb", "/b/acme/s-bbbb/trend?p=0000000000000065", "/b/acme/s-bbbb/completeness", "/admin/audit", "/nope"} {
		r := c.get(path)
		if regexpFind(`<script(?:[^>]*)>[^<]+</script>`, r.body) != "" || strings.Contains(r.body, " style=") || strings.Contains(r.body, "<style") || strings.Contains(r.body, " onclick") {
			t.Errorf("%s has inline script or style", path)
		}
	}
}

func TestErrorPagesLeakNothing(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("alice")
	for _, path := range []string{"/no/such/page?x=<script>", "/b/acme/s-aaaa/trend?p=zzz%3Cb%3E", "/b/acme/s-aaaa/trend?p=0000000000000001&range=forever"} {
		r := c.get(path)
		if r.status < 400 {
			t.Errorf("%s: %d", path, r.status)
		}
		for _, leak := range []string{"<script>", "<b>", "goroutine", ".go:", "sqlite", "SELECT"} {
			if strings.Contains(r.body, leak) {
				t.Errorf("%s: the error page shows %q", path, leak)
			}
		}
	}
	// A store failure shows a reference and nothing else.
	e.db.Close()
	r := c.get("/")
	if r.status != http.StatusInternalServerError || !strings.Contains(r.body, "Reference") || strings.Contains(strings.ToLower(r.body), "sql") {
		t.Errorf("store failure page: %d %s", r.status, r.body)
	}
}

func TestRedirectHandler(t *testing.T) {
	tests := []struct {
		addr, host, path, want string
	}{
		{"127.0.0.1:8444", "127.0.0.1:8080", "/b/acme/s1?range=7d", "https://127.0.0.1:8444/b/acme/s1?range=7d"},
		{":443", "dash.example.com", "/login", "https://dash.example.com/login"},
		{":8444", "dash.example.com:80", "/", "https://dash.example.com:8444/"},
		{"127.0.0.1:8444", "evil.example.com", "/", "https://127.0.0.1:8444/"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "http://"+tt.host+tt.path, nil)
			req.Host = tt.host
			w := httptest.NewRecorder()
			RedirectHandler(tt.addr).ServeHTTP(w, req)
			if w.Code != http.StatusPermanentRedirect || w.Header().Get("Location") != tt.want {
				t.Errorf("%d %q, want 308 %q", w.Code, w.Header().Get("Location"), tt.want)
			}
		})
	}
}

func TestSourceAddress(t *testing.T) {
	s := &Server{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}}}
	tests := []struct {
		name, remote string
		xff          []string
		want         string
	}{
		{"direct client", "192.0.2.7:5000", nil, "192.0.2.7"},
		{"direct client forging the header", "192.0.2.7:5000", []string{"198.51.100.1"}, "192.0.2.7"},
		{"through the balancer", "10.1.2.3:5000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"client prepends a fake hop", "10.1.2.3:5000", []string{"203.0.113.9, 198.51.100.1"}, "198.51.100.1"},
		{"two trusted hops", "10.1.2.3:5000", []string{"198.51.100.1, 10.9.9.9"}, "198.51.100.1"},
		{"several header lines", "10.1.2.3:5000", []string{"198.51.100.1", "10.9.9.9"}, "198.51.100.1"},
		{"garbage hop", "10.1.2.3:5000", []string{"198.51.100.1, nonsense"}, "10.1.2.3"},
		{"balancer sent none", "10.1.2.3:5000", nil, "10.1.2.3"},
		{"IPv6 proxy", "[::1]:5000", []string{"2001:db8::5"}, "2001:db8::5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/login", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := s.source(r); got != tt.want {
				t.Errorf("source = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestTOTPGuessesAcrossPasswordLogins: someone with the password cannot
// reset the code-guess count by signing in with the password again. A
// password step counts as an attempt until its code completes the sign-in,
// so password steps and wrong codes together use up MaxFailsPerUser
// attempts; then even the password step is refused.
func TestTOTPGuessesAcrossPasswordLogins(t *testing.T) {
	e := newEnv(t)
	secret := e.enrol("alice")
	max := e.srv.cfg.MaxFailsPerUser
	locked := false
	for i := 0; i < 2*max && !locked; i++ {
		c := e.client()
		r := c.login("alice", testPassword)
		if r.status == http.StatusUnauthorized {
			locked = true
			break
		}
		if r.status != http.StatusSeeOther || r.header.Get("Location") != "/login/totp" {
			t.Fatalf("password step %d: %d %s", i, r.status, r.header.Get("Location"))
		}
		if r := c.post("/login/totp", "/login/totp", url.Values{"code": {wrongCode(secret, e.clk.now(), i)}}); r.status != http.StatusUnauthorized {
			t.Fatalf("wrong code %d: %d", i, r.status)
		}
	}
	if !locked {
		t.Fatalf("the password step still works after %d rounds of wrong codes", 2*max)
	}
	es, err := e.db.AuditLog(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	checks := 0
	for _, a := range es {
		if a.Action == "login_password_ok" || (a.Action == "login_failed" && a.Detail == "wrong or reused second-factor code") {
			checks++
		}
	}
	if checks > max {
		t.Errorf("%d password steps and code checks before the lockout, want at most %d", checks, max)
	}
	e.wantAudit("lockout alice")
}
