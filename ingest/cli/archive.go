package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// batchExt is the extension blob.BatchName gives batches.
const batchExt = ".sgb"

func newArchiveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "archive",
		Short: "Read, compact and export the archive of stored batches",
		Example: `  sightglass-ingest archive cat acme/s1/
  sightglass-ingest archive compact --tenant acme --site s1
  sightglass-ingest archive export --tenant acme --site s1 --day 2026-11-30 --out day.parquet`,
	}
	cmd.AddCommand(newArchiveCatCmd(), newArchiveCompactCmd(), newArchiveExportCmd())
	return cmd
}

// sampleLine is one line of archive cat output.
type sampleLine struct {
	Point string `json:"point"`
	Time  string `json:"time"`
	// Value is null when it is NaN or infinite, which JSON cannot carry.
	Value  *float64 `json:"value"`
	Status string   `json:"status"`
}

// headerLine is the line archive cat --header prints before a batch's samples.
type headerLine struct {
	Batch   string     `json:"batch"`
	Agent   string     `json:"agent"`
	Site    string     `json:"site"`
	Seq     uint64     `json:"seq"`
	SentAt  string     `json:"sent_at"`
	Start   string     `json:"start"`
	End     string     `json:"end"`
	Points  uint32     `json:"points"`
	Samples uint32     `json:"samples"`
	Health  healthJSON `json:"health"`
}

// healthJSON is batch.Health with snake_case keys.
type healthJSON struct {
	BufferSamples  uint64 `json:"buffer_samples"`
	BufferBytes    uint64 `json:"buffer_bytes"`
	DroppedSamples uint64 `json:"dropped_samples"`
	PollErrors     uint64 `json:"poll_errors"`
	DevicesUp      uint32 `json:"devices_up"`
	DevicesDown    uint32 `json:"devices_down"`
	UptimeSeconds  uint64 `json:"uptime_seconds"`
}

func newArchiveCatCmd() *cobra.Command {
	var (
		storeDir, configPath string
		header               bool
	)
	cmd := &cobra.Command{
		Use:   "cat [PATH...]",
		Short: "Print archived batches as JSON lines",
		Long: `cat decodes archived batches and prints one JSON line per sample:
{"point":"<16 hex digits>","time":"<RFC 3339, UTC>","value":21.5,"status":"ok"}

Each PATH is relative to the store root: a batch (.sgb), or a folder or name
prefix under which every batch is printed; no PATH prints the whole archive.
A batch that cannot be decoded is reported on stderr and skipped; the exit
status is then non-zero.`,
		Example: `  sightglass-ingest archive cat acme/s1/
  sightglass-ingest archive cat --store-dir /srv/archive --header acme/s1/2026/03/01/
  sightglass-ingest archive cat acme/s1/2026/03/01/12/ag-x2k4p7m9q3ab-00000000000000000042.sgb | jq .value`,
		RunE: func(cmd *cobra.Command, paths []string) error {
			var store blob.Store
			root := ""
			if configPath != "" {
				// The ingest's own store, directory or Azure.
				af := archiveFlags{config: configPath}
				s, err := af.open(cmd.Context(), slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn})))
				if err != nil {
					return err
				}
				store = s
				if d, ok := s.(*blob.Dir); ok {
					root = d.Root()
				}
			} else {
				if fi, err := os.Stat(storeDir); err != nil || !fi.IsDir() {
					return fmt.Errorf("opening archive: %s is not a directory: pass --store-dir with the store.dir of the ingest's config, or --config", storeDir)
				}
				d, err := blob.OpenDir(storeDir)
				if err != nil {
					return err
				}
				store, root = d, d.Root()
			}
			if len(paths) == 0 {
				paths = []string{""}
			}
			c := &catter{store: store, root: root, header: header, errOut: cmd.ErrOrStderr(), tables: pointtable.New(store, nil)}
			w := bufio.NewWriter(cmd.OutOrStdout())
			c.out = json.NewEncoder(w)
			err := c.run(cmd.Context(), paths)
			if ferr := w.Flush(); err == nil && ferr != nil {
				err = fmt.Errorf("writing output: %w", ferr)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&storeDir, "store-dir", defaultStoreDir, "root of a directory archive (store.dir in the ingest's config)")
	cmd.Flags().StringVar(&configPath, "config", "", "the ingest's configuration file: read its store, directory or Azure (overrides --store-dir)")
	cmd.Flags().BoolVar(&header, "header", false, "print each batch's header as a JSON line before its samples")
	return cmd
}

type catter struct {
	store  blob.Store
	root   string // the directory of a directory archive, else empty
	header bool
	out    *json.Encoder
	errOut io.Writer
	tables *pointtable.Archive
}

func (c *catter) run(ctx context.Context, paths []string) error {
	var names []string
	seen := map[string]bool{}
	for _, p := range paths {
		found, err := c.expand(ctx, p)
		if err != nil {
			return err
		}
		for _, n := range found {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	failed := 0
	for _, name := range names {
		if err := c.cat(ctx, name); err != nil {
			var werr *writeError
			if errors.As(err, &werr) {
				return err
			}
			fmt.Fprintf(c.errOut, "archive cat: %s: %v\n", name, err)
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d batches could not be read (see above)", failed, len(names))
	}
	return nil
}

// expand turns a PATH argument into the batch names it stands for.
func (c *catter) expand(ctx context.Context, p string) ([]string, error) {
	name := p
	if filepath.IsAbs(p) {
		if c.root == "" {
			return nil, fmt.Errorf("%s: give a blob name prefix such as acme/s1/2026/, not a file path", p)
		}
		rel, err := filepath.Rel(c.root, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			return nil, fmt.Errorf("%s is outside the archive %s: give a path relative to it", p, c.root)
		}
		name = rel
	}
	name = filepath.ToSlash(filepath.Clean(name))
	if name == "." {
		name = ""
	}
	if strings.HasSuffix(name, batchExt) {
		return []string{name}, nil
	}
	prefix := name
	if prefix != "" && (strings.HasSuffix(p, "/") || (c.root != "" && isDir(filepath.Join(c.root, filepath.FromSlash(name))))) {
		prefix += "/"
	}
	all, err := c.store.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("listing %q: %w", p, err)
	}
	var names []string
	for _, n := range all {
		if strings.HasSuffix(n, batchExt) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		where := c.root
		if s, ok := c.store.(fmt.Stringer); ok && where == "" {
			where = s.String()
		}
		return nil, fmt.Errorf("no batches under %q in %s", p, where)
	}
	return names, nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// writeError is a failure to write the output, which ends the command
// rather than skipping a batch.
type writeError struct{ err error }

func (e *writeError) Error() string { return "writing output: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

func (c *catter) cat(ctx context.Context, name string) error {
	data, err := c.store.Get(ctx, name)
	if err != nil {
		return err
	}
	parts := strings.SplitN(name, "/", 3)
	if len(parts) < 3 {
		return errors.New("not under {tenant}/{site}/, so its point table cannot be found")
	}
	tenant, site := parts[0], parts[1]
	// A batch resolves its table in its own site's folder only.
	b, err := batch.Decode(data, c.tables.Resolver(ctx, tenant, site), batch.Limits{})
	if err != nil {
		return err
	}
	if c.header {
		if err := c.out.Encode(headerLine{
			Batch: name, Agent: b.AgentID, Site: b.Site, Seq: b.Seq,
			SentAt: formatMillis(b.SentAt), Start: formatMillis(b.Start), End: formatMillis(b.End),
			Points: b.Points, Samples: b.Header.Samples, Health: healthJSON(b.Health),
		}); err != nil {
			return &writeError{err}
		}
	}
	for _, s := range b.Samples {
		line := sampleLine{Point: fmt.Sprintf("%016x", s.PointID), Time: formatMillis(s.Time), Status: s.Status.String()}
		if v := s.Value; !math.IsNaN(v) && !math.IsInf(v, 0) {
			line.Value = &v
		}
		if err := c.out.Encode(line); err != nil {
			return &writeError{err}
		}
	}
	return nil
}

func formatMillis(ms int64) string {
	return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
}
