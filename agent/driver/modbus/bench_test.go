package modbus_test

import (
	"cmp"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
)

// regMap is a register map for the request-count benchmark.
type regMap struct {
	name   string
	points []modbus.ProfilePoint
}

func benchMaps(b *testing.B) []regMap {
	var maps []regMap
	for _, name := range modbus.BuiltinProfiles() {
		p, err := modbus.LoadProfile(name)
		if err != nil {
			b.Fatal(err)
		}
		maps = append(maps, regMap{name, p.Points})
	}
	sparse := func(name string, n, every int, typ string) regMap {
		text := "source: synthetic\npoints:\n"
		for i := range n {
			text += fmt.Sprintf("  - {ref: hr/%d/%s}\n", i*every, typ)
		}
		p, err := modbus.ParseProfile(name, []byte(text))
		if err != nil {
			b.Fatal(err)
		}
		return regMap{name, p.Points}
	}
	return append(maps,
		sparse("sparse-every-4", 200, 4, "float32"),    // gaps of 2: bridged
		sparse("sparse-every-20", 100, 20, "uint16"),   // gaps of 19: just too wide
		sparse("sparse-every-10", 100, 10, "float32"),  // gaps of 8
		sparse("dense-500-uint16", 500, 1, "uint16"),   // contiguous, 4 full blocks
		sparse("sparse-every-100", 50, 100, "float64"), // far apart
	)
}

// reads counts the reads covering points when reads may bridge gaps of
// at most gap registers (bits: 16 times as many) and span at most 125
// registers or 2000 bits: the greedy count, which is the minimum for
// these constraints. gap -1 bridges anything: the minimum possible.
func reads(points []modbus.ProfilePoint, gap int) int {
	type iv struct {
		table      string
		start, end int
	}
	var ivs []iv
	for _, p := range points {
		ivs = append(ivs, iv{p.Table, int(p.Address), int(p.Address) + p.Registers})
	}
	slices.SortFunc(ivs, func(a, b iv) int { return cmp.Or(cmp.Compare(a.table, b.table), cmp.Compare(a.start, b.start)) })
	n := 0
	var cur iv
	for i, v := range ivs {
		limit, g := 125, gap
		if v.table == "coil" || v.table == "di" {
			limit, g = 2000, 16*gap
		}
		if i > 0 && v.table == cur.table && (gap < 0 || v.start-cur.end <= g) && max(cur.end, v.end)-cur.start <= limit {
			cur.end = max(cur.end, v.end)
			continue
		}
		n++
		cur = v
	}
	return n
}

// BenchmarkRequestsPerPoll reports, per register map, the requests one
// poll of every point takes once the driver has learned the device, on a
// device that reads any register (lenient) and on one refusing unmapped
// ones (strict), next to the minimum possible and to grouping strictly
// contiguous registers.
func BenchmarkRequestsPerPoll(b *testing.B) {
	for _, m := range benchMaps(b) {
		for _, strict := range []bool{false, true} {
			mode := "lenient"
			if strict {
				mode = "strict"
			}
			b.Run(m.name+"/"+mode, func(b *testing.B) {
				prof := &modbus.Profile{Name: m.name, Points: m.points}
				sim := startSim(b, modbussim.Options{}, map[byte]*modbussim.Unit{1: modbussim.FromProfile(prof).Strict(strict)})
				points := make([]driver.Point, len(m.points))
				for i, p := range m.points {
					points[i] = driver.Point{ID: uint64(i + 1), Ref: "u1/" + p.Ref}
				}
				d := newDriver(b, sim.Addr(), "", points...)
				// Learn first: a strict device refuses bridged gaps once.
				for range 2 {
					if _, err := d.Read(b.Context(), points); err != nil {
						b.Fatal(err)
					}
				}
				sim.ResetRequests()
				polls := 0
				for b.Loop() {
					if _, err := d.Read(b.Context(), points); err != nil {
						b.Fatal(err)
					}
					polls++
				}
				got := float64(len(sim.Requests())) / float64(polls)
				minimum, contiguous := reads(m.points, -1), reads(m.points, 0)
				if strict {
					// Nothing unmapped can be bridged on a strict device.
					minimum = contiguous
				}
				b.ReportMetric(got, "requests/poll")
				b.ReportMetric(float64(minimum), "min/poll")
				b.ReportMetric(float64(contiguous), "contiguous/poll")
				b.ReportMetric(float64(len(points)), "points")
				if got > float64(contiguous) {
					b.Errorf("%.1f requests per poll, more than the %d of grouping contiguous registers", got, contiguous)
				}
				if contiguous == minimum && got != float64(minimum) {
					b.Errorf("%.1f requests per poll on a map whose minimum is %d", got, minimum)
				}
			})
		}
	}
}

// BenchmarkSamplesPerSecond measures the samples one agent's drivers read
// from the local simulator: each device a PM5300 profile on its own
// connection, polled back to back.
func BenchmarkSamplesPerSecond(b *testing.B) {
	prof, err := modbus.LoadProfile("schneider-pm5300")
	if err != nil {
		b.Fatal(err)
	}
	for _, devices := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			units := map[byte]*modbussim.Unit{}
			for u := range devices {
				units[byte(u+1)] = modbussim.FromProfile(prof)
			}
			sim := startSim(b, modbussim.Options{}, units)
			type dev struct {
				d      *modbus.Driver
				points []driver.Point
			}
			drivers := make(chan dev, devices)
			for u := range devices {
				var ps []driver.Point
				for i, p := range prof.Points {
					ps = append(ps, driver.Point{ID: uint64(u*1000 + i + 1), Ref: fmt.Sprintf("u%d/%s", u+1, p.Ref)})
				}
				d := newDriver(b, sim.Addr(), fmt.Sprintf("unit: %d", u+1), ps...)
				if _, err := d.Read(b.Context(), ps); err != nil { // learn the gaps
					b.Fatal(err)
				}
				drivers <- dev{d, ps}
			}
			var samples atomic.Int64
			// One goroutine per device, as the poller runs one worker
			// per device; extra goroutines wait for a free device.
			b.SetParallelism((devices + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				dv := <-drivers
				defer func() { drivers <- dv }()
				for pb.Next() {
					s, err := dv.d.Read(b.Context(), dv.points)
					if err != nil {
						b.Error(err)
						return
					}
					samples.Add(int64(len(s)))
				}
			})
			b.ReportMetric(float64(samples.Load())/time.Since(start).Seconds(), "samples/s")
		})
	}
}
