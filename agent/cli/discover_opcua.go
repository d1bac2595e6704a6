package cli

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
)

// newDiscoverOPCUACmd lists an OPC UA server's endpoints, browses its
// address space through the driver's read-only guard and writes a starter
// configuration.
func newDiscoverOPCUACmd() *cobra.Command {
	var s opcua.Settings
	var lim opcua.BrowseLimits
	var dataDir, out, name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "opcua",
		Short: "List an OPC UA server's endpoints and browse its variables (read-only)",
		Long: `opcua asks the server for its endpoints and the security policies, modes and
user tokens each accepts, then opens a session (Basic256Sha256 SignAndEncrypt
unless told otherwise) and browses from --start, following folders and objects
down to --depth levels and stopping after --max variables. For each variable
it reads the data type and the EngineeringUnits property. Only session, browse
and read requests are sent, through the driver's read-only guard.

The agent's OPC UA certificate is made in --pki-dir on first use (the same
place the agent uses, so the server's administrator trusts it once), and the
server's certificate is pinned there. With --out it writes a starter devices
section with the node ids, display paths and units of the numeric variables.`,
		Example: `  sightglass-agent discover opcua --endpoint opc.tcp://10.20.0.15:4840
  sightglass-agent discover opcua --endpoint opc.tcp://10.20.0.15:4840 --username reader --password-file /etc/sightglass/opcua.pass --out opcua-devices.yaml
  sightglass-agent discover opcua --endpoint opc.tcp://10.20.0.15:4840 --start "ns=2;s=Building" --depth 3 --max 500 --json
  sightglass-agent discover opcua --endpoint opc.tcp://127.0.0.1:4840 --security-policy None --security-mode None`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if s.Auth.Username != "" {
				s.Auth.Type = "username"
			}
			if s.Auth.Certificate != "" {
				s.Auth.Type = "certificate"
			}
			progress := cmd.ErrOrStderr()
			fmt.Fprintf(progress, "asking %s for its endpoints\n", s.Endpoint)
			r, err := opcua.Explore(cmd.Context(), opcua.ExploreOptions{
				Settings: s,
				DataDir:  dataDir,
				Limits:   lim,
				Logger:   slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelWarn})),
				Progress: func(found int) { fmt.Fprintf(progress, "browsing: %d variables so far\n", found) },
			})
			w := cmd.OutOrStdout()
			if r != nil && !asJSON {
				printEndpoints(w, r)
			}
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
			} else {
				for _, n := range r.Nodes {
					unit := ""
					if n.Unit != "" {
						unit = " [" + n.Unit + "]"
					}
					fmt.Fprintf(w, "  %-40s %-10s %s%s\n", n.NodeID, n.DataType, n.Path, unit)
				}
				fmt.Fprintf(w, "%d variables under %s\n", len(r.Nodes), startName(lim.Start))
			}
			if r.Truncated {
				fmt.Fprintf(progress, "stopped at --max %d variables: browse a narrower --start or raise --max\n", lim.Max)
			}
			if out != "" {
				if name == "" {
					name = deviceName(s.Endpoint)
				}
				if err := os.WriteFile(out, []byte(opcua.StarterConfig(name, s, r)), 0o644); err != nil {
					return fmt.Errorf("writing the starter config: %w", err)
				}
				fmt.Fprintf(progress, "wrote a starter config to %s: check it, then paste its devices into the agent config\n", out)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Endpoint, "endpoint", "", "the server's opc.tcp://host:port URL; required")
	f.StringVar(&s.SecurityPolicy, "security-policy", "Basic256Sha256", "Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss or None")
	f.StringVar(&s.SecurityMode, "security-mode", "SignAndEncrypt", "SignAndEncrypt, Sign or None (only with --security-policy None)")
	f.StringVar(&s.PKIDir, "pki-dir", "", "where the agent's OPC UA certificate and the pinned server certificates live (default <data-dir>/opcua)")
	f.StringVar(&dataDir, "data-dir", "/var/lib/sightglass", "the agent's data directory")
	f.StringVar(&s.ServerCertificate, "server-certificate", "", "the server's certificate (DER or PEM) to trust instead of pinning on first use")
	f.StringVar(&s.Auth.Username, "username", "", "sign in as this user (else anonymous)")
	f.StringVar(&s.Auth.PasswordFile, "password-file", "", "file holding the user's password")
	f.StringVar(&s.Auth.Certificate, "user-certificate", "", "sign in with this X.509 user certificate")
	f.StringVar(&s.Auth.PrivateKey, "user-key", "", "the user certificate's private key (mode 0600)")
	f.StringVar(&lim.Start, "start", "", "node to browse from (default the Objects folder, i=85)")
	f.IntVar(&lim.Depth, "depth", 6, "levels to follow below --start")
	f.IntVar(&lim.Max, "max", 5000, "stop after this many variables")
	f.DurationVar(&s.RequestTimeout, "timeout", 10*time.Second, "how long to wait for each answer")
	f.StringVar(&out, "out", "", "write a starter devices section to this file")
	f.StringVar(&name, "name", "", "device name in the starter config (default from the endpoint)")
	f.BoolVar(&asJSON, "json", false, "print endpoints and variables as JSON")
	cmd.MarkFlagRequired("endpoint")
	return cmd
}

func printEndpoints(w interface{ Write([]byte) (int, error) }, r *opcua.Report) {
	fmt.Fprintf(w, "%s offers %d endpoints:\n", r.Endpoint, len(r.Endpoints))
	for _, e := range r.Endpoints {
		fmt.Fprintf(w, "  %-22s %-15s level %-3d users: %s\n", e.SecurityPolicy, e.SecurityMode, e.SecurityLevel, strings.Join(e.UserTokens, ", "))
	}
}

func startName(start string) string {
	if start == "" {
		return "Objects (i=85)"
	}
	return start
}

// deviceName makes a device name from an endpoint's host and port.
func deviceName(endpoint string) string {
	host := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		host = u.Host
	}
	return "opcua-" + strings.NewReplacer(".", "-", ":", "-", "[", "", "]", "").Replace(host)
}
