package bacnet

import (
	"encoding/hex"
	"math"
	"reflect"
	"strings"
	"testing"
)

// The encodings below are the worked examples of clause 20.2 and Annex F
// of ANSI/ASHRAE 135, computed by hand from the published rules.
func TestValueGolden(t *testing.T) {
	tests := []struct {
		name string
		v    Value
		hex  string
	}{
		{"null", Null(), "00"},
		{"false", Bool(false), "10"},
		{"true", Bool(true), "11"},
		{"unsigned 72", Unsigned(72), "2148"},
		{"unsigned 256", Unsigned(256), "220100"},
		{"unsigned max32", Unsigned(math.MaxUint32), "24ffffffff"},
		{"signed 72", Signed(72), "3148"},
		{"signed -1", Signed(-1), "31ff"},
		{"signed 128", Signed(128), "320080"},
		{"signed -129", Signed(-129), "32ff7f"},
		{"real 72", Real(72), "4442900000"},
		{"double 72", Double(72), "55084052000000000000"},
		{"octets", OctetString([]byte{0x12, 0x34, 0xff}), "631234ff"},
		{"string", CharString("This is a BACnet string!"), "751900546869732069732061204241436e657420737472696e6721"},
		{"empty string", CharString(""), "7100"},
		{"bits 10101", Bits(NewBitString(true, false, true, false, true)), "8203a8"},
		{"enum 0", Enumerated(0), "9100"},
		{"date", DateValue(Date{Year: 1991, Month: 1, Day: 24, Weekday: 4}), "a45b011804"},
		{"time", TimeValue(Time{Hour: 17, Minute: 35, Second: 45, Hundredths: 17}), "b411232d11"},
		{"object id", ObjectValue(ObjectID{Type: ObjectAnalogInput, Instance: 15}), "c40000000f"},
		{"constructed", Constructed(3, Real(1), Enumerated(2)), "3e443f800000" + "91023f"},
		{"extended tag", Value{Kind: KindContext, Context: 20, Raw: []byte{7}}, "f91407"},
		{"long octets", OctetString(make([]byte, 300)), "65fe012c" + strings.Repeat("00", 300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AppendValue(nil, tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tt.hex {
				t.Fatalf("encoded %x, want %s", got, tt.hex)
			}
			back, err := DecodeValues(got)
			if err != nil {
				t.Fatalf("decoding %x: %v", got, err)
			}
			if len(back) != 1 || !equalValue(back[0], tt.v) {
				t.Fatalf("decoded %+v, want %+v", back, tt.v)
			}
		})
	}
}

func equalValue(a, b Value) bool {
	a.charset, b.charset = 0, 0
	if len(a.Bytes) == 0 && len(b.Bytes) == 0 {
		a.Bytes, b.Bytes = nil, nil
	}
	if len(a.Raw) == 0 && len(b.Raw) == 0 {
		a.Raw, b.Raw = nil, nil
	}
	if len(a.Items) != len(b.Items) {
		return false
	}
	for i := range a.Items {
		if !equalValue(a.Items[i], b.Items[i]) {
			return false
		}
	}
	a.Items, b.Items = nil, nil
	return reflect.DeepEqual(a, b)
}

func TestContextEncoding(t *testing.T) {
	tests := []struct {
		name string
		tag  uint8
		v    Value
		hex  string
	}{
		{"unsigned [0] 256", 0, Unsigned(256), "0a0100"},
		{"enum [1] 85", 1, Enumerated(85), "1955"},
		{"object [0]", 0, ObjectValue(ObjectID{Type: ObjectAnalogInput, Instance: 1}), "0c00000001"},
		{"boolean [2] true", 2, Bool(true), "2901"},
		{"real [2]", 2, Real(1.5), "2c3fc00000"},
		{"string [3] of 6 octets", 3, CharString("hello"), "3d0600" + "68656c6c6f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AppendContext(nil, tt.tag, tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tt.hex {
				t.Fatalf("encoded %x, want %s", got, tt.hex)
			}
			vals, err := DecodeValues(got)
			if err != nil || len(vals) != 1 {
				t.Fatalf("decoding: %v %v", vals, err)
			}
			back, err := vals[0].ContextAs(uint8(tt.v.Kind))
			if err != nil {
				t.Fatal(err)
			}
			if !equalValue(back, tt.v) {
				t.Fatalf("decoded %+v, want %+v", back, tt.v)
			}
		})
	}
}

func TestDecodeValuesRejects(t *testing.T) {
	tests := []struct {
		name, hex, want string
	}{
		{"truncated real", "44429000", "claims 4 content octets"},
		{"real of 3", "43429000", "real of 3 octets"},
		{"unclosed", "3e4442900000", "missing closing tag 3"},
		{"stray closing", "3f", "unexpected closing tag 3"},
		{"mismatched closing", "3e4f", "unexpected closing tag 4"},
		{"boolean 2", "12", "boolean value 2"},
		{"bad charset", "720900", "character set 9"},
		{"ucs-4 odd", "73030000", "UCS-4"},
		{"bits unused 8", "820800", "unused bits"},
		{"reserved tag", "d100", "reserved application tag"},
		{"huge length", "65ff7fffffff", "content octets"},
		{"extended 255", "f9ff", "reserved"},
		{"deep", strings.Repeat("0e", maxDepth+2), "deeper"},
		{"unsigned of 9", "2509010203040506070809", "unsigned of 9 octets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := hex.DecodeString(tt.hex)
			_, err := DecodeValues(b)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DecodeValues(%s) = %v, want an error containing %q", tt.hex, err, tt.want)
			}
		})
	}
}

func TestCharsets(t *testing.T) {
	tests := []struct{ hex, want string }{
		{"7300" + "c3a9", "é"},
		{"75050400e900ff", "éÿ"},
		{"7305e9ff", "éÿ"},
		{"7509030000" + "00e9000020ac", "é€"},
	}
	for _, tt := range tests {
		b, _ := hex.DecodeString(tt.hex)
		v, err := DecodeValues(b)
		if err != nil || v[0].Str != tt.want {
			t.Errorf("%s: %v %v, want %q", tt.hex, v, err, tt.want)
		}
	}
}
