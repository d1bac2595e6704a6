package cli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

func newStatusCmd() *cobra.Command {
	var path, socket string
	var asJSON, points bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running agent's health: buffer, uplink, devices",
		Example: `  sightglass-agent status --config /etc/sightglass/agent.yaml
  sightglass-agent status --points | grep fault
  sightglass-agent status --socket /var/lib/sightglass/agent.sock --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				cfg, err := config.Load(path)
				if err != nil {
					return err
				}
				socket = cfg.StatusSocket
			}
			st, err := daemon.FetchStatus(cmd.Context(), socket)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			fmt.Fprintf(out, "agent %s  site %s  version %s  up %s\n", st.Agent, st.Site, st.Version, time.Since(st.StartedAt).Round(time.Second))
			fmt.Fprintf(out, "buffer: %d samples pending, %d batches (%d samples) sealed, %d bytes, %d dropped, %d rejected\n",
				st.Buffer.PendingSamples, st.Buffer.SealedBatches, st.Buffer.SealedSamples, st.Buffer.Bytes, st.Buffer.DroppedSamples, st.Buffer.RejectedBatches)
			last := "never"
			if !st.Uplink.LastSuccess.IsZero() {
				last = time.Since(st.Uplink.LastSuccess).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(out, "uplink: last upload %s, %d batches / %d samples sent", last, st.Uplink.Batches, st.Uplink.Samples)
			if st.Uplink.LastError != "" {
				fmt.Fprintf(out, ", last error: %s", st.Uplink.LastError)
			}
			fmt.Fprintln(out)
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tSTATE\tREADS\tFAILURES\tSAMPLES\tBAD\tREQUESTS\tGUARD REFUSED\tLAST ERROR")
			var refusals, outOfRange, slow []string
			for _, d := range st.Devices {
				state := "up"
				if !d.Up {
					state = "down"
				}
				requests, refused := counter(d.Counters, "requests"), counter(d.Counters, driver.GuardRefusals)
				if refused != "-" && refused != "0" {
					refusals = append(refusals, fmt.Sprintf("%s (%s)", d.Name, refused))
				}
				if d.OutOfRangeSamples > 0 {
					outOfRange = append(outOfRange, fmt.Sprintf("%s (%d)", d.Name, d.OutOfRangeSamples))
				}
				if d.SkippedTicks+d.SlowReads+d.LateReads > 0 {
					slow = append(slow, fmt.Sprintf("%s (%d ticks skipped, %d slow reads, %d late)", d.Name, d.SkippedTicks, d.SlowReads, d.LateReads))
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", d.Name, state, d.Reads, d.Failures, d.Samples, d.BadSamples, requests, refused, d.LastError)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(outOfRange) > 0 {
				fmt.Fprintf(out, "samples left out because their time is outside what the ingest accepts (check the device's clock or time zone): %s\n", strings.Join(outOfRange, ", "))
			}
			if len(slow) > 0 {
				fmt.Fprintf(out, "devices slower than their interval (a longer interval, fewer points per device or a faster link helps): %s\n", strings.Join(slow, "; "))
			}
			if len(refusals) > 0 {
				fmt.Fprintf(out, "the read-only guard refused requests on %s: nothing was sent, but a driver tried to send more than a read; report it with the agent's log\n", strings.Join(refusals, ", "))
			}
			if !points {
				return nil
			}
			fmt.Fprintln(out)
			tw = tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tPOINT\tSAMPLES\tBAD\tLAST VALUE\tSTATUS\tAGE")
			for _, d := range st.Devices {
				for _, p := range d.Points {
					age, value := "never", ""
					if !p.LastTime.IsZero() {
						age = time.Since(p.LastTime).Round(time.Second).String()
						value = strconv.FormatFloat(p.LastValue, 'g', 6, 64)
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", d.Name, p.Name, p.Samples, p.BadSamples, value, p.LastStatus, age)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "/etc/sightglass/agent.yaml", "the agent's configuration file (to find its status socket)")
	cmd.Flags().StringVar(&socket, "socket", "", "the agent's status socket (overrides --config)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	cmd.Flags().BoolVar(&points, "points", false, "also print every point: its counts, last value, status and age")
	return cmd
}

// counter is the named driver counter of a device, "-" if its driver
// reports none.
func counter(cs []driver.Counter, name string) string {
	for _, c := range cs {
		if c.Name == name {
			return strconv.FormatUint(c.Value, 10)
		}
	}
	return "-"
}
