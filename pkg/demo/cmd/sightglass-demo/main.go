// Command sightglass-demo runs the whole Sightglass system locally: an
// ingest, an agent and simulated devices. `make demo` builds and runs it.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	_ "time/tzdata"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/pkg/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sightglass-demo:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var o demo.Options
	var logFile string
	cmd := &cobra.Command{
		Use:   "sightglass-demo",
		Short: "Run an ingest, an agent and simulated devices on this machine",
		Example: `  make demo
  make demo DEMO_FOR=30s
  .bin/sightglass-demo --bin .bin --dir .demo --for 30s`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Out = cmd.OutOrStdout()
			if logFile == "" {
				logFile = o.Dir + ".log"
			}
			f, err := os.Create(logFile)
			if err != nil {
				return err
			}
			defer f.Close()
			o.Logs = f
			// The simulators' libraries log through the standard logger
			// (gopcua's server does); their chatter belongs with the logs.
			log.SetOutput(f)
			fmt.Fprintf(o.Out, "logs of the ingest and the agent: %s\n", logFile)
			return demo.Run(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Bin, "bin", ".bin", "directory holding sightglass-agent and sightglass-ingest")
	cmd.Flags().StringVar(&o.Dir, "dir", ".demo", "working directory (emptied at start)")
	cmd.Flags().StringVar(&o.Data, "data", "testdata/bms", "real trend data to replay")
	cmd.Flags().DurationVar(&o.For, "for", 0, "stop after this long and print a summary (default: until Ctrl-C)")
	cmd.Flags().StringVar(&logFile, "log", "", "file for the processes' logs (default DIR.log)")
	return cmd
}
