package anon

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateSecret(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "site.secret")

	s1, created, err := LoadOrCreateSecret(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreateSecret = created %v, %v; want created", created, err)
	}
	if s1 == (Secret{}) {
		t.Fatal("created an all-zero secret")
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %04o, want %04o", p, fi.Mode().Perm(), want)
		}
	}
	s2, created, err := LoadOrCreateSecret(path)
	if err != nil || created || s2 != s1 {
		t.Fatalf("second LoadOrCreateSecret = created %v, %v, same secret %v; want the first secret", created, err, s2 == s1)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the secret (temporary file left behind?)", len(entries))
	}
}

func TestLoadOrCreateSecretConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s", "site.secret")
	var wg sync.WaitGroup
	got := make([]Secret, 8)
	for i := range got {
		wg.Go(func() {
			s, _, err := LoadOrCreateSecret(path)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatalf("caller %d got a different secret than caller 0", i)
		}
	}
}

func TestLoadOrCreateSecretRefuses(t *testing.T) {
	good := bytes.Repeat([]byte{7}, SecretSize)
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir, path string)
		wantErr string
	}{
		{"group readable", func(t *testing.T, dir, path string) { write(t, path, good, 0o640) }, "chmod 600"},
		{"world readable", func(t *testing.T, dir, path string) { write(t, path, good, 0o604) }, "chmod 600"},
		{"too short", func(t *testing.T, dir, path string) { write(t, path, good[:31], 0o600) }, "31 bytes, want 32"},
		{"too long", func(t *testing.T, dir, path string) { write(t, path, append(good, 0), 0o600) }, "33 bytes, want 32"},
		{"empty", func(t *testing.T, dir, path string) { write(t, path, nil, 0o600) }, "0 bytes, want 32"},
		{"a directory", func(t *testing.T, dir, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"a symlink", func(t *testing.T, dir, path string) {
			write(t, path+".real", good, 0o600)
			if err := os.Symlink(path+".real", path); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"group writable dir", func(t *testing.T, dir, path string) {
			write(t, path, good, 0o600)
			if err := os.Chmod(dir, 0o770); err != nil {
				t.Fatal(err)
			}
		}, "chmod 700"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "site.secret")
			tt.setup(t, dir, path)
			before, _ := os.ReadFile(path)
			_, _, err := LoadOrCreateSecret(path)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("LoadOrCreateSecret = %v; want an error naming %s and containing %q", err, path, tt.wantErr)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Error("a refused secret file was modified")
			}
		})
	}
}

func TestInstallSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new", "site.secret")
	s := secretOf(9)
	if err := InstallSecret(path, s); err != nil {
		t.Fatal(err)
	}
	got, created, err := LoadOrCreateSecret(path)
	if err != nil || created || got != s {
		t.Fatalf("LoadOrCreateSecret after InstallSecret = created %v, %v, same %v", created, err, got == s)
	}
	err = InstallSecret(path, secretOf(10))
	if !errors.Is(err, os.ErrExist) {
		t.Fatalf("InstallSecret over an existing secret = %v, want an error wrapping ErrExist", err)
	}
	if got, _, _ := LoadOrCreateSecret(path); got != s {
		t.Error("InstallSecret replaced an existing secret")
	}
}

func write(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // WriteFile's mode is subject to umask
		t.Fatal(err)
	}
}
