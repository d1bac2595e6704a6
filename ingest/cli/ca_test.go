package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

func TestCAInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	out, _, err := run(t, context.Background(), "ca", "init", "--dir", dir, "--server-name", "ingest.example.com", "--server-name", "127.0.0.1")
	if err != nil {
		t.Fatalf("ca init: %v", err)
	}
	for _, want := range []string{dir, "ca.key", "move it offline", "issuing.key", "ingest.example.com", "SHA-256"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatalf("the CA made does not load: %v", err)
	}
	sc, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(sc.Leaf.DNSNames, "ingest.example.com") {
		t.Errorf("server certificate names %v, want ingest.example.com", sc.Leaf.DNSNames)
	}
}

func TestCAInitJSON(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	out, _, err := run(t, context.Background(), "ca", "init", "--dir", dir, "--json")
	if err != nil {
		t.Fatalf("ca init: %v", err)
	}
	var rep caInitReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	if rep.Dir != dir || len(rep.SHA256) != 64 || !slices.Equal(rep.ServerNames, pki.DefaultServerNames) {
		t.Errorf("report %+v", rep)
	}
	for _, f := range rep.Files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("reported file %s: %v", f, err)
		}
	}
}

func TestCAInitRefuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, _, err := run(t, context.Background(), "ca", "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, pki.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"existing CA", []string{"ca", "init", "--dir", dir}, "already exists"},
		{"stray argument", []string{"ca", "init", "--dir", t.TempDir(), "extra"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, context.Background(), tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	after, err := os.ReadFile(filepath.Join(dir, pki.CAKeyFile))
	if err != nil || string(after) != string(before) {
		t.Error("the existing CA key was changed")
	}
}
