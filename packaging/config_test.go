package packaging

import (
	"path/filepath"
	"testing"

	agentconfig "github.com/sightglass-bms/sightglass/agent/config"
	ingestconfig "github.com/sightglass-bms/sightglass/ingest/config"

	"github.com/sightglass-bms/sightglass/pkg/repotest"
)

// The configs the packages install must load as they are, so a fresh
// install fails on enrollment or on the installer's edits, never on our
// own example.
func TestInstalledConfigsLoad(t *testing.T) {
	root := repotest.Root(t)
	if _, err := agentconfig.Load(filepath.Join(root, "configs", "agent.example.yaml")); err != nil {
		t.Errorf("the agent package installs configs/agent.example.yaml, which does not load: %v", err)
	}
	c, err := ingestconfig.LoadFile("ingest.yaml")
	if err != nil {
		t.Fatalf("packaging/ingest.yaml does not load: %v", err)
	}
	// Everything the ingest writes must be under its StateDirectory, the
	// only path its unit makes writable.
	for what, p := range map[string]string{"ca_dir": c.CADir, "database": c.Database} {
		if rel, err := filepath.Rel("/var/lib/sightglass-ingest", p); err != nil || !filepath.IsLocal(rel) {
			t.Errorf("%s = %s is outside /var/lib/sightglass-ingest, which the unit cannot write", what, p)
		}
	}
}
