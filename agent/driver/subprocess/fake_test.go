package subprocess

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// hostEnv makes the test binary the driver host: the proxy under test
// re-executes this binary, and TestMain serves the fake drivers.
const hostEnv = "SIGHTGLASS_SUBPROCESS_TEST_HOST"

func TestMain(m *testing.M) {
	if os.Getenv(hostEnv) == "1" {
		if os.Getenv(rlimitEnv) != "" {
			capAddressSpace(1 << 30)
		}
		reg, err := driver.NewRegistry(hostedForTest()...)
		if err == nil {
			err = Main(context.Background(), reg)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(oldHostEnv) == "1" {
		os.Exit(serveOldHost())
	}
	if os.Getenv(agentEnv) == "1" {
		os.Exit(actAsAgent())
	}
	os.Exit(m.Run())
}

// agentEnv makes the test binary a stand-in agent: it starts a driver host
// through the proxy, prints the child's pid and waits to be killed.
const agentEnv = "SIGHTGLASS_SUBPROCESS_TEST_AGENT"

func actAsAgent() int {
	d, err := Wrap(hostedForTest()[0], selfCommand, Options{}).New(driver.Device{Name: "stand-in", Points: []driver.Point{{ID: 1, Ref: "pid"}}})
	if err == nil {
		err = d.Connect(context.Background())
	}
	var samples []telemetry.Sample
	if err == nil {
		samples, err = d.Read(context.Background(), []driver.Point{{ID: 1, Ref: "pid"}})
	}
	if err != nil || len(samples) != 1 {
		fmt.Fprintln(os.Stderr, "stand-in agent:", err)
		return 1
	}
	fmt.Printf("child %d\n", int(samples[0].Value))
	select {}
}

// hostedForTest is the child's registry: the fakes and the real OPC UA
// driver.
func hostedForTest() []driver.Info {
	return []driver.Info{
		{Name: "fake", New: func(dev driver.Device) (driver.Driver, error) { return newFake(dev) }},
		{Name: "fakecommit", New: func(dev driver.Device) (driver.Driver, error) {
			f, err := newFake(dev)
			return &fakeCommitter{f}, err
		}},
		{Name: "plain", New: func(dev driver.Device) (driver.Driver, error) {
			f, err := newFake(dev)
			return &plainDriver{f}, err
		}},
		{Name: "reporting", New: func(dev driver.Device) (driver.Driver, error) {
			f, err := newFake(dev)
			return &reportingFake{fake: f}, err
		}},
		opcua.Info(),
		{Name: "cursor", New: func(dev driver.Device) (driver.Driver, error) {
			f, err := newFake(dev)
			return &cursorFake{fakeCommitter: &fakeCommitter{f}}, err
		}},
		{Name: "cpnocommit", New: func(dev driver.Device) (driver.Driver, error) {
			f, err := newFake(dev)
			return checkpointOnly{&plainDriver{f}}, err
		}},
	}
}

// selfCommand runs this test binary as the driver host.
func selfCommand() (*exec.Cmd, error) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), hostEnv+"=1")
	return cmd, nil
}

// fakeSettings are the fake's device settings, decoded strictly.
type fakeSettings struct {
	Scale        float64 `yaml:"scale"`
	ConnectError string  `yaml:"connect_error"` // "lost", "hang" (ignoring ctx), or any text
	CloseHangs   bool    `yaml:"close_hangs"`   // Close never returns
}

type fakePointSettings struct {
	Offset float64 `yaml:"offset"`
}

// fake is a driver whose behaviour its points choose: a point's Ref names
// what Read does (see read). Its values are scale × the point's ID plus
// the point's offset, so a test sees that settings crossed.
type fake struct {
	cfg     fakeSettings
	offsets map[uint64]float64
	log     interface {
		Warn(string, ...any)
	}
	connected bool
	commits   int
	interval  time.Duration // the device's, as the driver was built with it
}

type fakeCommitter struct{ *fake }

// Commit counts; a sample of the next Read carries the count.
func (f *fakeCommitter) Commit(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.commits++
	return nil
}

// plainDriver has neither Discover nor Commit.
type plainDriver struct{ f *fake }

func (p *plainDriver) Connect(ctx context.Context) error { return p.f.Connect(ctx) }
func (p *plainDriver) Read(ctx context.Context, pts []driver.Point) ([]telemetry.Sample, error) {
	return p.f.Read(ctx, pts)
}
func (p *plainDriver) Close() error { return p.f.Close() }

func newFake(dev driver.Device) (*fake, error) {
	f := &fake{offsets: map[uint64]float64{}, log: dev.Logger, interval: dev.Interval}
	if dev.Settings != nil {
		if err := dev.Settings.Decode(&f.cfg); err != nil {
			return nil, fmt.Errorf("fake settings: %w", err)
		}
	}
	if f.cfg.Scale == 0 {
		f.cfg.Scale = 1
	}
	for _, p := range dev.Points {
		if p.Settings == nil {
			continue
		}
		var ps fakePointSettings
		if err := p.Settings.Decode(&ps); err != nil {
			return nil, fmt.Errorf("point %q: %w", p.Ref, err)
		}
		f.offsets[p.ID] = ps.Offset
	}
	return f, nil
}

func (f *fake) Connect(ctx context.Context) error {
	switch f.cfg.ConnectError {
	case "":
	case "lost":
		return fmt.Errorf("fake: no route: %w", driver.ErrConnLost)
	case "hang":
		select {}
	default:
		return errors.New("fake: " + f.cfg.ConnectError)
	}
	f.connected = true
	return ctx.Err()
}

func (f *fake) Close() error {
	if f.cfg.CloseHangs && f.connected {
		select {}
	}
	f.connected = false
	return nil
}

// nanBits is a NaN with a payload, which must cross bit for bit.
const nanBits = 0x7ff8_dead_beef_0001

// Read does what each point's Ref says: panic, exit, alloc (until the
// address-space limit stops it), hang (ignoring ctx), slow (until ctx
// ends), busy, lost, refused, log, stdout, pid (value is the child's
// pid), commits, interval (the device's, in seconds), nan; anything else reads scale × ID + offset.
func (f *fake) Read(ctx context.Context, points []driver.Point) ([]telemetry.Sample, error) {
	if !f.connected {
		return nil, errors.New("fake: not connected")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []telemetry.Sample
	for _, p := range points {
		off, ok := f.offsets[p.ID]
		if !ok && p.Settings != nil {
			var ps fakePointSettings
			if err := p.Settings.Decode(&ps); err != nil {
				return nil, err
			}
			off = ps.Offset
		}
		v := f.cfg.Scale*float64(p.ID) + off
		switch p.Ref {
		case "panic":
			panic("fake driver: boom")
		case "exit":
			os.Exit(3)
		case "alloc":
			allocLikeADecoder()
		case "hang":
			select {}
		case "slow":
			<-ctx.Done()
			return nil, fmt.Errorf("fake: reading slowly: %w", ctx.Err())
		case "busy":
			return nil, fmt.Errorf("fake: device says later: %w", driver.ErrBusy)
		case "lost":
			return nil, fmt.Errorf("fake: socket reset: %w", driver.ErrConnLost)
		case "refused":
			return nil, fmt.Errorf("fake: write attempt: %w", driver.ErrRefused)
		case "log":
			f.log.Warn("fake driver noticed something", "register", 40001, "reason", "test", "ratio", 0.5)
		case "stdout":
			fmt.Println("a library printing to stdout must not break the protocol")
			os.Stdout.WriteString("\x00\x00\x00\x05hello")
		case "pid":
			v = float64(os.Getpid())
		case "commits":
			v = float64(f.commits)
		case "interval":
			v = f.interval.Seconds()
		case "nan":
			v = math.Float64frombits(nanBits)
		}
		out = append(out, telemetry.Sample{PointID: p.ID, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli(), Value: v, Status: telemetry.StatusOK})
	}
	return out, nil
}

// Discover returns two points, one with settings.
func (f *fake) Discover(ctx context.Context) ([]driver.Point, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return []driver.Point{
		{Ref: "d1", Name: "Discovered one", Unit: "°C", Description: "first", Tags: []string{"zone", "temp"}, Interval: 30 * time.Second, Settings: yamlSettings("offset: 0.25\n")},
		{Ref: "d2", Name: "Discovered two"},
	}, nil
}

// allocLikeADecoder does what gopcua's decoder does with a hostile array
// length: reflect.MakeSlice of the length the message claims. The address
// space is capped first (a test cannot leave a 16 GB allocation to the
// machine's OOM killer), so the runtime dies with "out of memory" at once.
func allocLikeADecoder() {
	capAddressSpace(256 << 20)
	claimed := math.MaxInt32
	s := reflect.MakeSlice(reflect.TypeFor[[]float64](), claimed, claimed)
	fmt.Fprintln(os.Stderr, "allocated", s.Len())
}

// capAddressSpace limits this process's address space to what it maps now
// plus extra bytes, so that a huge allocation fails at once.
func capAddressSpace(extra uint64) {
	status, _ := os.ReadFile("/proc/self/status")
	var vm uint64
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmSize:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			vm = kb << 10
		}
	}
	limit := vm + extra
	_ = syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: limit, Max: limit})
}

// reportingFake counts its reads and the refused ones, as a guard would.
type reportingFake struct {
	*fake
	reads, refused uint64
}

func (r *reportingFake) Read(ctx context.Context, pts []driver.Point) ([]telemetry.Sample, error) {
	r.reads++
	samples, err := r.fake.Read(ctx, pts)
	if errors.Is(err, driver.ErrRefused) {
		r.refused++
	}
	return samples, err
}

func (r *reportingFake) Counters() []driver.Counter {
	return []driver.Counter{{Name: "requests", Value: r.reads}, {Name: driver.GuardRefusals, Value: r.refused}}
}

// cursorFake consumes a numbered source: each Read returns the record
// after its place (the point "next"), its Checkpoint is that place in
// decimal, Commit makes it durable (in memory: a new child knows it only
// through Restore) and Restore takes a place further along. A state that
// is not a number is refused with an error.
type cursorFake struct {
	*fakeCommitter
	place, staged int
}

func (c *cursorFake) Read(ctx context.Context, pts []driver.Point) ([]telemetry.Sample, error) {
	out, err := c.fake.Read(ctx, pts)
	if err != nil {
		return nil, err
	}
	for i, p := range pts {
		if p.Ref == "next" {
			c.staged = max(c.staged, c.place) + 1
			out[i].Value = float64(c.staged)
		}
	}
	return out, nil
}

func (c *cursorFake) Commit(ctx context.Context) error {
	if err := c.fakeCommitter.Commit(ctx); err != nil {
		return err
	}
	c.place = max(c.place, c.staged)
	return nil
}

func (c *cursorFake) Checkpoint() []byte {
	if c.staged == 0 && c.place == 0 {
		return nil
	}
	return []byte(strconv.Itoa(max(c.staged, c.place)))
}

func (c *cursorFake) Restore(state []byte) error {
	n, err := strconv.Atoi(string(state))
	if err != nil || n < 0 {
		return fmt.Errorf("cursor: state %q is not a place", state)
	}
	c.place = max(c.place, n)
	return nil
}

// checkpointOnly keeps a checkpoint but commits nothing: the poller
// stores no state for it, so the proxy must not offer one either.
type checkpointOnly struct{ *plainDriver }

func (checkpointOnly) Checkpoint() []byte   { return []byte("1") }
func (checkpointOnly) Restore([]byte) error { return nil }
