package modbussim

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
)

// FromProfile returns a strict unit serving a profile's points with
// realistic values that change over time: voltages wander around their
// nominal value, loads follow a slow cycle, energy counters only grow.
// Every read sees values computed for the moment it arrives.
func FromProfile(p *modbus.Profile) *Unit {
	u := NewUnit().Strict(true).Identify(Identity{Vendor: p.Vendor, ProductCode: p.Match.Product, ProductName: p.Model, Model: p.Model, Revision: "sim"})
	start := time.Now()
	points := p.Points
	u.update = func(u *Unit, now time.Time) {
		t := now.Sub(start).Seconds()
		for _, pp := range points {
			u.put(pp, Value(pp, t))
		}
	}
	u.update(u, start)
	return u
}

// Value is the simulated engineering value of a profile point t seconds
// after the simulator started, chosen by the point's unit and name.
func Value(pp modbus.ProfilePoint, t float64) float64 {
	h := fnv.New32a()
	h.Write([]byte(pp.Ref))
	phase := float64(h.Sum32()%628) / 100
	wave := func(period float64) float64 { return math.Sin(2*math.Pi*t/period + phase) }
	name := strings.ToLower(pp.Name)
	switch pp.Type {
	case "bool", "bit0":
		// Runs for 5 minutes, stops for one.
		if math.Mod(t+phase*60, 360) < 300 {
			return 1
		}
		return 0
	}
	if strings.HasPrefix(pp.Type, "bit") {
		return 0
	}
	switch pp.Unit {
	case "V":
		if strings.Contains(name, "line to line") || strings.Contains(name, "l-l") || strings.Contains(name, "line 1 to line") || strings.Contains(name, "line 2 to line") || strings.Contains(name, "line 3 to line") {
			return 400 + 3*wave(600)
		}
		if strings.Contains(name, "dc") {
			return 560 + 4*wave(300)
		}
		return 230 + 2*wave(600)
	case "A":
		if strings.Contains(name, "neutral") {
			return 2 + wave(300)
		}
		return 40 + 15*wave(900)
	case "W", "VA", "var":
		return 9000 + 3000*wave(900)
	case "kW", "kVA", "kvar":
		return 9 + 3*wave(900)
	case "Hz":
		if strings.Contains(name, "output") || strings.Contains(name, "motor") {
			return 45 + 5*wave(1200)
		}
		return 50 + 0.03*wave(120)
	case "kWh", "kvarh", "Wh", "MWh", "MJ", "GJ", "m³", "h":
		// Counters only grow; a modest rate so the demo shows movement.
		return 1000 + float64(h.Sum32()%5000) + t/10
	case "°C":
		return 21 + 3*wave(1800)
	case "°F":
		return 70 + 5*wave(1800)
	case "%":
		return 55 + 20*wave(1200)
	case "rpm":
		return 1400 + 60*wave(1200)
	case "m³/h", "l/s", "gpm", "GPM":
		return 12 + 4*wave(900)
	case "kPa":
		return 250 + 20*wave(600)
	case "bar":
		return 2.5 + 0.2*wave(600)
	case "Nm":
		return 80 + 10*wave(900)
	case "ppm":
		return 650 + 250*wave(3600)
	case "Btu/h":
		return 600000 + 150000*wave(1800)
	case "ton":
		return 50 + 12*wave(1800)
	case "kBtu", "ton-h", "gal", "l":
		return 1000 + float64(h.Sum32()%5000) + t/10
	case "":
		if strings.Contains(name, "mode") || strings.Contains(name, "state") || strings.Contains(name, "fan speed") {
			return float64(int(t/300+phase)%3 + 1)
		}
		if strings.Contains(name, "model") {
			return 1751
		}
	}
	if strings.Contains(name, "power factor") {
		return 0.93 + 0.03*wave(900)
	}
	return 100 + 10*wave(600)
}

// put stores a value in the unit's registers as the point's type, order
// and scale say; the caller holds u.mu.
func (u *Unit) put(pp modbus.ProfilePoint, v float64) {
	switch pp.Table {
	case "coil", "di":
		tbl := byte(Coils)
		if pp.Table == "di" {
			tbl = Discrete
		}
		u.bits[tbl][pp.Address] = v != 0
		return
	}
	tbl := byte(Holding)
	if pp.Table == "ir" {
		tbl = Input
	}
	raw := (v - pp.Offset) / pp.Scale
	b := make([]byte, 2*pp.Registers)
	switch {
	case pp.Type == "int16":
		binary.BigEndian.PutUint16(b, uint16(int16(math.Round(raw))))
	case pp.Type == "uint16":
		binary.BigEndian.PutUint16(b, uint16(math.Round(raw)))
	case pp.Type == "int32":
		binary.BigEndian.PutUint32(b, uint32(int32(math.Round(raw))))
	case pp.Type == "uint32":
		binary.BigEndian.PutUint32(b, uint32(math.Round(raw)))
	case pp.Type == "int64":
		binary.BigEndian.PutUint64(b, uint64(int64(math.Round(raw))))
	case pp.Type == "uint64":
		binary.BigEndian.PutUint64(b, uint64(math.Round(raw)))
	case pp.Type == "float32":
		binary.BigEndian.PutUint32(b, math.Float32bits(float32(raw)))
	case pp.Type == "float64":
		binary.BigEndian.PutUint64(b, math.Float64bits(raw))
	case strings.HasPrefix(pp.Type, "string"):
		copy(b, fmt.Sprintf("%.1f", raw))
	default:
		// A bit field: change only its bits, which other points share.
		var lo, hi int
		if _, err := fmt.Sscanf(pp.Type, "bits%d-%d", &lo, &hi); err != nil {
			fmt.Sscanf(pp.Type, "bit%d", &lo)
			hi = lo
		}
		mask := uint16(1<<(hi-lo+1)-1) << lo
		r := u.regs[tbl][pp.Address]
		u.regs[tbl][pp.Address] = r&^mask | uint16(int(raw)<<lo)&mask
		return
	}
	b = reorder(b, pp.Order, strings.HasPrefix(pp.Type, "string"))
	for i := range pp.Registers {
		u.regs[tbl][pp.Address+uint16(i)] = binary.BigEndian.Uint16(b[2*i:])
	}
}

// reorder lays big-endian bytes out in a device's byte order.
func reorder(b []byte, order string, text bool) []byte {
	n := len(b) / 2
	out := make([]byte, len(b))
	for i := range n {
		j := i
		if !text && (order == "CDAB" || order == "DCBA") {
			j = n - 1 - i
		}
		hi, lo := b[2*i], b[2*i+1]
		if order == "BADC" || order == "DCBA" {
			hi, lo = lo, hi
		}
		out[2*j], out[2*j+1] = hi, lo
	}
	return out
}
