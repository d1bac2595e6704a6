package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/enroll"
)

func newEnrollCmd() *cobra.Command {
	var (
		path, token, ingest, certDir string
		asJSON                       bool
	)
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll this box with the ingest using a one-time token",
		Long: `enroll makes the agent's private key on this box (it never leaves it), checks
that the ingest presents the CA the token was made for, sends a certificate
request with the token, and writes agent.crt, agent.key (0600) and ca.crt into
the certificate directory (uplink.cert_dir of --config, or --cert-dir). After
that 'sightglass-agent run' connects with the certificate and renews it on its
own before it expires.

Get the token from the ingest's operator: sightglass-ingest enroll create.`,
		Example: `  sightglass-agent enroll --config /etc/sightglass/agent.yaml --token sge1.… 
  sightglass-agent enroll --ingest https://ingest.example.com:8443 --cert-dir /var/lib/sightglass/cert --token sge1.… --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := enroll.Options{Token: token, Ingest: ingest, CertDir: certDir}
			if path != "" {
				cfg, err := config.Load(path)
				if err != nil {
					return err
				}
				if o.Ingest == "" {
					o.Ingest = cfg.Uplink.URL
				}
				if o.CertDir == "" {
					o.CertDir = cfg.Uplink.CertDir
				}
				o.LocalAddr, o.Timeout = cfg.Uplink.LocalAddress, cfg.Uplink.Timeout
				// Bound to the uplink NIC, as the agent's own uplink is.
				o.Interface = cfg.Network.Uplink.Interface
			}
			if o.Ingest == "" || o.CertDir == "" {
				return errors.New("say where the ingest is and where the certificate goes: --config FILE, or --ingest URL and --cert-dir DIR")
			}
			if token == "" {
				return errors.New("--token is required: ask the ingest's operator (sightglass-ingest enroll create)")
			}
			res, err := enroll.Enroll(cmd.Context(), o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			fmt.Fprintf(out, "enrolled: agent %s, tenant %s, site %s\ncertificate valid until %s (renewed automatically), in %s\ningest CA pinned: %s\n",
				res.Identity.Agent, res.Identity.Tenant, res.Identity.Site, res.NotAfter.Local().Format(time.RFC1123), res.CertDir, res.CAFingerprint)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "config", "c", "", "the agent's configuration file (for uplink.url, cert_dir and local_address)")
	f.StringVar(&token, "token", "", "the one-time enrollment token (sge1.…)")
	f.StringVar(&ingest, "ingest", "", "the ingest's URL (default: uplink.url of --config)")
	f.StringVar(&certDir, "cert-dir", "", "where to write the certificate (default: uplink.cert_dir of --config)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
