// Package driver is the SDK for device drivers: the small interface every
// protocol implements, the registry the agent builds its drivers from, and
// the errors drivers report. A driver has no write method: Sightglass is
// read-only by construction, and each protocol's guard enforces it again at
// the wire.
//
// Lifecycle: the agent builds a Driver with its Factory (no network I/O
// there), calls Connect, then Read repeatedly. Read is never called
// concurrently unless the device's configured concurrency is above 1. When
// Read returns an error wrapping ErrConnLost (or Connect fails), the agent
// calls Close, backs off and calls Connect again: Close follows every
// Connect, successful or not, and is the last call at shutdown. Drivers must
// honour the context of Connect and Read.
package driver

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Driver reads points from one device.
type Driver interface {
	// Connect opens the connection to the device. It may be called again
	// after Read reported ErrConnLost.
	Connect(ctx context.Context) error
	// Read returns the current samples of points. A point the device could
	// not read is a sample with a bad status, not an error; an error means
	// the whole read failed (see ErrConnLost, ErrBusy).
	Read(ctx context.Context, points []Point) ([]telemetry.Sample, error)
	// Close releases the connection.
	Close() error
}

// Discoverer is implemented by drivers that can list what a device offers.
// Discovery obeys the same read-only guard as Read.
type Discoverer interface {
	Discover(ctx context.Context) ([]Point, error)
}

// Point is one value a device offers. ID is the point's pseudonym, computed
// by the agent from the device name and Ref (see package anon); the driver
// copies it into every sample it returns and never invents one.
type Point struct {
	// ID is the point's pseudonymous id; zero in points a Discoverer returns.
	ID uint64
	// Ref is the driver's canonical reference of the point within its
	// device (a CSV column, a register address, an object id). It never
	// leaves the box.
	Ref string
	// Name is a human name; Ref when the configuration gives none.
	Name string
	// Unit is the engineering unit, empty when unknown.
	Unit string
	// Description is the device's or installer's longer text, if any.
	Description string
	// Kind is what sort of value the point carries: analog, binary,
	// multistate or text, or the protocol's finer word (a BACnet object
	// type, a Modbus data type, an OPC UA data type) when a driver's
	// discovery knows it. It travels in the point catalogue, never in
	// batches; empty when unknown.
	Kind string
	// Tags classify the point (from the configuration, or a driver's
	// discovery); they travel in the point catalogue, never in batches.
	Tags []string
	// Interval is how often the point is read; zero means the device's.
	Interval time.Duration
	// Settings holds the driver-specific configuration of this point.
	Settings Settings
}

// Settings decodes a driver-specific part of the configuration into v.
// Decoding is strict: unknown fields are errors naming the line.
type Settings interface {
	Decode(v any) error
}

// Device is what a Factory gets to build a driver for one device.
type Device struct {
	// Name is the device's name in the configuration; used in logs only.
	Name string
	// Settings holds the driver-specific device configuration.
	Settings Settings
	// Points are the configured points, IDs filled in.
	Points []Point
	// Logger is pre-tagged with the driver and device.
	Logger *slog.Logger
	// DataDir is the agent's data directory, where a driver keeps state
	// that must survive restarts (certificates, pins), each in its own
	// subdirectory. Empty when unknown; drivers then need a setting.
	DataDir string
	// Interval is how often the poller reads points whose own Interval is
	// zero, for drivers that tune to it (how long a gap must be before a
	// trend log is asked for it, say). Zero when unknown.
	Interval time.Duration
}

// Factory builds a driver from its configuration. It validates the
// configuration and does no network I/O.
type Factory func(dev Device) (Driver, error)

// Errors drivers wrap so the poller can tell failures apart by kind.
var (
	// ErrConnLost means the connection is gone: the poller backs off and
	// calls Connect again.
	ErrConnLost = errors.New("connection lost")
	// ErrBusy means the device asked us to come back later: retry the
	// same connection after a short pause.
	ErrBusy = errors.New("device busy")
	// ErrRefused means the read-only guard refused a request before it was
	// sent. It is a bug in the driver or a misuse, never retried.
	ErrRefused = errors.New("refused by read-only guard")
)

// Committer is implemented by drivers that consume their source, such as a
// trend-export reader that moves processed files aside. The poller calls
// Commit after the samples of the last Read are durable in the buffer, so a
// crash between the two re-reads the source rather than losing it.
type Committer interface {
	Commit(ctx context.Context) error
}

// Checkpointer is implemented by a Committer whose place in its source is
// a small state, such as how far each trend log has been read. Commit
// alone keeps that state in a separate write, so a crash between the
// buffer's commit and Commit repeats what the last Read returned. With a
// Checkpointer the poller stores Checkpoint's state in the buffer in the
// same transaction as that Read's samples, and hands the newest state
// stored back through Restore once, before the first Connect; the driver
// takes from it what is further along than its own record. Checkpoint
// returns the state as the last Read left it (what the next Commit would
// make durable), or nil for none; it must be cheap and small (it is stored
// with every read).
type Checkpointer interface {
	Checkpoint() []byte
	Restore(state []byte) error
}

// Counter is one of a driver's own counts, shown by `sightglass-agent
// status`: requests sent, requests the read-only guard refused, sessions
// opened. Names are snake_case and stable; values only grow.
type Counter struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// Reporter is implemented by drivers whose counts an installer should see,
// the read-only guard's refusals first of all (any refusal is a bug worth
// reporting). Counters may be called at any time, before Connect and
// after Close too, from any goroutine; it must be cheap and never block on
// the device. It returns the counts in a fixed order.
type Reporter interface {
	Counters() []Counter
}

// GuardRefusals is the Counter name of the requests a driver's read-only
// guard refused; every driver that talks to devices reports it.
const GuardRefusals = "guard_refused"
