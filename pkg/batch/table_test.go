package batch

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestPointTableRoundTrip(t *testing.T) {
	dense := make([]uint64, 1000)
	for i := range dense {
		dense[i] = 5_000_000 + uint64(i)*3
	}
	tests := []struct {
		name     string
		ids      []uint64
		want     []uint64
		wantForm byte
	}{
		{"one", []uint64{7}, []uint64{7}, tableGaps},
		{"zero and max", []uint64{0, math.MaxUint64}, []uint64{0, math.MaxUint64}, tableGaps},
		{"adjacent", []uint64{1, 2, 3}, []uint64{1, 2, 3}, tableGaps},
		{"random pseudonyms", []uint64{0x1234_5678_9abc_def0, 0x8fed_cba9_8765_4321, 0xf000_0000_0000_0001}, nil, tableRaw},
		{"dense", dense, dense, tableGaps},
		{"unsorted with duplicates", []uint64{9, 3, 9, 1}, []uint64{1, 3, 9}, tableGaps},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == nil {
				want = tt.ids
			}
			enc := EncodePointTable(tt.ids)
			if enc[4] != tt.wantForm {
				t.Errorf("form %d, want %d", enc[4], tt.wantForm)
			}
			got, h, err := DecodePointTable(enc)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
			if h != HashPointTable(enc) {
				t.Error("hash differs from HashPointTable")
			}
			if !bytes.Equal(EncodePointTable(got), enc) {
				t.Error("re-encoding differs: one set of ids must have one encoding")
			}
		})
	}
}

func TestDecodePointTableStrict(t *testing.T) {
	hdr := func(form byte, count uint64) []byte {
		return binary.AppendUvarint(append(tableMagic[:], tableVersion, form), count)
	}
	raw := func(ids ...uint64) []byte {
		b := hdr(tableRaw, uint64(len(ids)))
		for _, id := range ids {
			b = binary.BigEndian.AppendUint64(b, id)
		}
		return b
	}
	tests := []struct {
		name    string
		data    []byte
		want    error
		wantMsg string
	}{
		{"empty", nil, ErrCorrupt, "bad magic"},
		{"bad magic", []byte("SGB\x01\x00\x01\x00"), ErrCorrupt, "bad magic"},
		{"version", []byte("SGT\x02\x00\x01\x00"), ErrVersion, "version 2"},
		{"unknown form", append(hdr(7, 1), 1), ErrCorrupt, "unknown form 7"},
		{"no count", []byte("SGT\x01\x00"), ErrCorrupt, "count"},
		{"zero ids", hdr(tableGaps, 0), ErrCorrupt, "empty table"},
		{"count beyond data", append(hdr(tableGaps, 1<<40), 1, 2), ErrCorrupt, "exceeds"},
		{"gaps truncated", append(hdr(tableGaps, 3), 1, 2, 0x80), ErrCorrupt, "id 2"},
		{"gaps trailing", append(hdr(tableGaps, 1), 1, 2), ErrCorrupt, "trailing"},
		{"gap overflows", binary.AppendUvarint(binary.AppendUvarint(hdr(tableGaps, 2), math.MaxUint64-1), 1), ErrCorrupt, "overflows"},
		{"gap non-minimal", append(hdr(tableGaps, 1), 0x81, 0x00), ErrCorrupt, "minimally"},
		{"raw unsorted", raw(2, 1), ErrCorrupt, "not sorted"},
		{"raw duplicate", raw(2, 2), ErrCorrupt, "not sorted"},
		{"raw short", raw(1, 2)[:20], ErrCorrupt, "need 16 bytes"},
		{"raw trailing", append(raw(1, 2), 0), ErrCorrupt, "need 16 bytes"},
		{"raw huge count", hdr(tableRaw, math.MaxUint64), ErrCorrupt, "bytes"},
		{"more points than a batch may have", append(hdr(tableGaps, DefaultMaxPoints+1), make([]byte, DefaultMaxPoints+1)...), ErrTooLarge, "at most 1000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := DecodePointTable(tt.data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "decoding point table: ") || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestTableHashText(t *testing.T) {
	table := EncodePointTable([]uint64{1, 2, 3})
	h := HashPointTable(table)
	s := h.String()
	sum := sha256.Sum256(table)
	if want := hex.EncodeToString(sum[:8]); s != want {
		t.Fatalf("String() = %q, want %q (the first 8 bytes of the SHA-256, in lower-case hex)", s, want)
	}
	got, err := ParseTableHash(s)
	if err != nil || got != h {
		t.Fatalf("ParseTableHash(%q) = %v, %v", s, got, err)
	}
	for _, bad := range []string{"", s[:15], s + "0", s + s, strings.ToUpper(s), "g" + s[1:], " " + s[1:]} {
		t.Run(bad, func(t *testing.T) {
			if _, err := ParseTableHash(bad); err == nil {
				t.Errorf("ParseTableHash(%q) succeeded", bad)
			}
		})
	}
}
