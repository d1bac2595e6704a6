package opcua

import (
	"fmt"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// TestConformance runs the driver kit against the in-process simulator,
// whose service log is the recording peer: anything it received that is
// not a read is a write. One point keeps history (history: true) over a
// history that began a minute back, and every instance the kit builds
// reads the same simulator, so each finds the same history: the kit's
// resume check sees a driver without Restore read the backfill_max window
// again, and one restored read only what follows the checkpoint. (One
// simulator for all: building gopcua's server takes seconds under -race,
// and the kit builds some twenty instances.)
func TestConformance(t *testing.T) {
	// MaxNodesPerRead 4 with 10 points makes every read a batch.
	sim := startSim(t, simopcua.Options{MaxNodesPerRead: 4, Epoch: time.Now().Add(-time.Minute), HistoryInterval: 100 * time.Millisecond})
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			points := append(simPoints(sim, 10), historyPoint(sim, 11))
			d, err := New(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL, "backfill_max: 30s"), Points: points})
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

// historyPoint is the simulator's history variable as point id, with
// history: true.
func historyPoint(sim *simopcua.Server, id uint64) driver.Point {
	ref := fmt.Sprintf("ns=%d;s=%s", sim.NS, simopcua.HistoryNode)
	return driver.Point{ID: id, Ref: ref, Name: simopcua.HistoryNode, Settings: yamlSettings("history: true")}
}
