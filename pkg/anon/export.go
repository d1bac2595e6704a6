package anon

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// An export is:
//
//	magic    "SGSECRET" (8 bytes)
//	version  1 (1 byte)
//	time     argon2id passes, uint32 big-endian
//	memory   argon2id memory in KiB, uint32 big-endian
//	threads  argon2id lanes (1 byte)
//	salt     16 bytes
//	nonce    12 bytes
//	sealed   AES-256-GCM(key, nonce, secret, aad = all the bytes above): 32 + 16 bytes
//
// The key is argon2id(passphrase, salt, time, memory, threads, 32). The
// header is authenticated, so tampering with the parameters fails like a
// wrong passphrase does.
const (
	exportMagic   = "SGSECRET"
	exportVersion = 1
	saltSize      = 16
	nonceSize     = 12
	headerSize    = len(exportMagic) + 1 + 4 + 4 + 1 + saltSize + nonceSize
	exportSize    = headerSize + SecretSize + 16 // GCM tag
)

// MinPassphrase is the shortest passphrase Export accepts, in bytes.
const MinPassphrase = 12

// kdfParams are argon2id's cost parameters.
type kdfParams struct {
	time, memoryKiB uint32
	threads         uint8
}

// exportParams are what Export uses: RFC 9106's second recommended option
// (t=3, 64 MiB, p=4), affordable on a small agent box. Tests lower them.
var exportParams = kdfParams{time: 3, memoryKiB: 64 << 10, threads: 4}

// Bounds Import accepts, so a crafted file cannot make it burn a gigabyte
// of memory or minutes of CPU.
const (
	minMemoryKiB = 8 << 10
	maxMemoryKiB = 256 << 10
	maxTime      = 16
)

// Errors Import wraps; check with errors.Is.
var (
	// ErrBadPassphrase means the export did not decrypt: the passphrase is
	// wrong or the export was altered.
	ErrBadPassphrase = errors.New("wrong passphrase or altered secret export")
	// ErrBadExport means the data is not a secret export this version reads.
	ErrBadExport = errors.New("not a sightglass secret export")
)

// Export encrypts s under passphrase so it can be carried to a replacement
// box and read there with Import. The passphrase must be at least
// MinPassphrase bytes.
func Export(s Secret, passphrase []byte) ([]byte, error) {
	if len(passphrase) < MinPassphrase {
		return nil, fmt.Errorf("exporting site secret: the passphrase is %d bytes, want at least %d", len(passphrase), MinPassphrase)
	}
	return export(s, passphrase, exportParams)
}

func export(s Secret, passphrase []byte, p kdfParams) ([]byte, error) {
	out := make([]byte, headerSize, exportSize)
	n := copy(out, exportMagic)
	out[n] = exportVersion
	n++
	binary.BigEndian.PutUint32(out[n:], p.time)
	binary.BigEndian.PutUint32(out[n+4:], p.memoryKiB)
	out[n+8] = p.threads
	n += 9
	salt, nonce := out[n:n+saltSize], out[n+saltSize:n+saltSize+nonceSize]
	if _, err := rand.Read(out[n : n+saltSize+nonceSize]); err != nil {
		return nil, fmt.Errorf("exporting site secret: %w", err)
	}
	aead, err := newAEAD(passphrase, salt, p)
	if err != nil {
		return nil, fmt.Errorf("exporting site secret: %w", err)
	}
	return aead.Seal(out, nonce, s[:], out[:headerSize]), nil
}

// Import decrypts an export made by Export. A wrong passphrase gives an
// error wrapping ErrBadPassphrase; data that is not an export, or of an
// unknown version, one wrapping ErrBadExport.
func Import(data, passphrase []byte) (Secret, error) {
	var s Secret
	if len(data) < len(exportMagic)+1 || string(data[:len(exportMagic)]) != exportMagic {
		return s, fmt.Errorf("importing site secret: %w (missing the %q header)", ErrBadExport, exportMagic)
	}
	if v := data[len(exportMagic)]; v != exportVersion {
		return s, fmt.Errorf("importing site secret: %w: format version %d, this agent reads version %d; import it with the agent version that exported it or newer",
			ErrBadExport, v, exportVersion)
	}
	if len(data) != exportSize {
		return s, fmt.Errorf("importing site secret: %w: %d bytes, want %d (truncated or padded?)", ErrBadExport, len(data), exportSize)
	}
	n := len(exportMagic) + 1
	p := kdfParams{
		time:      binary.BigEndian.Uint32(data[n:]),
		memoryKiB: binary.BigEndian.Uint32(data[n+4:]),
		threads:   data[n+8],
	}
	n += 9
	if p.time < 1 || p.time > maxTime || p.memoryKiB < minMemoryKiB || p.memoryKiB > maxMemoryKiB || p.threads < 1 {
		return s, fmt.Errorf("importing site secret: %w: key derivation parameters t=%d m=%dKiB p=%d out of range", ErrBadExport, p.time, p.memoryKiB, p.threads)
	}
	salt, nonce := data[n:n+saltSize], data[n+saltSize:headerSize]
	aead, err := newAEAD(passphrase, salt, p)
	if err != nil {
		return s, fmt.Errorf("importing site secret: %w", err)
	}
	plain, err := aead.Open(nil, nonce, data[headerSize:], data[:headerSize])
	if err != nil {
		return s, fmt.Errorf("importing site secret: %w", ErrBadPassphrase)
	}
	copy(s[:], plain)
	return s, nil
}

func newAEAD(passphrase, salt []byte, p kdfParams) (cipher.AEAD, error) {
	key := argon2.IDKey(passphrase, salt, p.time, p.memoryKiB, p.threads, 32)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
