package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// run executes the command line args in-process and returns its output.
func run(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errOut)
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func TestEveryCommandHasHelpWithExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		t.Run(c.CommandPath(), func(t *testing.T) {
			if c.Example == "" {
				t.Error("no Example")
			}
			if c.Short == "" {
				t.Error("no Short")
			}
			args := append(strings.Fields(c.CommandPath())[1:], "--help")
			out, _, err := run(t, context.Background(), args...)
			if err != nil {
				t.Fatalf("--help: %v", err)
			}
			if !strings.Contains(out, "Examples:") {
				t.Errorf("--help shows no examples:\n%s", out)
			}
		})
		for _, sub := range c.Commands() {
			if sub.Name() != "help" && sub.Name() != "completion" {
				walk(sub)
			}
		}
	}
	walk(NewRoot())
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
