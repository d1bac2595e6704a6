package secretbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
)

// BeginRotation puts a new key in place at path, keeps the previous one at
// path+OldSuffix, and returns the keyring holding both. The caller then
// seals every value again under the new key and calls FinishRotation.
//
// The steps are ordered so that a crash at any moment leaves every sealed
// value readable with the key files on disk, and the key file itself never
// missing (a missing one would make the next start create a fresh key):
//
//  1. the new key is written to path+NewSuffix and synced;
//  2. the current key is copied to path+OldSuffix and synced;
//  3. path+NewSuffix is renamed over path (atomic), the directory synced.
//
// Run again after a crash, it resumes: a new key left by step 1 or 2 is
// used (nothing was sealed under it yet), and an old key beside a
// different current one means step 3 is done already, so nothing changes.
func BeginRotation(path string) (*Keyring, error) { return beginRotation(path, nil) }

// beginRotation is BeginRotation with crash, called after each step, for
// tests: an error from it stops the rotation there, as a crash would.
func beginRotation(path string, crash func(step string) error) (*Keyring, error) {
	step := func(name string) error {
		if crash == nil {
			return nil
		}
		return crash(name)
	}
	cur, err := ReadKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("rotating the secret key: %w", err)
	}
	oldPath, newPath := path+OldSuffix, path+NewSuffix
	haveOld, err := exists(oldPath)
	if err != nil {
		return nil, fmt.Errorf("rotating the secret key: %w", err)
	}
	haveNew, err := exists(newPath)
	if err != nil {
		return nil, fmt.Errorf("rotating the secret key: %w", err)
	}
	if haveOld && !haveNew {
		old, err := ReadKeyFile(oldPath)
		if err != nil {
			return nil, fmt.Errorf("rotating the secret key: %w", err)
		}
		if old.id != cur.id {
			// Step 3 is done: the key at path is the new one; the
			// caller finishes re-sealing.
			return Open(path)
		}
		// A copy of the current key with no new key beside it: the
		// rotation stopped before anything was sealed under a new key.
		if err := removeSynced(oldPath); err != nil {
			return nil, fmt.Errorf("rotating the secret key: %w", err)
		}
		haveOld = false
	}
	if haveNew {
		if _, err := ReadKeyFile(newPath); err != nil {
			// Torn by a crash while it was written; nothing was ever
			// sealed under it.
			if err := removeSynced(newPath); err != nil {
				return nil, fmt.Errorf("rotating the secret key: %w", err)
			}
			haveNew = false
		}
	}
	if !haveNew {
		if _, err := CreateKeyFile(newPath); err != nil {
			return nil, fmt.Errorf("rotating the secret key: %w", err)
		}
	}
	if err := step("new-written"); err != nil {
		return nil, err
	}
	if haveOld {
		old, err := ReadKeyFile(oldPath)
		if err != nil {
			return nil, fmt.Errorf("rotating the secret key: %w", err)
		}
		if old.id != cur.id {
			return nil, fmt.Errorf("rotating the secret key: %s, %s and %s are all different keys: move aside the one that sealed nothing (check the key ids in the ingest's log) and run again", path, oldPath, newPath)
		}
	} else {
		if err := writeKey(oldPath, cur.raw); err != nil {
			return nil, fmt.Errorf("rotating the secret key: %w", err)
		}
	}
	if err := step("old-written"); err != nil {
		return nil, err
	}
	if err := os.Rename(newPath, path); err != nil {
		return nil, fmt.Errorf("rotating the secret key: putting the new key in place: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("rotating the secret key: %w", err)
	}
	if err := step("renamed"); err != nil {
		return nil, err
	}
	return Open(path)
}

// FinishRotation removes the previous key once every value is sealed under
// the current one. The keyring then holds the current key only.
func (r *Keyring) FinishRotation() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := removeSynced(r.path + OldSuffix); err != nil {
		return fmt.Errorf("finishing the key rotation: %w", err)
	}
	return r.load()
}

func removeSynced(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}
