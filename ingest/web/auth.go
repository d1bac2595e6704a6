package web

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
)

// Cookie names. The __Host- prefix makes browsers refuse the cookie unless
// it is Secure, has Path=/ and no Domain: no subdomain can plant one.
const (
	sessionCookie = "__Host-sg_session"
	loginCookie   = "__Host-sg_login" // the login form's CSRF token, before any session exists
)

// totpStageTimeout is how long a password may wait for its second factor:
// a half-signed-in session is worth little, but not for long.
const totpStageTimeout = 5 * time.Minute

// touchEvery limits session writes: the idle clock moves at most this
// often, so an idle timeout is exact to within it.
const touchEvery = time.Minute

// request is an authenticated request's session and user.
type request struct {
	id   []byte
	sess store.Session
	user store.User
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		// crypto/rand does not fail on Linux; if it did, nothing here
		// would be safe to continue with.
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return b
}

var b64 = base64.RawURLEncoding

func (s *Server) setCookie(w http.ResponseWriter, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
}

// session returns the request's valid session and user, or false (after
// clearing a cookie that no longer names one). It enforces the idle and
// absolute timeouts and drops the sessions of disabled accounts.
//
// A store failure is returned as an error: the caller answers 500 rather
// than sending a signed-in user to the login page.
func (s *Server) session(r *http.Request, w http.ResponseWriter) (*request, bool, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, false, nil
	}
	id, err := b64.DecodeString(c.Value)
	if err != nil || len(id) != 32 {
		s.setCookie(w, sessionCookie, "", -1)
		return nil, false, nil
	}
	ctx := r.Context()
	sess, err := s.st.Session(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		s.setCookie(w, sessionCookie, "", -1)
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	now := s.cfg.Now()
	if now.Sub(sess.CreatedAt) >= s.cfg.AbsoluteTimeout || now.Sub(sess.SeenAt) >= s.cfg.IdleTimeout ||
		(sess.Stage == store.SessionTOTP && now.Sub(sess.CreatedAt) >= totpStageTimeout) {
		s.endSession(ctx, w, id)
		return nil, false, nil
	}
	u, err := s.st.UserByID(ctx, sess.UserID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, false, err
	}
	if err != nil || u.Disabled() {
		s.endSession(ctx, w, id)
		return nil, false, nil
	}
	if now.Sub(sess.SeenAt) >= touchEvery {
		if err := s.st.TouchSession(ctx, id); err != nil {
			s.log.Warn("touching a session failed", "err", err)
		}
	}
	return &request{id: id, sess: sess, user: u}, true, nil
}

// sessionOrFail is session for handlers: on a store failure it has
// answered already and returns false.
func (s *Server) sessionOrFail(w http.ResponseWriter, r *http.Request) (*request, bool, bool) {
	rq, ok, err := s.session(r, w)
	if err != nil {
		s.serverError(w, r, err)
		return nil, false, false
	}
	return rq, ok, true
}

func (s *Server) endSession(ctx context.Context, w http.ResponseWriter, id []byte) {
	if err := s.st.DeleteSession(ctx, id); err != nil {
		s.log.Warn("ending a session failed", "err", err)
	}
	s.setCookie(w, sessionCookie, "", -1)
}

// newSession starts a session for u at stage and sets its cookie. Any
// session the request came with is ended first: the id is never reused
// across a login (session fixation).
func (s *Server) newSession(w http.ResponseWriter, r *http.Request, u store.User, stage string) error {
	if c, err := r.Cookie(sessionCookie); err == nil {
		if old, err := b64.DecodeString(c.Value); err == nil {
			_ = s.st.DeleteSession(r.Context(), old)
		}
	}
	id := randomBytes(32)
	if err := s.st.CreateSession(r.Context(), id, store.Session{UserID: u.ID, CSRF: randomBytes(32), Stage: stage}); err != nil {
		return err
	}
	// No Max-Age: the cookie ends with the browser; the server's timeouts
	// end the session whatever the browser keeps.
	s.setCookie(w, sessionCookie, b64.EncodeToString(id), 0)
	s.sweep(r.Context())
	return nil
}

// sweep deletes expired sessions, at most every few minutes.
func (s *Server) sweep(ctx context.Context) {
	now := s.cfg.Now()
	s.sweepMu.Lock()
	due := now.Sub(s.lastSweep) > 5*time.Minute
	if due {
		s.lastSweep = now
	}
	s.sweepMu.Unlock()
	if due {
		if err := s.st.DeleteSessionsBefore(ctx, now.Add(-s.cfg.AbsoluteTimeout), now.Add(-s.cfg.IdleTimeout)); err != nil {
			s.log.Warn("sweeping expired sessions failed", "err", err)
		}
	}
}

// csrfOK checks a form's csrf field against the session's token.
func csrfOK(r *http.Request, want []byte) bool {
	got, err := b64.DecodeString(r.PostFormValue("csrf"))
	return err == nil && len(want) > 0 && subtle.ConstantTimeCompare(got, want) == 1
}

// source is the client's address for per-address lockout and the audit
// log: the connection's peer, unless that is a trusted proxy, in which case
// the rightmost address in X-Forwarded-For that is not one (the nearest
// the client a trusted hop saw; anything left of it the client could have
// written itself).
func (s *Server) source(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if !s.trusted(host) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h := strings.TrimSpace(hops[i])
		if h == "" {
			continue
		}
		if _, err := netip.ParseAddr(h); err != nil {
			// A hop we cannot read ends the chain we can trust.
			return host
		}
		if !s.trusted(h) {
			return h
		}
		host = h
	}
	return host
}

func (s *Server) trusted(addr string) bool {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// auth wraps a handler for signed-in users. role, when not empty, is the
// least role the handler needs; POSTs must carry the session's CSRF token.
func (s *Server) auth(minRole string, h func(http.ResponseWriter, *http.Request, *request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rq, ok, live := s.sessionOrFail(w, r)
		if !live {
			return
		}
		if !ok || rq.sess.Stage != store.SessionFull {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			s.errorPage(w, r, http.StatusUnauthorized, "Please sign in again.")
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if !csrfOK(r, rq.sess.CSRF) {
				s.errorPage(w, r, http.StatusForbidden, "This form has expired. Go back, reload the page and try again.")
				return
			}
		}
		if !roleAtLeast(rq.user.Role, minRole) {
			s.errorPage(w, r, http.StatusForbidden, "Your role does not allow this.")
			return
		}
		h(w, r, rq)
	}
}

func roleRank(r string) int {
	switch r {
	case store.RoleAdmin:
		return 3
	case store.RoleEngineer:
		return 2
	case store.RoleViewer:
		return 1
	}
	return 0
}

func roleAtLeast(have, want string) bool { return want == "" || roleRank(have) >= roleRank(want) }

// audit appends to the audit log; a failure is logged loudly, since the
// log is the one record a building owner's auditor asks for.
func (s *Server) audit(ctx context.Context, actor, action, subject, detail string) {
	if _, err := s.st.Audit(context.WithoutCancel(ctx), actor, action, subject, detail); err != nil {
		s.log.Error("writing the audit log failed", "action", action, "subject", subject, "err", err)
	}
}

// clip keeps a user-supplied string short in logs and the audit log.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

type loginPage struct {
	CSRF    string
	Name    string
	Message string
	TOTP    bool
}

func (s *Server) loginForm(w http.ResponseWriter, r *http.Request, status int, lp loginPage) {
	tok := randomBytes(32)
	s.setCookie(w, loginCookie, b64.EncodeToString(tok), 600)
	lp.CSRF = b64.EncodeToString(tok)
	s.render(w, r, status, "login", nil, lp)
}

func (s *Server) handleLoginGet(w http.ResponseWriter, r *http.Request) {
	rq, ok, live := s.sessionOrFail(w, r)
	if !live {
		return
	}
	if ok && rq.sess.Stage == store.SessionFull {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	s.loginForm(w, r, http.StatusOK, loginPage{})
}

// loginCSRFOK checks the login form's token against its cookie (double
// submit), so another site cannot sign a victim into an attacker's account.
func loginCSRFOK(r *http.Request) bool {
	c, err := r.Cookie(loginCookie)
	if err != nil {
		return false
	}
	want, err := b64.DecodeString(c.Value)
	return err == nil && csrfOK(r, want)
}

// badLogin is what every failed sign-in shows: the same words whether the
// user exists, the password is wrong, the account is disabled or locked,
// so the page tells an attacker nothing.
const badLogin = "Sign-in failed. Check the name and password; after repeated failures sign-in is paused for a while."

func (s *Server) handleLoginPost(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if !loginCSRFOK(r) {
		s.loginForm(w, r, http.StatusForbidden, loginPage{Message: "The sign-in form expired. Please try again."})
		return
	}
	ctx := r.Context()
	name, pw, src := strings.TrimSpace(r.PostFormValue("name")), r.PostFormValue("password"), s.source(r)
	// A slot first: waiting for one must not count against the user, and
	// a flood of sign-ins waits here instead of holding 19 MiB each.
	slot, err := s.hashSlot(ctx)
	if err != nil {
		s.busy(w, r, err)
		return
	}
	// Given back as soon as the password is checked, not after the
	// session and audit writes.
	release := sync.OnceFunc(slot)
	defer release()
	a, err := s.attempt(ctx, name, src)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	fail := func(reason string) {
		s.audit(ctx, "web:"+src, "login_failed", clip(name), reason)
		s.failed(ctx, a)
		s.loginForm(w, r, http.StatusUnauthorized, loginPage{Name: name, Message: badLogin})
	}
	if a.locked {
		// Locked: the password is not even checked, so guessing on
		// cannot tell a right one from a wrong one.
		fail("locked")
		return
	}
	u, err := s.st.User(ctx, name)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.serverError(w, r, err)
			return
		}
		// Spend the same time as a real check, so timing does not tell
		// which names exist.
		_, _ = s.verify(s.dummyHash, pw)
		release()
		fail("unknown user")
		return
	}
	ok, err := s.verify(u.Hash, pw)
	release()
	if err != nil {
		s.log.Error("verifying a password failed", "user", u.Name, "err", err)
	}
	switch {
	case !ok:
		fail("wrong password")
		return
	case u.Disabled():
		fail("account disabled")
		return
	}
	// With a second factor the failures are cleared only once the code
	// is right: clearing them at the password would let someone who has
	// the password guess codes without limit, signing in again between
	// guesses. Until then this attempt stays counted too: a password
	// step that never completes is not a sign-in.
	if !u.HasTOTP() {
		if err := s.st.ClearLoginFailures(ctx, name); err != nil {
			s.log.Warn("clearing failed logins failed", "err", err)
		}
	}
	stage := store.SessionFull
	if u.HasTOTP() {
		stage = store.SessionTOTP
	}
	if err := s.newSession(w, r, u, stage); err != nil {
		s.serverError(w, r, err)
		return
	}
	s.setCookie(w, loginCookie, "", -1)
	if stage == store.SessionTOTP {
		// The attempt stays counted until the code is right: if it was
		// the last one allowed, the account is locked now.
		s.failed(ctx, a)
		s.audit(ctx, "user:"+u.Name, "login_password_ok", u.Name, "source="+src+" second factor due")
		http.Redirect(w, r, "/login/totp", http.StatusSeeOther)
		return
	}
	s.audit(ctx, "user:"+u.Name, "login", u.Name, "source="+src)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) handleTOTPGet(w http.ResponseWriter, r *http.Request) {
	rq, ok, live := s.sessionOrFail(w, r)
	if !live {
		return
	}
	if !ok || rq.sess.Stage != store.SessionTOTP {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "login", nil, loginPage{TOTP: true, CSRF: b64.EncodeToString(rq.sess.CSRF), Name: rq.user.Name})
}

func (s *Server) handleTOTPPost(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	rq, ok, live := s.sessionOrFail(w, r)
	if !live {
		return
	}
	if !ok || rq.sess.Stage != store.SessionTOTP {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	if !csrfOK(r, rq.sess.CSRF) {
		s.errorPage(w, r, http.StatusForbidden, "This form has expired. Sign in again.")
		return
	}
	ctx, src := r.Context(), s.source(r)
	a, err := s.attempt(ctx, rq.user.Name, src)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	step := int64(-1)
	var secret []byte
	stale := false
	if !a.locked {
		if secret, stale, err = openTOTP(s.cfg.TOTPKeys, rq.user); err != nil {
			// Fail closed, but say so: the password was right, and
			// only an admin can help.
			s.log.Error("a TOTP secret does not open: reset that user's second factor (Admin page or `sightglass-ingest users totp-reset`)", "user", rq.user.Name, "err", err)
			s.audit(ctx, "web:"+src, "login_failed", rq.user.Name, "second factor unreadable")
			s.endSession(ctx, w, rq.id)
			s.errorPage(w, r, http.StatusInternalServerError, "Your second factor cannot be checked. Ask an administrator to reset it.")
			return
		}
		step = checkTOTP(secret, r.PostFormValue("code"), s.cfg.Now())
	}
	fresh := false
	if step >= 0 {
		if fresh, err = s.st.UseTOTPStep(ctx, rq.user.ID, step); err != nil {
			s.serverError(w, r, err)
			return
		}
	}
	if !fresh {
		reason := "wrong or reused second-factor code"
		if a.locked {
			reason = "locked"
		}
		s.audit(ctx, "web:"+src, "login_failed", rq.user.Name, reason)
		s.failed(ctx, a)
		if a.byName >= s.cfg.MaxFailsPerUser || a.bySrc >= s.cfg.MaxFailsPerAddr {
			s.endSession(ctx, w, rq.id)
			s.loginForm(w, r, http.StatusUnauthorized, loginPage{Message: badLogin})
			return
		}
		s.render(w, r, http.StatusUnauthorized, "login", nil, loginPage{TOTP: true, CSRF: b64.EncodeToString(rq.sess.CSRF), Name: rq.user.Name, Message: "That code is wrong or was used already."})
		return
	}
	_ = s.st.ClearLoginFailures(ctx, rq.user.Name)
	if stale {
		// Plaintext from an older release, or under a rotation's old
		// key: seal it under the current key now it proved right.
		if _, err := reseal(ctx, s.st, s.cfg.TOTPKeys, rq.user, secret); err != nil {
			s.log.Warn("re-sealing a TOTP secret failed; it stays readable and is tried again at the next sign-in", "user", rq.user.Name, "err", err)
		}
	}
	// A new id again for the full session: the half-signed-in one dies.
	if err := s.newSession(w, r, rq.user, store.SessionFull); err != nil {
		s.serverError(w, r, err)
		return
	}
	s.audit(ctx, "user:"+rq.user.Name, "login", rq.user.Name, "source="+src+" with second factor")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, rq *request) {
	s.endSession(r.Context(), w, rq.id)
	s.audit(r.Context(), "user:"+rq.user.Name, "logout", rq.user.Name, "")
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// reauth checks the current password a form asks for again (password
// change, second factor on or off). It counts towards the account's and
// the address's lockout exactly like a sign-in, and a locked account is
// refused without checking: otherwise a stolen session would be an
// unlimited password-guessing oracle. The error is errBusy when no
// password check could start in time (answer with s.busy), or a store
// failure.
func (s *Server) reauth(r *http.Request, rq *request, pw string) (bool, error) {
	ctx, src := r.Context(), s.source(r)
	release, err := s.hashSlot(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	a, err := s.attempt(ctx, rq.user.Name, src)
	if err != nil {
		return false, err
	}
	if !a.locked {
		if ok, _ := s.verify(rq.user.Hash, pw); ok {
			if err := s.st.ClearLoginFailures(ctx, rq.user.Name); err != nil {
				s.log.Warn("clearing failed logins failed", "user", rq.user.Name, "err", err)
			}
			return true, nil
		}
	}
	s.failed(ctx, a)
	return false, nil
}

// attemptCounts is a password or code check recorded before it is made,
// with the account's and the address's attempts within the lockout window,
// this one included.
type attemptCounts struct {
	name, src     string
	byName, bySrc int
	// locked means the limits were reached before this attempt: it must
	// not be checked.
	locked bool
}

// attempt records a password or code check of the account name from src
// and decides from the counts it gets back, in the same transaction,
// whether the check may be made. Recording first is what makes the limit
// hold under concurrency: parallel requests each see a distinct count, so
// at most MaxFailsPerUser checks of one account (MaxFailsPerAddr from one
// address) run within the window, however many arrive at once. A check
// that succeeds clears the account's attempts (ClearLoginFailures).
func (s *Server) attempt(ctx context.Context, name, src string) (attemptCounts, error) {
	since := s.cfg.Now().Add(-s.cfg.LockoutWindow)
	n, m, err := s.st.LoginFailure(ctx, name, src, since)
	if err != nil {
		return attemptCounts{}, fmt.Errorf("recording a sign-in attempt of %q: %w", clip(name), err)
	}
	return attemptCounts{name: name, src: src, byName: n, bySrc: m,
		locked: n > s.cfg.MaxFailsPerUser || m > s.cfg.MaxFailsPerAddr}, nil
}

// failed audits and logs the lockouts a failed (or still incomplete)
// attempt causes: the account's when it used the last check allowed, the
// address's likewise. Each is reported once, by the attempt that reached
// the limit.
func (s *Server) failed(ctx context.Context, a attemptCounts) {
	if a.byName == s.cfg.MaxFailsPerUser {
		s.audit(ctx, "web:"+a.src, "lockout", clip(a.name), fmt.Sprintf("account locked after %d failures within %v", a.byName, s.cfg.LockoutWindow))
		s.log.Warn("dashboard account locked", "user", clip(a.name), "source", a.src)
	}
	if a.bySrc == s.cfg.MaxFailsPerAddr {
		s.audit(ctx, "web:"+a.src, "lockout", "source:"+a.src, fmt.Sprintf("source address locked after %d failures within %v", a.bySrc, s.cfg.LockoutWindow))
		s.log.Warn("dashboard source address locked", "source", a.src)
	}
}

// wrongCurrent is what a failed re-authentication shows.
const wrongCurrent = "The current password is wrong (after repeated failures it is not checked for a while)."

type accountPage struct {
	Message, Error string
	TOTPSecret     string // a proposed secret while setting one up
	TOTPURI        string
	TOTPQR         template.HTML // TOTPURI as a QR code
}

// totpSetup is the account page proposing secret.
func (s *Server) totpSetup(user string, secret []byte, errMsg string) (accountPage, error) {
	uri := TOTPURI("Sightglass", user, secret)
	qr, err := totpQR(uri)
	return accountPage{Error: errMsg, TOTPSecret: TOTPSecretString(secret), TOTPURI: uri, TOTPQR: qr}, err
}

func (s *Server) handleAccount(w http.ResponseWriter, r *http.Request, rq *request) {
	s.render(w, r, http.StatusOK, "account", rq, accountPage{})
}

func (s *Server) handlePassword(w http.ResponseWriter, r *http.Request, rq *request) {
	ctx := r.Context()
	cur, pw, again := r.PostFormValue("current"), r.PostFormValue("password"), r.PostFormValue("again")
	ok, err := s.reauth(r, rq, cur)
	if err != nil {
		s.busy(w, r, err)
		return
	}
	if !ok {
		s.audit(ctx, "user:"+rq.user.Name, "password_change_failed", rq.user.Name, "wrong current password")
		s.render(w, r, http.StatusBadRequest, "account", rq, accountPage{Error: wrongCurrent})
		return
	}
	if pw != again {
		s.render(w, r, http.StatusBadRequest, "account", rq, accountPage{Error: "The two new passwords differ."})
		return
	}
	if err := CheckPasswordPolicy(rq.user.Name, pw); err != nil {
		s.render(w, r, http.StatusBadRequest, "account", rq, accountPage{Error: err.Error()})
		return
	}
	hash, err := s.hash(r.Context(), pw)
	if err != nil {
		s.busy(w, r, err)
		return
	}
	// SetPassword ends every session of the user, this one included:
	// start a fresh one so they stay signed in here only.
	if err := s.st.SetPassword(ctx, rq.user.Name, hash); err != nil {
		s.serverError(w, r, err)
		return
	}
	s.audit(ctx, "user:"+rq.user.Name, "password_change", rq.user.Name, "by the user; other sessions ended")
	if err := s.newSession(w, r, rq.user, store.SessionFull); err != nil {
		s.serverError(w, r, err)
		return
	}
	http.Redirect(w, r, "/account?changed=1", http.StatusSeeOther)
}

// handleTOTPSetup proposes a secret (step 1) or, given a code that matches
// the proposed secret, stores it (step 2). The proposed secret travels in
// the form: it is the user's own and shown to them anyway.
func (s *Server) handleTOTPSetup(w http.ResponseWriter, r *http.Request, rq *request) {
	ctx := r.Context()
	if r.PostFormValue("remove") != "" {
		ok, err := s.reauth(r, rq, r.PostFormValue("current"))
		if err != nil {
			s.busy(w, r, err)
			return
		}
		if !ok {
			s.audit(ctx, "user:"+rq.user.Name, "totp_remove_failed", rq.user.Name, "wrong current password")
			s.render(w, r, http.StatusBadRequest, "account", rq, accountPage{Error: wrongCurrent})
			return
		}
		// SetTOTP ends every session of the user: a fresh one keeps
		// them signed in here only.
		if err := s.st.SetTOTP(ctx, rq.user.Name, nil); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.audit(ctx, "user:"+rq.user.Name, "totp_remove", rq.user.Name, "by the user; other sessions ended")
		if err := s.newSession(w, r, rq.user, store.SessionFull); err != nil {
			s.serverError(w, r, err)
			return
		}
		http.Redirect(w, r, "/account", http.StatusSeeOther)
		return
	}
	if r.PostFormValue("secret") == "" {
		secret, err := NewTOTPSecret()
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		page, err := s.totpSetup(rq.user.Name, secret, "")
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "account", rq, page)
		return
	}
	secret, err := ParseTOTPSecret(r.PostFormValue("secret"))
	if err != nil {
		s.render(w, r, http.StatusBadRequest, "account", rq, accountPage{Error: "The set-up form was damaged; start again."})
		return
	}
	retry := func(msg string) {
		page, err := s.totpSetup(rq.user.Name, secret, msg)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusBadRequest, "account", rq, page)
	}
	// The password again, as for removing it: a borrowed or stolen
	// session must not tie the account to someone else's phone.
	ok, err := s.reauth(r, rq, r.PostFormValue("current"))
	if err != nil {
		s.busy(w, r, err)
		return
	}
	if !ok {
		s.audit(ctx, "user:"+rq.user.Name, "totp_enable_failed", rq.user.Name, "wrong current password")
		retry(wrongCurrent)
		return
	}
	if checkTOTP(secret, r.PostFormValue("code"), s.cfg.Now()) < 0 {
		retry("That code does not match: check the phone's clock and try again.")
		return
	}
	sealed, err := sealTOTP(s.cfg.TOTPKeys, rq.user.ID, secret)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if err := s.st.SetTOTP(ctx, rq.user.Name, sealed); err != nil {
		s.serverError(w, r, err)
		return
	}
	if err := keepCurrent(ctx, s.st, s.cfg.TOTPKeys, rq.user.ID, sealed, secret); err != nil {
		s.log.Warn("checking a new TOTP secret against the key file failed", "user", rq.user.Name, "err", err)
	}
	s.audit(ctx, "user:"+rq.user.Name, "totp_enable", rq.user.Name, "other sessions ended")
	// This browser just gave the password and a code: it stays signed in.
	if err := s.newSession(w, r, rq.user, store.SessionFull); err != nil {
		s.serverError(w, r, err)
		return
	}
	http.Redirect(w, r, "/account?totp=1", http.StatusSeeOther)
}
