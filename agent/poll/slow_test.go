package poll

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// answerAfter returns a read that answers after d, honouring ctx like a
// real driver; reads numbered in hangs never answer.
func answerAfter(d time.Duration, hangs ...int) func(context.Context, int, []driver.Point) ([]telemetry.Sample, error) {
	return func(ctx context.Context, n int, points []driver.Point) ([]telemetry.Sample, error) {
		wait := d
		for _, h := range hangs {
			if n == h {
				wait = time.Hour
			}
		}
		select {
		case <-time.After(wait):
			return okSamples(points), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// TestSlowDevice polls a device that answers more slowly than its point's
// interval, or not at all, beside a fast one: the slow device is never read
// twice at once, ticks that pass during a read are skipped (not queued) and
// counted, every sample read is stored once, a read past the timeout fails
// without inventing samples, and the fast device keeps its own grid.
func TestSlowDevice(t *testing.T) {
	onePoint := []driver.Point{point(1, "p", time.Second)}
	tests := []struct {
		name         string
		points       []driver.Point // of the slow device
		read         func(context.Context, int, []driver.Point) ([]telemetry.Sample, error)
		want         []string // the slow device's reads
		wantReads    uint64
		wantSamples  uint64
		wantSkipped  uint64
		wantSlow     uint64
		wantLate     uint64
		wantFailures uint64
		wantSlowLogs int
	}{
		{
			// Reads take 2.5 s of a 1 s interval, within the 3 s timeout:
			// each read skips the two ticks that pass during it.
			name:         "slower than the interval, within the timeout",
			points:       onePoint,
			read:         answerAfter(2500 * time.Millisecond),
			want:         []string{"read@0s[p]", "read@3s[p]", "read@6s[p]", "read@9s[p]"},
			wantReads:    4,
			wantSamples:  4,
			wantSkipped:  8,
			wantSlow:     4,
			wantSlowLogs: 1,
		},
		{
			// The first read never answers: it fails at the 3 s timeout,
			// the device backs off 1 s, then answers in 100 ms; the ticks
			// at 0-3 s got no read of their own.
			name:         "past the timeout, then answering",
			points:       onePoint,
			read:         answerAfter(100*time.Millisecond, 0),
			want:         []string{"read@0s[p]", "read@4s[p]", "read@5s[p]", "read@6s[p]", "read@7s[p]", "read@8s[p]", "read@9s[p]", "read@10s[p]", "read@11s[p]"},
			wantReads:    8,
			wantSamples:  8,
			wantSkipped:  4,
			wantFailures: 1,
		},
		{
			// Points every 2 s and 3 s, reads of 1.5 s: each fits its own
			// interval, but a group falling due while the other's read is
			// in flight waits for it (one read at a time) and starts late:
			// at 3.5 s, 5 s, 6.5 s, 9.5 s and 11 s (cut short by the end
			// of the test, so not counted as read). The read at 5 s ends
			// after 6 s, skipping that tick of p.
			name:        "two point groups, each read delaying the other",
			points:      []driver.Point{point(1, "p", 2*time.Second), point(3, "r", 3*time.Second)},
			read:        answerAfter(1500 * time.Millisecond),
			want:        []string{"read@0s[p+r]", "read@2s[p]", "read@3.5s[r]", "read@5s[p]", "read@6.5s[r]", "read@8s[p]", "read@9.5s[r]", "read@11s[p]"},
			wantReads:   7,
			wantSamples: 8,
			wantSkipped: 1,
			wantLate:    5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				slow, fast := newFake(), newFake()
				slow.read = tt.read
				sink := &memSink{}
				var logs logBuffer
				s := mustNew(t, []Device{
					{Name: "slow-vav", Driver: slow, Points: tt.points, Interval: 10 * time.Second, Timeout: 3 * time.Second},
					{Name: "ahu-1", Driver: fast, Points: []driver.Point{point(2, "q", time.Second)}, Interval: time.Second},
				}, sink, Options{BackoffBase: time.Second, Logger: logs.logger()})
				runFor(t, s, 11750*time.Millisecond)

				equal(t, "slow device reads", slow.history("read"), tt.want)
				var wantFast []string
				for i := range 12 {
					wantFast = append(wantFast, fmt.Sprintf("read@%ds[q]", i))
				}
				equal(t, "fast device reads", fast.history("read"), wantFast)
				if slow.maxInflight != 1 || fast.maxInflight != 1 {
					t.Errorf("reads in flight at once: slow device %d, fast device %d; want 1", slow.maxInflight, fast.maxInflight)
				}

				st := s.Stats()
				sd, fd := st[0], st[1]
				if sd.Reads != tt.wantReads || sd.Samples != tt.wantSamples || sd.SkippedTicks != tt.wantSkipped || sd.SlowReads != tt.wantSlow || sd.LateReads != tt.wantLate || sd.Failures != tt.wantFailures {
					t.Errorf("slow device: %d reads, %d samples, %d skipped ticks, %d slow reads, %d late reads, %d failures; want %d, %d, %d, %d, %d, %d",
						sd.Reads, sd.Samples, sd.SkippedTicks, sd.SlowReads, sd.LateReads, sd.Failures,
						tt.wantReads, tt.wantSamples, tt.wantSkipped, tt.wantSlow, tt.wantLate, tt.wantFailures)
				}
				if tt.wantFailures > 0 && !strings.Contains(sd.LastError, "no answer within 3s") {
					t.Errorf("slow device's last error %q: want it to say it timed out", sd.LastError)
				}
				if fd.Reads != 12 || fd.SkippedTicks != 0 || fd.SlowReads != 0 || fd.LateReads != 0 || fd.Failures != 0 {
					t.Errorf("fast device: %+v; want 12 reads and nothing skipped, slow, late or failed", fd)
				}
				if n := len(logs.records(t, "device answers more slowly than its points' interval; ticks that pass during a read are skipped, not queued")); n != tt.wantSlowLogs {
					t.Errorf("%d slow-device warnings, want %d", n, tt.wantSlowLogs)
				}

				// Every successful read is stored, once; a timed-out read
				// stores nothing.
				var slowStored, fastStored uint64
				seen := map[telemetry.Sample]bool{}
				for _, smp := range sink.samples {
					if seen[smp] {
						t.Errorf("sample %+v stored twice", smp)
					}
					seen[smp] = true
					if smp.PointID == 2 {
						fastStored++
					} else {
						slowStored++
					}
				}
				if slowStored != sd.Samples || fastStored != fd.Samples || fd.Samples != fd.Reads {
					t.Errorf("stored %d samples of the slow device and %d of the fast one; they read %d and %d",
						slowStored, fastStored, sd.Samples, fd.Samples)
				}
			})
		})
	}
}

// countingSink refuses every append; when it counts drops (a
// DropCounter, as the buffer is), countErr scripts CountDropped.
type countingSink struct {
	memSink
	countErr error
	counted  int
}

func (s *countingSink) CountDropped(ctx context.Context, samples int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.countErr != nil {
		return s.countErr
	}
	s.counted += samples
	return nil
}

// TestDroppedReadIsCountedBySink: a read the sink refuses is handed to a
// DropCounter sink, whose count survives restarts, and Health leaves it
// out so it is reported once; a sink that cannot count it, or does not
// count drops at all, leaves it in Health.
func TestDroppedReadIsCountedBySink(t *testing.T) {
	refuse := func(int) bool { return true }
	tests := []struct {
		name        string
		sink        Sink
		wantCounted int    // in the sink
		wantHealth  uint64 // in Health.DroppedSamples
	}{
		{"sink counts the drops", &countingSink{memSink: memSink{fail: refuse}}, 4, 0},
		{"sink fails to count them", &countingSink{memSink: memSink{fail: refuse}, countErr: errors.New("disk full")}, 0, 4},
		{"sink does not count drops", &memSink{fail: refuse}, 0, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fd := newFake()
				s := mustNew(t, []Device{{Name: "vav-3", Driver: fd, Points: []driver.Point{point(1, "x", 0), point(2, "y", 0)}, Interval: 10 * time.Second}},
					tt.sink, Options{AppendAttempts: 2, AppendPause: 10 * time.Millisecond})
				runFor(t, s, 10500*time.Millisecond) // two reads of two samples, both refused
				st := s.Stats()[0]
				if st.DroppedReads != 2 || st.DroppedSamples != 4 {
					t.Fatalf("device stats: %d dropped reads, %d dropped samples; want 2, 4", st.DroppedReads, st.DroppedSamples)
				}
				counted := 0
				if cs, ok := tt.sink.(*countingSink); ok {
					counted = cs.counted
				}
				if counted != tt.wantCounted || st.DroppedCountedBySink != uint64(tt.wantCounted) {
					t.Errorf("the sink counted %d, the device says %d; want %d", counted, st.DroppedCountedBySink, tt.wantCounted)
				}
				if h := s.Health(); h.DroppedSamples != tt.wantHealth {
					t.Errorf("Health.DroppedSamples = %d, want %d", h.DroppedSamples, tt.wantHealth)
				}
			})
		})
	}
}
