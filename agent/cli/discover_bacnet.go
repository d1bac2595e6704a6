package cli

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	bacnetdrv "github.com/sightglass-bms/sightglass/agent/driver/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/bacnet"
)

// newDiscoverBACnetCmd finds BACnet devices with Who-Is and reads their
// objects, reading only, and writes a starter configuration.
func newDiscoverBACnetCmd() *cobra.Command {
	var local, broadcast, bbmd, address, out string
	var network int
	var low, high int
	var wait, timeout, perDevice time.Duration
	var rate float64
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "bacnet",
		Short: "Find BACnet/IP devices and their objects (read-only)",
		Long: `bacnet broadcasts Who-Is (to --broadcast, or through --bbmd as a foreign
device), then reads each device's object list (element by element when it is
too long for one answer), its objects' names, descriptions and units, and which
Trend Logs log them. Requests go through the driver's read-only guard, at most
--rate per second across all devices; a device that stops answering is
reported and skipped after --per-device. It prints a table, and with --out
writes a starter devices section for the agent config.`,
		Example: `  sightglass-agent discover bacnet --local-address 192.168.10.5:47808 --broadcast 192.168.10.255:47808
  sightglass-agent discover bacnet --local-address 192.168.10.5:47808 --bbmd 10.1.0.1:47808 --network 5 --out bacnet-devices.yaml
  sightglass-agent discover bacnet --local-address 192.168.10.5:47808 --address 192.168.10.40 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if local == "" {
				return fmt.Errorf("--local-address: required: the control NIC's IP:port, e.g. 192.168.10.5:47808")
			}
			if broadcast == "" && bbmd == "" && address == "" {
				return fmt.Errorf("--broadcast: required (the control subnet's broadcast address, e.g. 192.168.10.255:47808), unless --bbmd or --address is given")
			}
			if network < 0 || network > bacnet.GlobalNetwork {
				return fmt.Errorf("--network %d: want 0 (this subnet), 1..65534 (one remote network) or 65535 (all)", network)
			}
			if low > high || low < -1 || high > bacnet.MaxInstance-1 {
				return fmt.Errorf("--low %d --high %d: want an instance range within 0..4194302", low, high)
			}
			if rate <= 0 || rate > 1000 {
				return fmt.Errorf("--rate %v: want requests per second, above 0 and at most 1000", rate)
			}
			opts := bacnetdrv.ScanOptions{
				Client:  bacnet.Config{Local: local, Broadcast: broadcast, BBMD: bbmd, Timeout: timeout},
				Network: uint16(network), Low: low, High: high, Wait: wait, Rate: rate, PerDevice: perDevice,
			}
			if low < 0 {
				opts.Low, opts.High = -1, -1
			}
			if address != "" {
				a, err := bacnet.ParseAddress(address)
				if err != nil {
					return fmt.Errorf("--address: %w", err)
				}
				opts.To = &a
			}
			progress := cmd.ErrOrStderr()
			opts.Logger = slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
			opts.Progress = func(done, total int, r bacnetdrv.DeviceReport) {
				status := fmt.Sprintf("%d objects", len(r.Objects))
				if r.Err != "" {
					status += ", error: " + r.Err
				}
				fmt.Fprintf(progress, "read %d/%d devices (device %d: %s)\n", done, total, r.Instance, status)
			}
			fmt.Fprintf(progress, "asking who is there for %s...\n", wait)
			reports, err := bacnetdrv.Scan(cmd.Context(), opts)
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
			} else if err := printBACnetTable(w, reports); err != nil {
				return err
			}
			if out != "" {
				cfg, err := bacnetdrv.StarterConfig(reports, local, broadcast)
				if err != nil {
					return fmt.Errorf("rendering the starter config: %w", err)
				}
				if err := os.WriteFile(out, []byte(cfg), 0o644); err != nil {
					return fmt.Errorf("writing the starter config: %w", err)
				}
				fmt.Fprintf(progress, "wrote a starter config to %s: check it, then paste its devices into the agent config\n", out)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&local, "local-address", "", "the control NIC's address to bind, IP:port (e.g. 192.168.10.5:47808); required")
	f.StringVar(&broadcast, "broadcast", "", "the control subnet's broadcast address, IP:port (no default: a limited broadcast could leave on the uplink)")
	f.StringVar(&bbmd, "bbmd", "", "register as a foreign device with this BBMD and discover across subnets")
	f.StringVar(&address, "address", "", "ask one device or router directly (IP[:port]) instead of broadcasting")
	f.IntVar(&network, "network", bacnet.GlobalNetwork, "Who-Is on this network: 0 this subnet, N one remote network, 65535 all")
	f.IntVar(&low, "low", -1, "lowest device instance to ask for (-1: all)")
	f.IntVar(&high, "high", bacnet.MaxInstance-1, "highest device instance to ask for")
	f.DurationVar(&wait, "wait", 3*time.Second, "how long to collect I-Am answers")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for each answer")
	f.DurationVar(&perDevice, "per-device", 2*time.Minute, "give up on a device after this long")
	f.Float64Var(&rate, "rate", 20, "at most this many requests per second, all devices together")
	f.StringVar(&out, "out", "", "write a starter devices section to this file")
	f.BoolVar(&asJSON, "json", false, "print what was found as JSON")
	return cmd
}

func printBACnetTable(w interface{ Write([]byte) (int, error) }, reports []bacnetdrv.DeviceReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tADDRESS\tNAME\tOBJECT\tOBJECT NAME\tUNIT\tTREND LOG")
	for _, r := range reports {
		fmt.Fprintf(tw, "%d\t%s\t%s\t\t\t\t\n", r.Instance, r.Address, r.Name)
		if r.Err != "" {
			fmt.Fprintf(tw, "\t\t  error: %s\t\t\t\t\n", strings.ReplaceAll(r.Err, "\t", " "))
		}
		for _, ob := range r.Objects {
			tl := ""
			if ob.TrendLog != nil {
				tl = ob.TrendLog.String()
			}
			fmt.Fprintf(tw, "\t\t\t%s\t%s\t%s\t%s\n", bacnetdrv.Ref(ob.ID, bacnet.Prop(bacnet.PropPresentValue)), ob.Name, ob.Unit, tl)
		}
	}
	fmt.Fprintf(tw, "%d devices answered\n", len(reports))
	return tw.Flush()
}
