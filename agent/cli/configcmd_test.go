package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", `site:
  name: Test Building
data_dir: `+dir+`
uplink:
  url: https://127.0.0.1:8443
devices:
  - name: ahu1
    driver: csvtrend
    interval: 1m
    settings: {path: `+dir+`}
    points:
      - ref: SAT
      - ref: RAT
`)
	tests := []struct {
		name    string
		path    string
		wantOut string
		wantErr []string // every one must appear in the error
	}{
		{"the shipped example", "../../configs/agent.example.yaml", ": ok: ", nil},
		{"good", good, "ok: 1 devices, 2 points configured", nil},
		{"missing file", filepath.Join(dir, "nope.yaml"), "", []string{"reading agent config", "no such file"}},
		{"unknown keys name their lines", write("unknown.yaml", "site:\n  name: x\nbogus: 1\nuplink:\n  url: https://h\n  foo: 2\n"),
			"", []string{"line 3", "bogus", "line 6", "foo"}},
		{"every problem at once", write("bad.yaml", `site:
  name: x
data_dir: `+dir+`
uplink:
  url: ftp://x
devices:
  - name: a
    driver: csvtrend
    interval: -1s
`), "", []string{"uplink.url", "line 7", "interval", "points: none listed"}},
		{"unknown driver", write("driver.yaml", `site:
  name: x
data_dir: `+dir+`
uplink:
  url: https://127.0.0.1:8443
devices:
  - name: a
    driver: nope
    interval: 1m
    points: [{ref: x}]
`), "", []string{`"nope" is not a known driver`, "line 7"}},
		{"duplicate point ref", write("dup.yaml", `site:
  name: x
data_dir: `+dir+`
uplink:
  url: https://127.0.0.1:8443
devices:
  - name: a
    driver: csvtrend
    interval: 1m
    settings: {path: `+dir+`}
    points: [{ref: x}, {ref: x}]
`), "", []string{`point "x"`, "already listed"}},
		{"empty file", write("empty.yaml", ""), "", []string{"empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := run(t, context.Background(), "config", "validate", tt.path)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				if !strings.Contains(out, tt.wantOut) {
					t.Errorf("output %q, want %q in it", out, tt.wantOut)
				}
				return
			}
			if err == nil {
				t.Fatalf("validate succeeded: %s", out)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestConfigValidateCreatesNoSecret(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.yaml")
	body := "site:\n  name: x\ndata_dir: " + dir + "/data\nuplink:\n  url: https://127.0.0.1:1\ndevices:\n  - name: a\n    driver: csvtrend\n    interval: 1m\n    settings: {path: " + dir + "}\n    points: [{ref: x}]\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, context.Background(), "config", "validate", p); err != nil {
		t.Fatal(err)
	}
	// Validation must not touch the data directory: the site secret is made
	// by the first run, never by a check.
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("validate created the data directory (stat: %v)", err)
	}
}
