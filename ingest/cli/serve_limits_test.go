package cli

import (
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// TestServeConfigsShareLimits: the agent server and its observe queue get
// the same batch limits, whatever they are, so the queue can decode again
// every batch the server accepted; the rest of the server's config comes
// from the configuration file.
func TestServeConfigsShareLimits(t *testing.T) {
	cfg, err := config.Default(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		limits batch.Limits
	}{
		{"serve's", batchLimits},
		{"defaults", batch.Limits{}},
		{"raised", batch.Limits{MaxDecompressed: 256 << 20, MaxSamples: 16_000_000, MaxPoints: 4_000_000}},
		{"lowered", batch.Limits{MaxDecompressed: 1 << 20, MaxSamples: 1000, MaxPoints: 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scfg, qopts := serveConfigs(cfg, nil, tt.limits)
			if scfg.Limits != tt.limits || qopts.Limits != tt.limits {
				t.Errorf("server limits %+v, queue limits %+v, want both %+v", scfg.Limits, qopts.Limits, tt.limits)
			}
			if scfg.MaxBatchBytes != cfg.MaxBatchBytes || scfg.MaxSkew != cfg.MaxSkew || scfg.MaxAge != cfg.MaxAge ||
				scfg.AgentValidity != cfg.AgentValidity || scfg.CatalogPolicy != cfg.CatalogPolicy {
				t.Errorf("server config %+v does not carry the configuration's %+v", scfg, cfg)
			}
		})
	}
}
