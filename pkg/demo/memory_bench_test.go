package demo

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	bacnetsim "github.com/sightglass-bms/sightglass/pkg/sim/bacnet"
)

// BenchmarkAgentMemory runs the agent binary (a child process, measured
// from outside through /proc) polling 10,000 points every minute: two
// simulated BACnet controllers of 5,000 analog inputs each, one of them
// behind a router, read with ReadPropertyMultiple. It reports the peak
// resident set (VmHWM) once every point was read twice.
func BenchmarkAgentMemory(b *testing.B) {
	if binDir == "" {
		b.Skip("needs the binaries TestMain builds (not with -short)")
	}
	const perDevice = 5000
	for range b.N {
		ctx := b.Context()
		local := bacnetsim.NewDevice(2001, "BIG-1", perDevice, 0, 0, false)
		routed := bacnetsim.NewDevice(6001, "BIG-2", perDevice, 0, 0, false)
		routed.Network, routed.MAC, routed.Segmentation = 7, []byte{0x09}, bacnet.SegmentedBoth
		srv, err := bacnetsim.Start(ctx, bacnetsim.Config{Addr: "127.0.0.1:0", Local: local, Routed: []*bacnetsim.Device{routed}})
		if err != nil {
			b.Fatal(err)
		}
		s := &Stack{Bin: binDir, Dir: b.TempDir()}
		if err := s.Init(ctx); err != nil {
			b.Fatal(err)
		}
		var dev strings.Builder
		for _, d := range []struct {
			name, addr string
			inst       int
		}{{"big-1", srv.Addr().String(), 2001}, {"big-2", srv.Addr().String() + "/7:09", 6001}} {
			fmt.Fprintf(&dev, "  - name: %s\n    driver: bacnet\n    interval: 1m\n    settings: {device_instance: %d, local_address: \"127.0.0.1:0\", address: %q, timeout: 3s}\n    points:\n", d.name, d.inst, d.addr)
			for i := 1; i <= perDevice; i++ {
				fmt.Fprintf(&dev, "      - {ref: \"analog-input:%d\"}\n", i)
			}
		}
		if err := s.WriteAgentConfig(dev.String(), 5*time.Second); err != nil {
			b.Fatal(err)
		}
		if err := s.StartIngest(ctx); err != nil {
			b.Fatal(err)
		}
		if err := s.StartAgent(ctx); err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Minute)
		for {
			st, err := s.AgentStatus(ctx)
			done := err == nil && len(st.Devices) == 2
			for _, d := range st.Devices {
				done = done && d.Reads >= 2
			}
			if done {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("the devices were not read twice in 3 minutes: %+v (%v)", st.Devices, err)
			}
			time.Sleep(time.Second)
		}
		hwm, rss := procKB(b, s.agent.cmd.Process.Pid, "VmHWM"), procKB(b, s.agent.cmd.Process.Pid, "VmRSS")
		b.ReportMetric(float64(hwm)/1024, "MB-peak-RSS")
		b.ReportMetric(float64(rss)/1024, "MB-RSS")
		b.ReportMetric(2*perDevice, "points")
		s.Close()
		srv.Close()
	}
}

// procKB reads a "Vm…: N kB" line of /proc/PID/status.
func procKB(b *testing.B, pid int, field string) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.Atoi(strings.Fields(v)[0])
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
