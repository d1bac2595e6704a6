package config

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const goodYAML = `listen: 127.0.0.1:0
internal_listen: 127.0.0.1:9090
ca_dir: /etc/sightglass/ca
store:
  kind: dir
  dir: archive
max_batch_bytes: 1048576
max_skew: 5m
max_age: 720h
log_level: debug
database: db/ingest.db
agent_validity: 72h
catalog_policy: tags-only
`

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(goodYAML), "ingest.yaml", "/srv/sg")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := Config{
		Listen:         "127.0.0.1:0",
		InternalListen: "127.0.0.1:9090",
		CADir:          "/etc/sightglass/ca",
		Store:          Store{Kind: "dir", Dir: filepath.Join("/srv/sg", "archive")},
		MaxBatchBytes:  1 << 20,
		MaxSkew:        5 * time.Minute,
		MaxAge:         720 * time.Hour,
		LogLevel:       "debug",
		Database:       filepath.Join("/srv/sg", "db/ingest.db"),
		AgentValidity:  72 * time.Hour,
		CatalogPolicy:  "tags-only",
	}
	c.source, c.lines = "", nil
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got %+v\nwant %+v", *c, want)
	}
	if c.Level() != slog.LevelDebug {
		t.Errorf("Level = %v, want debug", c.Level())
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte("ca_dir: ca\ndatabase: x.db\nstore:\n  dir: data\n"), "x.yaml", "")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.Listen != DefaultListen || c.MaxBatchBytes != DefaultMaxBatchBytes || c.MaxSkew != DefaultMaxSkew ||
		c.MaxAge != DefaultMaxAge || c.LogLevel != DefaultLogLevel || c.Store.Kind != StoreKindDir || c.InternalListen != "" ||
		c.AgentValidity != DefaultAgentValidity || c.CatalogPolicy != DefaultCatalogPolicy {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.CADir != "ca" || c.Store.Dir != "data" {
		t.Errorf("paths changed without a base dir: %q %q", c.CADir, c.Store.Dir)
	}
}

func TestDefault(t *testing.T) {
	dir := t.TempDir()
	c, err := Default(dir)
	if err != nil {
		t.Fatalf("Default: %v", err)
	}
	if c.CADir != filepath.Join(dir, "ca") || c.Store.Dir != filepath.Join(dir, "archive") {
		t.Errorf("paths not under the data dir: ca %q store %q", c.CADir, c.Store.Dir)
	}
	if c.Listen != DefaultListen || c.MaxBatchBytes != DefaultMaxBatchBytes || c.MaxAge != DefaultMaxAge {
		t.Errorf("built-in config disagrees with the defaults: %+v", c)
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ingest.yaml")
	if err := os.WriteFile(path, []byte("ca_dir: pki\ndatabase: ingest.db\nstore:\n  dir: /abs/archive\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadFile(path)
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	if c.CADir != filepath.Join(dir, "pki") {
		t.Errorf("ca_dir = %q, want it relative to the file", c.CADir)
	}
	if c.Store.Dir != "/abs/archive" {
		t.Errorf("store.dir = %q, an absolute path must stay", c.Store.Dir)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("LoadFile(missing) = %v, want an error naming the file", err)
	}
}

func TestParseBad(t *testing.T) {
	const base = "ca_dir: ca\ndatabase: x.db\nstore: {dir: d}\n"
	tests := []struct {
		name string
		yaml string
		want []string // substrings the error must contain
	}{
		{"unknown key", base + "listn: 1.2.3.4:5\n", []string{"bad.yaml", "line 4", "listn"}},
		{"unknown nested key", "ca_dir: ca\nstore:\n  dir: d\n  bucket: x\n", []string{"line 4", "bucket"}},
		{"duplicate key", base + "listen: a:1\nlisten: b:2\n", []string{"line 5", `"listen" already defined at line 4`}},
		{"bad duration", base + "max_skew: soon\n", []string{"line 4", "soon"}},
		{"bare number duration", base + "max_age: 10\n", []string{"line 4", "time.Duration"}},
		{"not a mapping", "- a\n- b\n", []string{"line 1"}},
		{"two documents", base + "---\nlisten: a:1\n", []string{"more than one YAML document"}},
		{"syntax", "listen: [\n", []string{"bad.yaml", "line"}},
		{"empty listen", base + "listen: \"\"\n", []string{"bad.yaml:4: listen: is empty"}},
		{"listen without port", base + "listen: localhost\n", []string{"bad.yaml:4: listen:", "host:port"}},
		{"listen bad port", base + "listen: localhost:99999\n", []string{"bad.yaml:4: listen:", "port"}},
		{"internal same as listen", base + "listen: 127.0.0.1:8443\ninternal_listen: 127.0.0.1:8443\n", []string{"bad.yaml:5: internal_listen:", "same address"}},
		{"internal bad", base + "internal_listen: nope\n", []string{"bad.yaml:4: internal_listen:"}},
		{"no ca dir", "store:\n  dir: d\n", []string{"bad.yaml: ca_dir: is empty"}},
		{"azure without settings", "ca_dir: ca\nstore:\n  kind: azure\n", []string{"bad.yaml:2: store.azure.auth: is empty", "bad.yaml:2: store.azure.account_url: is empty", "bad.yaml:2: store.azure.container: is empty"}},
		{"unknown kind", "ca_dir: ca\nstore:\n  kind: s3\n  dir: d\n", []string{"bad.yaml:3: store.kind:", `"s3"`}},
		{"no store dir", "ca_dir: ca\n", []string{"store.dir: is empty"}},
		{"tiny batches", base + "max_batch_bytes: 10\n", []string{"bad.yaml:4: max_batch_bytes: 10 is out of range"}},
		{"huge batches", base + "max_batch_bytes: 10000000000\n", []string{"max_batch_bytes: 10000000000 is out of range"}},
		{"negative skew", base + "max_skew: -1m\n", []string{"bad.yaml:4: max_skew:", "positive"}},
		{"zero skew", base + "max_skew: 0s\n", []string{"bad.yaml:4: max_skew:", "positive"}},
		{"zero age", base + "max_age: 0s\n", []string{"bad.yaml:4: max_age:", "positive"}},
		{"bad level", base + "log_level: loud\n", []string{"bad.yaml:4: log_level:", "loud"}},
		{"no database", "ca_dir: ca\nstore:\n  dir: d\n", []string{"bad.yaml: database: is empty"}},
		{"short agent validity", base + "agent_validity: 10m\n", []string{"bad.yaml:4: agent_validity: 10m0s is out of range"}},
		{"long agent validity", base + "agent_validity: 8760h\n", []string{"bad.yaml:4: agent_validity:", "out of range"}},
		{"bad catalog policy", base + "catalog_policy: some\n", []string{"bad.yaml:4: catalog_policy:", `"some"`}},
		{
			"every problem at once",
			"listen: x\nstore:\n  kind: s3\nmax_age: -1h\nlog_level: loud\n",
			[]string{"bad.yaml:1: listen:", "bad.yaml: ca_dir:", "bad.yaml:3: store.kind:", "bad.yaml:4: max_age:", "bad.yaml:5: log_level:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), "bad.yaml", "")
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", c)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestValidateFieldErrors(t *testing.T) {
	c := Defaults()
	c.LogLevel = "loud"
	err := c.Validate()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("Validate = %v, want *FieldError", err)
	}
	fields := map[string]bool{}
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		if errors.As(e, &fe) {
			fields[fe.Field] = true
		}
	}
	for _, f := range []string{"ca_dir", "store.dir", "log_level", "database"} {
		if !fields[f] {
			t.Errorf("no problem reported for %s; got %v", f, fields)
		}
	}
	if len(fields) != 4 {
		t.Errorf("got problems for %v, want exactly ca_dir, store.dir, log_level, database", fields)
	}
}

func TestDefaultYAMLIsACopy(t *testing.T) {
	b := DefaultYAML()
	b[0] = '!'
	if _, err := Default(t.TempDir()); err != nil {
		t.Fatalf("built-in config damaged through DefaultYAML: %v", err)
	}
}
