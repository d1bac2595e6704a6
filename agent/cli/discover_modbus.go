package cli

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
)

// newDiscoverModbusCmd probes the unit ids behind one Modbus TCP address,
// reading only, and writes a starter configuration.
func newDiscoverModbusCmd() *cobra.Command {
	var host, units, local, out string
	var timeout time.Duration
	var rate float64
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "modbus",
		Short: "Probe the unit ids of a Modbus TCP device or gateway (read-only)",
		Long: `modbus asks each unit id for its identification (function 43/14) and reads
one register or bit of each table at address 0 (functions 1-4), one request at a
time and at most --rate per second, through the driver's read-only guard. It
prints what answered, names a shipped profile when the identification matches
one, and with --out writes a starter devices section for the agent config.`,
		Example: `  sightglass-agent discover modbus --host 10.20.0.40
  sightglass-agent discover modbus --host 10.20.0.40:502 --units 1-32 --out modbus-devices.yaml
  sightglass-agent discover modbus --host 10.20.0.40 --units 1,2,10-12 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, err := modbusAddress(host)
			if err != nil {
				return err
			}
			ids, err := modbus.ParseUnits(units)
			if err != nil {
				return fmt.Errorf("--units: %w", err)
			}
			if rate <= 0 || rate > 1000 {
				return fmt.Errorf("--rate %v: want requests per second, above 0 and at most 1000", rate)
			}
			progress := cmd.ErrOrStderr()
			reports, err := modbus.Scan(cmd.Context(), modbus.ScanOptions{
				Address: addr, LocalAddr: local, Units: ids, Timeout: timeout, Rate: rate,
				Logger: slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelWarn})),
				Progress: func(done, total int, u modbus.UnitReport) {
					if u.Present || done == total || done%16 == 0 {
						fmt.Fprintf(progress, "probed %d/%d unit ids (unit %d: %s)\n", done, total, u.Unit, presence(u))
					}
				},
			})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(reports); err != nil {
					return err
				}
			} else {
				found := 0
				for _, r := range reports {
					if !r.Present {
						continue
					}
					found++
					fmt.Fprintf(w, "unit %d:", r.Unit)
					if r.Identity != nil {
						fmt.Fprintf(w, " %s", r.Identity.String())
					}
					if r.Profile != "" {
						fmt.Fprintf(w, " (profile %s)", r.Profile)
					}
					if r.SameAs != 0 {
						fmt.Fprintf(w, " (answers exactly like unit %d)", r.SameAs)
					}
					fmt.Fprintln(w)
					for _, p := range r.Probes {
						if p.Value != nil {
							fmt.Fprintf(w, "  %-14s = %d\n", p.Ref, *p.Value)
						} else {
							fmt.Fprintf(w, "  %-14s exception %d\n", p.Ref, p.Exception)
						}
					}
				}
				fmt.Fprintf(w, "%d of %d unit ids answered at %s\n", found, len(ids), addr)
				if modbus.IgnoresUnitID(reports) {
					fmt.Fprintln(w, "every unit id answered alike: the device ignores the unit id; poll it once (unit 1, or the first that answered)")
				}
			}
			if out != "" {
				h, _, _ := net.SplitHostPort(addr)
				// Device names take letters, digits, '.', '_' and '-'.
				name := strings.Map(func(r rune) rune {
					if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
						return r
					}
					return '-'
				}, h)
				cfg := modbus.StarterConfig(addr, "modbus-"+name, reports)
				if err := os.WriteFile(out, []byte(cfg), 0o644); err != nil {
					return fmt.Errorf("writing the starter config: %w", err)
				}
				fmt.Fprintf(progress, "wrote a starter config to %s: check it, then paste its devices into the agent config\n", out)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&host, "host", "", "device or gateway, host or host:port (port 502 if none); required")
	f.StringVar(&units, "units", "1-247", "unit ids to probe: numbers and ranges, e.g. 1-247 or 1,3,10-12")
	f.StringVar(&local, "local-address", "", "local IP to dial from (the control NIC)")
	f.DurationVar(&timeout, "timeout", 500*time.Millisecond, "how long to wait for each answer")
	f.Float64Var(&rate, "rate", 20, "at most this many requests per second")
	f.StringVar(&out, "out", "", "write a starter devices section to this file")
	f.BoolVar(&asJSON, "json", false, "print what answered as JSON")
	cmd.MarkFlagRequired("host")
	return cmd
}

func presence(u modbus.UnitReport) string {
	switch {
	case u.Profile != "":
		return "answered, profile " + u.Profile
	case u.Present:
		return "answered"
	}
	return "no answer"
}

// modbusAddress adds the default port to a host.
func modbusAddress(host string) (string, error) {
	host = strings.TrimSpace(host)
	if host == "" {
		return "", fmt.Errorf("--host: required: the device's or gateway's address")
	}
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host, nil
	}
	return net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(modbus.DefaultPort)), nil
}
