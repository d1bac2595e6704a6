package csvtrend

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fingerprint identifies a file's content cheaply (size and mtime) and
// surely (hash), to recognise a file already read that could not be moved.
type fingerprint struct {
	size  int64
	mtime time.Time
	hash  [sha256.Size]byte
}

func (f fingerprint) sameStat(fi fs.FileInfo) bool {
	return f.size == fi.Size() && f.mtime.Equal(fi.ModTime())
}

// candidate is a file that may be read.
type candidate struct {
	path string
	info fs.FileInfo
}

// listFiles returns the regular files in dir whose names match pattern,
// sorted by name. Subdirectories (processed, failed) are never entered.
func listFiles(dir, pattern string) ([]candidate, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []candidate
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if ok, _ := filepath.Match(pattern, e.Name()); !ok {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since ReadDir
		}
		if err != nil {
			return nil, err
		}
		out = append(out, candidate{path: filepath.Join(dir, e.Name()), info: info})
	}
	slices.SortFunc(out, func(a, b candidate) int { return strings.Compare(a.path, b.path) })
	return out, nil
}

// errTooLarge marks a file over settings.max_file_size.
var errTooLarge = errors.New("trend file too large")

func tooLarge(size, limit int64) error {
	return fmt.Errorf("%w: %d bytes, over settings.max_file_size of %d bytes", errTooLarge, size, limit)
}

// readStable reads a whole file of at most limit bytes and its
// fingerprint. A bigger file is an error wrapping errTooLarge, found from
// its size before anything is read, or from reading one byte past limit
// when it grew meanwhile, so no more than limit+1 bytes are ever held.
// It reports changed when the file grew or was rewritten while being
// read: an export still being written must not be consumed half-way.
func readStable(path string, limit int64) (data []byte, fp fingerprint, changed bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fp, false, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, fp, false, err
	}
	if before.Size() > limit {
		return nil, fp, false, tooLarge(before.Size(), limit)
	}
	data, err = io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fp, false, err
	}
	if int64(len(data)) > limit {
		return nil, fp, false, tooLarge(int64(len(data)), limit)
	}
	after, err := os.Stat(path)
	if err != nil {
		return nil, fp, false, err
	}
	if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) || int64(len(data)) != before.Size() {
		return nil, fp, true, nil
	}
	return data, fingerprint{size: before.Size(), mtime: before.ModTime(), hash: sha256.Sum256(data)}, false, nil
}

// moveFile moves src into dir, creating dir, and returns the new path. It
// never overwrites: if the name is taken (a daily export reusing its
// name), a counter is added before the extension. Across file systems it
// copies and then removes, so the bytes are never altered either way.
func moveFile(src, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	base := filepath.Base(src)
	ext := filepath.Ext(base)
	stem := strings.TrimSuffix(base, ext)
	dst := filepath.Join(dir, base)
	for i := 1; ; i++ {
		_, err := os.Lstat(dst)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return "", err
		}
		if i > 9999 {
			return "", fmt.Errorf("%s: 10000 files of that name already there: clear it out", dir)
		}
		dst = filepath.Join(dir, stem+"."+strconv.Itoa(i)+ext)
	}
	err := os.Rename(src, dst)
	if errors.Is(err, syscall.EXDEV) {
		err = copyThenRemove(src, dst)
	}
	if err != nil {
		return "", err
	}
	return dst, nil
}

// copyThenRemove moves src to dst across file systems: the copy is synced
// before the source goes, so a crash leaves at worst both.
func copyThenRemove(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	if _, err = io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err = out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err = out.Close(); err != nil {
		return err
	}
	return os.Remove(src)
}
