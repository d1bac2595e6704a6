package bacnet

import (
	"fmt"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	"github.com/sightglass-bms/sightglass/pkg/sim/bacnet/nodepeer"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// TestNodePeerConformanceIntegration runs the driver kit against a device
// on @bacnet-js/client, whose log of received services is the write check.
func TestNodePeerConformanceIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	var peer *nodepeer.Peer
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) (driver.Driver, []driver.Point) {
			peer = nodepeer.Start(t, "", 4242)
			points := []driver.Point{{ID: 1, Ref: "analog-input:0"}, {ID: 2, Ref: "binary-input:0"}, {ID: 3, Ref: "multi-state-value:0"}}
			return newDriver(t, fmt.Sprintf("device_instance: 4242\nlocal_address: 127.0.0.1:0\naddress: %s\n", peer.Addr), points), points
		},
		Writes: func() []string { return peer.Writes() },
	})
}

// TestNodePeerStatusIntegration reads the peer's flagged objects.
func TestNodePeerStatusIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	peer := nodepeer.Start(t, "", 4242)
	points := []driver.Point{
		{ID: 1, Ref: "analog-input:0"}, {ID: 2, Ref: "analog-input:1"}, {ID: 3, Ref: "binary-input:0"},
		{ID: 4, Ref: "binary-value:1"}, {ID: 5, Ref: "multi-state-value:0"},
	}
	want := []telemetry.Status{telemetry.StatusOK, telemetry.StatusFault, telemetry.StatusOutOfService, telemetry.StatusOverridden, telemetry.StatusInAlarm}
	for _, rpm := range []string{"auto", "off"} {
		t.Run("rpm "+rpm, func(t *testing.T) {
			d := newDriver(t, fmt.Sprintf("device_instance: 4242\nlocal_address: 127.0.0.1:0\naddress: %s\nread_property_multiple: %s\n", peer.Addr, rpm), points)
			if err := d.Connect(t.Context()); err != nil {
				t.Fatal(err)
			}
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range samples {
				if s.Status != want[i] {
					t.Errorf("%s: status %v, want %v", points[i].Ref, s.Status, want[i])
				}
			}
			if samples[4].Value != 2 || samples[2].Value != 1 {
				t.Errorf("multi-state %v, binary %v; want 2 and 1", samples[4].Value, samples[2].Value)
			}
			found, err := d.Discover(t.Context())
			if err != nil || len(found) != 5 {
				t.Fatalf("discover: %d points, %v", len(found), err)
			}
			if found[0].Name != "Zone Temp" || found[0].Unit != "°C" || found[0].Settings == nil {
				t.Errorf("discovered %+v, want name, unit and the trend log", found[0])
			}
		})
	}
	if w := peer.Writes(); len(w) > 0 {
		t.Errorf("the peer received non-reads: %v", w)
	}
}

// TestNodePeerBackfillIntegration backfills ten minutes the agent was
// away from the peer's trend log (one record a minute), by ReadRange by
// time, from a mark left on disk as a stopped agent would.
func TestNodePeerBackfillIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	peer := nodepeer.Start(t, "", 4242)
	dir := t.TempDir()
	away := time.Now().Add(-10*time.Minute - 30*time.Second)
	state := newBackfillState(dir, "node")
	state.stage("analog-input:0", mark{Last: away.UnixMilli()})
	if err := state.commit(); err != nil {
		t.Fatal(err)
	}
	points := []driver.Point{{ID: 1, Ref: "analog-input:0", Settings: yamlText("trend_log: trend-log:0")}}
	d, err := New(driver.Device{Name: "node", DataDir: dir, Points: points,
		Settings: yamlText(fmt.Sprintf("device_instance: 4242\nlocal_address: 127.0.0.1:0\naddress: %s\n", peer.Addr))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	backfilled := samples[1:]
	if len(backfilled) < 10 || len(backfilled) > 11 {
		t.Fatalf("%d backfilled samples for 10.5 minutes logged every minute", len(backfilled))
	}
	for _, s := range backfilled {
		if s.Time <= away.UnixMilli() || s.Time >= samples[0].Time || s.Value < 17 || s.Value > 23 {
			t.Errorf("backfilled %+v outside the gap or the logged range", s)
		}
	}
	peer.WaitFor(t, "readRange", 1) // the peer's log arrives on its own pipe
	if len(peer.Writes()) > 0 {
		t.Errorf("peer received %v", peer.Services())
	}
}
