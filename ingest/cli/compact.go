package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/compact"
	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/export"
	"github.com/sightglass-bms/sightglass/ingest/observequeue"
)

// archiveFlags choose the archive a command works on: the store of the
// ingest's configuration (directory or Azure), or a directory.
type archiveFlags struct {
	config, storeDir string
}

func (f *archiveFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.config, "config", "", "the ingest's configuration file: its store (directory or Azure)")
	cmd.Flags().StringVar(&f.storeDir, "store-dir", defaultStoreDir, "root of a directory archive (when there is no --config)")
}

func (f *archiveFlags) open(ctx context.Context, log *slog.Logger) (blob.Store, error) {
	if f.config == "" {
		return blob.OpenDir(f.storeDir)
	}
	cfg, err := config.LoadFile(f.config)
	if err != nil {
		return nil, err
	}
	s, _, err := openStore(ctx, cfg, log)
	return s, err
}

func newArchiveCompactCmd() *cobra.Command {
	var (
		af           archiveFlags
		tenant, site string
		dayFlag      string
		olderThan    time.Duration
		asJSON       bool
	)
	cmd := &cobra.Command{
		Use:   "compact",
		Short: "Merge a site's batches into one blob per day",
		Long: `compact merges the batch blobs of --tenant/--site into day blobs in the same
format, sorted and deduplicated: one day (--day) or every day that ended more
than --older-than ago. It is idempotent and safe to run on several replicas
at once, and it deletes a batch only after the day blob holding it has been
stored, read back and verified. A late backlog for a compacted day is merged
into a new generation of the day blob. Progress goes to stderr.`,
		Example: `  sightglass-ingest archive compact --config /etc/sightglass-ingest/ingest.yaml --tenant acme --site s-7f3a
  sightglass-ingest archive compact --store-dir ./archive --tenant acme --site s-7f3a --day 2026-11-30 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			store, err := af.open(cmd.Context(), log)
			if err != nil {
				return err
			}
			cs, ok := store.(compact.Store)
			if !ok {
				return fmt.Errorf("this archive store cannot delete blobs, which compaction needs")
			}
			var days []time.Time
			if dayFlag != "" {
				d, err := time.Parse(time.DateOnly, dayFlag)
				if err != nil {
					return fmt.Errorf("--day %q: want yyyy-mm-dd", dayFlag)
				}
				days = []time.Time{d}
			} else {
				if days, err = daysWithBatches(cmd.Context(), store, tenant, site, time.Now().Add(-olderThan)); err != nil {
					return err
				}
			}
			// Batches the hot store still owes stay as they are until its
			// retry has read them.
			c := compact.New(cs, compact.Options{Logger: log, Owed: compact.OwedFunc(observequeue.Owed(cs))})
			var results []compact.Result
			var total compact.Result
			for i, d := range days {
				log.Info("compacting", "day", d.Format(time.DateOnly), "progress", fmt.Sprintf("%d/%d", i+1, len(days)))
				res, err := c.Day(cmd.Context(), tenant, site, d)
				if err != nil {
					return err
				}
				results = append(results, res)
				total.Sources += res.Sources
				total.Samples += res.Samples
				total.Bytes += res.Bytes
				total.SourceBytes += res.SourceBytes
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), results)
			}
			perSample := 0.0
			if total.Samples > 0 {
				perSample = float64(total.Bytes) / float64(total.Samples)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "compacted %d days: %d batches into day blobs of %d samples, %d bytes (%.3f B/sample; the batches took %d)\n",
				len(days), total.Sources, total.Samples, total.Bytes, perSample, total.SourceBytes)
			return nil
		},
	}
	af.add(cmd)
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "tenant id (required)")
	f.StringVar(&site, "site", "", "site id (required)")
	f.StringVar(&dayFlag, "day", "", "the day to compact, yyyy-mm-dd (UTC); default every day older than --older-than")
	f.DurationVar(&olderThan, "older-than", 26*time.Hour, "with no --day: compact days that ended at least this long ago, so late batches of the day have arrived")
	f.BoolVar(&asJSON, "json", false, "print one result per day as JSON")
	for _, n := range []string{"tenant", "site"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

// daysWithBatches lists the days of tenant/site that hold batch blobs and
// ended before cutoff, oldest first.
func daysWithBatches(ctx context.Context, store blob.Store, tenant, site string, cutoff time.Time) ([]time.Time, error) {
	names, err := store.List(ctx, tenant+"/"+site+"/")
	if err != nil {
		return nil, fmt.Errorf("listing %s/%s: %w", tenant, site, err)
	}
	seen := map[time.Time]bool{}
	for _, n := range names {
		parts := strings.Split(strings.TrimPrefix(n, tenant+"/"+site+"/"), "/")
		if len(parts) != 5 || !strings.HasSuffix(parts[4], ".sgb") {
			continue // tables, claims, day blobs
		}
		d, err := time.Parse("2006/01/02", strings.Join(parts[:3], "/"))
		if err != nil {
			continue
		}
		if !d.Add(24 * time.Hour).After(cutoff) {
			seen[d] = true
		}
	}
	if len(seen) == 0 && len(names) == 0 {
		return nil, errors.New("nothing archived for this tenant and site: check --tenant, --site and the store")
	}
	days := make([]time.Time, 0, len(seen))
	for d := range seen {
		days = append(days, d)
	}
	sort.Slice(days, func(i, j int) bool { return days[i].Before(days[j]) })
	return days, nil
}

func newArchiveExportCmd() *cobra.Command {
	var (
		af                    archiveFlags
		tenant, site, dayFlag string
		out                   string
		lookback              time.Duration
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write a day of a site as a Parquet file for Spark, Synapse or DuckDB",
		Long: `export writes the samples of --tenant/--site whose time is in one day (UTC)
as a Parquet file with one row per sample: point_id (the pseudonymous id),
point_hex, time (timestamp, ms), value, status. It reads the compacted day
blobs and the batches not compacted yet of that day and of the days
--lookback before it (a batch is filed under its first sample's hour, so one
filed the evening before can hold this day's first samples), keeps only this
day's samples, each once, and streams them to the file.`,
		Example: `  sightglass-ingest archive export --config /etc/sightglass-ingest/ingest.yaml --tenant acme --site s-7f3a --day 2026-11-30 --out s-7f3a-2026-11-30.parquet
  duckdb -c "SELECT point_hex, avg(value) FROM 's-7f3a-2026-11-30.parquet' GROUP BY 1"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := time.Parse(time.DateOnly, dayFlag)
			if err != nil {
				return fmt.Errorf("--day %q: want yyyy-mm-dd", dayFlag)
			}
			if lookback <= 0 {
				return fmt.Errorf("--lookback %v: want a positive duration such as 24h", lookback)
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			store, err := af.open(cmd.Context(), log)
			if err != nil {
				return err
			}
			cs, ok := store.(compact.Store)
			if !ok {
				return fmt.Errorf("this archive store cannot be read for export")
			}
			tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
			if err != nil {
				return fmt.Errorf("creating %s: %w", out, err)
			}
			defer os.Remove(tmp.Name())
			// Streamed: the day is merged in chunks written as they come,
			// so an export holds a row group, not the whole day.
			pw := export.NewParquetWriter(tmp)
			n, err := compact.New(cs, compact.Options{Logger: log, Lookback: lookback}).EachDay(cmd.Context(), tenant, site, d, pw.Write)
			if err == nil {
				err = pw.Close()
			}
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("exporting %s/%s on %s: %w", tenant, site, dayFlag, err)
			}
			if n == 0 {
				return fmt.Errorf("no samples of %s/%s on %s: check --tenant, --site and --day", tenant, site, dayFlag)
			}
			if err := os.Rename(tmp.Name(), out); err != nil {
				return err
			}
			fi, _ := os.Stat(out)
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %d samples of %s/%s on %s to %s (%d bytes)\n", n, tenant, site, dayFlag, out, fi.Size())
			return nil
		},
	}
	af.add(cmd)
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "tenant id (required)")
	f.StringVar(&site, "site", "", "site id (required)")
	f.StringVar(&dayFlag, "day", "", "the day, yyyy-mm-dd, UTC (required)")
	f.StringVar(&out, "out", "", "the Parquet file to write (required)")
	f.DurationVar(&lookback, "lookback", compact.DefaultLookback, "how long before the day to look for batches holding its samples (the longest batch an agent sends)")
	for _, n := range []string{"tenant", "site", "day", "out"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}
