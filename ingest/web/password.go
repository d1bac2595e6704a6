package web

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// MinPasswordLength is the shortest password accepted. Length beats
// composition rules (NIST SP 800-63B); twelve characters resist offline
// guessing of an argon2id hash for years.
const MinPasswordLength = 12

// maxPasswordLength caps the work an attacker can make us do per attempt.
const maxPasswordLength = 256

// HashParams are argon2id's cost parameters. They are written into every
// hash, so raising them later leaves old hashes verifiable.
type HashParams struct {
	Time    uint32 // passes
	Memory  uint32 // KiB
	Threads uint8
}

// DefaultHashParams follow OWASP's argon2id recommendation (19 MiB, two
// passes, one lane): about 30-60 ms per login on a small server.
var DefaultHashParams = HashParams{Time: 2, Memory: 19 * 1024, Threads: 1}

const (
	saltLen = 16
	keyLen  = 32
)

// ErrWeakPassword means a new password breaks the policy; the message says
// which rule.
var ErrWeakPassword = errors.New("password refused")

//go:embed common-passwords.txt
var commonPasswordsTxt []byte

// commonPasswords holds the embedded list, lower-cased.
var commonPasswords = func() map[string]bool {
	m := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(commonPasswordsTxt))
	for sc.Scan() {
		if w := strings.TrimSpace(sc.Text()); w != "" && !strings.HasPrefix(w, "#") {
			m[strings.ToLower(w)] = true
		}
	}
	return m
}()

// CheckPasswordPolicy returns an error wrapping ErrWeakPassword when pw may
// not be used by the user called name: too short or long, one of the most
// common passwords (or one with digits appended), the user's own name or
// e-mail address (with a few characters added), a short unit repeated, or
// a run along the keyboard, the alphabet or the digits
// (passwordshape.go).
func CheckPasswordPolicy(name, pw string) error {
	n := utf8.RuneCountInString(pw)
	if n < MinPasswordLength {
		return fmt.Errorf("%w: it has %d characters; use at least %d (a few unrelated words make a good one)", ErrWeakPassword, n, MinPasswordLength)
	}
	if len(pw) > maxPasswordLength {
		return fmt.Errorf("%w: it is longer than %d bytes", ErrWeakPassword, maxPasswordLength)
	}
	lower := strings.ToLower(pw)
	if commonPasswords[lower] || commonPasswords[strings.TrimRight(lower, "0123456789!.")] {
		return fmt.Errorf("%w: it is one of the most common passwords, the first ones an attacker tries; choose another", ErrWeakPassword)
	}
	if name != "" && (strings.Contains(lower, strings.ToLower(name)) || derivedFromName(name, pw)) {
		return fmt.Errorf("%w: it contains the user name or e-mail address; choose another", ErrWeakPassword)
	}
	if strings.Count(pw, pw[:1]) == len(pw) {
		return fmt.Errorf("%w: it repeats one character; choose another", ErrWeakPassword)
	}
	if repeatsUnit(lower) {
		return fmt.Errorf("%w: it is a short part repeated; choose another (a few unrelated words make a good one)", ErrWeakPassword)
	}
	if isWalk(lower) {
		return fmt.Errorf("%w: it is a run along the keyboard, the alphabet or the digits; choose another", ErrWeakPassword)
	}
	return nil
}

// HashPassword returns pw's argon2id hash in the PHC string format
// ($argon2id$v=19$m=…,t=…,p=…$salt$key).
func HashPassword(pw string, p HashParams) (string, error) {
	if p.Time == 0 || p.Memory == 0 || p.Threads == 0 {
		p = DefaultHashParams
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hashing a password: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, keyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// VerifyPassword reports whether pw matches hash, in constant time. A hash
// it cannot parse is an error, never a match.
func VerifyPassword(hash, pw string) (bool, error) {
	// The whole string is checked, not only its fields: a hash with bytes
	// before it or after a field (found by FuzzVerifyPassword: "\xe7$argon2id…"
	// matched) is damaged, and a damaged hash never matches.
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return false, errors.New("verifying a password: the stored hash is not argon2id")
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version || parts[2] != fmt.Sprintf("v=%d", v) {
		return false, fmt.Errorf("verifying a password: argon2 version %q unsupported", parts[2])
	}
	var p HashParams
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil || p.Time == 0 || p.Memory == 0 || p.Threads == 0 ||
		parts[3] != fmt.Sprintf("m=%d,t=%d,p=%d", p.Memory, p.Time, p.Threads) {
		return false, fmt.Errorf("verifying a password: bad parameters %q", parts[3])
	}
	// Refuse parameters that would let a tampered row exhaust memory.
	if p.Memory > 1<<20 || p.Time > 16 {
		return false, fmt.Errorf("verifying a password: parameters %q out of bounds", parts[3])
	}
	b64 := base64.RawStdEncoding.Strict()
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return false, fmt.Errorf("verifying a password: salt: %w", err)
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) < 16 {
		return false, errors.New("verifying a password: bad key")
	}
	if len(pw) > maxPasswordLength {
		return false, nil
	}
	got := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
