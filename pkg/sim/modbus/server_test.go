package modbussim

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// exchange sends one raw request PDU to unit and returns the answer PDU.
func exchange(t *testing.T, addr string, unit byte, pdu []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := make([]byte, 7+len(pdu))
	binary.BigEndian.PutUint16(req, 0x1234)
	binary.BigEndian.PutUint16(req[4:], uint16(len(pdu)+1))
	req[6] = unit
	copy(req[7:], pdu)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 7)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint16(hdr) != 0x1234 || hdr[6] != unit {
		t.Fatalf("answer header %x", hdr)
	}
	resp := make([]byte, int(binary.BigEndian.Uint16(hdr[4:]))-1)
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestServer(t *testing.T) {
	u := NewUnit().SetRegisters(Holding, 10, 1, 2).SetBits(Coils, 3, true).MaxRead(10).Identify(Identity{Vendor: "V", ProductCode: "P"})
	s, err := Start(Options{}, map[byte]*Unit{1: u, 2: NewUnit().Strict(true).SetRegisters(Input, 0, 7)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		name string
		unit byte
		pdu  []byte
		want []byte
	}{
		{"holding", 1, []byte{3, 0, 10, 0, 2}, []byte{3, 4, 0, 1, 0, 2}},
		{"unmapped reads zero", 1, []byte{3, 0, 12, 0, 1}, []byte{3, 2, 0, 0}},
		{"coils", 1, []byte{1, 0, 0, 0, 5}, []byte{1, 1, 0b01000}},
		{"too long", 1, []byte{3, 0, 0, 0, 11}, []byte{0x83, 3}},
		{"strict unmapped", 2, []byte{4, 0, 0, 0, 2}, []byte{0x84, 2}},
		{"strict mapped", 2, []byte{4, 0, 0, 0, 1}, []byte{4, 2, 0, 7}},
		{"no such unit", 9, []byte{3, 0, 0, 0, 1}, []byte{0x83, 11}},
		{"write refused", 1, []byte{6, 0, 10, 0, 9}, []byte{0x86, 1}},
		{"identify", 1, []byte{43, 14, 1, 0}, []byte{43, 14, 1, 2, 0, 0, 3, 0, 1, 'V', 1, 1, 'P', 2, 0}},
		{"no identity", 2, []byte{43, 14, 1, 0}, []byte{0xab, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := exchange(t, s.Addr(), tt.unit, tt.pdu)
			if string(got) != string(tt.want) {
				t.Errorf("answer %x, want %x", got, tt.want)
			}
		})
	}
	// The write was recorded, and is the only non-read.
	if w := s.Writes(); len(w) != 1 || w[0] != "function 6 to unit 1" {
		t.Errorf("Writes() = %v", w)
	}
	if v, _ := u.Register(Holding, 10); v != 1 {
		t.Errorf("the refused write changed register 10 to %d", v)
	}
}

func TestServerListensOnLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:0", ":0"} {
		if s, err := Start(Options{Addr: addr}, nil); err == nil {
			s.Close()
			t.Errorf("Start(%q) succeeded", addr)
		}
	}
}

// TestRefuse: an address refused for a while answers the exception to
// every read covering it, mapped or not, and reads again once cleared; a
// table the unit lacks answers exception 1.
func TestRefuse(t *testing.T) {
	u := NewUnit().SetRegisters(Holding, 0, 1, 2, 3).SetBits(Coils, 0, true)
	s, err := Start(Options{}, map[byte]*Unit{1: u})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	steps := []struct {
		name string
		set  func()
		pdu  []byte
		want []byte
	}{
		{"refused alone", func() { u.Refuse(Holding, 1, 2) }, []byte{3, 0, 1, 0, 1}, []byte{0x83, 2}},
		{"refused in a block", nil, []byte{3, 0, 0, 0, 3}, []byte{0x83, 2}},
		{"neighbour answers", nil, []byte{3, 0, 2, 0, 1}, []byte{3, 2, 0, 3}},
		{"other table answers", nil, []byte{1, 0, 0, 0, 2}, []byte{1, 1, 1}},
		{"exception 3", func() { u.Refuse(Holding, 1, 3) }, []byte{3, 0, 0, 0, 2}, []byte{0x83, 3}},
		{"unmapped refused", func() { u.Refuse(Holding, 1, 0).Refuse(Holding, 9, 2) }, []byte{3, 0, 8, 0, 2}, []byte{0x83, 2}},
		{"answers once cleared", nil, []byte{3, 0, 0, 0, 3}, []byte{3, 6, 0, 1, 0, 2, 0, 3}},
		{"coil refused", func() { u.Refuse(Coils, 0, 2) }, []byte{1, 0, 0, 0, 2}, []byte{0x81, 2}},
		{"table lacking", func() { u.Lacks(Input) }, []byte{4, 0, 0, 0, 1}, []byte{0x84, 1}},
		{"other tables still there", nil, []byte{3, 0, 2, 0, 1}, []byte{3, 2, 0, 3}},
	}
	for _, st := range steps {
		if st.set != nil {
			st.set()
		}
		if got := exchange(t, s.Addr(), 1, st.pdu); string(got) != string(st.want) {
			t.Errorf("%s: answer %x, want %x", st.name, got, st.want)
		}
	}
}
