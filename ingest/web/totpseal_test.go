package web

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/secretbox"
)

// rawTOTP reads a user's totp_secret column straight from the SQLite
// file, as someone with a copy of the database would.
func (e *env) rawTOTP(name string) []byte {
	e.t.Helper()
	db, err := sql.Open("sqlite", "file:"+e.dbPath+"?mode=ro")
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	var v []byte
	if err := db.QueryRow(`SELECT totp_secret FROM users WHERE name = ?`, name).Scan(&v); err != nil {
		e.t.Fatalf("reading the row of %s: %v", name, err)
	}
	return v
}

// setRawTOTP writes a user's totp_secret column directly: an older
// release's plaintext, or a row copied from another user.
func (e *env) setRawTOTP(name string, v []byte) {
	e.t.Helper()
	db, err := sql.Open("sqlite", "file:"+e.dbPath)
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE users SET totp_secret = ? WHERE name = ?`, v, name); err != nil {
		e.t.Fatal(err)
	}
}

// enrol gives name a second factor the way the dashboard does (sealed) and
// returns the secret.
func (e *env) enrol(name string) []byte {
	e.t.Helper()
	ctx := context.Background()
	u, err := e.db.User(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	secret, err := NewTOTPSecret()
	if err != nil {
		e.t.Fatal(err)
	}
	sealed, err := sealTOTP(e.srv.cfg.TOTPKeys, u.ID, secret)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.db.SetTOTP(ctx, name, sealed); err != nil {
		e.t.Fatal(err)
	}
	return secret
}

// totpLogin signs name in, in a new browser, with the password and the
// current code of secret, and returns the browser and the answer to the
// code step. The clock moves on a step first, so each call has a fresh
// code.
func (e *env) totpLogin(name string, secret []byte) (*client, resp) {
	e.t.Helper()
	e.clk.add(totpStep)
	c := e.client()
	if r := c.login(name, testPassword); r.status != http.StatusSeeOther || r.header.Get("Location") != "/login/totp" {
		e.t.Fatalf("password step of %s: %d %s", name, r.status, r.header.Get("Location"))
	}
	return c, c.post("/login/totp", "/login/totp", url.Values{"code": {TOTPCode(secret, e.clk.now())}})
}

// totpClient is a browser signed in as name with both factors.
func (e *env) totpClient(name string, secret []byte) *client {
	e.t.Helper()
	c, r := e.totpLogin(name, secret)
	if r.status != http.StatusSeeOther || r.header.Get("Location") != "/" {
		e.t.Fatalf("TOTP sign-in of %s: %d %s", name, r.status, r.body)
	}
	return c
}

func (e *env) wantTOTPLogin(name string, secret []byte) {
	e.t.Helper()
	e.totpClient(name, secret)
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// wantSealedUnder checks that name's row holds no trace of secret and is
// sealed under the key with id.
func (e *env) wantSealedUnder(name string, secret []byte, id string) {
	e.t.Helper()
	raw := e.rawTOTP(name)
	if !bytes.HasPrefix(raw, []byte(secretbox.Version)) {
		e.t.Fatalf("row of %s is not sealed: %q", name, raw)
	}
	if bytes.Contains(raw, secret) || bytes.Contains(raw, []byte(TOTPSecretString(secret))) {
		e.t.Fatalf("row of %s holds the secret in the clear", name)
	}
	if got, err := secretbox.KeyIDOf(raw); err != nil || got != id {
		e.t.Fatalf("row of %s sealed under %q (%v), want %s", name, got, err, id)
	}
}

// TestTOTPSealedAtRest sets a second factor up through the account page
// and finds only a sealed value in the database file, which signs in.
func TestTOTPSealedAtRest(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	c.mustLogin("alice")
	page := c.post("/account/totp", "/account", url.Values{})
	m := regexpFind(`id="totp-secret">([A-Z2-7]+)<`, page.body)
	secret, err := ParseTOTPSecret(m)
	if err != nil {
		t.Fatal(err)
	}
	if r := c.post("/account/totp", "/account", url.Values{"secret": {m}, "code": {TOTPCode(secret, e.clk.now())}, "current": {testPassword}}); r.status != http.StatusSeeOther {
		t.Fatalf("set-up: %d", r.status)
	}
	e.wantSealedUnder("alice", secret, e.srv.cfg.TOTPKeys.CurrentID())
	e.wantTOTPLogin("alice", secret)
	e.wantAudit("totp_enable alice", "login alice")
}

// TestTOTPUpgradeFromPlaintext: rows an older release wrote in the clear
// are used, then sealed — at the next sign-in, or by the pass at start.
func TestTOTPUpgradeFromPlaintext(t *testing.T) {
	e := newEnv(t)
	keys := e.srv.cfg.TOTPKeys
	secrets := map[string][]byte{}
	for _, name := range []string{"alice", "bob", "vera"} {
		s, err := NewTOTPSecret()
		if err != nil {
			t.Fatal(err)
		}
		secrets[name] = s
		e.setRawTOTP(name, s)
	}
	// Sign-in with a plaintext row works and seals it.
	e.wantTOTPLogin("alice", secrets["alice"])
	e.wantSealedUnder("alice", secrets["alice"], keys.CurrentID())
	// A wrong code against a plaintext row leaves it as it was.
	e.clk.add(totpStep)
	c := e.client()
	c.login("bob", testPassword)
	if r := c.post("/login/totp", "/login/totp", url.Values{"code": {wrongCode(secrets["bob"], e.clk.now(), 0)}}); r.status != http.StatusUnauthorized {
		t.Fatalf("wrong code: %d", r.status)
	}
	if !bytes.Equal(e.rawTOTP("bob"), secrets["bob"]) {
		t.Fatal("a failed sign-in changed the row")
	}
	// The pass at start seals the rest and counts them.
	var logBuf bytes.Buffer
	rep, err := PrepareTOTPSecrets(context.Background(), e.db, keys, slog.New(slog.NewTextHandler(&logBuf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sealed != 3 || rep.Upgraded != 2 || rep.Resealed != 0 || len(rep.Unreadable) != 0 {
		t.Fatalf("report %+v; want 3 sealed, 2 upgraded", rep)
	}
	if !strings.Contains(logBuf.String(), "upgraded_from_plaintext=2") {
		t.Errorf("the upgrade is not logged with its count: %s", logBuf.String())
	}
	for name, s := range secrets {
		e.wantSealedUnder(name, s, keys.CurrentID())
		e.wantTOTPLogin(name, s)
	}
	// A second pass has nothing to do.
	if rep, err := PrepareTOTPSecrets(context.Background(), e.db, keys, discard()); err != nil || rep.Upgraded+rep.Resealed != 0 {
		t.Fatalf("second pass: %+v, %v", rep, err)
	}
}

// TestTOTPWrongKey: started with another key file, the ingest refuses
// with an error naming the file and the users, instead of locking them out.
func TestTOTPWrongKey(t *testing.T) {
	e := newEnv(t)
	e.enrol("alice")
	other, _, err := secretbox.LoadOrCreate(filepath.Join(t.TempDir(), "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = PrepareTOTPSecrets(context.Background(), e.db, other, discard())
	if !errors.Is(err, ErrWrongTOTPKey) {
		t.Fatalf("PrepareTOTPSecrets with another key: %v; want ErrWrongTOTPKey", err)
	}
	for _, want := range []string{other.Path(), "alice", e.srv.cfg.TOTPKeys.CurrentID(), "totp-reset"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// Rotation refuses too, before touching any file.
	if _, err := RotateTOTPKey(context.Background(), e.db, other.Path(), discard()); !errors.Is(err, ErrWrongTOTPKey) {
		t.Fatalf("RotateTOTPKey with another key: %v", err)
	}
	for _, suf := range []string{secretbox.OldSuffix, secretbox.NewSuffix} {
		if _, err := os.Stat(other.Path() + suf); err == nil {
			t.Errorf("a refused rotation left %s", other.Path()+suf)
		}
	}
}

// TestTOTPBoundToUser: a sealed secret copied into another user's row
// does not open there; the sign-in fails closed, clearly, and the pass at
// start names the user.
func TestTOTPBoundToUser(t *testing.T) {
	e := newEnv(t)
	secret := e.enrol("alice")
	e.enrol("bob")
	e.setRawTOTP("bob", e.rawTOTP("alice"))
	_, r := e.totpLogin("bob", secret)
	if r.status != http.StatusInternalServerError || !strings.Contains(r.body, "Ask an administrator") {
		t.Fatalf("sign-in with a row copied from another user: %d %s", r.status, r.body)
	}
	e.wantAudit("login_failed bob")
	rep, err := PrepareTOTPSecrets(context.Background(), e.db, e.srv.cfg.TOTPKeys, discard())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unreadable) != 1 || rep.Unreadable[0] != "bob" {
		t.Fatalf("unreadable %v; want [bob]", rep.Unreadable)
	}
	e.wantTOTPLogin("alice", secret)
	// An admin resets bob's second factor on the Admin page; bob signs
	// in with the password alone again.
	admin := e.client()
	admin.mustLogin("root")
	if r := admin.post("/admin/users/bob/totp-reset", "/admin", url.Values{}); r.status != http.StatusSeeOther {
		t.Fatalf("totp-reset: %d", r.status)
	}
	e.client().mustLogin("bob")
	e.wantAudit("totp_remove bob")
}

// TestTOTPRotationCrash stops a rotation part-way, as a crash would: every
// user still signs in with the key files on disk, and running the
// rotation again finishes it.
func TestTOTPRotationCrash(t *testing.T) {
	names := []string{"alice", "bob", "vera", "root"}
	for _, crashAfter := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("after %d re-sealed", crashAfter), func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			keys := e.srv.cfg.TOTPKeys
			oldID := keys.CurrentID()
			secrets := map[string][]byte{}
			for _, n := range names {
				secrets[n] = e.enrol(n)
			}
			errCrash := errors.New("crash")
			_, err := rotateTOTPKey(ctx, e.db, keys.Path(), discard(), func(n int) error {
				if n > crashAfter {
					return errCrash
				}
				return nil
			})
			if !errors.Is(err, errCrash) {
				t.Fatalf("rotation: %v; want the simulated crash", err)
			}
			if _, err := os.Stat(keys.Path() + secretbox.OldSuffix); err != nil {
				t.Fatalf("the old key is gone mid-rotation: %v", err)
			}
			// The running dashboard (its keyring loaded before the
			// rotation) signs everyone in; so does a fresh start.
			for _, n := range names {
				e.wantTOTPLogin(n, secrets[n])
			}
			fresh, created, err := secretbox.LoadOrCreate(keys.Path())
			if err != nil || created {
				t.Fatalf("start after the crash: %v, %v", created, err)
			}
			if _, err := PrepareTOTPSecrets(ctx, e.db, fresh, discard()); err != nil {
				t.Fatalf("start after the crash: %v", err)
			}
			rep, err := RotateTOTPKey(ctx, e.db, keys.Path(), discard())
			if err != nil {
				t.Fatalf("resuming the rotation: %v", err)
			}
			onDisk, err := secretbox.Open(keys.Path())
			if err != nil {
				t.Fatal(err)
			}
			newID := onDisk.CurrentID()
			if newID == oldID || rep.Sealed != len(names) {
				t.Fatalf("after the rotation: key %s (was %s), report %+v", newID, oldID, rep)
			}
			if _, err := os.Stat(keys.Path() + secretbox.OldSuffix); err == nil {
				t.Error("the old key file is left after the rotation finished")
			}
			for _, n := range names {
				e.wantSealedUnder(n, secrets[n], newID)
				e.wantTOTPLogin(n, secrets[n])
			}
		})
	}
}

// TestTOTPRotation: a plain rotation re-seals everyone under a new key;
// a user with no second factor stays without one.
func TestTOTPRotation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	keys := e.srv.cfg.TOTPKeys
	secret := e.enrol("alice")
	oldID := keys.CurrentID()
	oldKey, err := os.ReadFile(keys.Path())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := RotateTOTPKey(ctx, e.db, keys.Path(), discard())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sealed != 1 || rep.Resealed != 1 {
		t.Fatalf("report %+v; want 1 re-sealed", rep)
	}
	newKey, err := os.ReadFile(keys.Path())
	if err != nil || bytes.Equal(newKey, oldKey) {
		t.Fatalf("the key file did not change: %v", err)
	}
	if fi, _ := os.Stat(keys.Path()); fi.Mode().Perm() != 0o600 {
		t.Errorf("new key file mode %04o", fi.Mode().Perm())
	}
	onDisk, err := secretbox.Open(keys.Path())
	if err != nil || onDisk.CurrentID() == oldID || onDisk.OldID() != "" {
		t.Fatalf("key file after the rotation: %v", err)
	}
	e.wantSealedUnder("alice", secret, onDisk.CurrentID())
	// The running dashboard follows: it reloads when it meets the new key.
	e.wantTOTPLogin("alice", secret)
	if keys.CurrentID() != onDisk.CurrentID() {
		t.Error("the running keyring did not follow the rotation")
	}
	if len(e.rawTOTP("bob")) != 0 {
		t.Error("bob gained a second factor")
	}
	// Two rotations at once: the second is refused, the key untouched.
	unlock, err := secretbox.LockRotation(keys.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := RotateTOTPKey(ctx, e.db, keys.Path(), discard()); err == nil || !strings.Contains(err.Error(), "another rotation") {
		t.Fatalf("a rotation while another runs: %v", err)
	}
	e.wantSealedUnder("alice", secret, onDisk.CurrentID())
}
