// Command sightglass-agent reads building controllers, read-only, and sends
// their data outbound-only to the Sightglass ingest. See `sightglass-agent --help`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	// Time zones for trend timestamps even on a box without tzdata installed.
	_ "time/tzdata"

	"github.com/sightglass-bms/sightglass/agent/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cli.NewRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sightglass-agent:", err)
		os.Exit(1)
	}
}
