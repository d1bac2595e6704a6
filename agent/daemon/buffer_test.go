package daemon

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/buffer"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

func TestOpenBufferMovesADamagedFileAside(t *testing.T) {
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("not a database at all")},
		{"truncated", bytes.Repeat([]byte{0xde, 0xad}, 3000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "buffer.db")
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			b, err := openBuffer(path, buffer.Options{}, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatalf("openBuffer: %v", err)
			}
			defer b.Close()
			if st := b.Stats(); st.PendingSamples != 0 || st.SealedBatches != 0 {
				t.Errorf("the new buffer is not empty: %+v", st)
			}
			aside, _ := filepath.Glob(path + ".damaged-*")
			if len(aside) != 1 {
				t.Fatalf("damaged file not kept aside: %v", aside)
			}
			if got, _ := os.ReadFile(aside[0]); !bytes.Equal(got, tt.data) {
				t.Error("the file moved aside is not the damaged one")
			}
			if !strings.Contains(logs.String(), "damaged") || !strings.Contains(logs.String(), "level=ERROR") {
				t.Errorf("not said loudly: %s", logs.String())
			}
		})
	}
}

func TestFirstSeq(t *testing.T) {
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	issued := now.Add(-48 * time.Hour)
	tests := []struct {
		name string
		now  time.Time
		cert *x509.Certificate
		want time.Time
	}{
		{"clock right", now, &x509.Certificate{NotBefore: issued}, now},
		{"no certificate", now, nil, now},
		{"clock before the certificate (no RTC)", time.Unix(0, 0), &x509.Certificate{NotBefore: issued}, issued},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := firstSeq(tt.now, tt.cert); got != uint64(tt.want.UnixMilli()) {
				t.Errorf("firstSeq = %d, want %d", got, tt.want.UnixMilli())
			}
		})
	}
}

// TestReplacedBufferNumbersAbove: a buffer that replaces a damaged one
// seals its batches with sequence numbers above every batch of the old
// one, so the ingest does not take them for conflicting retries.
func TestReplacedBufferNumbersAbove(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "buffer.db")
	log := slog.New(slog.DiscardHandler)
	t0 := time.Now()
	old, err := openBuffer(path, buffer.Options{FirstSeq: firstSeq(t0, nil)}, log)
	if err != nil {
		t.Fatal(err)
	}
	var oldMax uint64
	for i := range 50 {
		if err := old.Append(ctx, []telemetry.Sample{{PointID: 1, Time: int64(i), Value: 1}}); err != nil {
			t.Fatal(err)
		}
		s, ok, err := old.Seal(ctx, 1, sealSeq)
		if err != nil || !ok {
			t.Fatalf("seal: %v %v", ok, err)
		}
		oldMax = s.Seq
	}
	old.Close()
	if err := os.WriteFile(path, []byte("damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The old buffer sealed at most one batch per tick, and ticks are
	// 100 ms apart at the shortest (uplink.batch_interval): its 50 batches
	// took 5 s at least, after which the replacement starts.
	b, err := openBuffer(path, buffer.Options{FirstSeq: firstSeq(t0.Add(50*100*time.Millisecond), nil)}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if next := b.Stats().NextSeq; next <= oldMax {
		t.Fatalf("the new buffer numbers from %d, not above the old one's last batch %d", next, oldMax)
	}
}

// sealSeq encodes a batch as its sequence number only, with a one-point
// table: enough for Seal.
func sealSeq(seq uint64, _ []telemetry.Sample) (batch.Encoded, error) {
	return batch.Encoded{Data: binary.BigEndian.AppendUint64(nil, seq), Table: []byte{1}, TableHash: batch.TableHash{1}}, nil
}
