// Package clitest checks what every Sightglass command line promises its
// users, for the agent's and the ingest's command trees alike: each
// command has a short description and an example, and --help shows it.
package clitest

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Run executes the command line args on a fresh tree from newRoot and
// returns what it printed.
func Run(t testing.TB, ctx context.Context, newRoot func() *cobra.Command, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errOut)
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// CheckHelp walks every command of the tree newRoot builds (help and
// completion aside) and fails the test for one without a Short text or an
// Example, or whose --help does not show the example.
func CheckHelp(t *testing.T, newRoot func() *cobra.Command) {
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
			out, _, err := Run(t, context.Background(), newRoot, args...)
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
	walk(newRoot())
}
