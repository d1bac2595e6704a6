package cli

import (
	"context"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

var defaultDatabase = filepath.Join(defaultDataDir, "ingest.db")

// registryFlags are the flags of every command that works on the agent
// registry: the database (and, for those that sign, the CA), either named
// directly or read from the serve configuration.
type registryFlags struct {
	config, db, caDir string
}

func (f *registryFlags) add(cmd *cobra.Command, withCA bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "the ingest's configuration file: its database and ca_dir (overrides --db and --ca-dir)")
	fl.StringVar(&f.db, "db", defaultDatabase, "the ingest's database")
	if withCA {
		fl.StringVar(&f.caDir, "ca-dir", defaultCADir, "directory of the CA (made by ca init)")
	}
}

// resolve applies --config.
func (f *registryFlags) resolve() error {
	if f.config == "" {
		return nil
	}
	cfg, err := config.LoadFile(f.config)
	if err != nil {
		return err
	}
	f.db, f.caDir = cfg.Database, cfg.CADir
	return nil
}

// open opens the registry database.
func (f *registryFlags) open(ctx context.Context) (*store.DB, error) {
	if err := f.resolve(); err != nil {
		return nil, err
	}
	return store.Open(ctx, f.db, store.Options{})
}
