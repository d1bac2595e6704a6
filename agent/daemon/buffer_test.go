package daemon

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/agent/buffer"
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
