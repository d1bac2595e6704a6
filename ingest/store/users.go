package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Roles a dashboard user holds. An admin sees every building and manages
// users and agents; an engineer sees and exports the buildings assigned; a
// viewer only sees them.
const (
	RoleAdmin    = "admin"
	RoleEngineer = "engineer"
	RoleViewer   = "viewer"
)

// ValidRole reports whether r is one of the roles.
func ValidRole(r string) bool { return r == RoleAdmin || r == RoleEngineer || r == RoleViewer }

// SiteRef names one building: a site of a tenant.
type SiteRef struct {
	Tenant string `json:"tenant"`
	Site   string `json:"site"`
}

func (r SiteRef) String() string { return r.Tenant + "/" + r.Site }

// Site is a building as the dashboard lists it.
type Site struct {
	SiteRef
	// Name is the display name an admin gave it; empty when none.
	Name      string    `json:"name,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// User is a dashboard account. Hash and TOTPSecret never leave the store
// except to the code that checks them.
type User struct {
	ID         int64     `json:"id"`
	Name       string    `json:"name"`
	Role       string    `json:"role"`
	Hash       string    `json:"-"`
	TOTPSecret []byte    `json:"-"`
	TOTPLast   int64     `json:"-"`
	DisabledAt time.Time `json:"disabled_at,omitzero"`
	CreatedAt  time.Time `json:"created_at"`
	PasswordAt time.Time `json:"password_changed_at"`
	Sites      []SiteRef `json:"sites"`
}

// Disabled reports whether the account is disabled.
func (u User) Disabled() bool { return !u.DisabledAt.IsZero() }

// HasTOTP reports whether the account has a second factor.
func (u User) HasTOTP() bool { return len(u.TOTPSecret) > 0 }

// MaySee reports whether u may see the building: admins see all, everyone
// else the buildings assigned.
func (u User) MaySee(ref SiteRef) bool {
	if u.Role == RoleAdmin {
		return true
	}
	for _, s := range u.Sites {
		if s == ref {
			return true
		}
	}
	return false
}

// PutSite records a building, or renames it when name is not empty. A
// building appears by itself when its first batch arrives; this gives it
// a display name.
func (s *DB) PutSite(ctx context.Context, ref SiteRef, name string) error {
	if ref.Tenant == "" || ref.Site == "" {
		return errors.New("storing building: tenant and site are required")
	}
	err := s.tx(ctx, func(tx *sql.Tx) error { return putSite(ctx, tx, ref, name, ms(s.now())) })
	if err != nil {
		return fmt.Errorf("storing building %s: %w", ref, err)
	}
	return nil
}

func putSite(ctx context.Context, tx *sql.Tx, ref SiteRef, name string, now int64) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO tenants (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING`, ref.Tenant, now); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO sites (tenant, site, name, created_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (tenant, site) DO UPDATE SET name = CASE WHEN excluded.name != '' THEN excluded.name ELSE sites.name END`,
		ref.Tenant, ref.Site, name, now)
	return err
}

// Sites lists every building, by tenant and site.
func (s *DB) Sites(ctx context.Context) ([]Site, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tenant, site, name, created_at FROM sites ORDER BY tenant, site`)
	if err != nil {
		return nil, fmt.Errorf("listing buildings: %w", err)
	}
	defer rows.Close()
	var out []Site
	for rows.Next() {
		var st Site
		var at int64
		if err := rows.Scan(&st.Tenant, &st.Site, &st.Name, &at); err != nil {
			return nil, fmt.Errorf("listing buildings: %w", err)
		}
		st.CreatedAt = fromMS(at)
		out = append(out, st)
	}
	return out, rows.Err()
}

// AddUser creates a user with an already hashed password.
func (s *DB) AddUser(ctx context.Context, name, role, hash string) (User, error) {
	if name == "" || hash == "" || !ValidRole(role) {
		return User{}, fmt.Errorf("adding user %q: a name, a password hash and a role (admin, engineer or viewer) are required", name)
	}
	now := s.now()
	res, err := s.exec(ctx, `INSERT INTO users (name, role, hash, created_at, password_at) VALUES (?, ?, ?, ?, ?)`,
		name, role, hash, ms(now), ms(now))
	if err != nil {
		if isUnique(err) {
			return User{}, fmt.Errorf("adding user %q: %w", name, ErrExists)
		}
		return User{}, fmt.Errorf("adding user %q: %w", name, err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return User{}, fmt.Errorf("adding user %q: %w", name, err)
	}
	return s.UserByID(ctx, id)
}

const userSelect = `SELECT id, name, role, hash, totp_secret, totp_last, disabled_at, created_at, password_at FROM users`

type queryer interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func (s *DB) user(ctx context.Context, q queryer, where string, arg any) (User, error) {
	var u User
	var dis, created, pw int64
	err := q.QueryRowContext(ctx, userSelect+` WHERE `+where, arg).
		Scan(&u.ID, &u.Name, &u.Role, &u.Hash, &u.TOTPSecret, &u.TOTPLast, &dis, &created, &pw)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, ErrNotFound
	}
	if err != nil {
		return User{}, err
	}
	u.DisabledAt, u.CreatedAt, u.PasswordAt = fromMS(dis), fromMS(created), fromMS(pw)
	u.Sites, err = userSites(ctx, q, u.ID)
	return u, err
}

func userSites(ctx context.Context, q queryer, id int64) ([]SiteRef, error) {
	rows, err := q.QueryContext(ctx, `SELECT tenant, site FROM user_sites WHERE user_id = ? ORDER BY tenant, site`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []SiteRef{}
	for rows.Next() {
		var r SiteRef
		if err := rows.Scan(&r.Tenant, &r.Site); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// User returns the user called name, or ErrNotFound.
func (s *DB) User(ctx context.Context, name string) (User, error) {
	u, err := s.user(ctx, s.db, `name = ?`, name)
	if err != nil {
		return User{}, fmt.Errorf("looking up user %q: %w", name, err)
	}
	return u, nil
}

// UserByID returns the user with id, or ErrNotFound.
func (s *DB) UserByID(ctx context.Context, id int64) (User, error) {
	u, err := s.user(ctx, s.db, `id = ?`, id)
	if err != nil {
		return User{}, fmt.Errorf("looking up user %d: %w", id, err)
	}
	return u, nil
}

// Users lists every user by name.
func (s *DB) Users(ctx context.Context) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM users ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing users: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing users: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing users: %w", err)
	}
	out := make([]User, 0, len(ids))
	for _, id := range ids {
		u, err := s.UserByID(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// updateUser runs one UPDATE on the user called name and fails with
// ErrNotFound when there is none.
func (s *DB) updateUser(ctx context.Context, what, name, set string, args ...any) error {
	res, err := s.exec(ctx, `UPDATE users SET `+set+` WHERE name = ?`, append(args, name)...)
	if err == nil {
		if n, _ := res.RowsAffected(); n == 0 {
			err = ErrNotFound
		}
	}
	if err != nil {
		return fmt.Errorf("%s of user %q: %w", what, name, err)
	}
	return nil
}

// SetPassword replaces a user's password hash and ends all their sessions,
// so a stolen session does not outlive a password change.
func (s *DB) SetPassword(ctx context.Context, name, hash string) error {
	if hash == "" {
		return fmt.Errorf("changing the password of user %q: empty hash", name)
	}
	if err := s.updateUser(ctx, "changing the password", name, `hash = ?, password_at = ?`, hash, ms(s.now())); err != nil {
		return err
	}
	return s.endSessionsOf(ctx, name)
}

// SetRole changes a user's role.
func (s *DB) SetRole(ctx context.Context, name, role string) error {
	if !ValidRole(role) {
		return fmt.Errorf("changing the role of user %q: %q is not a role: want admin, engineer or viewer", name, role)
	}
	return s.updateUser(ctx, "changing the role", name, `role = ?`, role)
}

// SetDisabled disables (ending every session) or re-enables an account.
func (s *DB) SetDisabled(ctx context.Context, name string, disabled bool) error {
	var at int64
	if disabled {
		at = ms(s.now())
	}
	if err := s.updateUser(ctx, "disabling", name, `disabled_at = ?`, at); err != nil {
		return err
	}
	if disabled {
		return s.endSessionsOf(ctx, name)
	}
	return nil
}

// SetTOTP sets a user's TOTP secret (nil removes the second factor) and
// ends all their sessions, so a session opened before the second factor
// was added, replaced or removed does not outlive the change.
func (s *DB) SetTOTP(ctx context.Context, name string, secret []byte) error {
	if secret == nil {
		secret = []byte{}
	}
	if err := s.updateUser(ctx, "setting the second factor", name, `totp_secret = ?, totp_last = 0`, secret); err != nil {
		return err
	}
	return s.endSessionsOf(ctx, name)
}

// ReplaceTOTP stores next as the user's TOTP secret only if it is still
// prev, keeping the replay guard (totp_last): the re-sealing of a secret
// under a new key, which must neither undo a set-up or reset made
// meanwhile nor let a used code work again. It reports whether it did.
func (s *DB) ReplaceTOTP(ctx context.Context, userID int64, prev, next []byte) (bool, error) {
	res, err := s.exec(ctx, `UPDATE users SET totp_secret = ? WHERE id = ? AND totp_secret = ?`, next, userID, prev)
	if err != nil {
		return false, fmt.Errorf("re-sealing the second factor of user %d: %w", userID, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// UseTOTPStep records step as the last accepted TOTP step of the user and
// reports false if it (or a later one) was already used: a code works once.
func (s *DB) UseTOTPStep(ctx context.Context, userID, step int64) (bool, error) {
	res, err := s.exec(ctx, `UPDATE users SET totp_last = ? WHERE id = ? AND totp_last < ?`, step, userID, step)
	if err != nil {
		return false, fmt.Errorf("recording the second factor of user %d: %w", userID, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// AssignSites replaces the buildings a user may see.
func (s *DB) AssignSites(ctx context.Context, name string, sites []SiteRef) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		u, err := s.user(ctx, tx, `name = ?`, name)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM user_sites WHERE user_id = ?`, u.ID); err != nil {
			return err
		}
		for _, r := range sites {
			if r.Tenant == "" || r.Site == "" {
				return fmt.Errorf("building %q: want tenant/site", r)
			}
			if err := putSite(ctx, tx, r, "", ms(s.now())); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO user_sites (user_id, tenant, site) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, u.ID, r.Tenant, r.Site); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("assigning buildings to user %q: %w", name, err)
	}
	return nil
}

// LoginFailure records a failed login for the name tried and the source
// address, and returns how many failures each has since since (this one
// included). Rows older than since are pruned as a side effect.
func (s *DB) LoginFailure(ctx context.Context, name, source string, since time.Time) (byName, bySource int, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM login_failures WHERE at < ?`, ms(since)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO login_failures (at, name, source) VALUES (?, ?, ?)`, ms(s.now()), name, source); err != nil {
			return err
		}
		return countFailures(ctx, tx, name, source, since, &byName, &bySource)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("recording a failed login: %w", err)
	}
	return byName, bySource, nil
}

// LoginFailures returns the failures of name and of source since since.
func (s *DB) LoginFailures(ctx context.Context, name, source string, since time.Time) (byName, bySource int, err error) {
	if err := countFailures(ctx, s.db, name, source, since, &byName, &bySource); err != nil {
		return 0, 0, fmt.Errorf("counting failed logins: %w", err)
	}
	return byName, bySource, nil
}

func countFailures(ctx context.Context, q queryer, name, source string, since time.Time, byName, bySource *int) error {
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM login_failures WHERE name = ? AND at >= ?`, name, ms(since)).Scan(byName); err != nil {
		return err
	}
	return q.QueryRowContext(ctx, `SELECT count(*) FROM login_failures WHERE source = ? AND at >= ?`, source, ms(since)).Scan(bySource)
}

// ClearLoginFailures forgets the failures of name, after a successful login
// or when an admin unlocks the account.
func (s *DB) ClearLoginFailures(ctx context.Context, name string) error {
	if _, err := s.exec(ctx, `DELETE FROM login_failures WHERE name = ?`, name); err != nil {
		return fmt.Errorf("clearing failed logins of %q: %w", name, err)
	}
	return nil
}

// Session is a dashboard session. Only the SHA-256 of its id is stored.
type Session struct {
	UserID    int64
	CSRF      []byte
	Stage     string // SessionFull, or SessionTOTP while the second factor is due
	CreatedAt time.Time
	SeenAt    time.Time
}

// Session stages.
const (
	SessionFull = "full"
	SessionTOTP = "totp"
)

func sessionHash(id []byte) []byte { h := sha256.Sum256(id); return h[:] }

// CreateSession stores a new session under id (the cookie's random value).
func (s *DB) CreateSession(ctx context.Context, id []byte, sess Session) error {
	now := ms(s.now())
	_, err := s.exec(ctx, `INSERT INTO sessions (hash, user_id, csrf, stage, created_at, seen_at) VALUES (?, ?, ?, ?, ?, ?)`,
		sessionHash(id), sess.UserID, sess.CSRF, sess.Stage, now, now)
	if err != nil {
		return fmt.Errorf("creating a session for user %d: %w", sess.UserID, err)
	}
	return nil
}

// Session returns the session with id, or ErrNotFound.
func (s *DB) Session(ctx context.Context, id []byte) (Session, error) {
	var sess Session
	var created, seen int64
	err := s.db.QueryRowContext(ctx, `SELECT user_id, csrf, stage, created_at, seen_at FROM sessions WHERE hash = ?`, sessionHash(id)).
		Scan(&sess.UserID, &sess.CSRF, &sess.Stage, &created, &seen)
	if errors.Is(err, sql.ErrNoRows) {
		return Session{}, ErrNotFound
	}
	if err != nil {
		return Session{}, fmt.Errorf("reading a session: %w", err)
	}
	sess.CreatedAt, sess.SeenAt = fromMS(created), fromMS(seen)
	return sess, nil
}

// TouchSession moves a session's last-seen time to now (the idle timeout).
func (s *DB) TouchSession(ctx context.Context, id []byte) error {
	if _, err := s.exec(ctx, `UPDATE sessions SET seen_at = ? WHERE hash = ?`, ms(s.now()), sessionHash(id)); err != nil {
		return fmt.Errorf("touching a session: %w", err)
	}
	return nil
}

// DeleteSession ends a session; ending one that does not exist is no error.
func (s *DB) DeleteSession(ctx context.Context, id []byte) error {
	if _, err := s.exec(ctx, `DELETE FROM sessions WHERE hash = ?`, sessionHash(id)); err != nil {
		return fmt.Errorf("ending a session: %w", err)
	}
	return nil
}

// DeleteSessionsBefore ends every session created before created or last
// seen before seen: the absolute and idle timeouts, swept.
func (s *DB) DeleteSessionsBefore(ctx context.Context, created, seen time.Time) error {
	if _, err := s.exec(ctx, `DELETE FROM sessions WHERE created_at < ? OR seen_at < ?`, ms(created), ms(seen)); err != nil {
		return fmt.Errorf("sweeping sessions: %w", err)
	}
	return nil
}

func (s *DB) endSessionsOf(ctx context.Context, name string) error {
	if _, err := s.exec(ctx, `DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE name = ?)`, name); err != nil {
		return fmt.Errorf("ending the sessions of user %q: %w", name, err)
	}
	return nil
}

// Tokens lists the enrollment tokens (their hashes only), newest first.
func (s *DB) Tokens(ctx context.Context) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT hash, tenant, site, created_at, expires_at, created_by, used_at, used_by FROM tokens ORDER BY created_at DESC`)
	if err != nil {
		return nil, fmt.Errorf("listing enrollment tokens: %w", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var c, e, u int64
		if err := rows.Scan(&t.Hash, &t.Tenant, &t.Site, &c, &e, &t.CreatedBy, &u, &t.UsedBy); err != nil {
			return nil, fmt.Errorf("listing enrollment tokens: %w", err)
		}
		t.CreatedAt, t.ExpiresAt, t.UsedAt = fromMS(c), fromMS(e), fromMS(u)
		out = append(out, t)
	}
	return out, rows.Err()
}
