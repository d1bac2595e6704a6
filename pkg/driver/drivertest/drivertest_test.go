package drivertest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// fake is an in-memory driver; bug makes it break one rule of the kit.
type fake struct {
	bug string

	mu        sync.Mutex
	connected bool
	closed    bool
	writes    []string
}

var (
	_ driver.Driver     = (*fake)(nil)
	_ driver.Discoverer = (*fake)(nil)
	_ driver.Committer  = (*fake)(nil)
)

func (f *fake) Connect(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed && f.bug == "no-reconnect" {
		return errors.New("closed for good")
	}
	f.closed, f.connected = false, true
	return nil
}

func (f *fake) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if (f.closed || !f.connected) && f.bug != "read-after-close" {
		return nil, errors.New("closed")
	}
	if err := ctx.Err(); err != nil && f.bug != "ignore-cancel" {
		return nil, err
	}
	if f.bug == "write" {
		f.writes = append(f.writes, "write holding 40001")
	}
	var out []telemetry.Sample
	for _, p := range points {
		s := telemetry.Sample{PointID: p.ID, Time: 1_700_000_000_000, Value: 1}
		switch f.bug {
		case "zero-time":
			s.Time = 0
		case "bad-status":
			s.Status = telemetry.MaxStatus + 1
		case "invent-id":
			s.PointID = p.ID + 1000
		case "empty":
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

func (f *fake) Discover(ctx context.Context) ([]driver.Point, error) {
	p := driver.Point{Ref: "a", Name: "a"}
	if f.bug == "discover-id" {
		p.ID = 7
	}
	return []driver.Point{p, {Ref: "b", Name: "b"}}, nil
}

func (f *fake) Commit(ctx context.Context) error { return nil }

func (f *fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed, f.connected = true, false
	return nil
}

func harness(bug string) drivertest.Harness {
	var cur *fake
	return drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			cur = &fake{bug: bug}
			return cur, []driver.Point{{ID: 1, Ref: "a"}, {ID: 2, Ref: "b"}}
		},
		Writes: func() []string {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			return cur.writes
		},
	}
}

func TestRunPassesConformingDriver(t *testing.T) {
	drivertest.Run(t, harness(""))
}

// TestBrokenDriver runs the kit against a broken fake when the parent test
// asks for it; run alone it skips.
func TestBrokenDriver(t *testing.T) {
	bug := os.Getenv("DRIVERTEST_BUG")
	if bug == "" {
		t.Skip("run by TestRunFailsBrokenDrivers")
	}
	drivertest.Run(t, harness(bug))
}

// TestRunFailsBrokenDrivers proves each check can fail: the kit runs in a
// child process (a failing *testing.T cannot be caught in-process) against
// a driver breaking one rule, and must fail saying why.
func TestRunFailsBrokenDrivers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	tests := []struct {
		bug  string
		want string
	}{
		{"write", "writes reached the wire"},
		{"invent-id", "that Read was not given"},
		{"zero-time", "zero time"},
		{"bad-status", "undefined status"},
		{"ignore-cancel", "Read(cancelled) returned"},
		{"read-after-close", "Read after Close"},
		{"no-reconnect", "Connect after Close"},
		{"discover-id", "IDs are the agent's to compute"},
		{"empty", "returned no valid sample"},
	}
	for _, tt := range tests {
		t.Run(tt.bug, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBrokenDriver$", "-test.v")
			cmd.Env = append(os.Environ(), "DRIVERTEST_BUG="+tt.bug)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("kit passed a driver with bug %q (err %v); output:\n%s", tt.bug, err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("kit failed without saying %q; output:\n%s", tt.want, out)
			}
		})
	}
}
