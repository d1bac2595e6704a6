package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/pkg/anon"
	"github.com/sightglass-bms/sightglass/pkg/driver"
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
			ndev, points, err := checkDrivers(cfg, reg)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: ok: %d devices, %d points configured\n", args[0], ndev, points)
			return err
		},
	})
	return cmd
}

// checkDrivers lets every driver check its own settings and the point ids
// be computed, without discovery or any network I/O, and without touching
// the site's real secret: ids are checked for collisions under a
// throwaway key. It returns the devices and points configured.
func checkDrivers(cfg *config.Config, reg *driver.Registry) (devices, points int, err error) {
	var s anon.Secret
	c := *cfg
	c.Devices = append([]config.Device(nil), cfg.Devices...)
	for i := range c.Devices {
		c.Devices[i].Discover = false
	}
	devs, err := daemon.BuildDevices(context.Background(), &c, reg, anon.NewRegistry(anon.New(s)), slog.New(slog.DiscardHandler))
	if err != nil {
		return 0, 0, err
	}
	for _, d := range devs {
		points += len(d.Points)
		d.Driver.Close()
	}
	return len(devs), points, nil
}
