// Package anon turns point references (driver, device address, object, name)
// into opaque 64-bit point ids with a keyed hash, so that nothing leaving the
// agent names a building, a device or an address.
//
// The key is a per-site Secret that never leaves the box except as a
// passphrase-protected export (see Export), which lets a replacement box keep
// the same point ids so a site's history stays continuous.
package anon

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
)

// SecretSize is the size of a Secret in bytes.
const SecretSize = 32

// Secret is the per-site key of the pseudonyms.
type Secret [SecretSize]byte

// pointDomain separates point ids from any other use of the secret; the
// version lets a future scheme coexist without reusing ids.
const pointDomain = "sightglass point v1\x00"

// ErrCollision is wrapped by Registry.Add when two different references hash
// to the same point id.
var ErrCollision = errors.New("point id collision")

// Ref joins the parts of a point reference canonically. Each part is written
// as a netstring ("<len>:<bytes>,"), so no two different lists of parts give
// the same reference: Ref("a", "bc") != Ref("ab", "c"), and a part may
// contain any byte, the separators included.
func Ref(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(strconv.Itoa(len(p)))
		b.WriteByte(':')
		b.WriteString(p)
		b.WriteByte(',')
	}
	return b.String()
}

// Pseudonymizer maps references to point ids under one secret. It is safe
// for concurrent use.
type Pseudonymizer struct {
	macs sync.Pool // of hash.Hash keyed with the secret; HMAC setup is half the cost
	// shift narrows the id space for tests that must force a collision; 0
	// in production.
	shift uint
}

// New returns a Pseudonymizer keyed with s.
func New(s Secret) *Pseudonymizer {
	key := s // the pool's closure keeps its own copy of the key
	return &Pseudonymizer{macs: sync.Pool{New: func() any { return hmac.New(sha256.New, key[:]) }}}
}

// PointID returns the point id of ref: the first 8 bytes, big-endian, of
// HMAC-SHA256(secret, "sightglass point v1\x00" + ref). Zero is reserved
// for "no point" and never returned: should the first 8 bytes be zero the
// next 8 are used (and so on), which keeps the mapping deterministic.
func (p *Pseudonymizer) PointID(ref string) uint64 {
	mac := p.macs.Get().(hash.Hash)
	mac.Reset()
	mac.Write([]byte(pointDomain))
	mac.Write([]byte(ref))
	var buf [sha256.Size]byte
	sum := mac.Sum(buf[:0])
	p.macs.Put(mac)
	for i := 0; i+8 <= len(sum); i += 8 {
		if id := binary.BigEndian.Uint64(sum[i:]) >> p.shift; id != 0 {
			return id
		}
	}
	return 1 // all 256 bits zero (or, in a narrowed test space, all chunks)
}

// Registry remembers which reference each issued point id stands for, so a
// collision is detected instead of silently merging two points. It is safe
// for concurrent use.
type Registry struct {
	p     *Pseudonymizer
	mu    sync.RWMutex
	byRef map[string]uint64
	byID  map[uint64]string
}

// NewRegistry returns an empty Registry issuing ids from p.
func NewRegistry(p *Pseudonymizer) *Registry {
	return &Registry{p: p, byRef: make(map[string]uint64), byID: make(map[uint64]string)}
}

// Add returns the point id of ref and records it. Adding the same reference
// again returns the same id. A different reference that hashes to an id
// already taken is an error wrapping ErrCollision that names both.
func (r *Registry) Add(ref string) (uint64, error) {
	r.mu.RLock()
	id, ok := r.byRef[ref]
	r.mu.RUnlock()
	if ok {
		return id, nil
	}
	id = r.p.PointID(ref) // outside the lock: hashing is the expensive part
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, taken := r.byID[id]; taken && other != ref {
		return 0, fmt.Errorf("adding point %q: its id %016x is already taken by point %q: %w; "+
			"report this (it should practically never happen) and leave one of the two points out of the config",
			ref, id, other, ErrCollision)
	}
	r.byRef[ref] = id
	r.byID[id] = ref
	return id, nil
}

// Lookup returns the reference a point id was issued for.
func (r *Registry) Lookup(id uint64) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ref, ok := r.byID[id]
	return ref, ok
}

// Len returns the number of points registered.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byRef)
}
