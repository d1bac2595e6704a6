package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
)

// tmpPrefix starts the names of Put's temporary files. '~' is not a name
// character, so a temporary file can never be mistaken for a blob.
const tmpPrefix = "put~"

// Dir is a Store in a local directory: a blob named "a/b/c" is the file
// root/a/b/c. Writes are crash-safe and create-if-absent through link(2),
// so several Dir values, or several processes, may share one root. The root
// must be on a file system with hard links and fsync (any local Linux one).
type Dir struct {
	root string
}

var _ Store = (*Dir)(nil)

// OpenDir opens the store rooted at root, creating it with mode 0750 if
// absent.
func OpenDir(root string) (*Dir, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("opening blob store %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("opening blob store: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("opening blob store: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("opening blob store: %s is not a directory", abs)
	}
	return &Dir{root: abs}, nil
}

// Root is the store's absolute root directory.
func (d *Dir) Root() string { return d.root }

func (d *Dir) path(name string) string {
	return filepath.Join(d.root, filepath.FromSlash(name))
}

// Put stores data under name if absent. The bytes are written to a
// temporary file beside the target and synced, then linked to the final
// name, which fails if the name exists: so a blob appears complete or not at
// all, and the first writer wins. It returns once the blob and its directory
// entry are durable.
func (d *Dir) Put(ctx context.Context, name string, data []byte) (bool, error) {
	if err := ValidName(name); err != nil {
		return false, fmt.Errorf("putting blob: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("putting blob %s: %w", name, err)
	}
	final := d.path(name)
	parent := filepath.Dir(final)
	if err := d.mkdirs(parent); err != nil {
		return false, d.putErr(name, err)
	}
	tmp, err := writeTemp(parent, data)
	if err != nil {
		return false, d.putErr(name, err)
	}
	linkErr := os.Link(tmp, final)
	// The temporary name is never needed again: on success the blob has
	// its own link, on failure the bytes are compared with the winner's.
	// One left behind (a failed remove, a crash) is litter that List and
	// Get ignore.
	os.Remove(tmp)
	switch {
	case linkErr == nil:
		if err := atomicfile.SyncDir(parent); err != nil {
			return false, d.putErr(name, err)
		}
		return true, nil
	case errors.Is(linkErr, fs.ErrExist):
		existing, err := os.ReadFile(final)
		if err != nil {
			if errors.Is(err, syscall.EISDIR) {
				return false, fmt.Errorf("putting blob %s: the name is a folder of other blobs: %w", name, ErrConflict)
			}
			return false, d.putErr(name, err)
		}
		if !bytes.Equal(existing, data) {
			return false, fmt.Errorf("putting blob %s: %d bytes already stored differ from the %d bytes offered: %w", name, len(existing), len(data), ErrConflict)
		}
		// The winner may not have synced the directory yet; the caller
		// will treat our answer as "stored", so make that true now.
		if err := atomicfile.SyncDir(parent); err != nil {
			return false, d.putErr(name, err)
		}
		return false, nil
	default:
		return false, d.putErr(name, linkErr)
	}
}

func (d *Dir) putErr(name string, err error) error {
	if errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("putting blob %s: a folder in the name is already a blob: %w", name, ErrConflict)
	}
	return fmt.Errorf("putting blob %s in %s: %w", name, d.root, err)
}

// mkdirs creates dir and its missing parents up to the root, syncing each
// parent so a new folder survives a crash along with the blob in it.
func (d *Dir) mkdirs(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != d.root && len(parent) > len(d.root) {
		if err := d.mkdirs(parent); err != nil {
			return err
		}
	}
	err := os.Mkdir(dir, 0o750)
	if errors.Is(err, fs.ErrExist) {
		return nil // a concurrent Put made it, or it is a file and the caller's next step reports ENOTDIR
	}
	if err != nil {
		return err
	}
	return atomicfile.SyncDir(parent)
}

// writeTemp writes data to a new temporary file in dir, syncs and closes it,
// and returns its path.
func writeTemp(dir string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	// Blobs are read by everyone with access to the store, like files
	// made with the default umask; CreateTemp's 0600 would hide them from
	// a separate reader account.
	if err := f.Chmod(0o640); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// Get returns the blob's bytes, or an error wrapping ErrNotFound.
func (d *Dir) Get(ctx context.Context, name string) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return nil, fmt.Errorf("getting blob: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("getting blob %s: %w", name, err)
	}
	b, err := os.ReadFile(d.path(name))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR) {
		return nil, fmt.Errorf("getting blob %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("getting blob %s in %s: %w", name, d.root, err)
	}
	return b, nil
}

// List returns the names of the blobs that start with prefix, sorted. It
// reads only the folders the prefix can match.
func (d *Dir) List(ctx context.Context, prefix string) ([]string, error) {
	if err := ValidPrefix(prefix); err != nil {
		return nil, fmt.Errorf("listing blobs: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing blobs %q: %w", prefix, err)
	}
	start := d.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = d.path(prefix[:i])
	}
	var names []string
	err := filepath.WalkDir(start, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if p == start && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) {
				return fs.SkipAll // nothing stored under the prefix
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == start {
			if !e.IsDir() {
				return fs.SkipAll // the folder part of the prefix is a blob
			}
			return nil
		}
		// Temporary files and anything else a blob name cannot spell are
		// not blobs.
		if validSegment(e.Name()) != nil {
			if e.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(d.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if e.IsDir() {
			if !strings.HasPrefix(name+"/", prefix) && !strings.HasPrefix(prefix, name+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if e.Type().IsRegular() && strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing blobs %q in %s: %w", prefix, d.root, err)
	}
	// WalkDir orders by path segment ("a/b" before "a-c"); the contract is
	// plain string order, as Azure lists.
	slices.Sort(names)
	return names, nil
}

// Delete removes the blob; a blob that is not there is not an error, so
// several compactors can delete the same sources. Only compaction deletes
// archived data, and only what it has stored again in compacted form and
// verified; the hot store's retry queue deletes its own markers.
func (d *Dir) Delete(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("deleting blob: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("deleting blob %s: %w", name, err)
	}
	if err := os.Remove(d.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting blob %s in %s: %w", name, d.root, err)
	}
	return nil
}
