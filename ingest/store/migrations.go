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
