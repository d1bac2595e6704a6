package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

func newStoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Maintain the hot store the dashboard reads",
		Example: `  sightglass-ingest store rebuild --config /etc/sightglass-ingest/ingest.yaml
  sightglass-ingest store rebuild --tenant acme --site s-7f3a --dry-run`,
	}
	cmd.AddCommand(newStoreRebuildCmd())
	return cmd
}

func newStoreRebuildCmd() *cobra.Command {
	var (
		configPath, db, storeDir string
		o                        store.RebuildOptions
		since                    string
		asJSON                   bool
	)
	cmd := &cobra.Command{
		Use:   "rebuild",
		Short: "Refill the hot store's latest values and rollups from the archive",
		Long: `rebuild reads every batch and compacted day blob of the archive (of one site
with --tenant and --site, of one tenant with --tenant alone, else of every
site) and writes the latest values and the 5-minute and hourly rollups into
the hot store as live ingestion did, replacing what the store held for those
sites. Run it after losing or replacing the database, or after a fix in how
rollups are computed. Users, sessions, agents, tokens, the catalogue and the
audit log are not touched: the archive holds none of them.

Stop the ingest (every replica writing to this database) first. A blob that
cannot be read or decoded is reported and skipped, the rest are rebuilt, and
the exit status is then non-zero; progress goes to stderr. Ctrl-C stops
between blobs: run the command again to finish.`,
		Example: `  sightglass-ingest store rebuild --config /etc/sightglass-ingest/ingest.yaml
  sightglass-ingest store rebuild --config /etc/sightglass-ingest/ingest.yaml --tenant acme --site s-7f3a --since 2026-01 --dry-run
  sightglass-ingest store rebuild --db ./sightglass-data/ingest.db --store-dir ./sightglass-data/archive --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if since != "" {
				m, err := time.Parse("2006-01", since)
				if err != nil {
					return fmt.Errorf("--since %q: want yyyy-mm", since)
				}
				o.Since = m
			}
			o.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			var archive blob.Store
			if configPath != "" {
				cfg, err := config.LoadFile(configPath)
				if err != nil {
					return err
				}
				if archive, _, err = openStore(ctx, cfg, o.Logger); err != nil {
					return err
				}
				db = cfg.Database
			} else {
				d, err := blob.OpenDir(storeDir)
				if err != nil {
					return err
				}
				archive = d
			}
			if o.DryRun {
				// A dry run reads nothing from the database either: open
				// a throwaway one rather than create or migrate the real
				// one.
				tmp, err := os.MkdirTemp("", "sightglass-rebuild-dry-run-")
				if err != nil {
					return fmt.Errorf("--dry-run: %w", err)
				}
				defer os.RemoveAll(tmp)
				db = filepath.Join(tmp, "dry-run.db")
			}
			hot, err := store.Open(ctx, db, store.Options{})
			if err != nil {
				return err
			}
			defer hot.Close()
			warnIfServing(ctx, hot, o.Logger)
			rep, err := hot.Rebuild(ctx, archive, o)
			if asJSON {
				if jerr := writeJSON(cmd.OutOrStdout(), rep); jerr != nil {
					return jerr
				}
			} else {
				printRebuild(cmd.OutOrStdout(), rep)
			}
			switch {
			case err != nil:
				return err
			case rep.Blobs == 0 && rep.Skipped == 0:
				return errors.New("nothing archived for the chosen sites: check --tenant, --site and the store")
			case rep.Skipped > 0:
				return fmt.Errorf("%d blobs could not be read and were skipped (listed above); the rest were rebuilt", rep.Skipped)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "the ingest's configuration file: its database and store, directory or Azure (overrides --db and --store-dir)")
	f.StringVar(&db, "db", defaultDatabase, "the ingest's database, the hot store to rebuild")
	f.StringVar(&storeDir, "store-dir", defaultStoreDir, "root of a directory archive (when there is no --config)")
	f.StringVar(&o.Tenant, "tenant", "", "rebuild this tenant only")
	f.StringVar(&o.Site, "site", "", "rebuild this site only (with --tenant)")
	f.StringVar(&since, "since", "", "first month to read, yyyy-mm (default: every month holding blobs; from 2000-01 for a named site, two list calls a month)")
	f.BoolVar(&o.DryRun, "dry-run", false, "read and decode everything, report what would be written, write nothing")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// servingWindow is how recent an upload must be to suggest that an ingest
// still writes to the database being rebuilt.
const servingWindow = 5 * time.Minute

// warnIfServing warns when an agent uploaded to this database moments ago:
// a rebuild beside a running ingest may count a batch twice.
func warnIfServing(ctx context.Context, hot *store.DB, log *slog.Logger) {
	hs, err := hot.AgentHealths(ctx)
	if err != nil {
		return // the rebuild itself will say what is wrong with the database
	}
	for _, h := range hs {
		if ago := time.Since(h.LastUpload); ago < servingWindow {
			log.Warn("an agent uploaded to this database moments ago: is the ingest still running? stop every replica, then rebuild again",
				"agent", h.AgentID, "ago", ago.Round(time.Second).String())
			return
		}
	}
}

// printRebuild prints a rebuild's report for a person: a line per site,
// one per skipped blob, and the summary.
func printRebuild(w io.Writer, rep store.RebuildReport) {
	verb := "rebuilt"
	if rep.DryRun {
		verb = "would rebuild"
	}
	for _, s := range rep.Sites {
		state := ""
		if !s.Complete {
			state = " (incomplete)"
		}
		fmt.Fprintf(w, "%s %s/%s%s: %d batches, %d day parts, %d samples (%d duplicates counted once), %d skipped\n",
			verb, s.Tenant, s.Site, state, s.Batches, s.Parts, s.Samples, s.Duplicates, len(s.Skipped))
		for _, sk := range s.Skipped {
			fmt.Fprintf(w, "  skipped %s: %s\n", sk.Name, sk.Reason)
		}
	}
	fmt.Fprintf(w, "%s %d sites: %d blobs read, %d samples, %d skipped\n", verb, len(rep.Sites), rep.Blobs, rep.Samples, rep.Skipped)
}
