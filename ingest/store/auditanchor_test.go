package store

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob"
)

// auditN appends n entries naming a building, as the dashboard does.
func auditN(t *testing.T, db *DB, n int) {
	t.Helper()
	for i := range n {
		if _, err := db.Audit(context.Background(), "user:bob", "export", "acme/s-secret-building", strings.Repeat("x", i)); err != nil {
			t.Fatal(err)
		}
	}
}

// tamper runs SQL against the audit table with its append-only triggers
// dropped: what someone with write access to the database file can do.
func tamper(t *testing.T, db *DB, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	for _, q := range append([]string{`DROP TRIGGER IF EXISTS audit_no_delete`, `DROP TRIGGER IF EXISTS audit_no_update`}, stmts...) {
		if _, err := db.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// rechain rewrites entry from's detail and recomputes every hash from
// there, so the log is consistent with itself again.
func rechain(t *testing.T, db *DB, from int64) {
	t.Helper()
	ctx := context.Background()
	tamper(t, db, `UPDATE audit SET detail = 'nothing to see' WHERE seq = `+itoa64(from))
	es, err := db.AuditLog(ctx, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	prev := []byte{}
	for _, e := range es {
		e.Prev = prev
		e.Hash = auditHash(prev, e)
		if _, err := db.db.ExecContext(ctx, `UPDATE audit SET prev = ?, hash = ? WHERE seq = ?`, e.Prev, e.Hash, e.Seq); err != nil {
			t.Fatal(err)
		}
		prev = e.Hash
	}
	if _, err := db.VerifyAudit(ctx); err != nil {
		t.Fatalf("the rewritten chain should verify on its own: %v", err)
	}
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

func TestAuditAnchors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// setup builds the log and its anchors, then tampers
		setup func(t *testing.T, db *DB, arc blob.Store)
		want  string // in the error; "" for an intact log
	}{
		{"intact", func(t *testing.T, db *DB, arc blob.Store) {
			auditN(t, db, 5)
			anchor(t, db, arc)
			auditN(t, db, 5)
			anchor(t, db, arc)
		}, ""},
		{"newest three deleted", func(t *testing.T, db *DB, arc blob.Store) {
			auditN(t, db, 10)
			anchor(t, db, arc)
			tamper(t, db, `DELETE FROM audit WHERE seq > 7`)
		}, "entries after 7 missing"},
		{"whole chain rewritten", func(t *testing.T, db *DB, arc blob.Store) {
			auditN(t, db, 10)
			anchor(t, db, arc)
			rechain(t, db, 3)
		}, "entry 10 differs from its anchor"},
		{"rewritten between two anchors", func(t *testing.T, db *DB, arc blob.Store) {
			auditN(t, db, 5)
			anchor(t, db, arc)
			auditN(t, db, 5)
			rechain(t, db, 2)
			anchor(t, db, arc) // the rewritten chain's newest entry agrees
		}, "entry 5 differs from its anchor"},
		{"entries appended after the anchor are fine", func(t *testing.T, db *DB, arc blob.Store) {
			auditN(t, db, 3)
			anchor(t, db, arc)
			auditN(t, db, 3)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := open(t)
			arc, err := blob.OpenDir(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			tt.setup(t, db, arc)
			// The chain alone cannot tell: that is why anchors exist.
			if _, err := db.VerifyAudit(ctx); err != nil {
				t.Fatalf("VerifyAudit: %v", err)
			}
			c, err := db.VerifyAuditAnchors(ctx, arc, 0)
			if tt.want == "" {
				if err != nil || c.Anchors == 0 {
					t.Fatalf("intact log: %+v, %v", c, err)
				}
				return
			}
			if !errors.Is(err, ErrAuditBroken) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("VerifyAuditAnchors = %v, want ErrAuditBroken saying %q", err, tt.want)
			}
			// Only the newest anchor: blind to a rewrite the later anchor
			// took in, but not to a cut or a rewrite after the newest.
			_, err = db.VerifyAuditAnchors(ctx, arc, 1)
			if tt.name == "rewritten between two anchors" {
				if err != nil {
					t.Errorf("checking the newest anchor only: %v, want it to agree with the rewritten chain", err)
				}
			} else if !errors.Is(err, ErrAuditBroken) {
				t.Errorf("checking the newest anchor only: %v, want ErrAuditBroken", err)
			}
		})
	}
}

func anchor(t *testing.T, db *DB, arc blob.Store) AuditAnchor {
	t.Helper()
	a, err := db.AnchorAudit(context.Background(), arc)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAnchorAuditRefusesARewrite: anchoring a rewritten log's newest entry
// again finds the old anchor and says the log was rewritten.
func TestAnchorAuditRefusesARewrite(t *testing.T) {
	db, _ := open(t)
	arc, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	auditN(t, db, 4)
	anchor(t, db, arc)
	rechain(t, db, 1)
	if _, err := db.AnchorAudit(context.Background(), arc); !errors.Is(err, ErrAuditBroken) {
		t.Fatalf("anchoring a rewritten log: %v, want ErrAuditBroken", err)
	}
}

// TestRunAuditAnchorsAtShutdown: the loop anchors the newest entry when its
// context ends, and the anchor holds a number and a hash, nothing that
// names a building.
func TestRunAuditAnchorsAtShutdown(t *testing.T) {
	db, _ := open(t)
	arc, err := blob.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		db.RunAuditAnchors(ctx, arc, DefaultAnchorEvery, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	auditN(t, db, 6)
	cancel()
	<-done
	names, err := arc.List(context.Background(), "")
	if err != nil || len(names) != 1 || names[0] != anchorName(6) {
		t.Fatalf("anchors after shutdown: %v, %v; want %s", names, err, anchorName(6))
	}
	data, err := arc.Get(context.Background(), names[0])
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil || len(fields) != 2 || fields["seq"] != float64(6) {
		t.Errorf("anchor %s: %v", data, err)
	}
	if strings.Contains(string(data), "acme") || strings.Contains(string(data), "secret") {
		t.Errorf("the anchor names the building: %s", data)
	}
	if c, err := db.VerifyAuditAnchors(context.Background(), arc, 0); err != nil || c.Newest != 6 || c.Entries != 6 {
		t.Errorf("verify: %+v, %v", c, err)
	}
}
