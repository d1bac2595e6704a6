package opcua

import (
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// TestConformance runs the driver kit against the in-process simulator,
// whose service log is the recording peer: anything it received that is
// not a read is a write.
func TestConformance(t *testing.T) {
	var sim *simopcua.Server
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			// MaxNodesPerRead 4 with 10 points makes every read a batch.
			sim = startSim(t, simopcua.Options{MaxNodesPerRead: 4})
			points := simPoints(sim, 10)
			d, err := New(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL), Points: points})
			if err != nil {
				t.Fatal(err)
			}
			return d, points
		},
		Writes: func() []string { return notReads(sim.Services()) },
	})
}

// TestNotReads proves the harness's write check can fail.
func TestNotReads(t *testing.T) {
	got := notReads([]string{"CreateSession", "Read", "Write", "Call", "Browse", "AddNodes"})
	if len(got) != 3 || got[0] != "Write" || got[1] != "Call" || got[2] != "AddNodes" {
		t.Fatalf("notReads = %q, want Write, Call, AddNodes", got)
	}
}
