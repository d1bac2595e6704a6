package cli

import (
	"fmt"
	"log/slog"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read and verify the append-only, hash-chained audit log",
		Example: `  sightglass-ingest audit list --last 50
  sightglass-ingest audit verify`,
	}
	cmd.AddCommand(newAuditListCmd(), newAuditVerifyCmd())
	return cmd
}

func newAuditListCmd() *cobra.Command {
	var rf registryFlags
	var last int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Print audit entries: enrollments, renewals, revocations, refused batches",
		Example: `  sightglass-ingest audit list --last 20
  sightglass-ingest audit list --config /etc/sightglass-ingest/ingest.yaml --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if last <= 0 {
				return fmt.Errorf("--last %d: want at least 1", last)
			}
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			entries, err := db.AuditRecent(cmd.Context(), 0, last)
			if err != nil {
				return err
			}
			slices.Reverse(entries) // oldest first, as a log reads
			out := cmd.OutOrStdout()
			if asJSON {
				for _, e := range entries {
					if err := writeJSON(out, e); err != nil {
						return err
					}
				}
				return nil
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tSUBJECT\tDETAIL")
			for _, e := range entries {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.At.Format(time.RFC3339), e.Actor, e.Action, e.Subject, e.Detail)
			}
			return tw.Flush()
		},
	}
	rf.add(cmd, false)
	cmd.Flags().IntVar(&last, "last", 100, "print the newest N entries")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per entry")
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	var rf registryFlags
	var asJSON bool
	var anchors int
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain, and its anchors in the archive",
		Long: `verify recomputes the hash of every audit entry from the one before it. Any
entry changed, removed or reordered breaks the chain from there on, and verify
names the first entry that does not check out and exits non-zero.

The chain alone cannot show the newest entries deleted, or the whole chain
rewritten with fresh hashes, by someone who can write the database. serve
therefore anchors the newest entry's number and hash in the archive every few
minutes and at shutdown (create-if-absent blobs under _audit/). With --config,
verify reads the archive the configuration names and checks every anchor (or
the newest --anchors of them, quicker on a long history but blind to a
rewrite older than those): "entries after N missing" or "entry N differs from
its anchor" means the log was cut or rewritten. Without --config only the
chain is checked, and verify says so.`,
		Example: `  sightglass-ingest audit verify --config /etc/sightglass-ingest/ingest.yaml
  sightglass-ingest audit verify --db /var/lib/sightglass-ingest/ingest.db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			db, err := rf.open(ctx)
			if err != nil {
				return err
			}
			defer db.Close()
			out := cmd.OutOrStdout()
			if rf.config == "" {
				n, err := db.VerifyAudit(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(out, store.AnchorCheck{Entries: n})
				}
				fmt.Fprintf(out, "audit log ok: %d entries, hash chain intact (anchors not checked: give --config to reach the archive; without them deleted newest entries go unnoticed)\n", n)
				return nil
			}
			if anchors < 0 {
				return fmt.Errorf("--anchors %d: want 0 (all) or how many of the newest to check", anchors)
			}
			cfg, err := config.LoadFile(rf.config)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
			archive, name, err := openStore(ctx, cfg, log)
			if err != nil {
				return fmt.Errorf("opening the archive to check the audit anchors: %w", err)
			}
			c, err := db.VerifyAuditAnchors(ctx, archive, anchors)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(out, c)
			}
			if c.Anchors == 0 {
				fmt.Fprintf(out, "audit log ok: %d entries, hash chain intact; no anchors in %s yet (serve writes them every few minutes and at shutdown)\n", c.Entries, name)
				return nil
			}
			fmt.Fprintf(out, "audit log ok: %d entries, hash chain intact; %d anchors in %s agree (newest: entry %d)\n", c.Entries, c.Anchors, name, c.Newest)
			return nil
		},
	}
	rf.add(cmd, false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().IntVar(&anchors, "anchors", 0, "check only this many of the newest anchors (0: all)")
	return cmd
}
