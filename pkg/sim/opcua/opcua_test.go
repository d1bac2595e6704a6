package opcua_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"

	drv "github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

type settings string

func (s settings) Decode(v any) error {
	dec := yaml.NewDecoder(strings.NewReader(string(s)))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// connect opens an unsecured session of the OPC UA driver to s for
// points; the test's clean-up closes it.
func connect(t *testing.T, s *simopcua.Server, points []driver.Point) driver.Driver {
	t.Helper()
	d, err := drv.New(driver.Device{Name: "sim", Points: points, Settings: settings(fmt.Sprintf(
		"endpoint: %s\nsecurity_policy: None\nsecurity_mode: None\npki_dir: %s\n", s.URL, t.TempDir()))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestLoopbackOnly(t *testing.T) {
	for _, host := range []string{"0.0.0.0", "192.168.1.10", "example.com"} {
		if s, err := simopcua.Start(t.Context(), simopcua.Options{Host: host}); err == nil {
			s.Close()
			t.Errorf("Start on %s succeeded; the simulator must listen on loopback only", host)
		}
	}
}

// TestSimulator reads the simulator through the OPC UA driver: it enforces
// its MaxNodesPerRead, records the services, serves values that change and
// pages its history with continuation points.
func TestSimulator(t *testing.T) {
	epoch := time.Now().Add(-40 * time.Minute)
	s, err := simopcua.Start(t.Context(), simopcua.Options{MaxNodesPerRead: 3, Zones: 2, Epoch: epoch})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vars := s.Variables()
	if len(vars) != 10+2*2 {
		t.Fatalf("%d variables, want 14 (10 + 2 per zone)", len(vars))
	}
	var points []driver.Point
	for i, v := range vars {
		points = append(points, driver.Point{ID: uint64(i + 1), Ref: v})
	}
	d := connect(t, s, points)
	first, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	second, err := d.Read(t.Context(), points)
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for i := range first {
		if first[i].Status != telemetry.StatusOK {
			t.Errorf("sample %+v not ok", first[i])
		}
		if first[i].Value != second[i].Value {
			changed++
		}
	}
	if changed < len(points)/2 {
		t.Errorf("%d of %d values changed in 300ms", changed, len(points))
	}
	reads := 0
	for _, svc := range s.Services() {
		if svc == "Read" {
			reads++
		}
	}
	// 1 (limits) + 2 polls of 14 points at 3 per read.
	if want := 1 + 2*5; reads != want {
		t.Errorf("%d Reads, want %d: the simulator's limit of 3 was not stated or not kept", reads, want)
	}
	if !slices.Contains(s.Services(), "CreateSession") {
		t.Errorf("services not recorded: %q", s.Services())
	}

	hist := driver.Point{ID: 99, Ref: fmt.Sprintf("ns=%d;s=%s", s.NS, simopcua.HistoryNode)}
	end := time.Now()
	// 35 minutes at one a second is 2100 values: three pages of at most
	// 1000, joined by continuation points.
	got, err := d.(*drv.Driver).History(t.Context(), hist, end.Add(-35*time.Minute), end)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 2099 || len(got) > 2100 {
		t.Errorf("%d history values for 35 minutes at one a second, want 2100", len(got))
	}
	pages := 0
	for _, svc := range s.Services() {
		if svc == "HistoryRead" {
			pages++
		}
	}
	if pages != 3 {
		t.Errorf("%d HistoryRead requests for 2100 values, want 3 pages", pages)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Time-got[i-1].Time != 1000 {
			t.Fatalf("history not one a second: %v then %v", got[i-1], got[i])
		}
	}
}

// TestCloseWithRequestsInFlight closes the simulator while a client
// keeps reading: every secure channel ends at once. Cancelling the
// server's context before gopcua's Close left a channel that was handing
// a request to the stopped dispatcher stuck, and Close waited out
// gopcua's 10 s timeout (logged as "timed out waiting for channels").
func TestCloseWithRequestsInFlight(t *testing.T) {
	var logs drivertest.LogBuffer
	s, err := simopcua.Start(t.Context(), simopcua.Options{Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	points := []driver.Point{{ID: 1, Ref: s.Variables()[0]}}
	d := connect(t, s, points)
	stop := make(chan struct{})
	read := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, err := d.Read(t.Context(), points)
			if i == 0 {
				read <- err
			}
		}
	}()
	if err := <-read; err != nil {
		t.Fatalf("Read: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	close(stop)
	<-done
	if strings.Contains(logs.String(), "timed out waiting for channels") {
		t.Errorf("Close waited out gopcua's timeout for a channel with a request in flight:\n%s", logs.String())
	}
}
