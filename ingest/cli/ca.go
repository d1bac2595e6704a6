package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ca",
		Short:   "Manage the certificate authority agents authenticate with",
		Example: `  sightglass-ingest ca init --dir /var/lib/sightglass/ca --server-name ingest.example.com`,
	}
	cmd.AddCommand(newCAInitCmd())
	return cmd
}

// caInitReport is what ca init prints with --json.
type caInitReport struct {
	Dir         string    `json:"dir"`
	Files       []string  `json:"files"`
	ServerNames []string  `json:"server_names"`
	Subject     string    `json:"subject"`
	NotAfter    time.Time `json:"not_after"`
	SHA256      string    `json:"sha256"`
}

func newCAInitCmd() *cobra.Command {
	var (
		dir    string
		names  []string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new CA and the ingest's server certificate",
		Long: `init creates a certificate authority in --dir: a root (ca.crt, and its key
ca.key), an online issuing CA signed by the root (issuing.crt, issuing.key)
that signs agent certificates and CRLs, and a server certificate for the
ingest's TLS listener (server.crt, server.key) valid for the --server-name
names and addresses agents connect to. Agents pin and trust only the root.
The ingest never needs ca.key after init: move it to offline storage. It
refuses a directory that already holds a CA.`,
		Example: `  # demo: everything on this machine
  sightglass-ingest ca init

  # production: the names agents dial
  sightglass-ingest ca init --dir /var/lib/sightglass/ca \
      --server-name ingest.example.com --server-name 10.0.0.5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.Init(dir, pki.InitOptions{ServerNames: names})
			if err != nil {
				return err
			}
			if len(names) == 0 {
				names = pki.DefaultServerNames
			}
			cert := ca.Certificate()
			sum := sha256.Sum256(cert.Raw)
			rep := caInitReport{
				Dir:         dir,
				Files:       []string{pki.CACertFile, pki.CAKeyFile, pki.IssuingCertFile, pki.IssuingKeyFile, pki.ServerCertFile, pki.ServerKeyFile},
				ServerNames: names,
				Subject:     cert.Subject.CommonName,
				NotAfter:    cert.NotAfter.UTC(),
				SHA256:      hex.EncodeToString(sum[:]),
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(out, rep)
			}
			fmt.Fprintf(out, "created CA %q in %s, valid until %s\n", rep.Subject, dir, rep.NotAfter.Format(time.DateOnly))
			fmt.Fprintf(out, "  %s: the root certificate; agents pin and trust only it\n", filepath.Join(dir, pki.CACertFile))
			fmt.Fprintf(out, "  %s: the root key: back it up and move it offline, the ingest does not need it\n", filepath.Join(dir, pki.CAKeyFile))
			fmt.Fprintf(out, "  %s, %s: the online issuing CA that signs agent certificates and CRLs\n", filepath.Join(dir, pki.IssuingCertFile), filepath.Join(dir, pki.IssuingKeyFile))
			fmt.Fprintf(out, "  %s: the ingest's server certificate, for %v\n", filepath.Join(dir, pki.ServerCertFile), names)
			fmt.Fprintf(out, "CA certificate SHA-256: %s\n", rep.SHA256)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultCADir, "directory to create the CA in")
	cmd.Flags().StringArrayVar(&names, "server-name", nil, "DNS name or IP address agents reach the ingest at (repeatable; default localhost and loopback)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was made as JSON")
	return cmd
}
