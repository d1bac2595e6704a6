// Command sightglass-ingest is the Sightglass ingest service and its
// administration tools; see `sightglass-ingest --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sightglass-bms/sightglass/ingest/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.New().ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}
