package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

func newAgentsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "Manage the agents allowed to send data",
		Example: `  sightglass-ingest agents list
  sightglass-ingest agents revoke ag-3k2j9x0q1w2e --reason "box replaced"
  sightglass-ingest agents status 5f1c…   # by certificate serial`,
	}
	cmd.AddCommand(newAgentsIssueCmd(), newAgentsListCmd(), newAgentsStatusCmd(), newAgentsRevokeCmd())
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

// maxIssueValidity caps `agents issue --validity` as the ingest's config
// caps agent_validity: past 90 days a lost box keeps working too long.
const maxIssueValidity = config.MaxAgentValidity

func newAgentsIssueCmd() *cobra.Command {
	var (
		rf                registryFlags
		tenant, site, out string
		validity          time.Duration
		asJSON            bool
	)
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a certificate bundle for a new agent",
		Long: `issue gives a new agent an id and a certificate for --tenant and --site and
writes its bundle to --out: agent.crt, agent.key (secret) and ca.crt. Copy the
directory to the agent's box. The ids are opaque: never put a building's name
or address in a site id. The agent is recorded in the registry, which the
ingest checks at every connection.

Prefer 'sightglass-ingest enroll create' and 'sightglass-agent enroll': then
the agent makes its own key and it never leaves the box. issue is for
air-gapped set-ups and tests.`,
		Example: `  sightglass-ingest agents issue --tenant acme --site s1 --out ./agent-bundle
  sightglass-ingest agents issue --ca-dir /var/lib/sightglass/ca \
      --tenant acme --site s1 --out /tmp/bundle --validity 720h --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if validity <= 0 || validity > maxIssueValidity {
				return fmt.Errorf("--validity %v is out of range: want more than 0 and at most %v (90 days, the ingest's cap on agent_validity): a lost box works as long as its certificate, and the agent renews its own before it expires", validity, maxIssueValidity)
			}
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			ca, err := pki.Load(rf.caDir)
			if err != nil {
				return err
			}
			b, err := ca.NewAgentBundle(tenant, site, validity)
			if err != nil {
				return err
			}
			leaf, err := parseCertPEM(b.CertPEM)
			if err != nil {
				return err
			}
			notAfter := leaf.NotAfter.UTC()
			if err := b.WriteDir(out); err != nil {
				return err
			}
			if err := db.AddAgent(cmd.Context(), store.Agent{ID: b.Identity.Agent, Tenant: tenant, Site: site},
				store.Cert{Serial: pki.SerialHex(leaf), AgentID: b.Identity.Agent, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}); err != nil {
				return err
			}
			if _, err := db.Audit(cmd.Context(), "cli", "issue", b.Identity.Agent, fmt.Sprintf("tenant=%s site=%s serial=%s not_after=%s", tenant, site, pki.SerialHex(leaf), notAfter.Format(time.RFC3339))); err != nil {
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
	rf.add(cmd, true)
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "tenant id (required)")
	f.StringVar(&site, "site", "", "site id, opaque (required)")
	f.StringVar(&out, "out", "", "directory to write the bundle to (required; must not hold one already)")
	f.DurationVar(&validity, "validity", maxIssueValidity, "how long the certificate is valid, at most 2160h (90 days)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	for _, name := range []string{"tenant", "site", "out"} {
		_ = cmd.MarkFlagRequired(name) // the flag exists: cannot fail
	}
	return cmd
}

func parseCertPEM(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, errors.New("reading issued certificate: no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading issued certificate: %w", err)
	}
	return c, nil
}

// agentReport is one agent in agents list and agents revoke --json.
type agentReport struct {
	Agent        string    `json:"agent"`
	Tenant       string    `json:"tenant"`
	Site         string    `json:"site"`
	EnrolledAt   time.Time `json:"enrolled_at"`
	RevokedAt    time.Time `json:"revoked_at,omitzero"`
	RevokeReason string    `json:"revoke_reason,omitempty"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"` // of the newest certificate
	// LastUpload and HighWaterSeq are from the newest batch the hot store
	// folded in: when it was stored and the highest sequence number seen.
	// Batches are deduplicated by (agent, seq) through the archive's claims;
	// the high-water mark shows how far an agent got.
	LastUpload   time.Time `json:"last_upload,omitzero"`
	HighWaterSeq uint64    `json:"high_water_seq,omitempty"`
}

func newAgentsListCmd() *cobra.Command {
	var rf registryFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List enrolled agents, their newest certificate and revocations",
		Example: `  sightglass-ingest agents list
  sightglass-ingest agents list --config /etc/sightglass-ingest/ingest.yaml --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			agents, err := db.Agents(cmd.Context())
			if err != nil {
				return err
			}
			healths, err := db.AgentHealths(cmd.Context())
			if err != nil {
				return err
			}
			health := make(map[string]store.AgentHealth, len(healths))
			for _, h := range healths {
				health[h.AgentID] = h
			}
			reports := make([]agentReport, 0, len(agents))
			for _, a := range agents {
				r := agentReport{Agent: a.ID, Tenant: a.Tenant, Site: a.Site, EnrolledAt: a.EnrolledAt, RevokedAt: a.RevokedAt, RevokeReason: a.RevokeReason,
					LastUpload: health[a.ID].LastUpload, HighWaterSeq: health[a.ID].LastSeq}
				certs, err := db.Certs(cmd.Context(), a.ID)
				if err != nil {
					return err
				}
				if len(certs) > 0 {
					r.CertNotAfter = certs[0].NotAfter
				}
				reports = append(reports, r)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(out, reports)
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "AGENT\tTENANT\tSITE\tENROLLED\tCERT EXPIRES\tLAST UPLOAD\tHIGH-WATER SEQ\tSTATE")
			for _, r := range reports {
				state := "active"
				if !r.RevokedAt.IsZero() {
					state = "revoked " + r.RevokedAt.Format(time.RFC3339) + " (" + r.RevokeReason + ")"
				} else if time.Now().After(r.CertNotAfter) {
					state = "expired"
				}
				upload, hw := "never", "-"
				if !r.LastUpload.IsZero() {
					upload, hw = r.LastUpload.Format(time.RFC3339), strconv.FormatUint(r.HighWaterSeq, 10)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Agent, r.Tenant, r.Site, r.EnrolledAt.Format(time.RFC3339), r.CertNotAfter.Format(time.RFC3339), upload, hw, state)
			}
			return tw.Flush()
		},
	}
	rf.add(cmd, false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newAgentsStatusCmd() *cobra.Command {
	var rf registryFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status SERIAL",
		Short: "Say whether a certificate is good, revoked, expired or unknown",
		Long: `status looks a certificate up by its serial number (hex, as openssl x509 -serial
prints it, with or without colons) and says good, revoked, expired or unknown.
It exits 0 only for good.`,
		Example: `  sightglass-ingest agents status 5F1C2A...
  sightglass-ingest agents status "$(openssl x509 -in agent.crt -noout -serial | cut -d= -f2)" --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			serial := strings.ToLower(strings.TrimLeft(strings.ReplaceAll(args[0], ":", ""), "0"))
			st, c, a, err := db.CertStatus(cmd.Context(), serial)
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), map[string]any{"serial": serial, "status": st, "agent": a.ID, "not_after": c.NotAfter}); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), st)
				if st != store.CertUnknown {
					fmt.Fprintf(cmd.ErrOrStderr(), "certificate %s of agent %s (%s/%s), valid until %s\n", serial, a.ID, a.Tenant, a.Site, c.NotAfter.Format(time.RFC3339))
				}
			}
			if st != store.CertGood {
				return fmt.Errorf("certificate %s is %s", serial, st)
			}
			return nil
		},
	}
	rf.add(cmd, false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newAgentsRevokeCmd() *cobra.Command {
	var rf registryFlags
	var reason string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "revoke AGENT",
		Short: "Revoke an agent: refused at once, everywhere, and it cannot renew",
		Long: `revoke marks the agent revoked in the registry. Every ingest replica checks
the registry at each TLS handshake and each request, so the agent is refused
from the next request on, including on connections already open. Its
certificates appear in the CRL at /v1/crl until they expire.`,
		Example: `  sightglass-ingest agents revoke ag-3k2j9x0q1w2e --reason "box stolen"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return errors.New("--reason is required: the audit log records why")
			}
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			a, err := db.Revoke(cmd.Context(), args[0], reason)
			if err != nil {
				return fmt.Errorf("%w (list agents with `sightglass-ingest agents list`)", err)
			}
			if _, err := db.Audit(cmd.Context(), "cli", "revoke", a.ID, "reason="+reason); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), agentReport{Agent: a.ID, Tenant: a.Tenant, Site: a.Site, EnrolledAt: a.EnrolledAt, RevokedAt: a.RevokedAt, RevokeReason: a.RevokeReason})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s (%s/%s) at %s: %s\n", a.ID, a.Tenant, a.Site, a.RevokedAt.Format(time.RFC3339), a.RevokeReason)
			return nil
		},
	}
	rf.add(cmd, false)
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; goes to the audit log)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
