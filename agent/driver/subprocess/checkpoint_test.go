package subprocess

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
)

// nextOf reads the cursor fake's "next" point and returns its record.
func nextOf(t *testing.T, d driver.Driver) int {
	t.Helper()
	samples, err := readT(t, d, []driver.Point{{ID: 1, Ref: "next"}})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if len(samples) != 1 {
		t.Fatalf("Read returned %d samples, want 1", len(samples))
	}
	return int(samples[0].Value)
}

// TestCheckpointCrosses drives a Checkpointer behind the proxy as the
// poller does: the proxy is one (and a Committer and Discoverer, as the
// driver is), a state restored before the first Connect reaches the
// child's driver, Checkpoint reports what each Read left, a read not
// committed is read again by the next child (the poller closes after a
// read the buffer refused), and a child that dies goes on from the last
// commit.
func TestCheckpointCrosses(t *testing.T) {
	var logs drivertest.LogBuffer
	d := newProxyT(t, "cursor", "", []driver.Point{{ID: 1, Ref: "next"}, {ID: 2, Ref: "exit"}}, &logs)
	cp, ok := d.(driver.Checkpointer)
	if !ok {
		t.Fatalf("the proxy of a Checkpointer is a %T, not a driver.Checkpointer", d)
	}
	if _, ok := d.(driver.Committer); !ok {
		t.Fatal("the proxy of a Checkpointer is not a Committer")
	}
	if _, ok := d.(driver.Discoverer); !ok {
		t.Fatal("the proxy of a discovering Checkpointer is not a Discoverer")
	}
	if got := cp.Checkpoint(); got != nil {
		t.Errorf("Checkpoint before anything = %q, want nil", got)
	}
	if err := cp.Restore([]byte("41")); err != nil {
		t.Fatalf("Restore before Connect: %v", err)
	}
	if got := string(cp.Checkpoint()); got != "41" {
		t.Errorf("Checkpoint right after Restore = %q, want the state restored", got)
	}
	connect(t, d)
	if n := nextOf(t, d); n != 42 {
		t.Fatalf("first Read after Restore(41) returned record %d, want 42: the child's driver was not restored", n)
	}
	if got := string(cp.Checkpoint()); got != "42" {
		t.Errorf("Checkpoint after the Read = %q, want 42", got)
	}
	if err := d.(driver.Committer).Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	// A read the buffer refused: not committed; the poller closes and
	// connects, and the new child starts from the commit.
	if n := nextOf(t, d); n != 43 {
		t.Fatalf("second Read = %d, want 43", n)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	connect(t, d)
	if n := nextOf(t, d); n != 43 {
		t.Errorf("after a reconnect without Commit, Read = %d, want 43 again (the uncommitted read is read again)", n)
	}
	if err := d.(driver.Committer).Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The child dies: the next one goes on from the last commit.
	if _, err := readT(t, d, []driver.Point{{ID: 2, Ref: "exit"}}); !errors.Is(err, driver.ErrConnLost) {
		t.Fatalf("Read of exit = %v, want ErrConnLost", err)
	}
	_ = d.Close()
	connect(t, d)
	if n := nextOf(t, d); n != 44 {
		t.Errorf("after the child died, Read = %d, want 44 (from the commit of 43)", n)
	}
}

// TestCheckpointRestoreRefused: a state the child's driver refuses, or
// one above MaxState, leaves the driver going on from its own record.
func TestCheckpointRestoreRefused(t *testing.T) {
	tests := []struct {
		name    string
		state   []byte
		wantErr bool   // Restore itself fails
		wantLog string // else the child's refusal is logged
	}{
		{"not a place", []byte("garbage"), false, "refused the state"},
		{"above MaxState", make([]byte, MaxState+1), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs drivertest.LogBuffer
			d := newProxyT(t, "cursor", "", []driver.Point{{ID: 1, Ref: "next"}}, &logs)
			err := d.(driver.Checkpointer).Restore(tt.state)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Restore = %v, want an error: %v", err, tt.wantErr)
			}
			connect(t, d)
			if n := nextOf(t, d); n != 1 {
				t.Errorf("Read after a refused state = %d, want 1 (from the driver's own record)", n)
			}
			if tt.wantLog != "" && !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log does not say %q:\n%s", tt.wantLog, logs.String())
			}
		})
	}
}

// TestCheckpointWithoutCommit: the poller stores no state for a
// Checkpointer that does not commit, so its proxy offers none.
func TestCheckpointWithoutCommit(t *testing.T) {
	d := newProxyT(t, "cpnocommit", "", []driver.Point{{ID: 1, Ref: "x"}}, nil)
	if _, ok := d.(driver.Checkpointer); ok {
		t.Error("the proxy of a Checkpointer that does not commit offers Checkpoint")
	}
	connect(t, d)
	if _, err := readT(t, d, []driver.Point{{ID: 1, Ref: "x"}}); err != nil {
		t.Fatal(err)
	}
}

// TestConformanceCheckpointer runs the kit's Checkpoint checks through
// the proxy: Resume and every Garbage state.
func TestConformanceCheckpointer(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			points := []driver.Point{{ID: 1, Ref: "next"}} // every record is new: a constant point would repeat
			return newProxyT(t, "cursor", "", points, nil), points
		},
	})
}

// TestIntervalCrosses: the device's read interval reaches the driver the
// child builds.
func TestIntervalCrosses(t *testing.T) {
	info := Wrap(fakeInfo("fake"), selfCommand, Options{})
	d, err := info.New(driver.Device{Name: "ahu", Points: []driver.Point{{ID: 1, Ref: "interval"}}, Interval: 90 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	connect(t, d)
	samples, err := readT(t, d, []driver.Point{{ID: 1, Ref: "interval"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 1 || samples[0].Value != 90 {
		t.Errorf("the child's driver saw interval %v s, want 90", samples)
	}
}

// oldHostEnv makes the test binary a driver host of the previous protocol
// version: it answers the start frame with that version and exits.
const oldHostEnv = "SIGHTGLASS_SUBPROCESS_TEST_OLD_HOST"

// serveOldHost is the old host's side: read start, answer ready with
// version Version-1.
func serveOldHost() int {
	if _, err := readFrame(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "old host:", err)
		return 1
	}
	if err := writeFrame(os.Stdout, newEnc(ansReady, 0).withReady(Version-1, capDiscoverer|capCommitter|capCheckpointer).b); err != nil {
		return 1
	}
	_, _ = readFrame(os.Stdin) // until the parent gives up
	return 0
}

// TestRefusesAnOldHost: a driver host of another protocol version is
// refused with an error that says so and what to do.
func TestRefusesAnOldHost(t *testing.T) {
	old := func() (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), oldHostEnv+"=1")
		return cmd, nil
	}
	d, err := Wrap(fakeInfo("cursor"), old, Options{Grace: 300 * time.Millisecond}).New(driver.Device{Name: "trend", Points: []driver.Point{{ID: 1, Ref: "next"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = d.Connect(ctx)
	want := fmt.Sprintf("protocol version %d, the agent %d", Version-1, Version)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "restart the agent") {
		t.Fatalf("Connect to an old driver host: %v, want an error saying %q", err, want)
	}
}
