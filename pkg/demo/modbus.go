package demo

import (
	"context"
	"fmt"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
)

// modbusUnits are the devices behind the demo's simulated Modbus TCP
// gateway: unit id, shipped profile, device name.
var modbusUnits = []struct {
	unit          byte
	profile, name string
}{
	{1, "schneider-pm5300", "main-meter"},
	{2, "danfoss-fc102", "ahu1-supply-fan"},
	{3, "onicon-system10", "chw-btu"},
}

// startModbus serves three shipped profiles from one simulated gateway on
// loopback; the agent polls each unit by its profile, learning on the
// first poll which unmapped gaps the strict simulator refuses to bridge.
func startModbus(ctx context.Context, o Options) (simDevice, error) {
	units := map[byte]*modbussim.Unit{}
	for _, u := range modbusUnits {
		p, err := modbus.LoadProfile(u.profile)
		if err != nil {
			return simDevice{}, fmt.Errorf("demo modbus simulator: %w", err)
		}
		units[u.unit] = modbussim.FromProfile(p)
	}
	srv, err := modbussim.Start(modbussim.Options{Addr: "127.0.0.1:0"}, units)
	if err != nil {
		return simDevice{}, fmt.Errorf("demo modbus simulator: %w", err)
	}
	var devices string
	for _, u := range modbusUnits {
		devices += fmt.Sprintf(`  - name: %s
    driver: modbus
    interval: 1s
    discover: true
    settings: {host: %q, unit: %d, profile: %s}
`, u.name, srv.Addr(), u.unit, u.profile)
	}
	return simDevice{
		Devices:  devices,
		Describe: fmt.Sprintf("a Modbus TCP gateway on %s: PM5300 meter (unit 1), FC 102 drive (unit 2), System-10 BTU meter (unit 3)", srv.Addr()),
		Stop:     func() { srv.Close() },
	}, nil
}
