package buffer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// A full disk would leave the buffer unable to drop anything: bbolt copies
// every page it changes, so even a transaction that only deletes needs a
// few free pages, and on a full disk the file's own free pages are the
// first thing the appends used up. The buffer therefore keeps a reserve: a
// file beside it (PATH.reserve) that it deletes when a drop fails for lack
// of space, which lets that drop commit.
//
// Once the disk has filled, the live data it held then becomes a cap (the
// disk cap) that the appends enforce like Options.MaxBytes, dropping the
// oldest data in their own transactions: the pages each commit frees are
// what the next one reuses, so the file stops growing and keeps free pages
// for the drops, long after the reserve is gone. Where that is not enough
// (a large record needs more contiguous pages than are free), the next full
// disk drops more and lowers the disk cap. The cap is lifted and the
// reserve made again once the file system has room for the reserve.

const (
	defaultReserve = 1 << 20
	// reserveRetry is how often a missing reserve is made again: writing
	// it on a disk that is still full fails, costing a write each time.
	reserveRetry = time.Minute
)

// reserveState is the reserve file's bookkeeping. Only Open and then the
// committer goroutine (commitAppends) touch it.
type reserveState struct {
	path    string
	size    int64     // 0: no reserve
	missing bool      // the reserve was released or could not be made
	lastTry time.Time // when making it was last tried
	every   time.Duration
	// diskCap is the disk cap in live bytes, 0 when the disk has room.
	diskCap int64
	// highWater is how far the file's pages reached at Open: space the
	// buffer holds even when the file system has none left.
	highWater int64
	noSync    bool
}

// ensureReserve makes the reserve file unless it is there at full size. It
// writes a temporary file and renames it, so a reserve is never half made;
// what fails (the disk still full) is removed again.
func (b *Buffer) ensureReserve() error {
	r := &b.reserve
	if r.size <= 0 {
		return nil
	}
	r.lastTry = time.Now()
	if fi, err := os.Stat(r.path); err == nil && fi.Size() >= r.size {
		r.missing = false
		return nil
	}
	tmp := r.path + ".tmp"
	err := writeZeros(tmp, r.size, !r.noSync)
	if err == nil {
		err = os.Rename(tmp, r.path)
	}
	if err != nil {
		os.Remove(tmp)
		r.missing = true
		return fmt.Errorf("making the buffer's disk-full reserve %s (%d bytes): %w", r.path, r.size, err)
	}
	r.missing = false
	return nil
}

// writeZeros writes a file of n zero bytes, and syncs it if sync. Zeros
// written, not a sparse file: the reserve must hold real blocks.
func writeZeros(path string, n int64, sync bool) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.CopyN(f, zeroReader{}, n)
	if err == nil && sync {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// releaseReserve deletes the reserve file, giving its space to the buffer,
// and reports whether there was one to delete.
func (b *Buffer) releaseReserve() bool {
	r := &b.reserve
	if r.size <= 0 {
		return false
	}
	err := os.Remove(r.path)
	r.missing = true
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			b.log.Error("could not delete the buffer's disk-full reserve", "path", r.path, "err", err)
		}
		return false
	}
	b.log.Warn("buffer's file system full: released the disk-full reserve so the oldest data can be dropped; it is made again when space returns",
		"path", b.path, "reserve", r.path, "reserve_bytes", r.size)
	return true
}

// diskFull sets the disk cap to live, the live bytes the full disk holds.
func (b *Buffer) diskFull(live int64) {
	r := &b.reserve
	live = max(live, 1) // zero would mean no cap
	if r.diskCap == 0 {
		b.log.Warn("buffer's file system full: keeping the buffer within its present size, dropping the oldest data, until space returns",
			"path", b.path, "disk_cap_bytes", live)
		// Without a reserve nothing shows when space returns: the cap is
		// then simply tried without after r.every.
		r.lastTry = time.Now()
	}
	r.diskCap = live
}

// restoreReserve makes a missing reserve again, at most every r.every, and
// lifts the disk cap when it could.
func (b *Buffer) restoreReserve() {
	r := &b.reserve
	if (!r.missing && r.diskCap == 0) || time.Since(r.lastTry) < r.every {
		return
	}
	if r.size > 0 {
		if err := b.ensureReserve(); err != nil {
			b.log.Debug("the disk-full reserve cannot be made yet", "err", err)
			return
		}
	}
	r.lastTry = time.Now()
	b.log.Info("space returned on the buffer's file system: disk-full reserve made again, disk cap lifted",
		"path", b.path, "reserve", r.path, "reserve_bytes", max(r.size, 0), "disk_cap_bytes", r.diskCap)
	r.diskCap = 0
}

// zeroReader reads as endless zero bytes.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
