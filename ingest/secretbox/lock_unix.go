//go:build unix

package secretbox

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// LockSuffix names the file LockRotation locks beside the key file.
const LockSuffix = ".lock"

// LockRotation takes the rotation lock of the key file at path, so two
// rotations never interleave their file steps; unlock releases it. The
// kernel releases it too when the process dies, so a crash leaves no
// stale lock. A lock held elsewhere is an error saying so.
func LockRotation(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path+LockSuffix, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking the secret key %s for rotation: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("locking the secret key %s for rotation: another rotation is running; wait for it to finish", path)
		}
		return nil, fmt.Errorf("locking the secret key %s for rotation: %w", path, err)
	}
	return func() { f.Close() }, nil
}
