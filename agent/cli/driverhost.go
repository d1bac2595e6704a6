package cli

import (
	"fmt"
	"os"
	"os/exec"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/agent/driver/subprocess"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// hostedDrivers are the drivers the long-running agent runs in a child
// process (see package subprocess): gopcua v0.9.0's decoder allocates
// whatever array length a server's message claims, so a hostile or broken
// OPC UA server could otherwise run the whole agent out of memory. The
// child serves them unwrapped; Registry wraps them.
func hostedDrivers() []driver.Info {
	return []driver.Info{opcua.Info()}
}

// isolated wraps a hosted driver so each device's driver runs in its own
// `sightglass-agent driver-host` child. The soft memory limit makes the
// child's collector work harder long before the box runs short; a single
// huge allocation still passes it, and then the OOM killer takes the child
// (oom_score_adj 1000), not the agent.
func isolated(info driver.Info) driver.Info {
	return subprocess.Wrap(info, driverHostCommand, subprocess.Options{MemoryLimit: 256 << 20})
}

// driverHostCommand runs this very binary as the driver host. The kernel's
// /proc/self/exe names the running image even after a package upgrade
// replaced the file, so the child always speaks the parent's protocol;
// os.Executable is the fallback where /proc is not mounted.
func driverHostCommand() (*exec.Cmd, error) {
	exe := "/proc/self/exe"
	if _, err := os.Stat(exe); err != nil {
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("finding the agent's own executable to run the driver host: %w", err)
		}
	}
	return exec.Command(exe, "driver-host"), nil
}

// newDriverHostCmd is the hidden child side: the agent starts it, one per
// device of a hosted driver, and speaks to it over stdin and stdout.
func newDriverHostCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "driver-host",
		Short: "Serve one device's driver to the agent over stdin and stdout (started by the agent itself)",
		Long: `driver-host is the child process the agent starts for each device of a
driver that runs isolated (OPC UA): it speaks the agent's framed protocol on
stdin and stdout and logs JSON to stderr. It is not meant to be run by hand.`,
		Example: `  # started by 'sightglass-agent run', one per OPC UA device; see
  # agent/driver/subprocess/README.md
  sightglass-agent driver-host`,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, err := driver.NewRegistry(hostedDrivers()...)
			if err != nil {
				return err
			}
			return subprocess.Main(cmd.Context(), reg)
		},
	}
}
