// Package cli holds the sightglass-agent commands. The command tree is built
// explicitly by NewRoot; nothing is global, so tests drive it with SetArgs.
package cli

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/config"
	bacnetdrv "github.com/sightglass-bms/sightglass/agent/driver/bacnet"
	"github.com/sightglass-bms/sightglass/agent/driver/csvtrend"
	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// NewRoot builds the sightglass-agent command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "sightglass-agent",
		Short: "Read building controllers, read-only, and send their data to the Sightglass ingest",
		Long: `sightglass-agent runs on a small Linux box in a building. It polls controllers on
the control network (never writing to them), buffers samples on disk and sends
anonymized, compressed batches outbound-only over mTLS to the Sightglass ingest.

Start with 'sightglass-agent config validate FILE', then 'sightglass-agent run --config FILE'.`,
		Example: `  sightglass-agent config validate /etc/sightglass/agent.yaml
  sightglass-agent run --config /etc/sightglass/agent.yaml
  sightglass-agent status --json`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newEnrollCmd(), newConfigCmd(), newStatusCmd(), newDiscoverCmd(), newCheckCmd(), newVersionCmd())
	root.AddCommand(newDriverHostCmd())
	return root
}

// Registry returns the drivers this agent is built with.
func Registry() (*driver.Registry, error) {
	return driver.NewRegistry(csvtrend.Info(), modbus.Info(), bacnetdrv.Info(), isolated(opcua.Info()))
}

func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(c.Level))); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the agent's version",
		Example: "  sightglass-agent version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), Version)
			return err
		},
	}
}
