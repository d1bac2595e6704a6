package poll

import (
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sightglass-bms/sightglass/agent/buffer"
	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// The agent's buffer is the DropCounter the scheduler hands its drops to.
var _ DropCounter = (*buffer.Buffer)(nil)

// TestDropCountedByTheBuffer runs the scheduler against the real buffer,
// with a read larger than the buffer may ever hold, so every Append fails
// and nothing can be dropped to make room: the scheduler drops the reads,
// the buffer counts them where a restart finds them (and so where the
// batch headers and status report them), and Health does not count them a
// second time.
func TestDropCountedByTheBuffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	opts := buffer.Options{MaxBytes: 64, NoSync: true, ReserveBytes: -1}
	synctest.Test(t, func(t *testing.T) {
		buf, err := buffer.Open(path, opts)
		if err != nil {
			t.Fatal(err)
		}
		fd := newFake()
		s := mustNew(t, []Device{{Name: "vav-3", Driver: fd, Points: []driver.Point{point(1, "x", 0), point(2, "y", 0), point(3, "z", 0)}, Interval: 10 * time.Second}},
			buf, Options{AppendAttempts: 2, AppendPause: 10 * time.Millisecond})
		runFor(t, s, 10500*time.Millisecond) // two reads of three samples, each too large to store
		st := s.Stats()[0]
		if st.DroppedReads != 2 || st.DroppedSamples != 6 || st.DroppedCountedBySink != 6 {
			t.Errorf("device stats: %d dropped reads, %d dropped samples, %d counted by the buffer; want 2, 6, 6", st.DroppedReads, st.DroppedSamples, st.DroppedCountedBySink)
		}
		if h := s.Health(); h.DroppedSamples != 0 {
			t.Errorf("Health.DroppedSamples = %d, want 0: the buffer reports these", h.DroppedSamples)
		}
		if err := buf.Close(); err != nil {
			t.Fatal(err)
		}
	})
	buf, err := buffer.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	if got := buf.Stats().DroppedSamples; got != 6 {
		t.Errorf("the buffer's dropped count after a restart = %d, want 6", got)
	}
}
