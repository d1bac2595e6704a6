package cli

import (
	"context"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/clitest"
)

// run executes the command line args in-process and returns its output.
func run(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return clitest.Run(t, ctx, New, args...)
}

func TestEveryCommandHasHelpWithExample(t *testing.T) {
	clitest.CheckHelp(t, New)
}

func TestUnknownCommand(t *testing.T) {
	if _, _, err := run(t, context.Background(), "frobnicate"); err == nil {
		t.Error("an unknown command succeeded")
	}
}
