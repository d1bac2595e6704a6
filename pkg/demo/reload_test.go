package demo

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadOnSIGHUPIntegration changes the agent's configuration under
// it: a good file (a second device) is taken on SIGHUP without losing a
// sample of the first device, and a bad one is refused while the agent
// keeps running as it was.
func TestReloadOnSIGHUPIntegration(t *testing.T) {
	s, f := newStack(t)
	// The agent's log, to wait for it to refuse the bad file.
	var logs syncBuffer
	s.Logs = io.MultiWriter(s.Logs, &logs)
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.write(t, 0, 100)
	original, err := os.ReadFile(s.AgentConfig())
	if err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(s.Dir, "trends2")
	if err := os.MkdirAll(second, 0o755); err != nil {
		t.Fatal(err)
	}
	withSecond := strings.Replace(string(original), "devices:\n", fmt.Sprintf(`devices:
  - name: ahu-2
    driver: csvtrend
    interval: 200ms
    settings: {path: %s, timezone: UTC, settle: 0s}
    points: [{ref: Zone Temp}]
`, second), 1)
	if withSecond == string(original) {
		t.Fatal("test setup: no devices section to extend")
	}
	hup := func(cfg string) {
		t.Helper()
		if err := os.WriteFile(s.AgentConfig(), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.agent.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	devices := func() int {
		st, err := s.AgentStatus(t.Context())
		if err != nil {
			return -1
		}
		return len(st.Devices)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("gave up waiting: %s", what)
			}
		}
	}
	hup(withSecond)
	waitFor("the second device after a good reload", func() bool { return devices() == 2 })
	f.write(t, 1, 100)

	// A broken file: refused, the agent keeps its two devices and runs on.
	hup(withSecond + "bogus_key: 1\n")
	waitFor("the agent to refuse the bad file", func() bool {
		return strings.Contains(logs.String(), "the new file is refused")
	})
	if n := devices(); n != 2 {
		t.Fatalf("after a bad reload the agent has %d devices (want it running with 2)", n)
	}
	select {
	case <-s.agent.done:
		t.Fatalf("the agent exited on a bad configuration: %v", s.agent.err)
	default:
	}
	f.write(t, 2, 100)
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
}
