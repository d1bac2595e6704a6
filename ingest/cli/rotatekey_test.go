package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/secretbox"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/ingest/web"
)

// totpFixture is a database with one user whose TOTP secret an older
// release stored in the clear, and a key file beside it.
func totpFixture(t *testing.T) (dir, dbPath, keyFile string) {
	t.Helper()
	dir = t.TempDir()
	dbPath, keyFile = filepath.Join(dir, "ingest.db"), filepath.Join(dir, "ca", config.TOTPKeyFileName)
	if _, err := runIn(t, "a long and unusual passphrase\n", "users", "add", "ann", "--password-stdin", "--db", dbPath); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(context.Background(), dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.SetTOTP(context.Background(), "ann", []byte("12345678901234567890")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := secretbox.LoadOrCreate(keyFile); err != nil {
		t.Fatal(err)
	}
	return dir, dbPath, keyFile
}

func storedTOTP(t *testing.T, dbPath string) []byte {
	t.Helper()
	db, err := store.Open(context.Background(), dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	u, err := db.User(context.Background(), "ann")
	if err != nil {
		t.Fatal(err)
	}
	return u.TOTPSecret
}

func TestUsersRotateKey(t *testing.T) {
	dir, dbPath, keyFile := totpFixture(t)
	before, err := secretbox.Open(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, "ca_dir: ca\ndatabase: ingest.db\nstore: {kind: dir, dir: archive}\n")
	tests := []struct {
		name string
		args []string
	}{
		{"by flags", []string{"users", "rotate-key", "--db", dbPath, "--key-file", keyFile, "--json"}},
		{"by config", []string{"users", "rotate-key", "--config", cfg, "--json"}},
	}
	prev := before.CurrentID()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runIn(t, "", tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			var rep web.SealReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("--json output %q: %v", out, err)
			}
			if rep.KeyID == "" || rep.KeyID == prev || rep.Sealed != 1 {
				t.Fatalf("report %+v; want one secret under a new key (was %s)", rep, prev)
			}
			if id, err := secretbox.KeyIDOf(storedTOTP(t, dbPath)); err != nil || id != rep.KeyID {
				t.Fatalf("stored secret under %q (%v), want %s", id, err, rep.KeyID)
			}
			if _, err := os.Stat(keyFile + secretbox.OldSuffix); err == nil {
				t.Error("the old key file was left behind")
			}
			prev = rep.KeyID
		})
	}
	out, err := runIn(t, "", "audit", "list", "--db", dbPath)
	if err != nil || strings.Count(out, "totp_key_rotate") != 2 {
		t.Errorf("audit log lacks the rotations: %v\n%s", err, out)
	}
}

func TestUsersRotateKeyRefuses(t *testing.T) {
	_, dbPath, keyFile := totpFixture(t)
	if _, err := runIn(t, "", "users", "rotate-key", "--db", dbPath, "--key-file", keyFile); err != nil {
		t.Fatal(err)
	}
	sealed := storedTOTP(t, dbPath)
	// Another key in the file: refused, naming it, nothing changed.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	if _, err := secretbox.CreateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	_, err := runIn(t, "", "users", "rotate-key", "--db", dbPath, "--key-file", keyFile)
	if !errors.Is(err, web.ErrWrongTOTPKey) || !strings.Contains(err.Error(), keyFile) {
		t.Fatalf("rotate-key with the wrong key: %v", err)
	}
	if string(storedTOTP(t, dbPath)) != string(sealed) {
		t.Error("a refused rotation changed the stored secret")
	}
	// A key file readable by others: refused with the chmod advice.
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runIn(t, "", "users", "rotate-key", "--db", dbPath, "--key-file", keyFile); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("rotate-key with a world-readable key: %v", err)
	}
	// No key file at all: refused, none made.
	missing := filepath.Join(filepath.Dir(keyFile), "none.key")
	if _, err := runIn(t, "", "users", "rotate-key", "--db", dbPath, "--key-file", missing); err == nil {
		t.Fatal("rotate-key without a key file succeeded")
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("rotate-key made a key file")
	}
}

// TestServeTOTPKeys: serve's start seals plaintext secrets under the key
// file, and with the wrong key file stops with an error naming it; a key
// file it made just now for such a database is not left behind.
func TestServeTOTPKeys(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir, dbPath, keyFile := totpFixture(t)
	db, err := store.Open(ctx, dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cfg, err := config.Parse([]byte("ca_dir: ca\ndatabase: ingest.db\nstore: {kind: dir, dir: archive}\n"), "t.yaml", dir)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := openTOTPKeys(ctx, cfg, db, log)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := secretbox.KeyIDOf(storedTOTP(t, dbPath)); err != nil || id != keys.CurrentID() {
		t.Fatalf("after start the secret is under %q (%v), want %s", id, err, keys.CurrentID())
	}
	if out, err := runIn(t, "", "audit", "list", "--db", dbPath); err != nil || !strings.Contains(out, "totp_seal_upgrade") {
		t.Errorf("the upgrade is not in the audit log: %v\n%s", err, out)
	}
	// The key file lost: a new one would open nothing.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	_, err = openTOTPKeys(ctx, cfg, db, log)
	if !errors.Is(err, web.ErrWrongTOTPKey) || !strings.Contains(err.Error(), keyFile) {
		t.Fatalf("start without the key that sealed the secrets: %v", err)
	}
	if _, err := os.Stat(keyFile); err == nil {
		t.Error("start left a new, useless key file")
	}
}
