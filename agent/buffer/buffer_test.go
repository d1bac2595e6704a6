package buffer

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
	bolt "go.etcd.io/bbolt"
)

// testLogger logs through t, so a failing test shows what the buffer said.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		samples []telemetry.Sample
	}{
		{"one", mkSamples(0, 1)},
		{"many", mkSamples(10, 500)},
		{"odd values", []telemetry.Sample{
			{PointID: 1, Time: 0, Value: math.Copysign(0, -1)},
			{PointID: math.MaxUint64, Time: math.MaxInt64, Value: math.Inf(-1), Status: telemetry.StatusOverridden},
			{PointID: 2, Time: math.MinInt64, Value: math.Float64frombits(0x7ff8_dead_beef_0001)}, // NaN with a payload
			{PointID: 3, Time: -1, Value: math.SmallestNonzeroFloat64, Status: telemetry.StatusCommFailure},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := encodeRecord(tt.samples, 1234)
			if err != nil {
				t.Fatal(err)
			}
			n, at, err := recordHeader(rec)
			if err != nil || n != len(tt.samples) || at != 1234 {
				t.Fatalf("recordHeader = %d, %d, %v", n, at, err)
			}
			got, err := decodeRecord(rec, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !sameSamples(got, tt.samples) {
				t.Fatalf("decoded %v, want %v", got, tt.samples)
			}
			for i := range rec {
				bad := bytes.Clone(rec)
				bad[i] ^= 0x10
				if _, err := decodeRecord(bad, nil); err == nil {
					t.Fatalf("flipping a bit of byte %d went unnoticed", i)
				}
			}
			if _, err := decodeRecord(rec[:len(rec)-1], nil); err == nil {
				t.Fatal("a truncated record decoded")
			}
		})
	}
	if _, err := encodeRecord([]telemetry.Sample{{Status: telemetry.MaxStatus + 1}}, 0); err == nil {
		t.Error("a sample with an undefined status was accepted")
	}
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	b := openT(t, path, Options{})
	defer func() { b.Close() }()
	now := time.UnixMilli(1_700_000_000_000)
	b.now = func() time.Time { return now }

	if s, ok, err := b.Seal(ctx, 10, fakeSeal); ok || err != nil {
		t.Fatalf("Seal of an empty buffer = %+v, %v, %v", s, ok, err)
	}
	if _, ok, err := b.Next(0); ok || err != nil {
		t.Fatalf("Next of an empty buffer = %v, %v", ok, err)
	}

	var all []telemetry.Sample
	for i := range 5 { // records of 3 samples
		s := mkSamples(i*3, 3)
		all = append(all, s...)
		if err := b.Append(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Append(ctx, nil); err != nil {
		t.Fatalf("empty Append: %v", err)
	}
	st := b.Stats()
	if st.PendingSamples != 15 || st.SealedBatches != 0 || st.NextSeq != 1 || !st.OldestPending.Equal(now) || st.Bytes <= 0 {
		t.Fatalf("stats after appends: %+v", st)
	}

	// Whole records only: 7 samples allow two records of 3.
	s1, ok, err := b.Seal(ctx, 7, fakeSeal)
	if err != nil || !ok || s1.Seq != 1 || s1.Samples != 6 || !s1.SealedAt.Equal(now) {
		t.Fatalf("Seal = %+v, %v, %v", s1, ok, err)
	}
	// A record that fills maxSamples is taken whole (one larger is split:
	// TestSealSplitsARecordLargerThanABatch).
	s2, ok, err := b.Seal(ctx, 3, fakeSeal)
	if err != nil || !ok || s2.Seq != 2 || s2.Samples != 3 {
		t.Fatalf("Seal(3) = %+v, %v, %v", s2, ok, err)
	}
	st = b.Stats()
	if st.PendingSamples != 6 || st.SealedBatches != 2 || st.SealedSamples != 9 || st.NextSeq != 3 {
		t.Fatalf("stats after seals: %+v", st)
	}

	// Next pipelines: after 1 comes 2, after 2 nothing.
	for _, tt := range []struct {
		after   uint64
		wantSeq uint64
		wantOK  bool
	}{{0, 1, true}, {1, 2, true}, {2, 0, false}, {math.MaxUint64, 0, false}} {
		s, ok, err := b.Next(tt.after)
		if err != nil || ok != tt.wantOK || s.Seq != tt.wantSeq {
			t.Errorf("Next(%d) = seq %d, %v, %v; want %d, %v", tt.after, s.Seq, ok, err, tt.wantSeq, tt.wantOK)
		}
	}
	n1, _, _ := b.Next(0)
	if _, got, err := fakeOpen(n1.Data); err != nil || !sameSamples(got, all[:6]) || n1.TableHash != s1.TableHash || n1.Samples != 6 || !n1.SealedAt.Equal(now) {
		t.Fatalf("batch 1 read back as %+v (%v)", n1, err)
	}
	want, _ := fakeSeal(1, all[:6])
	if tab, err := b.Table(s1.TableHash); err != nil || !bytes.Equal(tab, want.Table) {
		t.Fatalf("Table = %x, %v; want %x", tab, err, want.Table)
	}

	b = reopen(t, b, path, Options{})
	b.now = func() time.Time { return now }
	if err := b.Ack(1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Table(s1.TableHash); !errors.Is(err, batch.ErrUnknownTable) {
		t.Fatalf("the table of an acknowledged batch is still there: %v", err)
	}
	for range 2 { // idempotent, and unknown sequences are no-ops
		if err := b.Ack(1); err != nil {
			t.Fatalf("second Ack: %v", err)
		}
		if err := b.Ack(99); err != nil {
			t.Fatalf("Ack of an unknown batch: %v", err)
		}
	}
	if s, ok, _ := b.Next(0); !ok || s.Seq != 2 {
		t.Fatalf("after Ack(1), Next(0) = %d, %v; want 2", s.Seq, ok)
	}
	got := drainAll(t, b, 100)
	if !sameSamples(got, all[6:]) {
		t.Fatalf("drained %v, want %v", got, all[6:])
	}
	st = b.Stats()
	if st != (Stats{NextSeq: 4}) {
		t.Fatalf("stats of a drained buffer: %+v; want only NextSeq 4 and zero bytes", st)
	}

	// Sequence numbers never repeat, even after everything was acknowledged.
	b = reopen(t, b, path, Options{})
	if err := b.Append(ctx, mkSamples(100, 1)); err != nil {
		t.Fatal(err)
	}
	if s, ok, err := b.Seal(ctx, 10, fakeSeal); err != nil || !ok || s.Seq != 4 {
		t.Fatalf("Seal after reopen = seq %d, %v, %v; want 4", s.Seq, ok, err)
	}
}

func TestTablesShared(t *testing.T) {
	ctx := context.Background()
	b := openT(t, tempPath(t), Options{NoSync: true})
	defer b.Close()
	// Two batches over the same points share one table.
	for range 2 {
		if err := b.Append(ctx, mkSamples(0, 4)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Seal(ctx, 4, fakeSeal); err != nil {
			t.Fatal(err)
		}
	}
	s1, _, _ := b.Next(0)
	s2, _, _ := b.Next(1)
	if s1.TableHash != s2.TableHash {
		t.Fatal("test setup: the batches have different tables")
	}
	if err := b.Ack(s1.Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Table(s2.TableHash); err != nil {
		t.Fatalf("acknowledging one of two batches deleted their shared table: %v", err)
	}
	if err := b.Ack(s2.Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Table(s2.TableHash); !errors.Is(err, batch.ErrUnknownTable) {
		t.Fatalf("table outlived its last batch: %v", err)
	}
	if st := b.Stats(); st.Bytes != 0 {
		t.Fatalf("an empty buffer counts %d bytes", st.Bytes)
	}
}

func TestReject(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	b := openT(t, path, Options{})
	defer func() { b.Close() }()
	for i := range 2 {
		if err := b.Append(ctx, mkSamples(i*10, 10)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Seal(ctx, 10, fakeSeal); err != nil {
			t.Fatal(err)
		}
	}
	s1, _, _ := b.Next(0)
	for range 2 { // the second is a no-op
		if err := b.Reject(s1.Seq, "409: different bytes under the same name"); err != nil {
			t.Fatal(err)
		}
	}
	if s, ok, _ := b.Next(0); !ok || s.Seq != 2 {
		t.Fatalf("a rejected batch still blocks the queue: Next(0) = %d, %v", s.Seq, ok)
	}
	st := b.Stats()
	if st.RejectedBatches != 1 || st.SealedBatches != 1 || st.SealedSamples != 10 {
		t.Fatalf("stats after Reject: %+v", st)
	}
	if _, err := b.Table(s1.TableHash); err != nil {
		t.Fatalf("a rejected batch lost its point table: %v", err)
	}
	b = reopen(t, b, path, Options{})
	err := b.db.View(func(tx *bolt.Tx) error {
		h, data, err := decodeRejected(tx.Bucket(bRejected).Get(u64key(s1.Seq)))
		if err != nil {
			return err
		}
		if h.reason != "409: different bytes under the same name" || !bytes.Equal(data, s1.Data) || h.samples != 10 {
			t.Errorf("rejected batch stored as %+v, data equal %v", h, bytes.Equal(data, s1.Data))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(s1.Seq); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.RejectedBatches != 1 || st.SealedBatches != 1 {
		t.Fatalf("Ack of a rejected batch changed stats: %+v", st)
	}
}

func TestDamagedRecordDropped(t *testing.T) {
	ctx := context.Background()
	b := openT(t, tempPath(t), Options{NoSync: true})
	defer b.Close()
	for i := range 3 {
		if err := b.Append(ctx, mkSamples(i*5, 5)); err != nil {
			t.Fatal(err)
		}
	}
	// Flip a bit in the middle record, as a disk might.
	err := b.db.Update(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bPending)
		v := bytes.Clone(pb.Get(u64key(2)))
		v[len(v)/2] ^= 1
		return pb.Put(u64key(2), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	got := drainAll(t, b, 100)
	want := append(mkSamples(0, 5), mkSamples(10, 5)...)
	if !sameSamples(got, want) {
		t.Fatalf("drained %v, want the two intact records %v", got, want)
	}
	if st := b.Stats(); st.DroppedSamples != 5 || st.PendingSamples != 0 || st.Bytes != 0 {
		t.Fatalf("stats: %+v; want 5 dropped and nothing left", st)
	}
}

func TestSealErrors(t *testing.T) {
	ctx := context.Background()
	b := openT(t, tempPath(t), Options{NoSync: true})
	defer b.Close()
	if err := b.Append(ctx, mkSamples(0, 5)); err != nil {
		t.Fatal(err)
	}
	before := b.Stats()
	failing := func(uint64, []telemetry.Sample) (batch.Encoded, error) { return batch.Encoded{}, errors.New("boom") }
	empty := func(uint64, []telemetry.Sample) (batch.Encoded, error) { return batch.Encoded{}, nil }
	for name, seal := range map[string]Sealer{"sealer error": failing, "empty result": empty} {
		t.Run(name, func(t *testing.T) {
			if _, ok, err := b.Seal(ctx, 10, seal); err == nil || ok {
				t.Fatalf("Seal = %v, %v; want an error", ok, err)
			}
			if st := b.Stats(); st != before {
				t.Fatalf("a failed seal changed the buffer: %+v, was %+v", st, before)
			}
		})
	}
	if _, _, err := b.Seal(ctx, 0, fakeSeal); err == nil {
		t.Error("Seal with maxSamples 0 succeeded")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Append(cancelled, mkSamples(0, 1)); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a cancelled context = %v", err)
	}
	// The failed seals consumed no sequence number.
	if s, _, err := b.Seal(ctx, 10, fakeSeal); err != nil || s.Seq != 1 {
		t.Fatalf("Seal after failures = seq %d, %v; want 1", s.Seq, err)
	}
}

func TestClosed(t *testing.T) {
	b := openT(t, tempPath(t), Options{NoSync: true})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx := context.Background()
	checks := map[string]error{
		"Append": b.Append(ctx, mkSamples(0, 1)),
		"Ack":    b.Ack(1),
		"Reject": b.Reject(1, "x"),
	}
	_, _, checks["Seal"] = b.Seal(ctx, 1, fakeSeal)
	_, _, checks["Next"] = b.Next(0)
	_, checks["Table"] = b.Table(batch.TableHash{})
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}

func TestFileMode(t *testing.T) {
	path := tempPath(t)
	b := openT(t, path, Options{NoSync: true})
	defer b.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("buffer file mode %04o, want 0600", fi.Mode().Perm())
	}
}
