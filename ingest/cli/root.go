// Package cli is the sightglass-ingest command line: one cobra command per
// file, the tree built explicitly by New so that tests can run any command
// in-process with SetArgs, SetOut and SetErr.
package cli

import (
	"encoding/json"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"
)

// defaultDataDir holds the CA and the archive when no flag or config says
// otherwise, so the demo runs with no arguments at all.
const defaultDataDir = "sightglass-data"

var (
	defaultCADir    = filepath.Join(defaultDataDir, "ca")
	defaultStoreDir = filepath.Join(defaultDataDir, "archive")
)

// New returns the root command. Run it with ExecuteContext; the context
// ends serve (main derives it from SIGINT and SIGTERM).
func New() *cobra.Command {
	root := &cobra.Command{
		Use:   "sightglass-ingest",
		Short: "Receive building data from Sightglass agents and archive it",
		Long: `sightglass-ingest is the cloud side of Sightglass: it runs the certificate
authority that agents authenticate with, accepts their batches over mutual
TLS, checks every batch in full and archives it exactly once.`,
		Example: `  sightglass-ingest ca init
  sightglass-ingest agents issue --tenant acme --site s1 --out ./agent-bundle
  sightglass-ingest serve
  sightglass-ingest archive cat acme/s1/`,
		SilenceUsage: true,
	}
	root.AddCommand(newServeCmd(), newCACmd(), newEnrollCmd(), newAgentsCmd(), newAuditCmd(), newArchiveCmd(), newUsersCmd(), newSitesCmd(), newStoreCmd())
	return root
}

// writeJSON prints v as one line of JSON, for --json output.
func writeJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
