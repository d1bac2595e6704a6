package drivertest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
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

// journal is a fake whose source is a log read in order, like a trend
// log: each Read returns the next three records of every point (old
// times), and its Checkpoint is how far it has read. A new journal starts
// from the beginning unless Restore says otherwise. bug makes it break a
// rule of the Checkpointer contract.
type journal struct {
	*fake
	pos     int
	pending int  // restore-late: the restored place, taken at Connect
	broken  bool // restore-breaks: a bad state left it unable to read
}

var _ driver.Checkpointer = (*journal)(nil)

// journalEpoch is the first record's time: long past, as a backfill's are.
const journalEpoch = 1_600_000_000_000

func (j *journal) Connect(ctx context.Context) error {
	j.mu.Lock()
	if j.pending > 0 {
		j.pos, j.pending = j.pending, 0
	}
	j.mu.Unlock()
	return j.fake.Connect(ctx)
}

func (j *journal) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case j.closed || !j.connected:
		return nil, errors.New("closed")
	case j.broken:
		return nil, errors.New("state corrupt")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(points) == 0 {
		return nil, nil
	}
	var out []telemetry.Sample
	for i := j.pos; i < j.pos+3; i++ {
		for _, p := range points {
			out = append(out, telemetry.Sample{PointID: p.ID, Time: journalEpoch + int64(i)*60_000, Value: float64(i)})
		}
	}
	j.pos += 3
	return out, nil
}

func (j *journal) Checkpoint() []byte {
	j.mu.Lock()
	defer j.mu.Unlock()
	return []byte(strconv.Itoa(j.pos))
}

func (j *journal) Restore(state []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	n, err := strconv.Atoi(string(state))
	if err != nil || n < 0 {
		switch j.bug {
		case "restore-panic":
			panic("corrupt state")
		case "restore-breaks":
			j.broken = true
		}
		return fmt.Errorf("journal state %q: want a record number", state)
	}
	switch j.bug {
	case "restore-ignored":
	case "restore-late":
		j.pending = n
	default:
		j.pos = max(j.pos, n)
	}
	return nil
}

func harness(bug string) drivertest.Harness {
	var cur *fake
	return drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			cur = &fake{bug: bug}
			points := []driver.Point{{ID: 1, Ref: "a"}, {ID: 2, Ref: "b"}}
			if strings.HasPrefix(bug, "journal") || strings.HasPrefix(bug, "restore") {
				return &journal{fake: cur}, points
			}
			return cur, points
		},
		Writes: func() []string {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			return cur.writes
		},
	}
}

func TestRunPassesConformingDriver(t *testing.T) {
	for _, kind := range []string{"", "journal"} {
		t.Run("fake"+kind, func(t *testing.T) { drivertest.Run(t, harness(kind)) })
	}
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
		{"restore-ignored", "Restore was not honoured"},
		{"restore-late", "Checkpoint right after Restore"},
		{"restore-panic", "Restore(text) panicked: corrupt state"},
		{"restore-breaks", "a bad state must not break the driver"},
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
