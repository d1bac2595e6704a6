//go:build unix

package secretbox

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestLockRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "totp.key")
	unlock, err := LockRotation(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockRotation(path); err == nil || !strings.Contains(err.Error(), "another rotation") {
		t.Fatalf("a second lock while the first is held: %v", err)
	}
	unlock()
	again, err := LockRotation(path)
	if err != nil {
		t.Fatalf("locking after unlock: %v", err)
	}
	again()
}
