package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/ingest/web"
)

// runIn runs the CLI with stdin.
func runIn(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := New()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestUsers(t *testing.T) {
	db := filepath.Join(t.TempDir(), "ingest.db")
	steps := []struct {
		name, stdin string
		args        []string
		fails       bool
	}{
		{"add engineer", "a long and unusual passphrase\n", []string{"users", "add", "ann", "--role", "engineer", "--site", "acme/s1", "--password-stdin"}, false},
		{"weak password", "password123\n", []string{"users", "add", "bob", "--password-stdin"}, true},
		{"no password source", "", []string{"users", "add", "bob"}, true},
		{"bad role", "", []string{"users", "add", "bob", "--role", "god", "--generate"}, true},
		{"bad site", "", []string{"users", "add", "bob", "--site", "acme", "--generate"}, true},
		{"bad name", "", []string{"users", "add", "a/b", "--generate"}, true},
		{"duplicate", "", []string{"users", "add", "ann", "--generate"}, true},
		{"assign", "", []string{"users", "assign", "ann", "--site", "acme/s1", "--site", "acme/s2"}, false},
		{"role", "", []string{"users", "role", "ann", "viewer"}, false},
		{"bad role change", "", []string{"users", "role", "ann", "root"}, true},
		{"disable", "", []string{"users", "disable", "ann"}, false},
		{"passwd", "another unusual passphrase\n", []string{"users", "passwd", "ann", "--password-stdin"}, false},
		{"passwd unknown", "another unusual passphrase\n", []string{"users", "passwd", "zed", "--password-stdin"}, true},
		{"unlock", "", []string{"users", "unlock", "ann"}, false},
		{"site name", "", []string{"sites", "name", "acme/s1", "Main Library"}, false},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			_, err := runIn(t, st.stdin, append(st.args, "--db", db)...)
			if (err != nil) != st.fails {
				t.Fatalf("err = %v, want failure %v", err, st.fails)
			}
		})
	}
	out, err := runIn(t, "", "users", "add", "ops", "--role", "admin", "--generate", "--json", "--db", db)
	if err != nil {
		t.Fatal(err)
	}
	var added userReport
	if err := json.Unmarshal([]byte(out), &added); err != nil || len(added.Password) != 29 {
		t.Fatalf("generated: %v %q", err, out)
	}
	out, err = runIn(t, "", "users", "list", "--json", "--db", db)
	if err != nil {
		t.Fatal(err)
	}
	var list []userReport
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 {
		t.Fatalf("list: %v %s", err, out)
	}
	if a := list[0]; a.Name != "ann" || a.Role != "viewer" || !a.Disabled || strings.Join(a.Sites, " ") != "acme/s1 acme/s2" || a.Password != "" {
		t.Errorf("ann: %+v", a)
	}
	s, err := store.Open(context.Background(), db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, _ := s.User(context.Background(), "ann")
	if ok, _ := web.VerifyPassword(u.Hash, "another unusual passphrase"); !ok {
		t.Error("passwd did not set the password")
	}
	ops, _ := s.User(context.Background(), "ops")
	if ok, _ := web.VerifyPassword(ops.Hash, added.Password); !ok {
		t.Error("the generated password does not sign in")
	}
	log, _ := s.AuditLog(context.Background(), 0, 100)
	var actions []string
	for _, e := range log {
		actions = append(actions, e.Action)
	}
	if got := strings.Join(actions, " "); got != "user_add sites_assign role_change user_disable password_change user_unlock site_name user_add" {
		t.Errorf("audit: %s", got)
	}
	sites, _ := s.Sites(context.Background())
	if len(sites) != 2 || sites[0].Name != "Main Library" {
		t.Errorf("sites: %+v", sites)
	}
}
