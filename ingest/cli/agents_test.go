package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if _, _, err := run(t, context.Background(), "ca", "init", "--dir", dir); err != nil {
		t.Fatalf("ca init: %v", err)
	}
	return dir
}

// dbOf is the registry database beside a test CA.
func dbOf(caDir string) string { return filepath.Join(filepath.Dir(caDir), "ingest.db") }

func TestAgentsIssue(t *testing.T) {
	caDir := newCA(t)
	out := filepath.Join(t.TempDir(), "bundle")
	stdout, stderr, err := run(t, context.Background(), "agents", "issue", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--site", "s1", "--out", out)
	if err != nil {
		t.Fatalf("agents issue: %v", err)
	}
	agent := strings.TrimSpace(stdout)
	_, _, id, err := pki.LoadAgentBundle(out)
	if err != nil {
		t.Fatalf("the bundle does not load: %v", err)
	}
	if id != (pki.Identity{Tenant: "acme", Site: "s1", Agent: agent}) {
		t.Errorf("bundle identity %+v, printed agent %q", id, agent)
	}
	if !strings.Contains(stderr, out) || !strings.Contains(stderr, agent) {
		t.Errorf("stderr does not say what was written: %s", stderr)
	}
}

func TestAgentsIssueJSON(t *testing.T) {
	caDir := newCA(t)
	out := filepath.Join(t.TempDir(), "bundle")
	stdout, _, err := run(t, context.Background(), "agents", "issue", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--site", "s-2", "--out", out, "--validity", "720h", "--json")
	if err != nil {
		t.Fatalf("agents issue: %v", err)
	}
	var rep issueReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, stdout)
	}
	cert, _, id, err := pki.LoadAgentBundle(out)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Agent != id.Agent || rep.Tenant != "acme" || rep.Site != "s-2" || rep.Dir != out {
		t.Errorf("report %+v, bundle %+v", rep, id)
	}
	if !rep.NotAfter.Equal(cert.Leaf.NotAfter) {
		t.Errorf("not_after %v, certificate says %v", rep.NotAfter, cert.Leaf.NotAfter)
	}
	if d := time.Until(rep.NotAfter); d > 721*time.Hour || d < 700*time.Hour {
		t.Errorf("certificate valid for %v, want about 720h", d)
	}
}

func TestAgentsIssueRefuses(t *testing.T) {
	caDir := newCA(t)
	used := filepath.Join(t.TempDir(), "used")
	if _, _, err := run(t, context.Background(), "agents", "issue", "--ca-dir", caDir, "--db", dbOf(caDir), "--tenant", "acme", "--site", "s1", "--out", used); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no tenant", []string{"--site", "s1", "--out", t.TempDir()}, "tenant"},
		{"no out", []string{"--tenant", "acme", "--site", "s1"}, "out"},
		{"site with spaces", []string{"--tenant", "acme", "--site", "Main Street", "--out", t.TempDir()}, "Main Street"},
		{"upper-case tenant", []string{"--tenant", "ACME", "--site", "s1", "--out", t.TempDir()}, "ACME"},
		{"bundle already there", []string{"--tenant", "acme", "--site", "s1", "--out", used}, "already exists"},
		{"zero validity", []string{"--tenant", "acme", "--site", "s1", "--out", t.TempDir(), "--validity", "0s"}, "--validity"},
		{"validity past 90 days", []string{"--tenant", "acme", "--site", "s1", "--out", t.TempDir(), "--validity", "2161h"}, "at most 2160h0m0s (90 days"},
		{"no CA", []string{"--ca-dir", t.TempDir(), "--tenant", "acme", "--site", "s1", "--out", t.TempDir()}, "ca init"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"agents", "issue"}, tt.args...)
			if !strings.Contains(strings.Join(tt.args, " "), "--ca-dir") {
				args = append(args, "--ca-dir", caDir)
			}
			args = append(args, "--db", dbOf(caDir))
			_, _, err := run(t, context.Background(), args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}
