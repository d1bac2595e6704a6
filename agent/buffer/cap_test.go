package buffer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
	bolt "go.etcd.io/bbolt"
)

// TestCapPending fills a buffer of pending records only and checks the cap
// against an independent model: records dropped oldest first until the
// live data fits, each dropped sample counted once, the count persisted.
func TestCapPending(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	now := time.UnixMilli(1_700_000_000_000)
	rec, _ := encodeRecord(mkSamples(0, 10), now.UnixMilli())
	opts := Options{MaxBytes: int64(5*(len(rec)+8) + 3), NoSync: true} // room for 5 records, not 6
	b := openT(t, path, opts)
	defer func() { b.Close() }()
	b.now = func() time.Time { return now }

	type modelRec struct {
		samples []telemetry.Sample
		size    int64
	}
	var (
		model        []modelRec
		modelBytes   int64
		modelDropped uint64
	)
	for i := range 23 {
		n := 1 + i%10 // records of different sizes
		s := mkSamples(i*100, n)
		if err := b.Append(ctx, s); err != nil {
			t.Fatal(err)
		}
		r, _ := encodeRecord(s, now.UnixMilli())
		model = append(model, modelRec{s, int64(len(r) + 8)})
		modelBytes += int64(len(r) + 8)
		for modelBytes > opts.MaxBytes {
			modelBytes -= model[0].size
			modelDropped += uint64(len(model[0].samples))
			model = model[1:]
		}
		st := b.Stats()
		if st.DroppedSamples != modelDropped || st.Bytes != modelBytes {
			t.Fatalf("after append %d: dropped %d, bytes %d; model says %d, %d", i, st.DroppedSamples, st.Bytes, modelDropped, modelBytes)
		}
	}
	if modelDropped == 0 {
		t.Fatal("test setup: nothing was dropped")
	}
	b = reopen(t, b, path, opts)
	var want []telemetry.Sample
	for _, r := range model {
		want = append(want, r.samples...)
	}
	if got := drainAll(t, b, 1000); !sameSamples(got, want) {
		t.Fatalf("survivors: got %d samples, want the newest %d", len(got), len(want))
	}
	b = reopen(t, b, path, opts)
	if st := b.Stats(); st.DroppedSamples != modelDropped {
		t.Fatalf("dropped counter after drain and reopen = %d, want %d", st.DroppedSamples, modelDropped)
	}
}

// TestCapOrder checks the drop order with rejected, sealed and pending data
// present: rejected batches go first (not counted as dropped, they were
// counted as rejected), then sealed batches by sequence, then pending.
func TestCapOrder(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	rec, _ := encodeRecord(mkSamples(0, 10), time.Now().UnixMilli())
	opts := Options{MaxBytes: int64(12 * (len(rec) + 8)), NoSync: true}
	b := openT(t, path, opts)
	defer func() { b.Close() }()

	appended := uint64(0)
	appendRec := func(i int) {
		t.Helper()
		if err := b.Append(ctx, mkSamples(i*10, 10)); err != nil {
			t.Fatal(err)
		}
		appended += 10
	}
	for i := range 5 {
		appendRec(i)
		if _, _, err := b.Seal(ctx, 10, fakeSeal); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Reject(1, "refused"); err != nil {
		t.Fatal(err)
	}
	rejectedSamples := uint64(10)
	if st := b.Stats(); st.DroppedSamples != 0 || st.SealedBatches != 4 {
		t.Fatalf("test setup: %+v", st)
	}

	sawRejectedGone, lastFirstSeq := false, uint64(0)
	for i := 5; i < 40; i++ {
		appendRec(i)
		st := b.Stats()
		if st.Bytes > opts.MaxBytes {
			t.Fatalf("append %d: %d bytes over the cap of %d", i, st.Bytes, opts.MaxBytes)
		}
		if got, want := st.DroppedSamples, appended-rejectedSamples-st.PendingSamples-st.SealedSamples; got != want {
			t.Fatalf("append %d: DroppedSamples %d, but %d samples are unaccounted for", i, got, want)
		}
		rejectedLeft := countRejected(t, b)
		if st.DroppedSamples > 0 && rejectedLeft > 0 {
			t.Fatalf("append %d: sealed or pending data dropped while a rejected batch was kept", i)
		}
		sawRejectedGone = sawRejectedGone || rejectedLeft == 0
		if st.SealedBatches > 0 {
			first, _, _ := b.Next(0)
			if first.Seq < lastFirstSeq {
				t.Fatalf("append %d: oldest sealed batch went from %d back to %d", i, lastFirstSeq, first.Seq)
			}
			lastFirstSeq = first.Seq
			// While sealed batches remain, every pending record survives.
			if st.PendingSamples != appended-50 {
				t.Fatalf("append %d: pending records dropped while %d sealed batches remain", i, st.SealedBatches)
			}
		}
	}
	st := b.Stats()
	if !sawRejectedGone || st.SealedBatches != 0 || st.DroppedSamples <= 40 {
		t.Fatalf("test setup: the cap never reached pending records: %+v", st)
	}
	if st.RejectedBatches != 1 {
		t.Errorf("RejectedBatches = %d after the rejected batch was dropped; the count is for life", st.RejectedBatches)
	}
	b = reopen(t, b, path, opts)
	// The survivors are the newest pending records, in order.
	got := drainAll(t, b, 1000)
	kept := len(got) / 10
	var want []telemetry.Sample
	for i := 40 - kept; i < 40; i++ {
		want = append(want, mkSamples(i*10, 10)...)
	}
	if !sameSamples(got, want) {
		t.Fatalf("the %d surviving records are not the newest ones", kept)
	}
}

func countRejected(t *testing.T, b *Buffer) int {
	t.Helper()
	n := 0
	err := b.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bRejected).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAppendLargerThanCap(t *testing.T) {
	b := openT(t, tempPath(t), Options{MaxBytes: 1000, NoSync: true})
	defer b.Close()
	err := b.Append(context.Background(), mkSamples(0, 100))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Append over the cap = %v, want ErrTooLarge", err)
	}
	if st := b.Stats(); st.PendingSamples != 0 || st.DroppedSamples != 0 {
		t.Fatalf("a refused append changed the buffer: %+v", st)
	}
}

// TestDroppedWhileInFlightThenAcked drops a sealed batch the uplink already
// holds (the ingest was down, the cap struck) and then acknowledges it (the
// ingest came back and stored it): its samples arrived, so they leave the
// dropped count, which stays exact, across a restart too.
func TestDroppedWhileInFlightThenAcked(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	opts := Options{MaxBytes: 1 << 20, NoSync: true}
	b := openT(t, path, opts)
	defer func() { b.Close() }()
	if err := b.Append(ctx, mkSamples(0, 50)); err != nil {
		t.Fatal(err)
	}
	sealed, ok, err := b.Seal(ctx, 1000, fakeSeal)
	if err != nil || !ok {
		t.Fatalf("Seal = %v, %v", ok, err)
	}
	inFlight, ok, err := b.Next(0)
	if err != nil || !ok || inFlight.Seq != sealed.Seq {
		t.Fatalf("Next = %+v, %v, %v", inFlight, ok, err)
	}
	// Fill past the cap: the in-flight batch is the oldest and goes first.
	for i := 1; b.Stats().DroppedSamples == 0; i++ {
		if err := b.Append(ctx, mkSamples(i*1000, 1000)); err != nil {
			t.Fatal(err)
		}
		if i > 10_000 {
			t.Fatal("the cap never dropped anything")
		}
	}
	if n, ok, _ := b.Next(0); ok && n.Seq == sealed.Seq {
		t.Fatal("the oldest sealed batch was not the one dropped")
	}
	before := b.Stats().DroppedSamples
	if before < 50 {
		t.Fatalf("dropped %d, want at least the in-flight batch's 50", before)
	}
	if err := b.Ack(inFlight.Seq); err != nil {
		t.Fatal(err)
	}
	if got := b.Stats().DroppedSamples; got != before-50 {
		t.Errorf("after acknowledging the dropped batch: dropped %d, want %d", got, before-50)
	}
	if err := b.Ack(inFlight.Seq); err != nil { // a retried Ack changes nothing
		t.Fatal(err)
	}
	b = reopen(t, b, path, opts)
	if got := b.Stats().DroppedSamples; got != before-50 {
		t.Errorf("after reopening: dropped %d, want %d", got, before-50)
	}
}

// TestIsNoSpace checks what counts as a full file system: the errno as
// bbolt passes a failed page write on (wrapped in a *PathError), and the
// text it leaves of a failed resize; nothing else.
func TestIsNoSpace(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"page write", &os.PathError{Op: "write", Path: "/b.db", Err: syscall.ENOSPC}, true},
		{"quota", fmt.Errorf("committing: %w", &os.PathError{Op: "write", Path: "/b.db", Err: syscall.EDQUOT}), true},
		{"resize as text", fmt.Errorf("file resize error: %s", syscall.ENOSPC), true},
		{"other errno", &os.PathError{Op: "write", Path: "/b.db", Err: syscall.EIO}, false},
		{"closed", ErrClosed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := isNoSpace(tc.err); got != tc.want {
				t.Errorf("isNoSpace(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestCountDropped checks that samples a caller dropped are added to the
// persisted count, and that nothing is counted once the buffer is closed.
func TestCountDropped(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	opts := Options{NoSync: true}
	b := openT(t, path, opts)
	if err := b.Append(ctx, mkSamples(0, 3)); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 7, 5} {
		if err := b.CountDropped(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.Stats().DroppedSamples; got != 12 {
		t.Fatalf("dropped = %d, want 12", got)
	}
	b = reopen(t, b, path, opts)
	if got := b.Stats().DroppedSamples; got != 12 {
		t.Fatalf("dropped after reopen = %d, want 12", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.CountDropped(ctx, 4); !errors.Is(err, ErrClosed) {
		t.Fatalf("CountDropped after Close: %v, want ErrClosed", err)
	}
	b = openT(t, path, opts)
	defer b.Close()
	if got := drainAll(t, b, 10); len(got) != 3 {
		t.Fatalf("the counted drops touched the data: %d samples left, want 3", len(got))
	}
}
