package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/ingest/store"
)

// TestAnonymizationIntegration runs the demo's sites end to end (trend
// exports, the Modbus gateway, the BACnet controller with its routed
// devices and the OPC UA server) and scans every stored blob, decompressed,
// and every blob name for every name, description, unit, address, device
// instance, node id and file name in the agent's configuration and in the
// metadata the devices reported (which reached the ingest's catalogue):
// none may appear in the archive.
func TestAnonymizationIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Run(ctx, Options{Bin: binDir, Dir: filepath.Join(dir, "demo"), Data: "../../testdata/bms", For: 12 * time.Second, Out: &out, Logs: &testLog{t: t}})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := &Stack{Dir: filepath.Join(dir, "demo")}

	secrets := map[string]bool{}
	add := func(v string) {
		v = strings.TrimSpace(v)
		// Shorter strings match random bytes of compressed data by chance.
		// The tenant and site ids are in every archive path by design:
		// opaque ids the operator chose, like "demo" and "site-0001".
		if len(v) >= 4 && !strings.Contains("demo/site-0001", v) && !generic[strings.ToLower(v)] {
			secrets[v] = true
		}
	}
	// Everything the installer wrote: names, refs, hosts, endpoints,
	// node ids, object ids, file names, units.
	cfg, err := os.ReadFile(s.AgentConfig())
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	walkScalars(&doc, func(v string) {
		add(v)
		if strings.Contains(v, "/") { // paths and URLs: each part too
			for _, part := range regexp.MustCompile(`[/:]+`).Split(v, -1) {
				add(part)
			}
		}
		if m := hostPort.FindString(v); m != "" {
			add(m)
		}
	})
	// What the devices said about themselves (BACnet object names and
	// descriptions, OPC UA display names, Modbus identification, CSV
	// headers): the catalogue the agent shared with the relational store.
	db, err := store.Open(ctx, s.database(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cat, err := db.Catalog(ctx, "demo", "site-0001")
	if err != nil {
		t.Fatal(err)
	}
	if len(cat) == 0 {
		t.Fatal("the catalogue is empty: the proof would prove nothing about device metadata")
	}
	named := 0
	for _, p := range cat {
		add(p.Name)
		add(p.Description)
		add(p.Unit)
		if p.Name != "" {
			named++
		}
	}
	for _, v := range []string{"Demo Building", "127.0.0.1"} {
		add(v)
	}
	if len(secrets) < 50 || named < 20 {
		t.Fatalf("only %d strings (%d named points) to look for: the scan is too weak", len(secrets), named)
	}
	names := make([]string, 0, len(secrets))
	for v := range secrets {
		names = append(names, v)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	st, err := s.OpenArchive()
	if err != nil {
		t.Fatal(err)
	}
	scanStore(t, st, dec, names)
	t.Logf("scanned the archive for %d strings from the configuration and %d catalogue points", len(names), len(cat))
}

// hostPort finds an IPv4 address with or without a port.
var hostPort = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+(:\d+)?`)

// generic are configuration values that name nothing (keywords, policies,
// formats); finding them would say nothing about anonymity.
var generic = map[string]bool{
	"true": true, "false": true, "info": true, "text": true, "json": true, "full": true, "none": true,
	"tags-only": true, "csvtrend": true, "modbus": true, "bacnet": true, "opcua": true, "https": true,
	"work": true, "main": true,
}

func walkScalars(n *yaml.Node, f func(string)) {
	if n.Kind == yaml.ScalarNode {
		f(n.Value)
	}
	for _, c := range n.Content {
		walkScalars(c, f)
	}
}
