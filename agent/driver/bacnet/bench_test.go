package bacnet

import (
	"fmt"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
)

// BenchmarkPoll reads n points of one simulated device per iteration and
// reports the requests and octets one poll costs, for a device that
// segments (max APDU 1476), one that cannot (max APDU 480), and one that
// sends only two segments of 480 without saying so (no
// max-segments-accepted): its first poll learns that from aborts
// (aborts_learning), later polls meet none (aborts/poll).
func BenchmarkPoll(b *testing.B) {
	for _, dev := range []struct {
		name    string
		maxAPDU int
		seg     bacnet.Segmentation
		maxSegs int
	}{{"segmenting-1476", 1476, bacnet.SegmentedBoth, 0}, {"unsegmented-480", 480, bacnet.NoSegmentation, 0}, {"two-segments-480", 480, bacnet.SegmentedBoth, 2}} {
		for _, n := range []int{100, 1000, 5000} {
			b.Run(fmt.Sprintf("%s/points=%d", dev.name, n), func(b *testing.B) {
				d := bacnetsim.NewDevice(77, "bench", n, 0, 0, false)
				d.MaxAPDU, d.Segmentation = dev.maxAPDU, dev.seg
				if dev.maxSegs > 0 {
					d.MaxSegments, d.NoMaxSegmentsAccepted = dev.maxSegs, true
				}
				sim, err := bacnetsim.Start(b.Context(), bacnetsim.Config{Local: d})
				if err != nil {
					b.Fatal(err)
				}
				defer sim.Close()
				points := make([]driver.Point, n)
				for i := range points {
					points[i] = driver.Point{ID: uint64(i + 1), Ref: fmt.Sprintf("analog-input:%d", i+1)}
				}
				drv, err := New(driver.Device{Name: "bench", Points: points,
					Settings: yamlText(fmt.Sprintf("device_instance: 77\nlocal_address: 127.0.0.1:0\naddress: %s\ntimeout: 2s\nmax_outstanding: 4\n", sim.Addr()))})
				if err != nil {
					b.Fatal(err)
				}
				defer drv.Close()
				if err := drv.Connect(b.Context()); err != nil {
					b.Fatal(err)
				}
				// One poll first: what a device teaches the planner (its
				// aborts) is learned once; the figures are the steady state.
				if _, err := drv.Read(b.Context(), points); err != nil {
					b.Fatal(err)
				}
				learned := sim.Aborts()
				c := drv.(*Driver).client.c
				before := c.Stats()
				b.ResetTimer()
				for b.Loop() {
					samples, err := drv.Read(b.Context(), points)
					if err != nil || len(samples) != n {
						b.Fatalf("%d samples, %v", len(samples), err)
					}
				}
				b.StopTimer()
				after := c.Stats()
				polls := float64(b.N)
				b.ReportMetric(float64(after.Requests-before.Requests)/polls, "requests/poll")
				b.ReportMetric(float64(after.BytesSent-before.BytesSent)/polls, "bytes_sent/poll")
				b.ReportMetric(float64(after.BytesReceived-before.BytesReceived)/polls, "bytes_received/poll")
				b.ReportMetric(float64(after.SegmentsReceived-before.SegmentsReceived)/polls, "segments/poll")
				b.ReportMetric(float64(sim.Aborts()-learned)/polls, "aborts/poll")
				b.ReportMetric(float64(learned), "aborts_learning")
			})
		}
	}
}

// BenchmarkDiscover50 discovers 50 devices (ten objects and a trend log
// each) behind one simulated router, unthrottled and at the default rate.
func BenchmarkDiscover50(b *testing.B) {
	var devs []*bacnetsim.Device
	for i := range 50 {
		d := bacnetsim.NewDevice(uint32(1000+i), fmt.Sprintf("VAV-%d", i), 6, 3, 1, true)
		d.Network, d.MAC, d.MaxAPDU, d.Segmentation = 5, []byte{byte(i + 1)}, 480, bacnet.NoSegmentation
		devs = append(devs, d)
	}
	sim, err := bacnetsim.Start(b.Context(), bacnetsim.Config{Routed: devs})
	if err != nil {
		b.Fatal(err)
	}
	defer sim.Close()
	for _, rate := range []float64{1000, 20} {
		b.Run(fmt.Sprintf("rate=%v", rate), func(b *testing.B) {
			for b.Loop() {
				start := time.Now()
				reports, err := Scan(b.Context(), ScanOptions{
					Client:  bacnet.Config{Local: "127.0.0.1:0", Broadcast: sim.Addr().String(), Timeout: time.Second},
					Network: bacnet.GlobalNetwork, Low: -1, High: -1, Wait: 500 * time.Millisecond, Rate: rate,
				})
				if err != nil || len(reports) != 50 {
					b.Fatalf("%d devices, %v", len(reports), err)
				}
				for _, r := range reports {
					if r.Err != "" || len(r.Objects) != 10 {
						b.Fatalf("device %d: %d objects, %s", r.Instance, len(r.Objects), r.Err)
					}
				}
				b.ReportMetric(time.Since(start).Seconds(), "s/discovery")
			}
		})
	}
}
