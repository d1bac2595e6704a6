package cli

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/buffer"
	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/agent/poll"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// fakeAgent serves st on a unix socket the way a running agent does.
func fakeAgent(t *testing.T, st daemon.Status) string {
	t.Helper()
	// Unix socket paths are short: t.TempDir() can exceed the limit.
	dir, err := os.MkdirTemp("", "sg-status-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(st)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatus(t *testing.T) {
	st := daemon.Status{
		Agent: "ag-test", Site: "s-1", Version: "v1", StartedAt: time.Now().Add(-time.Hour),
		Buffer: buffer.Stats{PendingSamples: 12, SealedBatches: 3, DroppedSamples: 7},
		Devices: []poll.DeviceStats{{Name: "ahu1", Up: true, Reads: 5, SkippedTicks: 3, SlowReads: 4, Points: []poll.PointStats{{Name: "supply air", Samples: 5, BadSamples: 1, LastTime: time.Now(), LastValue: 21.5, LastStatus: "fault"}},
			Counters: []driver.Counter{{Name: "requests", Value: 4242}, {Name: driver.GuardRefusals, Value: 0}}},
			{Name: "rtu2", Up: false, LastError: "connection refused", Points: []poll.PointStats{{Name: "zone temp"}}, OutOfRangeSamples: 9,
				Counters: []driver.Counter{{Name: "requests", Value: 17}, {Name: driver.GuardRefusals, Value: 2}}},
			{Name: "trends", Up: true}},
	}
	sock := fakeAgent(t, st)
	t.Run("table", func(t *testing.T) {
		out, _, err := run(t, context.Background(), "status", "--socket", sock)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"agent ag-test", "12 samples pending", "7 dropped", "last upload never", "ahu1", "rtu2", "down", "connection refused",
			"GUARD REFUSED", "4242", "the read-only guard refused requests on rtu2 (2)", "outside what the ingest accepts (check the device's clock or time zone): rtu2 (9)",
			"devices slower than their interval", "ahu1 (3 ticks skipped, 4 slow reads, 0 late)"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		// A driver without counters (the CSV reader) shows dashes.
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "trends ") && strings.Count(line, " - ") < 1 {
				t.Errorf("the device without counters shows %q, want dashes", line)
			}
		}
	})
	t.Run("points", func(t *testing.T) {
		out, _, err := run(t, context.Background(), "status", "--socket", sock, "--points")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"POINT", "supply air", "21.5", "fault", "zone temp", "never"} {
			if !strings.Contains(out, want) {
				t.Errorf("--points output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("json", func(t *testing.T) {
		out, _, err := run(t, context.Background(), "status", "--socket", sock, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var got daemon.Status
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("--json printed no JSON: %v\n%s", err, out)
		}
		if got.Agent != "ag-test" || len(got.Devices) != 3 || got.Buffer.DroppedSamples != 7 || len(got.Devices[1].Counters) != 2 || got.Devices[1].Counters[1].Value != 2 {
			t.Errorf("--json = %+v", got)
		}
	})
}

func TestStatusNoAgent(t *testing.T) {
	_, _, err := run(t, context.Background(), "status", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "is it running?") {
		t.Errorf("err = %v, want a hint that the agent is not running", err)
	}
}
