package secretbox

import (
	"errors"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds Open what a damaged or hostile database row could hold:
// it must never panic, and anything it opens must have been sealed by us.
func FuzzOpen(f *testing.F) {
	path := filepath.Join(f.TempDir(), "totp.key")
	r, _, err := LoadOrCreate(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("12345678901234567890"), []byte("1"))
	f.Add([]byte(Version), []byte("1"))
	f.Add([]byte(Version+"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), []byte(""))
	f.Fuzz(func(t *testing.T, v, ad []byte) {
		pt, _, err := r.Open(v, ad)
		if err == nil {
			t.Fatalf("Open accepted a value no key here sealed: %q -> %q", v, pt)
		}
		if !errors.Is(err, ErrNotSealed) && !errors.Is(err, ErrDamaged) && !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("Open error %v is none of the documented ones", err)
		}
		if IsSealed(v) {
			_, _ = KeyIDOf(v)
		}
	})
}
