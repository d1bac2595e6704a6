package modbus_test

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// handMap is a unit whose registers hold known values in every type and
// byte order.
func handMap() *modbussim.Unit {
	return modbussim.NewUnit().
		// float32 12.5 = 0x41480000 in ABCD, CDAB, BADC, DCBA
		SetRegisters(modbussim.Holding, 0, 0x4148, 0x0000).
		SetRegisters(modbussim.Holding, 2, 0x0000, 0x4148).
		SetRegisters(modbussim.Holding, 4, 0x4841, 0x0000).
		SetRegisters(modbussim.Holding, 6, 0x0000, 0x4841).
		SetRegisters(modbussim.Holding, 10, 0xfffe).                         // int16 -2, uint16 65534
		SetRegisters(modbussim.Holding, 11, 0x0001, 0x0002).                 // uint32 65538; CDAB 131073
		SetRegisters(modbussim.Holding, 13, 0xffff, 0xffff, 0xffff, 0xfffd). // int64 -3
		SetRegisters(modbussim.Holding, 17, 0x4029, 0x0000, 0x0000, 0x0000). // float64 12.5
		SetRegisters(modbussim.Holding, 21, 0b1010_0000_0000_0101).          // bits
		SetRegisters(modbussim.Holding, 22, 0x3132, 0x2e35, 0x0000).         // "12.5"
		SetRegisters(modbussim.Holding, 25, 0x7fc0, 0x0000).                 // NaN
		SetRegisters(modbussim.Holding, 27, 0x4142, 0x4300).                 // "ABC"
		SetRegisters(modbussim.Input, 9, 500).                               // 30010
		SetBits(modbussim.Coils, 0, true, false, true).
		SetBits(modbussim.Discrete, 4, true)
}

func TestReadTypes(t *testing.T) {
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	tests := []struct {
		ref, extra string
		want       float64
		status     telemetry.Status
	}{
		{"hr/0/float32", "", 12.5, telemetry.StatusOK},
		{"40001/float32", "", 12.5, telemetry.StatusOK},
		{"400001/float32", "", 12.5, telemetry.StatusOK},
		{"hr/2/float32", "order: CDAB", 12.5, telemetry.StatusOK},
		{"hr/4/float32", "order: BADC", 12.5, telemetry.StatusOK},
		{"hr/6/float32", "order: DCBA", 12.5, telemetry.StatusOK},
		{"hr/10/int16", "", -2, telemetry.StatusOK},
		{"hr/10", "", 65534, telemetry.StatusOK},
		{"u1/hr/10/int16", "scale: 0.1\noffset: 1", 0.8, telemetry.StatusOK},
		{"hr/11/uint32", "", 65538, telemetry.StatusOK},
		{"u1/hr/11/uint32", "order: CDAB", 131073, telemetry.StatusOK},
		{"hr/13/int64", "", -3, telemetry.StatusOK},
		{"hr/17/float64", "", 12.5, telemetry.StatusOK},
		{"hr/21/bit0", "", 1, telemetry.StatusOK},
		{"hr/21/bit1", "", 0, telemetry.StatusOK},
		{"hr/21/bits0-3", "", 5, telemetry.StatusOK},
		{"hr/21/bits13-15", "", 5, telemetry.StatusOK},
		{"hr/22/string5", "", 12.5, telemetry.StatusOK},
		{"hr/25/float32", "", 0, telemetry.StatusFault},
		{"hr/27/string3", "", 0, telemetry.StatusFault},
		{"30010", "", 500, telemetry.StatusOK},
		{"ir/9", "", 500, telemetry.StatusOK},
		{"coil/0", "", 1, telemetry.StatusOK},
		{"00002", "", 0, telemetry.StatusOK},
		{"u1/coil/2", "", 1, telemetry.StatusOK},
		{"10005", "", 1, telemetry.StatusOK},
	}
	var points []driver.Point
	for i, tt := range tests {
		points = append(points, point(uint64(i+1), tt.ref, tt.extra))
	}
	d := newDriver(t, sim.Addr(), "", points...)
	samples, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != len(tests) {
		t.Fatalf("%d samples for %d points", len(samples), len(tests))
	}
	for i, tt := range tests {
		s := samples[i]
		if s.PointID != uint64(i+1) || s.Status != tt.status || math.Abs(s.Value-tt.want) > 1e-9 || s.Time == 0 {
			t.Errorf("%s (%s): got %+v, want value %v status %v", tt.ref, tt.extra, s, tt.want, tt.status)
		}
	}
	// Bit fields and whole words on the very same register are fine.
	if _, err := modbus.New(driver.Device{Name: "d", Settings: yamlSettings("host: 127.0.0.1"),
		Points: []driver.Point{point(1, "hr/5/bit0", ""), point(2, "hr/5/bits4-7", ""), point(3, "hr/5", ""), point(4, "hr/6/int32", "")}}); err != nil {
		t.Errorf("points sharing a register: %v", err)
	}
	if d.Refused() != 0 {
		t.Errorf("the guard refused %d of the driver's own requests", d.Refused())
	}
	// Everything but the coils and discrete inputs sits within 125
	// registers per table: one read per table.
	if got := len(sim.Requests()); got != 4 {
		t.Errorf("%d requests for 4 tables: %v", got, sim.Requests())
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name, settings, ref, extra, want string
	}{
		{"no host", "", "hr/0", "", "settings.host: required"},
		{"unknown key", "host: 127.0.0.1\nbogus: 1", "hr/0", "", "bogus"},
		{"bad order", "host: 127.0.0.1\norder: ABDC", "hr/0", "", "settings.order"},
		{"bad unit", "host: 127.0.0.1\nunit: 300", "hr/0", "", "settings.unit"},
		{"bad profile", "host: 127.0.0.1\nprofile: nope", "hr/0", "", "no such built-in profile"},
		{"unknown type", "host: 127.0.0.1", "hr/0/float16", "", `point 1 "hr/0/float16": unknown type "float16"`},
		{"out of range", "host: 127.0.0.1", "hr/65535/float32", "", "runs past the last address"},
		{"one-based zero", "host: 127.0.0.1\naddressing: 1", "hr/0", "", "one-based numbers run 1 to 65536"},
		{"modicon range", "host: 127.0.0.1", "50001", "", "first digit"},
		{"type on coil", "host: 127.0.0.1", "coil/3/float32", "", "does not fit a coil"},
		{"bool on register", "host: 127.0.0.1", "hr/3/bool", "", "does not fit a hr register"},
		{"bit 16", "host: 127.0.0.1", "hr/3/bit16", "", "bit0 to bit15"},
		{"scale zero", "host: 127.0.0.1", "hr/3", "scale: 0", "scale"},
		{"unknown point key", "host: 127.0.0.1", "hr/3", "scael: 2", "line"},
		{"scale on coil", "host: 127.0.0.1", "coil/3", "scale: 2", "single bit"},
		{"trailing", "host: 127.0.0.1", "hr/3/uint16/x", "", "trailing"},
		{"overlap", "host: 127.0.0.1", "hr/1/float32", "", `point "hr/1/float32" (u1/hr/1/float32) overlaps point "hr/0/float32"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			points := []driver.Point{point(1, tt.ref, tt.extra)}
			if tt.name == "overlap" {
				points = append([]driver.Point{point(2, "hr/0/float32", "")}, points...)
			}
			_, err := modbus.New(driver.Device{Name: "d", Settings: yamlSettings(tt.settings), Points: points})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to say %q", err, tt.want)
			}
		})
	}
}

// TestGuardRefusesWrites calls the guarded client directly with every
// write goburrow offers: each is refused with ErrRefused, counted, and
// nothing reaches the recording peer.
func TestGuardRefusesWrites(t *testing.T) {
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	tr, err := modbus.NewTransport(modbus.TransportOptions{Address: sim.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	g := modbus.NewGuard(testLogger(t))
	c := g.Client(t.Context(), tr, 1)
	writes := map[string]func() ([]byte, error){
		"write single coil":        func() ([]byte, error) { return c.WriteSingleCoil(0, 0xff00) },
		"write multiple coils":     func() ([]byte, error) { return c.WriteMultipleCoils(0, 1, []byte{1}) },
		"write single register":    func() ([]byte, error) { return c.WriteSingleRegister(0, 1) },
		"write multiple registers": func() ([]byte, error) { return c.WriteMultipleRegisters(0, 1, []byte{0, 1}) },
		"mask write register":      func() ([]byte, error) { return c.MaskWriteRegister(0, 0, 1) },
		"read/write registers":     func() ([]byte, error) { return c.ReadWriteMultipleRegisters(0, 1, 0, 1, []byte{0, 1}) },
		"read FIFO queue":          func() ([]byte, error) { return c.ReadFIFOQueue(0) },
	}
	for name, call := range writes {
		if _, err := call(); !errors.Is(err, driver.ErrRefused) {
			t.Errorf("%s: err = %v, want ErrRefused", name, err)
		}
	}
	if got := g.Refused(); got != uint64(len(writes)) {
		t.Errorf("Refused() = %d, want %d", got, len(writes))
	}
	// A read on the same client goes through: the peer is listening.
	if _, err := c.ReadHoldingRegisters(0, 2); err != nil {
		t.Fatalf("read through the guard: %v", err)
	}
	reqs := sim.Requests()
	if len(reqs) != 1 || reqs[0].Function != 3 {
		t.Errorf("peer received %v, want only the one read", reqs)
	}
	if w := sim.Writes(); len(w) > 0 {
		t.Errorf("writes reached the peer: %v", w)
	}
}

// TestDeadDeviceDoesNotBlock checks that connect and read failures come
// back within the context's deadline, and as ErrConnLost.
func TestDeadDevice(t *testing.T) {
	// A port nobody listens on: take one and close it.
	sim := startSim(t, modbussim.Options{}, nil)
	addr := sim.Addr()
	sim.Close()
	d, err := modbus.New(driver.Device{Name: "dead", Settings: yamlSettings("host: " + addr)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); !errors.Is(err, driver.ErrConnLost) {
		t.Errorf("Connect to a closed port: %v, want ErrConnLost", err)
	}

	silent := startSim(t, modbussim.Options{Fault: func(modbussim.Request) modbussim.Fault { return modbussim.Silent }}, map[byte]*modbussim.Unit{1: handMap()})
	p := point(1, "hr/0", "")
	d2 := newDriver(t, silent.Addr(), "request_timeout: 200ms", p)
	start := time.Now()
	_, err = d2.Read(t.Context(), []driver.Point{p})
	if !errors.Is(err, driver.ErrConnLost) || !strings.Contains(err.Error(), "no answer in time") {
		t.Errorf("Read of a silent device: %v, want ErrConnLost saying no answer", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Read of a silent device took %s with request_timeout 200ms", el)
	}
}

// TestLocalAddress dials from the configured local IP (127.0.0.2 stands
// in for the control NIC).
func TestLocalAddress(t *testing.T) {
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	p := point(1, "hr/0/float32", "")
	d := newDriver(t, sim.Addr(), "local_address: 127.0.0.2", p)
	if _, err := d.Read(t.Context(), []driver.Point{p}); err != nil {
		t.Fatal(err)
	}
	reqs := sim.Requests()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0].From, "127.0.0.2:") {
		t.Errorf("requests came from %+v, want 127.0.0.2", reqs)
	}
}

// TestConcurrentReads: with concurrency above 1 the poller may call Read
// from several goroutines; requests are serialised on the connection and
// every answer lands with its own request.
func TestConcurrentReads(t *testing.T) {
	sim := startSim(t, modbussim.Options{}, map[byte]*modbussim.Unit{1: handMap()})
	a, b := point(1, "hr/0/float32", ""), point(2, "ir/9", "")
	d := newDriver(t, sim.Addr(), "", a, b)
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			p := a
			want := 12.5
			if i%2 == 1 {
				p, want = b, 500
			}
			for range 20 {
				s, err := d.Read(t.Context(), []driver.Point{p})
				if err != nil {
					errs <- err
					return
				}
				if s[0].Value != want {
					errs <- fmt.Errorf("%s = %v, want %v: answers crossed", p.Ref, s[0].Value, want)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestParseUnits(t *testing.T) {
	tests := []struct {
		in   string
		want []byte
		bad  bool
	}{
		{in: "1", want: []byte{1}},
		{in: "1-3", want: []byte{1, 2, 3}},
		{in: "5, 1-2,2", want: []byte{5, 1, 2}},
		{in: "0-255", want: nil},
		{in: "3-1", bad: true},
		{in: "256", bad: true},
		{in: "x", bad: true},
		{in: "", bad: true},
	}
	for _, tt := range tests {
		got, err := modbus.ParseUnits(tt.in)
		switch {
		case tt.bad && err == nil:
			t.Errorf("ParseUnits(%q) = %v, want an error", tt.in, got)
		case !tt.bad && err != nil:
			t.Errorf("ParseUnits(%q): %v", tt.in, err)
		case tt.in == "0-255" && len(got) != 256:
			t.Errorf("ParseUnits(0-255) gave %d ids", len(got))
		case tt.want != nil && string(got) != string(tt.want):
			t.Errorf("ParseUnits(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
