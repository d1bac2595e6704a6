package demo

import (
	"context"
	"fmt"

	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// startOPCUA serves the simulated building over OPC UA on loopback. The
// agent signs and encrypts (Basic256Sha256), pins the simulator's
// certificate on first use, discovers the variables, subscribes to the fan
// speeds and backfills the chilled-water temperature from history after
// an outage.
func startOPCUA(ctx context.Context, o Options) (simDevice, error) {
	srv, err := simopcua.Start(ctx, simopcua.Options{Secure: true})
	if err != nil {
		return simDevice{}, fmt.Errorf("demo opcua simulator: %w", err)
	}
	ns := srv.NS
	devices := fmt.Sprintf(`  - name: building-scada
    driver: opcua
    interval: 1s
    discover: true
    settings:
      endpoint: %s
      security_policy: Basic256Sha256
      security_mode: SignAndEncrypt
      publishing_interval: 500ms
    points:
      - {ref: "ns=%d;s=AHU1.FanSpeed", name: AHU1 fan speed, unit: "%%", mode: subscribe, sampling_interval: 250ms, deadband: 0.5, queue_size: 4}
      - {ref: "ns=%d;s=AHU2.FanSpeed", name: AHU2 fan speed, unit: "%%", mode: subscribe, sampling_interval: 250ms, queue_size: 4}
      - {ref: "ns=%d;s=%s", name: chilled water supply, unit: °C, history: true}
`, srv.URL, ns, ns, ns, simopcua.HistoryNode)
	return simDevice{
		Devices:  devices,
		Describe: fmt.Sprintf("an OPC UA server on %s (Basic256Sha256, SignAndEncrypt): two AHUs, a chiller plant, zones; fan speeds by subscription", srv.URL),
		Stop:     func() { srv.Close() },
	}, nil
}
