package cli

import (
	"github.com/spf13/cobra"
)

// newDiscoverCmd is the parent of the per-protocol discovery commands. Each
// protocol adds its own subcommand in discover_<protocol>.go; every one of
// them goes through its driver's read-only guard, prints what it found and
// can write a starter configuration for the installer to edit.
func newDiscoverCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "discover",
		Short: "Find devices and points on the control network (read-only)",
		Long: `discover asks the control network what is there and writes a starter
configuration an installer edits. It only ever reads: every request goes
through the same read-only guard as polling.`,
		Example: `  sightglass-agent discover --help`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(discoverCommands()...)
	return cmd
}

// discoverCommands lists the per-protocol discovery commands.
func discoverCommands() []*cobra.Command {
	return []*cobra.Command{newDiscoverModbusCmd(), newDiscoverBACnetCmd(), newDiscoverOPCUACmd(), newDiscoverAllCmd()}
}
