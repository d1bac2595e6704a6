package store

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func open(t *testing.T) (*DB, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "ingest.db"), Options{Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, c
}

func issuer(id, serial string, c *clock) func(tenant, site string) (Agent, Cert, error) {
	return func(tenant, site string) (Agent, Cert, error) {
		return Agent{ID: id, Tenant: tenant, Site: site},
			Cert{Serial: serial, AgentID: id, NotBefore: c.now(), NotAfter: c.now().Add(7 * 24 * time.Hour)}, nil
	}
}

func TestEnrollToken(t *testing.T) {
	ctx := context.Background()
	db, c := open(t)
	hash := []byte("h1")
	if err := db.CreateToken(ctx, Token{Hash: hash, Tenant: "t1", Site: "s1", ExpiresAt: c.now().Add(time.Hour), CreatedBy: "cli"}); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateToken(ctx, Token{Hash: hash, Tenant: "t1", Site: "s1", ExpiresAt: c.now().Add(time.Hour)}); !errors.Is(err, ErrExists) {
		t.Errorf("second token with the same hash: %v, want ErrExists", err)
	}
	// A failing issuer leaves the token unused.
	boom := errors.New("boom")
	if _, _, err := db.Enroll(ctx, hash, func(string, string) (Agent, Cert, error) { return Agent{}, Cert{}, boom }); !errors.Is(err, boom) {
		t.Fatalf("Enroll with failing issuer: %v", err)
	}
	a, cert, err := db.Enroll(ctx, hash, issuer("ag-1", "AB01", c))
	if err != nil {
		t.Fatal(err)
	}
	if a.Tenant != "t1" || a.Site != "s1" || cert.Serial != "AB01" {
		t.Errorf("enrolled %+v %+v", a, cert)
	}
	if _, _, err := db.Enroll(ctx, hash, issuer("ag-2", "ab02", c)); !errors.Is(err, ErrTokenUsed) {
		t.Errorf("reusing a token: %v, want ErrTokenUsed", err)
	}
	if _, _, err := db.Enroll(ctx, []byte("nope"), issuer("ag-3", "ab03", c)); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown token: %v, want ErrNotFound", err)
	}
	if err := db.CreateToken(ctx, Token{Hash: []byte("h2"), Tenant: "t1", Site: "s1", ExpiresAt: c.now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	c.add(time.Hour)
	if _, _, err := db.Enroll(ctx, []byte("h2"), issuer("ag-4", "ab04", c)); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired token: %v, want ErrTokenExpired", err)
	}
	if err := db.AgentAllowed(ctx, "ag-1", "ab01"); err != nil {
		t.Errorf("enrolled agent refused: %v", err)
	}
}

func TestEnrollRaceUsesTokenOnce(t *testing.T) {
	ctx := context.Background()
	db, c := open(t)
	if err := db.CreateToken(ctx, Token{Hash: []byte("h"), Tenant: "t", Site: "s", ExpiresAt: c.now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range 8 {
		wg.Go(func() {
			id := string(rune('a' + i))
			if _, _, err := db.Enroll(ctx, []byte("h"), issuer("ag-"+id, "c"+id, c)); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			} else if !errors.Is(err, ErrTokenUsed) {
				t.Errorf("racing enrollment: %v", err)
			}
		})
	}
	wg.Wait()
	if ok != 1 {
		t.Errorf("%d enrollments succeeded with one token, want 1", ok)
	}
}

func TestRevokeAndStatus(t *testing.T) {
	ctx := context.Background()
	db, c := open(t)
	if err := db.AddAgent(ctx, Agent{ID: "ag-1", Tenant: "t", Site: "s"}, Cert{Serial: "01", AgentID: "ag-1", NotBefore: c.now(), NotAfter: c.now().Add(48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := db.AddAgent(ctx, Agent{ID: "ag-1", Tenant: "t", Site: "s"}, Cert{Serial: "99", AgentID: "ag-1"}); !errors.Is(err, ErrExists) {
		t.Errorf("adding an agent twice: %v", err)
	}
	renewed, err := db.Renew(ctx, "ag-1", func(a Agent) (Cert, error) {
		return Cert{Serial: "02", AgentID: a.ID, NotBefore: c.now(), NotAfter: c.now().Add(24 * time.Hour)}, nil
	})
	if err != nil || renewed.Serial != "02" {
		t.Fatalf("Renew = %+v, %v", renewed, err)
	}
	check := func(serial string, want CertStatus) {
		t.Helper()
		got, _, _, err := db.CertStatus(ctx, serial)
		if err != nil || got != want {
			t.Errorf("CertStatus(%s) = %v, %v; want %v", serial, got, err, want)
		}
	}
	check("01", CertGood)
	check("02", CertGood)
	check("ff", CertUnknown)
	if err := db.AgentAllowed(ctx, "ag-1", "ff"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unrecorded serial allowed: %v", err)
	}
	if err := db.AgentAllowed(ctx, "ag-2", "01"); err == nil {
		t.Error("a serial presented by another agent id was allowed")
	}
	c.add(25 * time.Hour)
	check("02", CertExpired)
	a, err := db.Revoke(ctx, "ag-1", "box stolen")
	if err != nil || !a.Revoked() {
		t.Fatalf("Revoke = %+v, %v", a, err)
	}
	first := a.RevokedAt
	c.add(time.Minute)
	if a, _ := db.Revoke(ctx, "ag-1", "again"); !a.RevokedAt.Equal(first) || a.RevokeReason != "box stolen" {
		t.Errorf("second revocation changed the record: %+v", a)
	}
	check("01", CertRevoked)
	if err := db.AgentAllowed(ctx, "ag-1", "01"); err == nil {
		t.Error("revoked agent allowed")
	}
	if _, err := db.Renew(ctx, "ag-1", func(Agent) (Cert, error) { t.Error("issuer called for a revoked agent"); return Cert{}, nil }); err == nil {
		t.Error("revoked agent renewed")
	}
	revoked, _, err := db.RevokedCerts(ctx)
	if err != nil || len(revoked) != 1 || revoked[0].Serial != "01" { // 02 has expired: no CRL entry needed
		t.Errorf("RevokedCerts = %+v, %v", revoked, err)
	}
	if _, err := db.Revoke(ctx, "ag-nope", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoking an unknown agent: %v", err)
	}
}

func TestAuditChain(t *testing.T) {
	ctx := context.Background()
	db, _ := open(t)
	for i, a := range []string{"enroll", "renew", "revoke"} {
		e, err := db.Audit(ctx, "cli", a, "ag-1", "detail")
		if err != nil {
			t.Fatal(err)
		}
		if e.Seq != int64(i+1) {
			t.Errorf("seq = %d, want %d", e.Seq, i+1)
		}
	}
	if n, err := db.VerifyAudit(ctx); err != nil || n != 3 {
		t.Fatalf("VerifyAudit = %d, %v", n, err)
	}
	if _, err := db.db.ExecContext(ctx, `UPDATE audit SET detail = 'forged' WHERE seq = 2`); err == nil {
		t.Error("the database let an audit entry change")
	}
	if _, err := db.db.ExecContext(ctx, `DELETE FROM audit WHERE seq = 2`); err == nil {
		t.Error("the database let an audit entry go")
	}
	// Someone with the file and sqlite3 can drop the triggers: the chain
	// still tells.
	if _, err := db.db.ExecContext(ctx, `DROP TRIGGER audit_no_update`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.db.ExecContext(ctx, `UPDATE audit SET detail = 'forged' WHERE seq = 2`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.VerifyAudit(ctx); !errors.Is(err, ErrAuditBroken) {
		t.Errorf("VerifyAudit after tampering = %v, want ErrAuditBroken", err)
	}
}

func TestCatalog(t *testing.T) {
	ctx := context.Background()
	db, _ := open(t)
	pts := []CatalogPoint{{ID: 1<<63 + 5, Name: "SAT", Unit: "°F", Kind: "float", Tags: []string{"air", "temp"}}, {ID: 7}}
	if err := db.PutCatalog(ctx, "t", "s", "ag-1", pts); err != nil {
		t.Fatal(err)
	}
	if err := db.PutCatalog(ctx, "t", "s", "ag-1", []CatalogPoint{{ID: 7, Name: "RAT"}}); err != nil {
		t.Fatal(err)
	}
	got, err := db.Catalog(ctx, "t", "s")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d points", len(got))
	}
	byID := map[uint64]CatalogPoint{}
	for _, p := range got {
		byID[p.ID] = p
	}
	if p := byID[1<<63+5]; p.Name != "SAT" || p.Unit != "°F" || len(p.Tags) != 2 {
		t.Errorf("point with the high bit set came back as %+v", p)
	}
	if byID[7].Name != "RAT" {
		t.Errorf("update lost: %+v", byID[7])
	}
	if other, _ := db.Catalog(ctx, "t", "other"); len(other) != 0 {
		t.Errorf("another site sees %d points", len(other))
	}
}

func TestReopenKeepsDataAndSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ingest.db")
	db, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Audit(ctx, "cli", "x", "y", ""); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if n, err := db.VerifyAudit(ctx); n != 1 || err != nil {
		t.Errorf("after reopening: %d entries, %v", n, err)
	}
}
