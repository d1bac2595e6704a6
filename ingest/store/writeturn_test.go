package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// maxOpenConns is the pool size Open gives the store (production's).
const maxOpenConns = 16

// revocationTimeout is how long the ingest server lets the revocation check
// of a handshake or request take (server.registryTimeout).
const revocationTimeout = 5 * time.Second

// holdWriteLock takes SQLite's write lock on the database file at path from
// a handle of its own, as another process (the CLI revoking an agent) does,
// and returns the func that lets it go. Every writer of the store meanwhile
// waits in SQLite's busy handler.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	other, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := other.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatalf("taking the write lock from another handle: %v", err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if _, err := conn.ExecContext(context.Background(), `ROLLBACK`); err != nil {
				t.Errorf("letting the write lock go: %v", err)
			}
			conn.Close()
			other.Close()
		})
	}
	t.Cleanup(release)
	return release
}

// waitUntil polls cond until it holds, and fails the test (saying what it
// waited for) if it does not within a minute: a bound against a hang, not a
// timing assertion.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
	}
}

// storeWrites are the store's write paths, each a write the i-th of a
// burst makes (distinct where the row must be new).
var storeWrites = []struct {
	name  string
	write func(ctx context.Context, db *DB, i int) error
}{
	{"observe_batch", func(ctx context.Context, db *DB, i int) error {
		b := &batch.Batch{Header: batch.Header{AgentID: "ag-1", Site: site1.Site, Seq: uint64(i)},
			Samples: []telemetry.Sample{{PointID: 7, Time: int64(i) * 5000, Value: float64(i)}}}
		return db.ObserveBatch(ctx, site1, "ag-1", b)
	}},
	{"audit", func(ctx context.Context, db *DB, i int) error {
		_, err := db.Audit(ctx, "test", "login", fmt.Sprintf("user%d", i), "")
		return err
	}},
	{"add_user", func(ctx context.Context, db *DB, i int) error {
		_, err := db.AddUser(ctx, fmt.Sprintf("user%d", i), RoleViewer, "h")
		return err
	}},
	{"login_failure", func(ctx context.Context, db *DB, i int) error {
		_, _, err := db.LoginFailure(ctx, "ann", fmt.Sprintf("127.0.0.%d", i), db.now().Add(-time.Hour))
		return err
	}},
	{"create_session", func(ctx context.Context, db *DB, i int) error {
		// User 1 is ann (openWithAgent); the write is all the burst
		// does, so a read of its own does not take a connection.
		return db.CreateSession(ctx, fmt.Appendf(nil, "session%d", i), Session{UserID: 1, CSRF: []byte("csrf"), Stage: SessionFull, CreatedAt: db.now(), SeenAt: db.now()})
	}},
	{"catalog", func(ctx context.Context, db *DB, i int) error {
		return db.PutCatalog(ctx, site1.Tenant, site1.Site, "ag-1", []CatalogPoint{{ID: uint64(i), Name: fmt.Sprintf("p%d", i)}})
	}},
	{"create_token", func(ctx context.Context, db *DB, i int) error {
		return db.CreateToken(ctx, Token{Hash: fmt.Appendf(nil, "token%d", i), Tenant: site1.Tenant, Site: site1.Site, ExpiresAt: db.now().Add(time.Hour)})
	}},
	{"prune_rollups", func(ctx context.Context, db *DB, _ int) error {
		_, err := db.PruneRollups(ctx, 5*time.Minute, db.now().Add(-Keep5Min))
		return err
	}},
}

// openWithAgent opens a store in a fresh directory holding user "ann" and
// agent ag-1 with certificate serial "01", and returns it with its path.
func openWithAgent(t *testing.T) (*DB, string) {
	t.Helper()
	c := &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "ingest.db")
	db, err := Open(t.Context(), path, Options{Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a, cert, _ := issuer("ag-1", "01", c)(site1.Tenant, site1.Site)
	if err := db.AddAgent(t.Context(), a, cert); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddUser(t.Context(), "ann", RoleViewer, "h"); err != nil {
		t.Fatal(err)
	}
	return db, path
}

// TestWriteBurstLeavesReadsAConnection: while another process holds
// SQLite's write lock, a burst of more writes than the pool has
// connections queues up, and the revocation check (a read, with the
// server's deadline) still gets a connection and answers; once the lock is
// let go every write of the burst lands. Writes used to wait for the lock
// on a connection each, so the burst held the whole pool for up to the
// busy timeout and the check found none (good agents refused at the
// handshake and answered 503 under load).
func TestWriteBurstLeavesReadsAConnection(t *testing.T) {
	const burst = maxOpenConns + 8
	for _, w := range storeWrites {
		t.Run(w.name, func(t *testing.T) {
			db, path := openWithAgent(t)
			release := holdWriteLock(t, path)
			errs := make(chan error, burst)
			for i := range burst {
				go func() { errs <- w.write(t.Context(), db, i) }()
			}
			// Queued up: one write waits for the lock and the others for
			// their turn (or, without turns, the pool is taken).
			waitUntil(t, "the burst of writes to queue up", func() bool {
				return db.turnWaiting.Load() == burst-1 || db.db.Stats().InUse >= maxOpenConns
			})
			ctx, cancel := context.WithTimeout(t.Context(), revocationTimeout)
			err := db.AgentAllowed(ctx, "ag-1", "01")
			cancel()
			if err != nil {
				t.Errorf("revocation check while %d writes wait for the write lock: %v", burst, err)
			}
			if st := db.db.Stats(); st.InUse > 1 {
				t.Errorf("the waiting writes hold %d connections, want at most 1", st.InUse)
			}
			release()
			for range burst {
				if err := <-errs; err != nil {
					t.Errorf("a write of the burst, after the lock was let go: %v", err)
				}
			}
		})
	}
}

// TestWriteWaitingForItsTurnHonoursContext: a write queued behind another
// that waits for SQLite's write lock gives up when its context ends, with
// an error saying so, and writes nothing; the write ahead of it lands once
// the lock is let go. (Waiting on a connection, as writes did before they
// took turns, the driver interrupts the wait itself; a turn that ignored
// the context kept the write queued until the first gave up with
// SQLITE_BUSY at the busy timeout.)
func TestWriteWaitingForItsTurnHonoursContext(t *testing.T) {
	db, path := openWithAgent(t)
	release := holdWriteLock(t, path)
	first := make(chan error, 1)
	go func() {
		_, err := db.Audit(t.Context(), "test", "login", "first", "")
		first <- err
	}()
	waitUntil(t, "the first write to wait for the write lock", func() bool { return db.db.Stats().InUse == 1 })
	ctx, cancel := context.WithCancel(t.Context())
	second := make(chan error, 1)
	go func() {
		_, err := db.Audit(ctx, "test", "login", "second", "")
		second <- err
	}()
	waitUntil(t, "the second write to wait (for its turn, or without turns on a connection)", func() bool { return db.turnWaiting.Load() == 1 || db.db.Stats().InUse == 2 })
	cancel()
	// The lock is still held: the second write can only return by giving
	// up its wait.
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Errorf("the second write, its context cancelled while it waits: %v, want context.Canceled", err)
	}
	release()
	if err := <-first; err != nil {
		t.Errorf("the first write, after the lock was let go: %v", err)
	}
	log, err := db.AuditLog(t.Context(), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) != 1 || log[0].Subject != "first" {
		t.Errorf("audit log %+v, want only the first write's entry", log)
	}
}
