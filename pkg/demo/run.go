package demo

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/sim"
)

// Options configure Run.
type Options struct {
	// Bin holds the built binaries; Dir is the demo's working directory.
	Bin, Dir string
	// Data is the real trend data (testdata/bms).
	Data string
	// For stops the demo after this long; zero runs until ctx is done.
	For time.Duration
	// Out receives the instructions and the summary; Logs the processes' logs.
	Out, Logs io.Writer
}

// Run starts the demo: an ingest, an agent and two real trend exports
// replayed at high speed into the folders the agent watches. It prints where
// the data lands and how to read it, and a summary when it ends.
func Run(ctx context.Context, o Options) error {
	eastern, err := time.LoadLocation("America/New_York")
	if err != nil {
		return fmt.Errorf("loading the RTU11 trend's time zone: %w", err)
	}
	s := &Stack{Bin: o.Bin, Dir: o.Dir, Logs: o.Logs}
	if err := s.Init(ctx); err != nil {
		return err
	}
	defer s.Close()
	trends := filepath.Join(o.Dir, "trends")
	replays := []*sim.TrendReplay{
		// 15-minute data at 900x: one row a second.
		{Source: filepath.Join(o.Data, "ahu7", "AHU7.csv"), Dir: filepath.Join(trends, "ahu7"), Prefix: "ahu7", Speed: 900, Loop: true},
		// Hourly data at 3600x: one row a second.
		{Source: filepath.Join(o.Data, "ahu7", "RTU11.csv"), Dir: filepath.Join(trends, "rtu11"), Prefix: "rtu11", Speed: 3600, Loop: true, Location: eastern},
	}
	devices := fmt.Sprintf(`  - name: ahu7
    driver: csvtrend
    interval: 1s
    discover: true
    settings: {path: %s, timezone: UTC, settle: 0s}
  - name: rtu11
    driver: csvtrend
    interval: 1s
    discover: true
    settings: {path: %s, timezone: UTC, settle: 0s}
`, replays[0].Dir, replays[1].Dir)
	described := []string{fmt.Sprintf("two real trend exports (AHU7 at 900x, RTU11 at 3600x) written into %s", trends)}
	// Live devices keep producing samples; they stop before the final
	// drain, or the agent's buffer would never be empty.
	var stopSims []func()
	for _, start := range simulators() {
		d, err := start(ctx, o)
		if err != nil {
			return err
		}
		stop := sync.OnceFunc(d.Stop)
		defer stop()
		stopSims = append(stopSims, stop)
		devices += d.Devices
		described = append(described, d.Describe)
	}
	if err := s.WriteAgentConfig(devices, 2*time.Second); err != nil {
		return err
	}
	if err := s.StartIngest(ctx); err != nil {
		return err
	}
	rctx, stopReplay := context.WithCancel(ctx)
	defer stopReplay()
	var wg sync.WaitGroup
	errs := make(chan error, len(replays))
	for _, r := range replays {
		wg.Go(func() {
			if _, err := r.Run(rctx); err != nil {
				errs <- err
			}
		})
	}
	// Discovery reads the first export's header: wait for it.
	for _, r := range replays {
		if err := waitForFile(ctx, r.Dir); err != nil {
			return err
		}
	}
	if err := s.StartAgent(ctx); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, `
Sightglass demo is running.
  ingest      %s  (archive in %s)
  agent       status: %s status --socket %s
  devices     %s
  read it     %s archive cat --store-dir %s %s/
  dashboard   %s  sign in as %s / %s
              (the certificate is the demo CA's, %s: accept the browser's warning or trust that file)
Stop with Ctrl-C.
`, s.IngestURL, s.ArchiveDir(), filepath.Join(o.Bin, "sightglass-agent"), s.StatusSocket(), strings.Join(described, "\n              "),
		filepath.Join(o.Bin, "sightglass-ingest"), s.ArchiveDir(), s.Tenant, s.DashboardURL, DemoUser, s.DashboardPassword, s.CACertFile())

	var wait <-chan time.Time
	if o.For > 0 {
		wait = time.After(o.For)
	}
	select {
	case <-ctx.Done():
	case <-wait:
	case err := <-errs:
		return err
	}
	stopReplay()
	wg.Wait()
	for _, stop := range stopSims {
		stop()
	}
	// Let the agent read the last exports and send everything it holds.
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	time.Sleep(1500 * time.Millisecond)
	drainErr := s.WaitDrained(dctx)
	if err := s.StopAgent(syscall.SIGTERM); err != nil {
		return err
	}
	samples, batches, err := s.Archive(dctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "demo: %d samples stored in %d batches under %s\n", len(samples), len(batches), s.ArchiveDir())
	if drainErr != nil {
		return drainErr
	}
	return s.StopIngest(syscall.SIGTERM)
}

func waitForFile(ctx context.Context, dir string) error {
	deadline := time.After(10 * time.Second)
	for {
		if m, _ := filepath.Glob(filepath.Join(dir, "*.csv")); len(m) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("no trend export appeared in %s", dir)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// simDevice is a simulated device the demo runs beside the trend replays.
type simDevice struct {
	// Devices is the agent configuration that polls it: YAML list items
	// indented for the devices section, as in WriteAgentConfig.
	Devices string
	// Describe is one line for the demo's banner.
	Describe string
	// Stop stops the simulator.
	Stop func()
}

// simulators lists the live device simulators the demo starts, one per
// protocol; each listens on loopback only.
func simulators() []func(ctx context.Context, o Options) (simDevice, error) {
	return []func(ctx context.Context, o Options) (simDevice, error){
		startModbus,
		startBACnet,
		startOPCUA,
	}
}
