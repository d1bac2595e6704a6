package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/clitest"
)

// run executes the command line args in-process and returns its output.
func run(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return clitest.Run(t, ctx, NewRoot, args...)
}

func TestEveryCommandHasHelpWithExample(t *testing.T) {
	clitest.CheckHelp(t, NewRoot)
}

func TestUnknownCommand(t *testing.T) {
	if _, _, err := run(t, context.Background(), "frobnicate"); err == nil {
		t.Error("an unknown command succeeded")
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, context.Background(), "version")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != Version {
		t.Errorf("version printed %q, want %q", out, Version)
	}
}

func TestRegistryHasEveryDriver(t *testing.T) {
	reg, err := Registry()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.Lookup("csvtrend"); !ok {
		t.Errorf("csvtrend missing from %v", reg.Names())
	}
}
