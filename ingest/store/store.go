// Package store is the ingest's relational store: the agent registry
// (enrollment tokens, agents, their certificates and revocations), the
// point catalogue and the append-only, hash-chained audit log. SQLite
// through modernc.org/sqlite (pure Go) is the embedded default; the
// dashboard's tables join it with the same migrations.
//
// Every method takes a context and is safe for concurrent use, including by
// several processes sharing one database file (the CLI revokes an agent
// while `serve` runs): writes run in IMMEDIATE transactions and wait for
// each other up to the busy timeout. Within one DB, writes also take turns
// before they take a connection (see DB.turn), so writers waiting for
// SQLite's write lock never hold the connections readers need.
//
// To move to PostgreSQL when one node is not enough, implement the small
// interfaces the ingest's packages define where they use the store (for
// example server.Registry) over a *sql.DB opened with a PostgreSQL driver;
// the schema in migrations.go uses only types both databases share.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Errors the store returns; check with errors.Is.
var (
	// ErrNotFound means no row matched.
	ErrNotFound = errors.New("not found")
	// ErrTokenUsed means an enrollment token was redeemed already.
	ErrTokenUsed = errors.New("enrollment token already used")
	// ErrTokenExpired means an enrollment token's validity ended.
	ErrTokenExpired = errors.New("enrollment token expired")
	// ErrRevoked means the agent was revoked.
	ErrRevoked = errors.New("agent revoked")
	// ErrExists means a row with the same key exists.
	ErrExists = errors.New("already exists")
	// ErrAuditBroken means the audit log's hash chain does not verify.
	ErrAuditBroken = errors.New("audit log hash chain broken")
)

// busyTimeout is how long a write waits for another writer (another
// process included) before failing. Revocation from the CLI must not fail
// because the server is writing an audit entry.
const busyTimeout = 10 * time.Second

// Options tune Open. The zero value is usable.
type Options struct {
	// Now is the store's clock (time.Now).
	Now func() time.Time
}

// DB is the relational store.
type DB struct {
	db  *sql.DB
	now func() time.Time
	// writeTurn holds a token while one of this DB's writes runs; see
	// turn.
	writeTurn chan struct{}
	// turnWaiting counts the writes waiting for their turn (tests use it
	// to know a burst has queued up).
	turnWaiting atomic.Int64
}

// Open opens (creating if absent, mode 0600) the SQLite database at path and
// brings its schema up to date.
func Open(ctx context.Context, path string, opts Options) (*DB, error) {
	if path == "" {
		return nil, errors.New("opening the store: no path given")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("opening the store: creating %s: %w", filepath.Dir(path), err)
	}
	// Create the file ourselves so it is never world-readable: it holds
	// token hashes, user data and the audit log.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the store %s: %w", path, err)
	}
	f.Close()
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening the store %s: %w", path, err)
	}
	// WAL lets the listener's revocation checks read while the CLI or
	// another request writes. The mode is a property of the file, set
	// once here rather than by every new connection, which would need a
	// write lock each time.
	if _, err := db.ExecContext(ctx, `PRAGMA journal_mode=WAL`); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening the store %s: setting WAL mode: %w", path, err)
	}
	// Enough connections for concurrent handshakes; SQLite serialises
	// writers anyway.
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	s := &DB{db: db, now: opts.Now, writeTurn: make(chan struct{}, 1)}
	if s.now == nil {
		s.now = time.Now
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening the store %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *DB) Close() error { return s.db.Close() }

// Ping checks that the database answers, for /readyz.
func (s *DB) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// turn waits until no other write of this DB runs, and returns the func
// that ends the turn. Every write takes a turn before it takes a pool
// connection: SQLite lets one writer at a time hold its write lock anyway,
// and a write waiting for that lock holds its connection for up to the busy
// timeout, so a burst of writes (a batch folded per upload, audit entries,
// logins, sessions) used to hold every connection of the pool while the
// revocation check of each handshake (5 s) and the dashboard's reads found
// none. Waiting here, they hold one; WAL readers do not wait for a writer.
// A write that waits honours its context. Writers in other processes (the
// CLI) still meet ours at SQLite's lock, within the busy timeout.
//
// Turns are not reentrant: code holding one (a tx func) must write only
// through its own *sql.Tx.
func (s *DB) turn(ctx context.Context) (end func(), err error) {
	s.turnWaiting.Add(1)
	defer s.turnWaiting.Add(-1)
	select {
	case s.writeTurn <- struct{}{}:
		return func() { <-s.writeTurn }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for another write to the store to finish: %w", ctx.Err())
	}
}

// tx runs fn in a write transaction, in its turn, and commits it if fn
// returns nil. Transactions begin IMMEDIATE (_txlock in Open): one that
// read first and then wrote would take the write lock only at its first
// write and could fail with SQLITE_BUSY at once, busy timeout or not.
func (s *DB) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	end, err := s.turn(ctx)
	if err != nil {
		return err
	}
	defer end()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// exec runs one writing statement outside a transaction, in its turn.
func (s *DB) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	end, err := s.turn(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	return s.db.ExecContext(ctx, query, args...)
}

// ms and fromMS store times as Unix milliseconds: portable between SQLite
// and PostgreSQL and cheap to compare.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}
