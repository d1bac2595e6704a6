package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/pkg/anon"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "config",
		Short:   "Work with the agent's configuration",
		Example: "  sightglass-agent config validate /etc/sightglass/agent.yaml",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "validate FILE",
		Short: "Check a configuration and list every problem at once",
		Long: `validate decodes FILE strictly (unknown or duplicate keys are errors naming the
line), checks every value and lets each driver check its own settings. It does
no network I/O and touches no device.`,
		Example: "  sightglass-agent config validate /etc/sightglass/agent.yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(args[0])
			if err != nil {
				return err
			}
			reg, err := Registry()
			if err != nil {
				return err
			}
			// A throwaway secret: validation checks that ids do not collide
			// under some key, and must not create the site's real secret.
			var s anon.Secret
			for i := range cfg.Devices {
				cfg.Devices[i].Discover = false
			}
			devs, err := daemon.BuildDevices(context.Background(), cfg, reg, anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			points := 0
			for _, d := range devs {
				points += len(d.Points)
				d.Driver.Close()
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: ok: %d devices, %d points configured\n", args[0], len(devs), points)
			return err
		},
	})
	return cmd
}
