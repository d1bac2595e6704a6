package anon

import (
	"bytes"
	"errors"
	"testing"
)

// fastParams keep tests and fuzzing quick; they are the cheapest Import
// accepts.
var fastParams = kdfParams{time: 1, memoryKiB: minMemoryKiB, threads: 1}

const testPass = "correct horse battery staple"

func TestExportImportRoundTrip(t *testing.T) {
	s := secretOf(11)
	// Once with the production parameters, to prove Import accepts them.
	data, err := Export(s, []byte(testPass))
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != exportSize {
		t.Errorf("export is %d bytes, want %d", len(data), exportSize)
	}
	if bytes.Contains(data, s[:]) {
		t.Fatal("the export contains the secret in clear")
	}
	got, err := Import(data, []byte(testPass))
	if err != nil || got != s {
		t.Fatalf("Import = same %v, %v", got == s, err)
	}
	again, err := Export(s, []byte(testPass))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again, data) {
		t.Error("two exports of the same secret are identical: salt or nonce not random")
	}
}

func TestExportShortPassphrase(t *testing.T) {
	if _, err := Export(secretOf(1), []byte("short")); err == nil {
		t.Fatal("Export accepted a 5-byte passphrase")
	}
}

func TestImportErrors(t *testing.T) {
	s := secretOf(12)
	good, err := export(s, []byte(testPass), fastParams)
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		data []byte
		pass string
		want error
	}{
		{"wrong passphrase", good, "incorrect horse battery", ErrBadPassphrase},
		{"empty passphrase", good, "", ErrBadPassphrase},
		{"flipped ciphertext bit", mutate(func(b []byte) []byte { b[len(b)-20] ^= 1; return b }), testPass, ErrBadPassphrase},
		{"flipped salt bit", mutate(func(b []byte) []byte { b[20] ^= 1; return b }), testPass, ErrBadPassphrase},
		// Raising the cost within bounds still fails authentication: the
		// header is the AEAD's additional data.
		{"altered time", mutate(func(b []byte) []byte { b[12]++; return b }), testPass, ErrBadPassphrase},
		{"empty", nil, testPass, ErrBadExport},
		{"wrong magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b }), testPass, ErrBadExport},
		{"future version", mutate(func(b []byte) []byte { b[8] = 2; return b }), testPass, ErrBadExport},
		{"truncated", good[:len(good)-1], testPass, ErrBadExport},
		{"padded", append(bytes.Clone(good), 0), testPass, ErrBadExport},
		{"huge memory", mutate(func(b []byte) []byte { b[13] = 0xff; return b }), testPass, ErrBadExport},
		{"zero threads", mutate(func(b []byte) []byte { b[17] = 0; return b }), testPass, ErrBadExport},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Import(tt.data, []byte(tt.pass))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Import = %v, want an error wrapping %v", err, tt.want)
			}
			if got != (Secret{}) {
				t.Error("a failed Import returned key material")
			}
		})
	}
	if got, err := Import(good, []byte(testPass)); err != nil || got != s {
		t.Fatalf("the unaltered export does not import: %v", err)
	}
}

// FuzzImport feeds Import arbitrary bytes and passphrases; the seed corpus
// in testdata/fuzz/FuzzImport holds valid exports (made with fastParams and
// the passphrase testPass) and near misses.
func FuzzImport(f *testing.F) {
	f.Fuzz(func(t *testing.T, data, pass []byte) {
		s, err := Import(data, pass)
		if err != nil {
			if s != (Secret{}) {
				t.Fatal("a failed Import returned key material")
			}
			if !errors.Is(err, ErrBadExport) && !errors.Is(err, ErrBadPassphrase) {
				t.Fatalf("Import error wraps neither ErrBadExport nor ErrBadPassphrase: %v", err)
			}
			return
		}
		if len(data) != exportSize {
			t.Fatalf("Import accepted %d bytes", len(data))
		}
		// A successful import must be reproducible.
		if again, err := Import(data, pass); err != nil || again != s {
			t.Fatalf("second Import = %v", err)
		}
	})
}
