package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// nameSite makes tenant/site a building the ingest knows, the way an
// operator does before enrolling its first box with --site.
func nameSite(t *testing.T, caDir, ref string) {
	t.Helper()
	if _, _, err := run(t, context.Background(), "sites", "name", "--db", dbOf(caDir), ref, "Test Building"); err != nil {
		t.Fatalf("sites name %s: %v", ref, err)
	}
}

func TestEnrollCreate(t *testing.T) {
	caDir := newCA(t)
	nameSite(t, caDir, "acme/s-7f3a")
	nameSite(t, caDir, "acme/s1")
	stdout, stderr, err := run(t, context.Background(), "enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--site", "s-7f3a", "--ttl", "2h")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pki.ParseEnrollToken(stdout)
	if err != nil {
		t.Fatalf("stdout is not a token: %v\n%s", err, stdout)
	}
	ca, err := pki.Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	if !tok.MatchesCA(ca.Certificate()) {
		t.Error("the token does not pin this ingest's CA")
	}
	if !strings.Contains(stderr, "sightglass-agent enroll") || strings.Contains(stderr, stdout) {
		t.Errorf("stderr should explain without repeating the token: %s", stderr)
	}
	out, _, err := run(t, context.Background(), "enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--site", "s-7f3a", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep tokenReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Site != "s-7f3a" || rep.CAFingerprint != pki.FingerprintOf(ca.Certificate()).String() {
		t.Errorf("--json = %s (%v)", out, err)
	}
	for _, bad := range [][]string{
		{"--ttl", "25h"}, {"--ttl", "0s"}, {"--site", "Main Street"},
	} {
		args := append([]string{"enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--site", "s1"}, bad...)
		if _, _, err := run(t, context.Background(), args...); err == nil {
			t.Errorf("enroll create %v succeeded", bad)
		}
	}
}

func TestAgentsListRevokeStatusAudit(t *testing.T) {
	ctx := context.Background()
	caDir := newCA(t)
	db := dbOf(caDir)
	out := filepath.Join(t.TempDir(), "bundle")
	agent, _, err := run(t, ctx, "agents", "issue", "--ca-dir", caDir, "--db", db, "--tenant", "acme", "--site", "s1", "--out", out)
	if err != nil {
		t.Fatal(err)
	}
	agent = strings.TrimSpace(agent)
	cert, _, _, err := pki.LoadAgentBundle(out)
	if err != nil {
		t.Fatal(err)
	}
	serial := pki.SerialHex(cert.Leaf)

	list, _, err := run(t, ctx, "agents", "list", "--db", db)
	if err != nil || !strings.Contains(list, agent) || !strings.Contains(list, "active") || !strings.Contains(list, "never") {
		t.Errorf("agents list = %q, %v", list, err)
	}
	// Once a batch is folded into the hot store, list shows its upload and
	// the agent's high-water sequence number.
	sdb, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const seq = 1_796_115_442_169_107
	if err := sdb.ObserveBatch(ctx, store.SiteRef{Tenant: "acme", Site: "s1"}, agent, &batch.Batch{Header: batch.Header{AgentID: agent, Site: "s1", Seq: seq}}); err != nil {
		t.Fatal(err)
	}
	sdb.Close()
	list, _, err = run(t, ctx, "agents", "list", "--db", db)
	if err != nil || !strings.Contains(list, "HIGH-WATER SEQ") || !strings.Contains(list, "1796115442169107") || strings.Contains(list, "never") {
		t.Errorf("agents list after an upload = %q, %v", list, err)
	}
	if st, _, err := run(t, ctx, "agents", "status", "--db", db, serial); err != nil || strings.TrimSpace(st) != "good" {
		t.Errorf("status = %q, %v", st, err)
	}
	if _, _, err := run(t, ctx, "agents", "revoke", "--db", db, agent); err == nil || !strings.Contains(err.Error(), "--reason") {
		t.Errorf("revoke without a reason: %v", err)
	}
	if _, _, err := run(t, ctx, "agents", "revoke", "--db", db, "ag-nobody", "--reason", "x"); err == nil || !strings.Contains(err.Error(), "agents list") {
		t.Errorf("revoking an unknown agent: %v", err)
	}
	if _, _, err := run(t, ctx, "agents", "revoke", "--db", db, agent, "--reason", "box stolen"); err != nil {
		t.Fatal(err)
	}
	st, _, err := run(t, ctx, "agents", "status", "--db", db, strings.ToUpper(serial))
	if err == nil || strings.TrimSpace(st) != "revoked" {
		t.Errorf("status after revoke = %q, %v (want revoked and a non-zero exit)", st, err)
	}
	if st, _, _ := run(t, ctx, "agents", "status", "--db", db, "abcdef"); strings.TrimSpace(st) != "unknown" {
		t.Errorf("status of an unknown serial = %q", st)
	}
	list, _, _ = run(t, ctx, "agents", "list", "--db", db, "--json")
	var reps []agentReport
	if err := json.Unmarshal([]byte(list), &reps); err != nil || len(reps) != 1 || reps[0].RevokeReason != "box stolen" || reps[0].HighWaterSeq != seq || reps[0].LastUpload.IsZero() {
		t.Errorf("agents list --json = %s (%v)", list, err)
	}

	audit, _, err := run(t, ctx, "audit", "list", "--db", db)
	if err != nil || !strings.Contains(audit, "issue") || !strings.Contains(audit, "revoke") || !strings.Contains(audit, "box stolen") {
		t.Errorf("audit list = %q, %v", audit, err)
	}
	if v, _, err := run(t, ctx, "audit", "verify", "--db", db); err != nil || !strings.Contains(v, "2 entries") {
		t.Errorf("audit verify = %q, %v", v, err)
	}
}

// TestEnrollCreateSite: --new-site makes an opaque id and prints how to
// name the building; a given id is taken, with a warning that it appears
// in every archive path unless it has the opaque form; with neither (an
// operator replacing a box who forgot --site) or both, nothing is made.
func TestEnrollCreateSite(t *testing.T) {
	caDir := newCA(t)
	for _, ref := range []string{"acme/mainlibrary", "acme/s-7f3a2kqm", "acme/s-7f3a2kqmx"} {
		nameSite(t, caDir, ref)
	}
	opaque := regexp.MustCompile(`^s-[a-z2-7]{8}$`)
	const warning = "must not name the building"
	tests := []struct {
		name      string
		site      []string
		generated bool
		stderr    string // said on stderr
		notStderr string // not said on stderr
	}{
		{"new site", []string{"--new-site"}, true, "sightglass-ingest sites name acme/", warning},
		{"given, readable", []string{"--site", "mainlibrary"}, false, warning, ""},
		{"given, opaque", []string{"--site", "s-7f3a2kqm"}, false, "", warning},
		{"given, opaque-looking but too long", []string{"--site", "s-7f3a2kqmx"}, false, warning, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--json"}, tt.site...)
			stdout, stderr, err := run(t, context.Background(), args...)
			if err != nil {
				t.Fatal(err)
			}
			var rep tokenReport
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
				t.Fatalf("--json = %s: %v", stdout, err)
			}
			if rep.SiteGenerated != tt.generated {
				t.Errorf("site_generated %v, want %v", rep.SiteGenerated, tt.generated)
			}
			if tt.generated && !opaque.MatchString(rep.Site) {
				t.Errorf("made site id %q, want s- and 8 base32 characters", rep.Site)
			}
			if !tt.generated && rep.Site != tt.site[1] {
				t.Errorf("site %q, want the one given", rep.Site)
			}
			if tt.stderr != "" && (!strings.Contains(stderr, tt.stderr) || !strings.Contains(stderr, rep.Site)) {
				t.Errorf("stderr %q, want it to name %s and say %q", stderr, rep.Site, tt.stderr)
			}
			if tt.notStderr != "" && strings.Contains(stderr, tt.notStderr) {
				t.Errorf("stderr %q says %q", stderr, tt.notStderr)
			}
		})
	}
	a, _, _ := run(t, context.Background(), "enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--new-site", "--json")
	b, _, _ := run(t, context.Background(), "enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--new-site", "--json")
	var ra, rb tokenReport
	json.Unmarshal([]byte(a), &ra)
	json.Unmarshal([]byte(b), &rb)
	if ra.Site == "" || ra.Site == rb.Site {
		t.Errorf("two new buildings got site ids %q and %q", ra.Site, rb.Site)
	}
}

// TestEnrollCreateNeedsSite: without --site or --new-site, or with both,
// enroll create refuses, names both options, and makes no token.
func TestEnrollCreateNeedsSite(t *testing.T) {
	caDir := newCA(t)
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"neither", nil},
		{"both", []string{"--site", "s-7f3a2kqm", "--new-site"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme"}, tt.args...)
			stdout, _, err := run(t, context.Background(), args...)
			if err == nil {
				t.Fatalf("enroll create %v succeeded, printing %q", tt.args, stdout)
			}
			if !strings.Contains(err.Error(), "--site") || !strings.Contains(err.Error(), "--new-site") {
				t.Errorf("error %q does not name both --site and --new-site", err)
			}
			if strings.TrimSpace(stdout) != "" {
				t.Errorf("printed %q", stdout)
			}
		})
	}
	db, err := store.Open(context.Background(), dbOf(caDir), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if entries, err := db.AuditLog(context.Background(), 0, 10); err != nil || len(entries) != 0 {
		t.Errorf("audit %+v (%v): a refused enroll create made a token", entries, err)
	}
}

// TestEnrollCreateTokenFirst: with stdout and stderr in one stream, as a
// script or the demo reads them, the token is the first line, ahead of the
// notes about the site id.
func TestEnrollCreateTokenFirst(t *testing.T) {
	caDir := newCA(t)
	nameSite(t, caDir, "acme/s1")
	for _, site := range [][]string{{"--new-site"}, {"--site", "s1"}} {
		var both bytes.Buffer
		root := New()
		root.SetArgs(append([]string{"enroll", "create", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme"}, site...))
		root.SetOut(&both)
		root.SetErr(&both)
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(both.String(), "\n")
		if _, err := pki.ParseEnrollToken(first); err != nil {
			t.Errorf("site %v: first line %q is not the token: %v", site, first, err)
		}
	}
}

// TestEnrollCreateKnownSite: --site must name a building the ingest
// knows (made by --new-site, named with sites name, or with an agent
// enrolled, revoked or not); a mistyped or another tenant's id is refused,
// pointing to --new-site, and makes no token and no building.
func TestEnrollCreateKnownSite(t *testing.T) {
	ctx := context.Background()
	caDir := newCA(t)
	db := dbOf(caDir)
	nameSite(t, caDir, "acme/s-7f3a2kqm")
	if _, _, err := run(t, ctx, "agents", "issue", "--ca-dir", caDir, "--db", db, "--tenant", "acme", "--site", "s-agentonl", "--out", filepath.Join(t.TempDir(), "b1")); err != nil {
		t.Fatal(err)
	}
	revoked, _, err := run(t, ctx, "agents", "issue", "--ca-dir", caDir, "--db", db, "--tenant", "acme", "--site", "s-revoked1", "--out", filepath.Join(t.TempDir(), "b2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, ctx, "agents", "revoke", "--db", db, strings.TrimSpace(revoked), "--reason", "box replaced"); err != nil {
		t.Fatal(err)
	}
	newOut, _, err := run(t, ctx, "enroll", "create", "--ca-dir", caDir, "--db", db, "--tenant", "acme", "--new-site", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var made tokenReport
	if err := json.Unmarshal([]byte(newOut), &made); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, tenant, site string
		want               []string // in the error; none: accepted
	}{
		{"named with sites name", "acme", "s-7f3a2kqm", nil},
		{"an agent enrolled", "acme", "s-agentonl", nil},
		{"its agent revoked (box replaced)", "acme", "s-revoked1", nil},
		{"made by --new-site", "acme", made.Site, nil},
		{"mistyped", "acme", "s-7f3a2kqn", []string{"s-7f3a2kqn", "no such building", "--new-site", "sites list"}},
		{"another tenant's building", "other", "s-7f3a2kqm", []string{"tenant acme has", "--tenant", "--new-site"}},
		{"another tenant's agent", "other", "s-agentonl", []string{"tenant acme has", "--new-site"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sdb, err := store.Open(ctx, db, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			before, err := sdb.Tokens(ctx)
			sdb.Close()
			if err != nil {
				t.Fatal(err)
			}
			stdout, _, err := run(t, ctx, "enroll", "create", "--ca-dir", caDir, "--db", db, "--tenant", tt.tenant, "--site", tt.site)
			sdb, oerr := store.Open(ctx, db, store.Options{})
			if oerr != nil {
				t.Fatal(oerr)
			}
			defer sdb.Close()
			after, terr := sdb.Tokens(ctx)
			if terr != nil {
				t.Fatal(terr)
			}
			if tt.want == nil {
				if err != nil || len(after) != len(before)+1 {
					t.Fatalf("enroll create --site %s: %v, %d tokens made", tt.site, err, len(after)-len(before))
				}
				if _, perr := pki.ParseEnrollToken(stdout); perr != nil {
					t.Errorf("stdout %q is not a token: %v", stdout, perr)
				}
				return
			}
			if err == nil {
				t.Fatalf("enroll create --tenant %s --site %s succeeded, printing %q", tt.tenant, tt.site, stdout)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.TrimSpace(stdout) != "" || len(after) != len(before) {
				t.Errorf("a refused enroll create printed %q and made %d tokens", stdout, len(after)-len(before))
			}
			sites, err := sdb.Sites(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range sites {
				if s.SiteRef == (store.SiteRef{Tenant: tt.tenant, Site: tt.site}) {
					t.Errorf("a refused enroll create recorded the building %s", s.SiteRef)
				}
			}
		})
	}
}
