package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

func newAgentsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "agents",
		Short:   "Manage the agents allowed to send data",
		Example: `  sightglass-ingest agents issue --tenant acme --site s1 --out ./agent-bundle`,
	}
	cmd.AddCommand(newAgentsIssueCmd())
	return cmd
}

// issueReport is what agents issue prints with --json.
type issueReport struct {
	Agent    string    `json:"agent"`
	Tenant   string    `json:"tenant"`
	Site     string    `json:"site"`
	Dir      string    `json:"dir"`
	NotAfter time.Time `json:"not_after"`
}

func newAgentsIssueCmd() *cobra.Command {
	var (
		caDir, tenant, site, out string
		validity                 time.Duration
		asJSON                   bool
	)
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a certificate bundle for a new agent",
		Long: `issue gives a new agent an id and a certificate for --tenant and --site and
writes its bundle to --out: agent.crt, agent.key (secret) and ca.crt. Copy the
directory to the agent's box. The ids are opaque: never put a building's name
or address in a site id.`,
		Example: `  sightglass-ingest agents issue --tenant acme --site s1 --out ./agent-bundle
  sightglass-ingest agents issue --ca-dir /var/lib/sightglass/ca \
      --tenant acme --site s1 --out /tmp/bundle --validity 720h --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if validity <= 0 {
				return fmt.Errorf("--validity %v must be positive, such as 2160h (90 days)", validity)
			}
			ca, err := pki.Load(caDir)
			if err != nil {
				return err
			}
			b, err := ca.NewAgentBundle(tenant, site, validity)
			if err != nil {
				return err
			}
			if err := b.WriteDir(out); err != nil {
				return err
			}
			notAfter, err := certNotAfter(b.CertPEM)
			if err != nil {
				return err
			}
			rep := issueReport{Agent: b.Identity.Agent, Tenant: tenant, Site: site, Dir: out, NotAfter: notAfter}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			fmt.Fprintln(cmd.OutOrStdout(), rep.Agent)
			fmt.Fprintf(cmd.ErrOrStderr(), "issued agent %s for tenant %s site %s, valid until %s; bundle in %s (%s, %s, %s)\n",
				rep.Agent, tenant, site, notAfter.Format(time.RFC3339), out, pki.AgentCertFile, pki.AgentKeyFile, pki.BundleCAFile)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&caDir, "ca-dir", defaultCADir, "directory of the CA (made by ca init)")
	f.StringVar(&tenant, "tenant", "", "tenant id (required)")
	f.StringVar(&site, "site", "", "site id, opaque (required)")
	f.StringVar(&out, "out", "", "directory to write the bundle to (required; must not hold one already)")
	f.DurationVar(&validity, "validity", 2160*time.Hour, "how long the certificate is valid")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	for _, name := range []string{"tenant", "site", "out"} {
		_ = cmd.MarkFlagRequired(name) // the flag exists: cannot fail
	}
	return cmd
}

func certNotAfter(certPEM []byte) (time.Time, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return time.Time{}, errors.New("reading issued certificate: no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading issued certificate: %w", err)
	}
	return c.NotAfter.UTC(), nil
}
