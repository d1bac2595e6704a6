package server

import (
	"net/netip"
	"testing"
	"time"
)

// TestLimiterFull: a limiter full of buckets that are still refilling
// forgets the least recently used one for a new address instead of
// refusing every new address (which locked out every installer while a
// flood lasted); the addresses it keeps stay limited.
func TestLimiterFull(t *testing.T) {
	l := newIPLimiter(Limit{Burst: 1, Every: time.Minute})
	l.max = 3
	key := func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(i)}), 32) }
	type step struct {
		key  int
		want bool
	}
	for i, st := range []step{
		{1, true}, {2, true}, {3, true}, // full, every bucket empty
		{1, false}, // 1 is now the most recently used
		{4, true},  // a new address is let in; 2 is forgotten
		{1, false}, {3, false}, {4, false},
		{2, true}, // 2 starts again; 1, now the least recently used, is forgotten
		{3, false}, {4, false}, {2, false},
	} {
		if ok, _ := l.allow(key(st.key), now); ok != st.want {
			t.Fatalf("step %d: allow(%s) = %v, want %v", i, key(st.key), ok, st.want)
		}
	}
	if len(l.buckets) != 3 || l.lru.Len() != 3 {
		t.Errorf("%d buckets, %d in the list, want 3", len(l.buckets), l.lru.Len())
	}
}

// TestLimiterPruneAmortised: refilled buckets are forgotten, and a limiter
// full of buckets still refilling does not look at all of them for each
// new address (which cost a scan of 100,000 under the lock per request).
func TestLimiterPruneAmortised(t *testing.T) {
	const n = 1000
	l := newIPLimiter(Limit{Burst: 2, Every: time.Minute})
	l.max = n
	key := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
	}
	for i := range n {
		l.allow(key(i), now)
		l.allow(key(i), now) // empty: nothing can be pruned
	}
	l.looked = 0
	for i := range n {
		if ok, _ := l.allow(key(n+i), now); !ok {
			t.Fatalf("new address %d refused by a full limiter", i)
		}
	}
	if l.looked > 2*n {
		t.Errorf("%d buckets looked at for %d new addresses, want at most %d", l.looked, n, 2*n)
	}
	if len(l.buckets) != n {
		t.Errorf("%d buckets, want %d", len(l.buckets), n)
	}
	// Two minutes on, every bucket has refilled: the next new address
	// leaves only itself.
	l.allow(key(3*n), now.Add(2*time.Minute))
	if len(l.buckets) != 1 || l.lru.Len() != 1 {
		t.Errorf("%d buckets after all refilled, want 1", len(l.buckets))
	}
}

// BenchmarkLimiterFullNewAddress is a request from a new address to a
// limiter full of buckets still refilling, as in a flood from many
// addresses: it costs one eviction, not a scan.
func BenchmarkLimiterFullNewAddress(b *testing.B) {
	l := newIPLimiter(Limit{Burst: 1, Every: time.Minute})
	key := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
	}
	for i := range maxLimited {
		l.allow(key(i), now)
	}
	i := maxLimited
	for b.Loop() {
		l.allow(key(i), now)
		i++
	}
}
