package demo

import (
	"context"
	"fmt"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
)

// startBACnet serves a BACnet/IP controller (an AHU with a trend log, that
// segments its answers) and, behind the same simulated router, two MS/TP
// VAV controllers on network 5, all on loopback. The agent finds the AHU
// by Who-Is and discovers its points; the VAVs are polled at their routed
// addresses, one by ReadProperty only, as small MS/TP controllers are.
func startBACnet(ctx context.Context, _ Options) (simDevice, error) {
	ahu := bacnetsim.NewDevice(1001, "AHU-1", 6, 3, 1, true)
	ahu.MaxAPDU = 480              // segments its larger answers
	ahu.Objects[2].Flags[2] = true // an overridden point to show the status
	vav1 := bacnetsim.NewDevice(5001, "VAV-1", 2, 1, 0, false)
	vav1.Network, vav1.MAC, vav1.MaxAPDU, vav1.Segmentation = 5, []byte{0x01}, 480, bacnet.NoSegmentation
	vav2 := bacnetsim.NewDevice(5002, "VAV-2", 2, 1, 0, false)
	vav2.Network, vav2.MAC, vav2.MaxAPDU, vav2.Segmentation, vav2.NoRPM = 5, []byte{0x02}, 128, bacnet.NoSegmentation, true
	srv, err := bacnetsim.Start(ctx, bacnetsim.Config{Addr: "127.0.0.1:0", Local: ahu, Routed: []*bacnetsim.Device{vav1, vav2}})
	if err != nil {
		return simDevice{}, fmt.Errorf("demo bacnet simulator: %w", err)
	}
	devices := fmt.Sprintf(`  - name: ahu-1
    driver: bacnet
    interval: 1s
    discover: true
    settings: {device_instance: 1001, local_address: "127.0.0.1:0", broadcast: %q, timeout: 1s}
`, srv.Addr())
	for _, v := range []struct {
		name     string
		instance int
		mac      string
	}{{"vav-1", 5001, "01"}, {"vav-2", 5002, "02"}} {
		devices += fmt.Sprintf(`  - name: %s
    driver: bacnet
    interval: 2s
    settings: {device_instance: %d, local_address: "127.0.0.1:0", address: "%s/5:%s", timeout: 1s, max_per_network: 1}
    points:
      - {ref: "analog-input:1", name: zone temperature, unit: "°C"}
      - {ref: "analog-input:2", name: discharge temperature, unit: "°C"}
      - {ref: "binary-value:1", name: occupied}
`, v.name, v.instance, srv.Addr(), v.mac)
	}
	return simDevice{
		Devices:  devices,
		Describe: fmt.Sprintf("a BACnet/IP AHU controller with a trend log on %s, and two MS/TP VAVs behind its router on network 5", srv.Addr()),
		Stop:     func() { srv.Close() },
	}, nil
}
