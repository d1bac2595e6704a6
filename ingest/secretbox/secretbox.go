// Package secretbox seals the small secrets the ingest must keep in its
// database but must be able to read back (the dashboard's TOTP secrets):
// AES-256-GCM under a key-encryption key kept in a file outside the
// database, so a copy of the database alone (a backup, a stolen disk image
// of the data volume) reveals none of them.
//
// A sealed value is text: "v1:" followed by the unpadded standard base64
// of key id (8 bytes) ‖ nonce (12) ‖ ciphertext and tag. The key id is an
// HMAC of the key, so a value names the key that sealed it without
// revealing anything about it: a value sealed under another key is told
// apart from a damaged one, and the ingest can refuse to start with the
// wrong key file instead of locking every user out. The version prefix
// lets a reader recognise a plaintext value written by an older release.
//
// The caller binds each value to where it is stored with additional data
// (for TOTP, the user's id): a sealed value copied to another row does not
// open.
//
// Key files are 32 random bytes, mode 0600, refused when group or others
// may read them. A Keyring holds the current key and, while a rotation is
// unfinished, the previous one (the same path with ".old"); see
// BeginRotation for the crash-safe order of the file steps.
package secretbox

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
)

// KeySize is the length of a key file: an AES-256 key.
const KeySize = 32

// Version is the prefix of every sealed value this package writes.
const Version = "v1:"

const (
	idLen    = 8
	nonceLen = 12
	tagLen   = 16
)

// Suffixes of the files a rotation keeps beside the key file.
const (
	OldSuffix = ".old"
	NewSuffix = ".new"
)

// Errors Open returns; check with errors.Is.
var (
	// ErrNotSealed means the value has no version prefix: a plaintext
	// value from an older release, or not a sealed value at all.
	ErrNotSealed = errors.New("value is not sealed")
	// ErrUnknownKey means the value was sealed under a key the keyring
	// does not hold: the key file is not the one that sealed it.
	ErrUnknownKey = errors.New("value was sealed under another key")
	// ErrDamaged means the value names a key the keyring holds but does
	// not open: it was altered, or copied from where it was bound to.
	ErrDamaged = errors.New("sealed value does not open (altered, or copied from another record)")
)

// Key is one loaded key.
type Key struct {
	id   [idLen]byte
	aead cipher.AEAD
	raw  []byte
}

// ID is the key's public identifier, in hex, as it appears in logs and
// errors.
func (k *Key) ID() string { return hex.EncodeToString(k.id[:]) }

func newKey(raw []byte) (*Key, error) {
	if len(raw) != KeySize {
		return nil, fmt.Errorf("a key is %d bytes, this has %d", KeySize, len(raw))
	}
	blk, err := aes.NewCipher(raw)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, raw)
	m.Write([]byte("sightglass secretbox key id"))
	k := &Key{aead: aead, raw: bytes.Clone(raw)}
	copy(k.id[:], m.Sum(nil))
	return k, nil
}

// header is what every value sealed under k starts with; it is part of
// the authenticated data, so neither the version nor the key id can be
// swapped.
func (k *Key) header() []byte { return append([]byte(Version), k.id[:]...) }

func (k *Key) seal(plaintext, ad []byte) ([]byte, error) {
	nonce := make([]byte, nonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("sealing a secret: %w", err)
	}
	body := make([]byte, 0, idLen+nonceLen+len(plaintext)+tagLen)
	body = append(body, k.id[:]...)
	body = append(body, nonce...)
	body = k.aead.Seal(body, nonce, plaintext, append(k.header(), ad...))
	out := make([]byte, 0, len(Version)+base64.RawStdEncoding.EncodedLen(len(body)))
	out = append(out, Version...)
	return base64.RawStdEncoding.AppendEncode(out, body), nil
}

// parsed is a sealed value taken apart.
type parsed struct {
	id    [idLen]byte
	nonce []byte
	ct    []byte
}

// parse takes a sealed value apart without any key: ErrNotSealed when it
// has no version prefix, ErrDamaged when the rest is malformed.
func parse(sealed []byte) (parsed, error) {
	rest, ok := bytes.CutPrefix(sealed, []byte(Version))
	if !ok {
		return parsed{}, ErrNotSealed
	}
	body, err := base64.RawStdEncoding.AppendDecode(nil, rest)
	if err != nil || len(body) < idLen+nonceLen+tagLen {
		return parsed{}, ErrDamaged
	}
	var p parsed
	copy(p.id[:], body)
	p.nonce = body[idLen : idLen+nonceLen]
	p.ct = body[idLen+nonceLen:]
	return p, nil
}

// IsSealed reports whether v carries the version prefix of a sealed value.
func IsSealed(v []byte) bool { return bytes.HasPrefix(v, []byte(Version)) }

// KeyIDOf returns the id (hex) of the key that sealed v, or an error when
// v is not a well-formed sealed value.
func KeyIDOf(v []byte) (string, error) {
	p, err := parse(v)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(p.id[:]), nil
}

// ReadKeyFile loads the key at path. A file group or others may read, or
// of the wrong size, is refused with an error saying what to do.
func ReadKeyFile(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the secret key %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading the secret key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("reading the secret key %s: not a regular file", path)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return nil, fmt.Errorf("secret key %s has mode %04o, readable beyond its owner: run `chmod 600 %s`", path, m, path)
	}
	raw, err := io.ReadAll(io.LimitReader(f, KeySize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the secret key %s: %w", path, err)
	}
	if len(raw) != KeySize {
		return nil, fmt.Errorf("secret key %s is not %d bytes: it is damaged or not a key file; restore it from backup", path, KeySize)
	}
	k, err := newKey(raw)
	if err != nil {
		return nil, fmt.Errorf("reading the secret key %s: %w", path, err)
	}
	return k, nil
}

// CreateKeyFile makes a new random key at path (mode 0600), which must not
// exist (else the error wraps fs.ErrExist), and syncs it and its directory
// so it survives a crash.
func CreateKeyFile(path string) (*Key, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("making a secret key: %w", err)
	}
	if err := writeKey(path, raw); err != nil {
		return nil, err
	}
	return newKey(raw)
}

// writeKey writes a key file that must not exist yet, so that it appears
// whole or not at all: written and synced under a temporary name, then
// hard-linked to path (which, unlike a rename, fails if path exists).
// Neither a crash nor a reader racing the writer ever sees a short key.
func writeKey(path string, raw []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("creating the secret key %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	err = f.Chmod(0o600) // CreateTemp makes 0600 already; say it here
	if err == nil {
		_, err = f.Write(raw)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the secret key %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("creating the secret key %s: %w", path, err)
	}
	return atomicfile.SyncDir(dir)
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Keyring is the key at a path and, while a rotation is unfinished, the
// previous key (path + OldSuffix). It seals under the current key and
// opens under either. When the key file is replaced under it (a rotation
// by `sightglass-ingest users rotate-key` while the ingest runs), it
// reloads: Seal checks the file each time, Open when a value names a key
// it does not hold. It is safe for concurrent use.
type Keyring struct {
	path string

	mu      sync.Mutex
	current *Key
	old     *Key // nil when no rotation is unfinished
	stamp   fs.FileInfo
}

// Open loads the keyring at path: the key file must exist.
func Open(path string) (*Keyring, error) {
	r := &Keyring{path: path}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

// LoadOrCreate loads the keyring at path, first creating the key file when
// neither it nor a rotation's files exist (the first start). created
// reports whether it did. A missing key file beside a rotation's .old or
// .new file is an error, never a reason to make a new key.
func LoadOrCreate(path string) (r *Keyring, created bool, err error) {
	ok, err := exists(path)
	if err != nil {
		return nil, false, fmt.Errorf("reading the secret key %s: %w", path, err)
	}
	if !ok {
		for _, suf := range []string{OldSuffix, NewSuffix} {
			if other, _ := exists(path + suf); other {
				return nil, false, fmt.Errorf("secret key %s is missing but %s exists: a key rotation was interrupted and the key file removed; restore %s from backup (refusing to make a new key, which would open nothing)", path, path+suf, path)
			}
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, false, fmt.Errorf("creating the secret key's directory: %w", err)
		}
		switch _, err := CreateKeyFile(path); {
		case errors.Is(err, fs.ErrExist):
			// Another process (a second replica starting) made it
			// first: use theirs.
		case err != nil:
			return nil, false, err
		default:
			created = true
		}
	}
	r, err = Open(path)
	return r, created, err
}

// load (re)reads the key file and the .old one; the caller holds mu or
// owns r.
func (r *Keyring) load() error {
	fi, err := os.Stat(r.path)
	if err != nil {
		return fmt.Errorf("reading the secret key %s: %w", r.path, err)
	}
	cur, err := ReadKeyFile(r.path)
	if err != nil {
		return err
	}
	var old *Key
	if ok, err := exists(r.path + OldSuffix); err != nil {
		return fmt.Errorf("reading the secret key %s: %w", r.path+OldSuffix, err)
	} else if ok {
		if old, err = ReadKeyFile(r.path + OldSuffix); err != nil {
			return err
		}
		if old.id == cur.id {
			old = nil // a rotation stopped before its new key was in place
		}
	}
	r.current, r.old, r.stamp = cur, old, fi
	return nil
}

// refresh reloads when the key file is no longer the one loaded.
func (r *Keyring) refresh() error {
	fi, err := os.Stat(r.path)
	if err != nil {
		return fmt.Errorf("reading the secret key %s: %w", r.path, err)
	}
	if os.SameFile(fi, r.stamp) && fi.ModTime().Equal(r.stamp.ModTime()) && fi.Size() == r.stamp.Size() {
		return nil
	}
	return r.load()
}

// Path is the key file's path.
func (r *Keyring) Path() string { return r.path }

// CurrentID is the id of the key values are sealed under.
func (r *Keyring) CurrentID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current.ID()
}

// OldID is the id of the previous key while a rotation is unfinished, or
// "".
func (r *Keyring) OldID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.old == nil {
		return ""
	}
	return r.old.ID()
}

// Seal seals plaintext under the current key, bound to ad.
func (r *Keyring) Seal(plaintext, ad []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refresh(); err != nil {
		return nil, err
	}
	return r.current.seal(plaintext, ad)
}

// Open opens a sealed value bound to ad. current reports whether it was
// sealed under the current key; when false the caller should seal it
// again (a rotation is unfinished). The errors wrap ErrNotSealed,
// ErrUnknownKey or ErrDamaged.
func (r *Keyring) Open(sealed, ad []byte) (plaintext []byte, current bool, err error) {
	p, err := parse(sealed)
	if err != nil {
		return nil, false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	k := r.keyFor(p.id)
	if k == nil {
		// Perhaps the file was rotated under us: look again once.
		if err := r.load(); err != nil {
			return nil, false, err
		}
		if k = r.keyFor(p.id); k == nil {
			return nil, false, fmt.Errorf("%w: key id %x, but %s holds %s", ErrUnknownKey, p.id, r.path, r.current.ID())
		}
	}
	pt, err := k.aead.Open(nil, p.nonce, p.ct, append(k.header(), ad...))
	if err != nil {
		return nil, false, ErrDamaged
	}
	return pt, k == r.current, nil
}

// IsCurrent reports whether sealed was sealed under the key the key file
// holds now (read again if it changed). A caller that sealed and stored a
// value while a rotation was putting a new key in place checks this after
// storing it, and seals again if not: otherwise the value could outlive
// the old key.
func (r *Keyring) IsCurrent(sealed []byte) (bool, error) {
	p, err := parse(sealed)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refresh(); err != nil {
		return false, err
	}
	return p.id == r.current.id, nil
}

func (r *Keyring) keyFor(id [idLen]byte) *Key {
	switch {
	case r.current.id == id:
		return r.current
	case r.old != nil && r.old.id == id:
		return r.old
	}
	return nil
}
