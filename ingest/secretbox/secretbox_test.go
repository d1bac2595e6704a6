package secretbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newRing(t *testing.T) *Keyring {
	t.Helper()
	r, created, err := LoadOrCreate(filepath.Join(t.TempDir(), "totp.key"))
	if err != nil || !created {
		t.Fatalf("LoadOrCreate = %v, %v", created, err)
	}
	return r
}

func TestSealOpen(t *testing.T) {
	r := newRing(t)
	other := newRing(t)
	secret := []byte("12345678901234567890")
	sealed, err := r.Seal(secret, []byte("user:1"))
	if err != nil {
		t.Fatal(err)
	}
	if !IsSealed(sealed) || bytes.Contains(sealed, secret) {
		t.Fatalf("sealed value %q: want the version prefix and no plaintext", sealed)
	}
	if id, err := KeyIDOf(sealed); err != nil || id != r.CurrentID() {
		t.Fatalf("KeyIDOf = %q, %v; want %q", id, err, r.CurrentID())
	}
	again, _ := r.Seal(secret, []byte("user:1"))
	if bytes.Equal(again, sealed) {
		t.Error("two seals of one secret are equal: the nonce is not random")
	}
	// Flip one character of the base64 body (after prefix and key id).
	tampered := bytes.Clone(sealed)
	i := len(Version) + 20
	tampered[i] ^= 'A' ^ 'B'
	if tampered[i] == sealed[i] {
		tampered[i] ^= 1
	}

	tests := []struct {
		name    string
		ring    *Keyring
		value   []byte
		ad      string
		want    []byte
		wantErr error
	}{
		{"round trip", r, sealed, "user:1", secret, nil},
		{"bound to another record", r, sealed, "user:2", nil, ErrDamaged},
		{"another key", other, sealed, "user:1", nil, ErrUnknownKey},
		{"plaintext from an older release", r, secret, "user:1", nil, ErrNotSealed},
		{"altered", r, tampered, "user:1", nil, nil}, // ErrDamaged or ErrUnknownKey, depending on the byte
		{"truncated", r, sealed[:len(Version)+10], "user:1", nil, ErrDamaged},
		{"not base64", r, []byte(Version + "!!!!"), "user:1", nil, ErrDamaged},
		{"empty", r, nil, "user:1", nil, ErrNotSealed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, current, err := tc.ring.Open(tc.value, []byte(tc.ad))
			if tc.want != nil {
				if err != nil || !bytes.Equal(got, tc.want) || !current {
					t.Fatalf("Open = %q, %v, %v; want %q", got, current, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Open = %q, nil; want an error", got)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open error %v; want %v", err, tc.wantErr)
			}
		})
	}
}

func TestKeyFileRefusals(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.key")
	if _, err := CreateKeyFile(good); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(good); fi.Mode().Perm() != 0o600 {
		t.Fatalf("new key file mode %04o, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(good)
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // umask would narrow WriteFile's mode
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		path string
		want string // in the error; "" means no error
	}{
		{"good", good, ""},
		{"group readable", write("group.key", raw, 0o640), "chmod 600"},
		{"world readable", write("world.key", raw, 0o644), "chmod 600"},
		{"short", write("short.key", raw[:16], 0o600), "not 32 bytes"},
		{"long", write("long.key", append(bytes.Clone(raw), 0), 0o600), "not 32 bytes"},
		{"missing", filepath.Join(dir, "none.key"), "no such file"},
		{"a directory", dir, "not a regular file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadKeyFile(tc.path)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("ReadKeyFile: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path)):
				t.Fatalf("ReadKeyFile error %v; want one naming %s and saying %q", err, tc.path, tc.want)
			}
		})
	}
	// A loose key is refused by LoadOrCreate too, never replaced.
	if _, _, err := LoadOrCreate(filepath.Join(dir, "world.key")); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadOrCreate of a world-readable key: %v; want the chmod advice", err)
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "totp.key")
	r1, created, err := LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate = %v, %v", created, err)
	}
	r2, created, err := LoadOrCreate(path)
	if err != nil || created || r2.CurrentID() != r1.CurrentID() {
		t.Fatalf("second LoadOrCreate = %v, %v, id %s; want the same key %s", created, err, r2.CurrentID(), r1.CurrentID())
	}
	// The key file gone while a rotation's file remains: refuse, do not
	// make a key that opens nothing.
	for _, suf := range []string{OldSuffix, NewSuffix} {
		p := filepath.Join(dir, "lost"+suf[1:]+".key")
		if _, err := CreateKeyFile(p + suf); err != nil {
			t.Fatal(err)
		}
		if _, _, err := LoadOrCreate(p); err == nil || !strings.Contains(err.Error(), "restore") {
			t.Errorf("LoadOrCreate beside %s: %v; want a refusal", suf, err)
		}
		if ok, _ := exists(p); ok {
			t.Errorf("LoadOrCreate made %s beside %s", p, suf)
		}
	}
}

// TestRotationCrash stops a rotation after each of its file steps, as a
// crash would, and checks that every value sealed so far opens with the
// key files a fresh start loads, and that running the rotation again
// finishes it.
func TestRotationCrash(t *testing.T) {
	for _, at := range []string{"new-written", "old-written", "renamed", ""} {
		t.Run("crash after "+at, func(t *testing.T) {
			r := newRing(t)
			path := r.Path()
			before, err := r.Seal([]byte("secret-a"), []byte("1"))
			if err != nil {
				t.Fatal(err)
			}
			errCrash := errors.New("crash")
			_, err = beginRotation(path, func(step string) error {
				if step == at {
					return errCrash
				}
				return nil
			})
			if at != "" && !errors.Is(err, errCrash) {
				t.Fatalf("beginRotation = %v; want the simulated crash", err)
			}
			// A fresh start after the crash opens the old value.
			fresh, created, err := LoadOrCreate(path)
			if err != nil || created {
				t.Fatalf("LoadOrCreate after crash = %v, %v", created, err)
			}
			if got, _, err := fresh.Open(before, []byte("1")); err != nil || string(got) != "secret-a" {
				t.Fatalf("after crash at %q: Open = %q, %v", at, got, err)
			}
			// A value sealed after the crash (by a running ingest) opens too.
			mid, err := fresh.Seal([]byte("secret-b"), []byte("2"))
			if err != nil {
				t.Fatal(err)
			}
			// Resume.
			rot, err := BeginRotation(path)
			if err != nil {
				t.Fatalf("resuming the rotation: %v", err)
			}
			if rot.OldID() == "" || rot.OldID() == rot.CurrentID() {
				t.Fatalf("resumed keyring: current %s old %q; want two keys", rot.CurrentID(), rot.OldID())
			}
			for _, v := range []struct {
				sealed []byte
				ad     string
				old    bool // sealed under the key being replaced
			}{{before, "1", true}, {mid, "2", at == "new-written" || at == "old-written"}} {
				pt, current, err := rot.Open(v.sealed, []byte(v.ad))
				if err != nil {
					t.Fatalf("resumed keyring cannot open a value: %v", err)
				}
				if current == v.old {
					t.Fatalf("value %q: current = %v, want %v", v.ad, current, !v.old)
				}
				if _, err := rot.Seal(pt, []byte(v.ad)); err != nil {
					t.Fatal(err)
				}
			}
			if err := rot.FinishRotation(); err != nil {
				t.Fatal(err)
			}
			for _, suf := range []string{OldSuffix, NewSuffix} {
				if ok, _ := exists(path + suf); ok {
					t.Errorf("%s left behind after the rotation finished", path+suf)
				}
			}
			if rot.OldID() != "" {
				t.Errorf("keyring still holds the old key after FinishRotation")
			}
			if _, _, err := rot.Open(before, []byte("1")); !errors.Is(err, ErrUnknownKey) {
				t.Errorf("after the rotation a value under the old key: %v; want ErrUnknownKey", err)
			}
		})
	}
}

// TestReloadAfterRotation: a running ingest's keyring follows a rotation
// made by another process, both for sealing and opening.
func TestReloadAfterRotation(t *testing.T) {
	server := newRing(t)
	sealedBefore, err := server.Seal([]byte("r"), []byte("6"))
	if err != nil {
		t.Fatal(err)
	}
	rot, err := BeginRotation(server.Path())
	if err != nil {
		t.Fatal(err)
	}
	sealedByCLI, err := rot.Seal([]byte("s"), []byte("7"))
	if err != nil {
		t.Fatal(err)
	}
	if cur, err := server.IsCurrent(sealedBefore); err != nil || cur {
		t.Errorf("IsCurrent of a value sealed before the rotation = %v, %v; want false", cur, err)
	}
	if _, current, err := server.Open(sealedByCLI, []byte("7")); err != nil || !current {
		t.Fatalf("server keyring after rotation: Open = %v, %v", current, err)
	}
	if cur, err := server.IsCurrent(sealedByCLI); err != nil || !cur {
		t.Errorf("IsCurrent of a value under the new key = %v, %v", cur, err)
	}
	if err := rot.FinishRotation(); err != nil {
		t.Fatal(err)
	}
	sealedByServer, err := server.Seal([]byte("t"), []byte("8"))
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := KeyIDOf(sealedByServer); id != rot.CurrentID() {
		t.Errorf("server sealed under %s after the rotation; want the new key %s", id, rot.CurrentID())
	}
}

func TestRotationRefusesThreeKeys(t *testing.T) {
	r := newRing(t)
	for _, suf := range []string{OldSuffix, NewSuffix} {
		if _, err := CreateKeyFile(r.Path() + suf); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := BeginRotation(r.Path()); err == nil || !strings.Contains(err.Error(), "all different") {
		t.Fatalf("BeginRotation with three different keys: %v; want a refusal", err)
	}
	if got, err := ReadKeyFile(r.Path()); err != nil || got.ID() != r.CurrentID() {
		t.Fatalf("the key file changed: %v", err)
	}
}

// BenchmarkSealOpen is the cost the sealing adds to a TOTP sign-in (one
// Open) and set-up (one Seal, and a stat of the key file).
func BenchmarkSealOpen(b *testing.B) {
	r, _, err := LoadOrCreate(filepath.Join(b.TempDir(), "totp.key"))
	if err != nil {
		b.Fatal(err)
	}
	secret, ad := []byte("12345678901234567890"), []byte("sightglass/web/totp/user/1")
	sealed, err := r.Seal(secret, ad)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("seal", func(b *testing.B) {
		for b.Loop() {
			if _, err := r.Seal(secret, ad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := r.Open(sealed, ad); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestLoadOrCreateConcurrent: replicas starting at once on a shared key
// directory end up with one key, made once, and none reads it half
// written.
func TestLoadOrCreateConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "totp.key")
	const n = 8
	type result struct {
		id      string
		created bool
		err     error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			r, created, err := LoadOrCreate(path)
			if err != nil {
				results <- result{err: err}
				return
			}
			results <- result{r.CurrentID(), created, nil}
		}()
	}
	ids, made := map[string]bool{}, 0
	for range n {
		res := <-results
		if res.err != nil {
			t.Fatal(res.err)
		}
		ids[res.id] = true
		if res.created {
			made++
		}
	}
	if len(ids) != 1 || made != 1 {
		t.Fatalf("%d keys, made %d times; want one key made once", len(ids), made)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("left in the directory: %v; want the key file only", entries)
	}
}
