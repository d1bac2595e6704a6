package opcua

import (
	"fmt"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// BenchmarkRead10000 polls 10,000 nodes of the simulator once per
// iteration under different server limits, and reports the ReadRequests
// one poll takes (reads/poll) beside the time per poll.
func BenchmarkRead10000(b *testing.B) {
	const nodes = 10_000
	for _, limit := range []uint32{100, 1000, 5000} {
		b.Run(fmt.Sprintf("MaxNodesPerRead=%d", limit), func(b *testing.B) {
			// 2 variables per zone plus the 10 of the plant and AHUs.
			sim := startSim(b, simopcua.Options{MaxNodesPerRead: limit, Zones: nodes / 2})
			points := simPoints(sim, nodes)
			if len(points) != nodes {
				b.Fatalf("simulator has %d variables, want %d", len(points), nodes)
			}
			reads := func() int { return countOf(sim.Services(), "Read") }
			polls, n := benchPolls(b, noneSettings(b, sim.URL), points, reads)
			b.ReportMetric(float64(n)/float64(polls), "reads/poll")
		})
	}
}

// BenchmarkNodeOPCUARead10000 polls 10,000 variables of the node-opcua
// peer (MaxNodesPerRead 1000) over Basic256Sha256 SignAndEncrypt.
func BenchmarkNodeOPCUARead10000(b *testing.B) {
	const nodes = 10_000
	p := startPeer(b, peerOptions{MaxNodesPerRead: 1000, Zones: nodes})
	points := make([]driver.Point, nodes)
	for i := range points {
		points[i] = driver.Point{ID: uint64(i + 1), Ref: peerRef(fmt.Sprintf("Zones.Zone%d.Temp", i+1))}
	}
	settings := yamlSettings(fmt.Sprintf("endpoint: %s\nsecurity_policy: Basic256Sha256\nsecurity_mode: SignAndEncrypt\npki_dir: %s\nrequest_timeout: 30s\n", p.URL, b.TempDir()))
	reads := func() int { return p.count("Read") }
	polls, _ := benchPolls(b, settings, points, reads)
	// The peer's log arrives through a pipe: wait for the last reads. The
	// peer is this benchmark's alone; its first Read is Connect's limits.
	var n int
	waitFor(b.Context(), 5*time.Second, func() bool { n = reads() - 1; return n >= polls*nodes/1000 })
	b.ReportMetric(float64(n)/float64(polls), "reads/poll")
}

// benchPolls connects a driver and polls points in the benchmark loop. It
// returns the polls made and the ReadRequests the server counted since
// Connect (reads counts them so far).
func benchPolls(b *testing.B, settings yamlSettings, points []driver.Point, reads func() int) (polls, n int) {
	d, err := New(driver.Device{Name: "bench", Settings: settings, Points: points})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(b.Context()); err != nil {
		b.Fatal(err)
	}
	before := reads()
	for b.Loop() {
		samples, err := d.Read(b.Context(), points)
		if err != nil {
			b.Fatal(err)
		}
		if len(samples) != len(points) {
			b.Fatalf("%d samples for %d points", len(samples), len(points))
		}
		polls++
	}
	b.StopTimer()
	return polls, reads() - before
}
