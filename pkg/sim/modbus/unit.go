package modbussim

import (
	"encoding/binary"
	"sync"
	"time"
)

// Identity is what a unit answers to Read Device Identification (43/14).
type Identity struct {
	Vendor, ProductCode, Revision, ProductName, Model string
}

// Unit is one simulated unit id: four tables, and rules for what it
// refuses. Its methods are safe for concurrent use.
type Unit struct {
	mu     sync.Mutex
	regs   map[byte]map[uint16]uint16 // by function code 3, 4
	bits   map[byte]map[uint16]bool   // by function code 1, 2
	strict bool
	// maxRead is the longest read answered (0: the protocol's limits).
	maxRead int
	// refuse holds addresses refused for now, by function code: the
	// exception a read covering one answers.
	refuse map[byte]map[uint16]byte
	// lacks holds the tables the unit does not have, by function code.
	lacks map[byte]bool
	id    *Identity
	// update refreshes the values before each answer.
	update func(u *Unit, now time.Time)
}

// NewUnit returns an empty unit.
func NewUnit() *Unit {
	return &Unit{
		regs:   map[byte]map[uint16]uint16{Holding: {}, Input: {}},
		bits:   map[byte]map[uint16]bool{Coils: {}, Discrete: {}},
		refuse: map[byte]map[uint16]byte{Coils: {}, Discrete: {}, Holding: {}, Input: {}},
		lacks:  map[byte]bool{},
	}
}

// Strict makes reads covering an unmapped address answer exception 2
// (illegal data address), as many meters do.
func (u *Unit) Strict(on bool) *Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.strict = on
	return u
}

// MaxRead makes reads longer than n registers or bits answer exception 3
// (illegal data value), as small controllers do.
func (u *Unit) MaxRead(n int) *Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.maxRead = n
	return u
}

// Refuse makes reads of table covering addr answer exception code,
// whether the address is mapped or not, until Refuse is called again with
// code 0. Exceptions 2 and 3 for a while are what a gateway answers while
// its serial device reboots, a device still starting, or a drive in a
// fault state.
func (u *Unit) Refuse(table byte, addr uint16, code byte) *Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	if code == 0 {
		delete(u.refuse[table], addr)
	} else {
		u.refuse[table][addr] = code
	}
	return u
}

// Lacks makes the unit answer every read of table (a function code 1-4)
// with exception 1 (illegal function), as a meter without coils does.
func (u *Unit) Lacks(table byte) *Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lacks[table] = true
	return u
}

// Identify sets the unit's answer to 43/14; without it the unit answers
// exception 1 (illegal function).
func (u *Unit) Identify(id Identity) *Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.id = &id
	return u
}

// SetRegisters sets registers of table (Holding or Input) from addr on.
func (u *Unit) SetRegisters(table byte, addr uint16, values ...uint16) *Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.setRegistersLocked(table, addr, values...)
	return u
}

func (u *Unit) setRegistersLocked(table byte, addr uint16, values ...uint16) {
	for i, v := range values {
		u.regs[table][addr+uint16(i)] = v
	}
}

// SetBits sets coils or discrete inputs from addr on.
func (u *Unit) SetBits(table byte, addr uint16, values ...bool) *Unit {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, v := range values {
		u.bits[table][addr+uint16(i)] = v
	}
	return u
}

// Register returns a register's value and whether it is mapped.
func (u *Unit) Register(table byte, addr uint16) (uint16, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	v, ok := u.regs[table][addr]
	return v, ok
}

// answer returns the response PDU to a request PDU.
func (u *Unit) answer(pdu []byte) []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	fc := pdu[0]
	if u.update != nil {
		u.update(u, time.Now())
	}
	switch fc {
	case Coils, Discrete, Holding, Input:
		if u.lacks[fc] {
			return exception(fc, 1)
		}
		if len(pdu) != 5 {
			return exception(fc, 3)
		}
		addr := binary.BigEndian.Uint16(pdu[1:])
		n := int(binary.BigEndian.Uint16(pdu[3:]))
		limit := 125
		if fc == Coils || fc == Discrete {
			limit = 2000
		}
		if u.maxRead > 0 {
			limit = min(limit, u.maxRead)
		}
		if n < 1 || n > limit {
			return exception(fc, 3)
		}
		if int(addr)+n > 65536 {
			return exception(fc, 2)
		}
		for a, code := range u.refuse[fc] {
			if addr <= a && int(a) < int(addr)+n {
				return exception(fc, code)
			}
		}
		if fc == Coils || fc == Discrete {
			out := make([]byte, 2+(n+7)/8)
			out[0], out[1] = fc, byte((n+7)/8)
			for i := range n {
				v, ok := u.bits[fc][addr+uint16(i)]
				if !ok && u.strict {
					return exception(fc, 2)
				}
				if v {
					out[2+i/8] |= 1 << (i % 8)
				}
			}
			return out
		}
		out := make([]byte, 2+2*n)
		out[0], out[1] = fc, byte(2*n)
		for i := range n {
			v, ok := u.regs[fc][addr+uint16(i)]
			if !ok && u.strict {
				return exception(fc, 2)
			}
			binary.BigEndian.PutUint16(out[2+2*i:], v)
		}
		return out
	case 43:
		if len(pdu) < 4 || pdu[1] != 14 {
			return exception(fc, 1)
		}
		if u.id == nil {
			return exception(fc, 1)
		}
		return u.identify(pdu[2], pdu[3])
	}
	// Writes and everything else: this simulator is read-only.
	return exception(fc, 1)
}

// identify answers 43/14 with every object from start on, in one page.
func (u *Unit) identify(code, start byte) []byte {
	objs := []string{u.id.Vendor, u.id.ProductCode, u.id.Revision, "", u.id.ProductName, u.id.Model}
	last := 2
	if code >= 2 {
		last = 5
	}
	if code < 1 || code > 4 {
		return exception(43, 3)
	}
	out := []byte{43, 14, code, 0x02, 0x00, 0x00, 0}
	for i := int(start); i <= last; i++ {
		if i == 3 {
			continue
		}
		out = append(out, byte(i), byte(len(objs[i])))
		out = append(out, objs[i]...)
		out[6]++
	}
	return out
}
