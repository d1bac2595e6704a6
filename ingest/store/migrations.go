package store

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are applied in order, each once, recorded in schema_version.
// Never edit a released migration: append a new one.
var migrations = []string{
	// 1: the agent registry, the catalogue and the audit log.
	`
CREATE TABLE tokens (
	hash        BLOB PRIMARY KEY,          -- SHA-256 of the token's secret; the token itself is never stored
	tenant      TEXT NOT NULL,
	site        TEXT NOT NULL,
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL,
	created_by  TEXT NOT NULL,
	used_at     INTEGER NOT NULL DEFAULT 0,
	used_by     TEXT NOT NULL DEFAULT ''
);
CREATE TABLE agents (
	id            TEXT PRIMARY KEY,
	tenant        TEXT NOT NULL,
	site          TEXT NOT NULL,
	enrolled_at   INTEGER NOT NULL,
	revoked_at    INTEGER NOT NULL DEFAULT 0,
	revoke_reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE certs (
	serial     TEXT PRIMARY KEY,           -- lower-case hex
	agent_id   TEXT NOT NULL REFERENCES agents(id),
	not_before INTEGER NOT NULL,
	not_after  INTEGER NOT NULL,
	issued_at  INTEGER NOT NULL
);
CREATE INDEX certs_agent ON certs(agent_id);
CREATE TABLE catalog (
	tenant      TEXT NOT NULL,
	site        TEXT NOT NULL,
	point_id    INTEGER NOT NULL,          -- the 64-bit pseudonym, as a signed integer
	agent_id    TEXT NOT NULL,
	name        TEXT NOT NULL,
	description TEXT NOT NULL,
	unit        TEXT NOT NULL,
	kind        TEXT NOT NULL,
	tags        TEXT NOT NULL,             -- JSON array of strings
	updated_at  INTEGER NOT NULL,
	PRIMARY KEY (tenant, site, point_id)
);
CREATE TABLE audit (
	seq     INTEGER PRIMARY KEY,
	at      INTEGER NOT NULL,
	actor   TEXT NOT NULL,
	action  TEXT NOT NULL,
	subject TEXT NOT NULL,
	detail  TEXT NOT NULL,
	prev    BLOB NOT NULL,
	hash    BLOB NOT NULL
);
-- Append-only: the database itself refuses to change or remove an entry.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
`,
	// 2: the dashboard: tenants and buildings with display names, users,
	// their roles and buildings, sessions, login failures for lockout, the
	// latest value of every point, rollups for charts and agent health.
	`
CREATE TABLE tenants (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL DEFAULT '',
	created_at INTEGER NOT NULL
);
CREATE TABLE sites (
	tenant     TEXT NOT NULL,
	site       TEXT NOT NULL,
	name       TEXT NOT NULL DEFAULT '',    -- display name; empty shows the pseudonym
	created_at INTEGER NOT NULL,
	PRIMARY KEY (tenant, site)
);
CREATE TABLE users (
	id           INTEGER PRIMARY KEY,
	name         TEXT NOT NULL UNIQUE,
	role         TEXT NOT NULL,             -- admin, engineer or viewer
	hash         TEXT NOT NULL,             -- argon2id, PHC string format
	totp_secret  BLOB NOT NULL DEFAULT x'', -- empty: no second factor
	totp_last    INTEGER NOT NULL DEFAULT 0,-- last accepted TOTP step, against replay
	disabled_at  INTEGER NOT NULL DEFAULT 0,
	created_at   INTEGER NOT NULL,
	password_at  INTEGER NOT NULL
);
CREATE TABLE user_sites (
	user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	tenant  TEXT NOT NULL,
	site    TEXT NOT NULL,
	PRIMARY KEY (user_id, tenant, site)
);
CREATE TABLE sessions (
	hash       BLOB PRIMARY KEY,            -- SHA-256 of the cookie's id; the id itself is never stored
	user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
	csrf       BLOB NOT NULL,
	stage      TEXT NOT NULL,               -- "full", or "totp" while the second factor is due
	created_at INTEGER NOT NULL,
	seen_at    INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE TABLE login_failures (
	at     INTEGER NOT NULL,
	name   TEXT NOT NULL,                   -- the user name tried, known or not
	source TEXT NOT NULL                    -- the client's address
);
CREATE INDEX login_failures_name ON login_failures(name, at);
CREATE INDEX login_failures_source ON login_failures(source, at);
CREATE TABLE latest (
	tenant      TEXT NOT NULL,
	site        TEXT NOT NULL,
	point_id    INTEGER NOT NULL,
	agent_id    TEXT NOT NULL,
	time        INTEGER NOT NULL,
	value       REAL NOT NULL,
	status      INTEGER NOT NULL,
	first_time  INTEGER NOT NULL,           -- the first sample ever received
	interval_ms INTEGER NOT NULL DEFAULT 0, -- the sampling interval as observed; 0 until two samples
	PRIMARY KEY (tenant, site, point_id)
);
CREATE TABLE rollups (
	tenant   TEXT NOT NULL,
	site     TEXT NOT NULL,
	point_id INTEGER NOT NULL,
	res      INTEGER NOT NULL,              -- bucket width in seconds: 300 or 3600
	bucket   INTEGER NOT NULL,              -- bucket start, Unix ms
	n        INTEGER NOT NULL,              -- samples received, any status
	bad      INTEGER NOT NULL,              -- of which fault or comm-failure
	good     INTEGER NOT NULL,              -- samples with a usable value: what min..last cover
	min      REAL NOT NULL,
	max      REAL NOT NULL,
	sum      REAL NOT NULL,
	last     REAL NOT NULL,
	last_time INTEGER NOT NULL,
	PRIMARY KEY (tenant, site, point_id, res, bucket)
);
CREATE TABLE agent_health (
	agent_id       TEXT PRIMARY KEY,
	tenant         TEXT NOT NULL,
	site           TEXT NOT NULL,
	last_upload    INTEGER NOT NULL,
	last_seq       INTEGER NOT NULL,
	last_sample    INTEGER NOT NULL,
	buffer_samples INTEGER NOT NULL,
	buffer_bytes   INTEGER NOT NULL,
	dropped        INTEGER NOT NULL,
	poll_errors    INTEGER NOT NULL,
	devices_up     INTEGER NOT NULL,
	devices_down   INTEGER NOT NULL,
	uptime_s       INTEGER NOT NULL
);
`,
	// 3: the batches folded into the hot store, so a retry after a crash
	// between archive and hot store is folded in once, and only once.
	`
CREATE TABLE observed (
	agent_id TEXT NOT NULL,
	seq      INTEGER NOT NULL,
	at       INTEGER NOT NULL,
	PRIMARY KEY (agent_id, seq)
);
CREATE INDEX observed_at ON observed(at);
`,
	// 4: completeness counts every point of a building over a window. The
	// primary key leads with the point, so that query could use only its
	// (tenant, site) prefix and read every rollup row of the building; this
	// index leads with the window and covers the columns it sums (a 24 h
	// page over a year of 300 points: 276 ms to 3 ms).
	`
CREATE INDEX rollups_window ON rollups(tenant, site, res, bucket, point_id, n, bad);
`,
	// 5: a better index for the same query: by point, then bucket. Read
	// point by point (a join from latest), each point's window is one
	// contiguous range of a covering index and the sums come out grouped,
	// with no sort: 30 days of 1,000 points in 127 ms instead of 444 ms.
	`
DROP INDEX rollups_window;
CREATE INDEX rollups_point_window ON rollups(tenant, site, res, point_id, bucket, n, bad);
`,
}

func (s *DB) migrate(ctx context.Context) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
			return fmt.Errorf("creating schema_version: %w", err)
		}
		var v int
		err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
		switch {
		case err == sql.ErrNoRows:
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("reading the schema version: %w", err)
		}
		if v > len(migrations) {
			return fmt.Errorf("the database has schema version %d, newer than this ingest knows (%d): run a newer sightglass-ingest", v, len(migrations))
		}
		for i := v; i < len(migrations); i++ {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return fmt.Errorf("applying migration %d: %w", i+1, err)
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, len(migrations))
		return err
	})
}
