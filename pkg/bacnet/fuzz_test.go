package bacnet

import (
	"testing"
	"time"
)

// FuzzDecode feeds arbitrary datagrams to every decoder a device's answer
// reaches: the three layers, then each ACK decoder on the payload. None
// may panic or hang; values that decode must encode again and decode to
// the same count.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"810b000801001008",
		"810a001101040265010c0c000000011955",
		"810a00130100" + "3001" + "0c" + "0c00000001" + "1955" + "3e4442900000" + "3f",
		"810a000f0108000501" + "0a" + "1000c4020004d2",
		"0c00000001" + "1e" + "2955" + "4e4442900000" + "4f" + "291c" + "5e91029120" + "5f" + "1f",
		"0c05000001" + "1983" + "3a05c0" + "4901" + "5e" + "0ea47e030201b40a1e00000f1e2c41ac00001f2a0400" + "5f" + "6964",
		// A page whose middle record has a timestamp without its time.
		"0c05000001" + "1983" + "3a05c0" + "4903" + "5e" + "0ea47e030201b40a1e00000f1e2c41ac00001f2a0400" + "0ea47e0302010f1e2c41ac00001f" + "0ea47e030201b40a2d00000f1e2c41ac00001f2a0400" + "5f",
		"c4020004d22205c49100220104",
		"3e3e3e3f3f3f",
	} {
		f.Add(mustHex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := DecodeMessage(b); err == nil && m.HasAPDU {
			b = m.APDU.Payload
		}
		_, _ = DecodeIAm(b)
		_, _ = DecodeIHave(b)
		_, _, _, _ = DecodeReadPropertyACK(b)
		_, _ = DecodeReadPropertyMultipleACK(b)
		_, _ = DecodeError(b)
		if r, err := DecodeReadRangeACK(b); err == nil {
			_, _ = DecodeLogRecords(r.Items, time.UTC)
		}
		// Request decoders read what simulators receive and re-read what
		// the guard lets out.
		_, _, _ = DecodeWhoIs(b)
		_, _, _, _, _ = DecodeWhoHas(b)
		_, _, _ = DecodeReadPropertyRequest(b)
		_, _ = DecodeReadPropertyMultipleRequest(b)
		_, _, _, _ = DecodeReadRangeRequest(b, time.UTC)
		_ = NewGuard(nil, false).Check(b)
		vals, err := DecodeValues(b)
		if err != nil {
			return
		}
		var enc []byte
		for _, v := range vals {
			if enc, err = AppendValue(enc, v); err != nil {
				t.Fatalf("decoded %v but cannot encode it: %v", v, err)
			}
		}
		again, err := DecodeValues(enc)
		if err != nil || len(again) != len(vals) {
			t.Fatalf("re-encoded values decode to %d values, %v; want %d", len(again), err, len(vals))
		}
	})
}
