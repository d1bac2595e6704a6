package cli

import (
	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/daemon"
)

func newRunCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: poll devices, buffer, upload",
		Long: `run starts the agent with the given configuration and keeps it running until
SIGINT or SIGTERM. Samples are buffered on disk, so stopping or killing the
agent loses nothing it has acknowledged.`,
		Example: "  sightglass-agent run --config /etc/sightglass/agent.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			reg, err := Registry()
			if err != nil {
				return err
			}
			log := newLogger(cmd.ErrOrStderr(), cfg.Log)
			return daemon.Run(cmd.Context(), daemon.Options{Config: cfg, Registry: reg, Logger: log, Version: Version})
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "/etc/sightglass/agent.yaml", "the agent's configuration file")
	return cmd
}
