package buffer

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestOpenLocked(t *testing.T) {
	path := tempPath(t)
	b := openT(t, path, Options{NoSync: true})
	defer b.Close()
	_, err := Open(path, Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another sightglass-agent") {
		t.Fatalf("second Open = %v; want ErrLocked naming %s", err, path)
	}
	// The first buffer is unaffected.
	if err := b.Append(context.Background(), mkSamples(0, 1)); err != nil {
		t.Fatal(err)
	}
}

// filledFile returns the path of a closed buffer holding some data, and the
// size bbolt's pages reach.
func filledFile(t *testing.T) (path string, used int64) {
	t.Helper()
	path = tempPath(t)
	b := openT(t, path, Options{NoSync: true})
	for i := range 200 {
		if err := b.Append(context.Background(), mkSamples(i*100, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := b.Seal(context.Background(), 1000, fakeSeal); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return path, used
}

func TestOpenDamaged(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string, used int64)
		wantErr error // nil: any error, as long as Open does not crash
	}{
		{"random bytes", func(t *testing.T, path string, used int64) {
			data := make([]byte, 64<<10)
			for i := range data {
				data[i] = byte(rand.Uint32())
			}
			writeFile(t, path, data)
		}, ErrCorrupt},
		{"tiny file", func(t *testing.T, path string, used int64) { writeFile(t, path, []byte("not a database")) }, ErrCorrupt},
		{"truncated to half", func(t *testing.T, path string, used int64) {
			if err := os.Truncate(path, used/2); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"truncated by one page", func(t *testing.T, path string, used int64) {
			if err := os.Truncate(path, used-4096); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"meta pages zeroed", func(t *testing.T, path string, used int64) {
			patch(t, path, 0, make([]byte, 2*4096))
		}, ErrCorrupt},
		{"pending bucket root overwritten", func(t *testing.T, path string, used int64) {
			var root int64
			db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			_ = db.View(func(tx *bolt.Tx) error { root = int64(tx.Bucket(bPending).Root()); return nil })
			db.Close()
			junk := make([]byte, 4096)
			for i := range junk {
				junk[i] = byte(i*17 + 3)
			}
			patch(t, path, root*4096, junk)
		}, ErrCorrupt},
		{"data pages overwritten", func(t *testing.T, path string, used int64) {
			junk := make([]byte, used-2*4096)
			for i := range junk {
				junk[i] = byte(i*31 + 7)
			}
			patch(t, path, 2*4096, junk)
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, used := filledFile(t)
			tt.damage(t, path, used)
			b, err := Open(path, Options{NoSync: true, LockTimeout: time.Second, Logger: testLogger(t)})
			if err == nil {
				b.Close()
				t.Fatal("Open of a damaged file succeeded")
			}
			t.Log(err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(err, ErrCorrupt) && (!strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "move the file aside")) {
				t.Errorf("error does not name the file and say what to do: %v", err)
			}
			// The failed Open released the file: a fresh buffer can take its place.
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			openT(t, path, Options{NoSync: true, LockTimeout: 100 * time.Millisecond}).Close()
		})
	}
}

func TestOpenForeign(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(tx *bolt.Tx) error
		wantErr string
	}{
		{"other bbolt file", func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("something else"))
			return err
		}, "not a sightglass buffer"},
		{"newer format", func(tx *bolt.Tx) error {
			return tx.Bucket(bMeta).Put(kFormat, u64key(fileFormat+1))
		}, "file format 2"},
		{"bucket missing", func(tx *bolt.Tx) error {
			return tx.DeleteBucket(bTables)
		}, "bucket \"tables\" missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempPath(t)
			if tt.name != "other bbolt file" {
				openT(t, path, Options{NoSync: true}).Close()
			}
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(tt.prepare); err != nil {
				t.Fatal(err)
			}
			db.Close()
			_, err = Open(path, Options{NoSync: true})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open = %v; want an error naming %s and containing %q", err, path, tt.wantErr)
			}
		})
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func patch(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}
