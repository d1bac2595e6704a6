package anon

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// LoadOrCreateSecret reads the site secret from path, or, if the file does
// not exist, generates one with crypto/rand and writes it there (mode 0600,
// creating its directory with mode 0700); created reports the latter.
//
// It refuses a secret file that is not a regular file, that group or others
// may access, or that is not exactly SecretSize bytes, and a directory that
// group or others may write (they could replace the secret). An existing
// file is never overwritten, since a new secret changes every point id.
func LoadOrCreateSecret(path string) (s Secret, created bool, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return s, false, fmt.Errorf("creating the directory of site secret %s: %w", path, err)
	}
	di, err := os.Stat(dir)
	if err != nil {
		return s, false, fmt.Errorf("checking the directory of site secret %s: %w", path, err)
	}
	if di.Mode().Perm()&0o022 != 0 {
		return s, false, fmt.Errorf("site secret %s: its directory %s has mode %04o, which lets group or others replace the secret: run chmod 700 %s",
			path, dir, di.Mode().Perm(), dir)
	}

	s, err = loadSecret(path)
	if err == nil {
		return s, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return s, false, err
	}

	if _, err := rand.Read(s[:]); err != nil {
		return s, false, fmt.Errorf("generating site secret %s: %w", path, err)
	}
	if err := writeSecretExclusive(path, s); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it first: theirs is the secret.
			s, err = loadSecret(path)
			return s, false, err
		}
		return Secret{}, false, err
	}
	return s, true, nil
}

// loadSecret reads and checks an existing secret file; a missing file gives
// an error wrapping fs.ErrNotExist.
func loadSecret(path string) (Secret, error) {
	var s Secret
	fi, err := os.Lstat(path)
	if err != nil {
		return s, fmt.Errorf("reading site secret %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return s, fmt.Errorf("site secret %s is not a regular file (mode %s): replace it with the secret file itself", path, fi.Mode())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return s, fmt.Errorf("site secret %s has mode %04o, which lets group or others read it: run chmod 600 %s",
			path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("reading site secret %s: %w", path, err)
	}
	if len(data) != SecretSize {
		return s, fmt.Errorf("site secret %s is %d bytes, want %d: the file is damaged or not a secret; restore it from an export (sightglass-agent secret import) rather than deleting it, since a new secret changes every point id",
			path, len(data), SecretSize)
	}
	copy(s[:], data)
	return s, nil
}

// writeSecretExclusive writes s to path without ever replacing an existing
// file: it writes and syncs a temporary file, then hard-links it into place,
// which fails with fs.ErrExist if path appeared meanwhile. A crash leaves
// either no secret or a complete one, never a partial file at path.
func writeSecretExclusive(path string, s Secret) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".secret-*")
	if err != nil {
		return fmt.Errorf("writing site secret %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	// CreateTemp uses 0600 already; Chmod guards against an unusual umask.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("writing site secret %s: %w", path, err)
	}
	if _, err := f.Write(s[:]); err != nil {
		f.Close()
		return fmt.Errorf("writing site secret %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing site secret %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing site secret %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("installing site secret %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		// Make the new directory entry durable; without it a power cut could
		// lose the secret after ids derived from it were uploaded.
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("syncing the directory of site secret %s: %w", path, err)
		}
	}
	return nil
}

// InstallSecret writes s (typically from Import) to path for
// LoadOrCreateSecret to find, creating the directory with mode 0700. It
// refuses to replace an existing secret: the caller must move that aside
// first, deliberately, since the ids it produced stop being reproducible.
func InstallSecret(path string, s Secret) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("installing site secret %s: %w", path, err)
	}
	err := writeSecretExclusive(path, s)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("installing site secret %s: a secret is already there; move it aside first if it should be replaced: %w", path, err)
	}
	return err
}
