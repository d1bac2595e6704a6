package opcua

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/poll"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// sink collects what the poller appends.
type sink struct {
	mu      sync.Mutex
	samples []telemetry.Sample
}

func (s *sink) Append(_ context.Context, samples []telemetry.Sample) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, samples...)
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.samples)
}

// TestUnderPoller runs the driver under the agent's real poller through
// the two outages that matter: the server is down when the agent starts,
// and it restarts while the agent polls. Samples must flow after each.
func TestUnderPoller(t *testing.T) {
	port := freePort(t)
	url := fmt.Sprintf("opc.tcp://%s:%d", testHost, port)
	points := []driver.Point{{ID: 1, Ref: "ns=1;s=AHU1.SupplyAirTemp"}, {ID: 2, Ref: "ns=1;s=AHU1.FanSpeed", Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms")}}
	var logs logBuffer
	d, err := New(driver.Device{Name: "late", Settings: noneSettings(t, url, "request_timeout: 400ms", "publishing_interval: 200ms"), Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	out := &sink{}
	sched, err := poll.New([]poll.Device{{Name: "late", Driver: d, Points: points, Interval: 500 * time.Millisecond, Timeout: 500 * time.Millisecond}}, out,
		poll.Options{BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sched.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	time.Sleep(time.Second) // the poller fails to connect a few times
	if out.count() != 0 {
		t.Fatal("samples with no server")
	}
	sim := startSim(t, simopcua.Options{Port: port})
	if !waitFor(t.Context(), 60*time.Second, func() bool { return out.count() > 5 }) {
		t.Fatalf("no samples after the server came up late:\n%s", logs.String())
	}
	sim.Close()
	time.Sleep(time.Second)
	before := out.count()
	startSim(t, simopcua.Options{Port: port})
	if !waitFor(t.Context(), 60*time.Second, func() bool { return out.count() > before+5 }) {
		t.Fatalf("no samples after the server restarted:\n%s", logs.String())
	}
}
