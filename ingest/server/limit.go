package server

import (
	"container/list"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Defaults of AnonymousLimit: an installer enrolls one box at a time and
// `sightglass-agent check` probes a status now and then, so ten requests
// at once and one every six seconds after that is plenty for a person and
// little for a script guessing tokens or filling the audit log.
const (
	DefaultAnonymousBurst = 10
	DefaultAnonymousEvery = 6 * time.Second
	// maxLimited bounds the remote addresses tracked at once; beyond it
	// the least recently used address is forgotten (it starts again with
	// a full bucket), so a flood from many addresses costs memory no
	// more than this and never locks out an address it did not come from.
	maxLimited = 100_000
	// ipv6LimitBits is the IPv6 prefix a request is limited under: a /64
	// is one host's, but a site gets a /56 or a /48, and limiting by /64
	// would hand whoever holds a /48 65,536 buckets.
	ipv6LimitBits = 56
)

// CodeRateLimited is the code of a 429: too many anonymous requests from
// one address; retry after Retry-After seconds.
const CodeRateLimited = "rate_limited"

// Limit is a token bucket: Burst requests at once, then one per Every.
// A zero field means its default.
type Limit struct {
	Burst int
	Every time.Duration
}

// ipLimiter rate-limits requests per remote address (an IPv6 address by
// its /56). It keeps at most max buckets, in least recently used order.
type ipLimiter struct {
	burst float64
	every time.Duration
	max   int

	mu      sync.Mutex
	buckets map[netip.Prefix]*list.Element // of *bucket
	lru     list.List                      // of *bucket, the most recently used first
	// looked counts the buckets prune has looked at, for the test that
	// proves a full limiter does not scan them all per request.
	looked int
}

type bucket struct {
	key    netip.Prefix
	tokens float64
	at     time.Time
}

func newIPLimiter(l Limit) *ipLimiter {
	if l.Burst <= 0 {
		l.Burst = DefaultAnonymousBurst
	}
	if l.Every <= 0 {
		l.Every = DefaultAnonymousEvery
	}
	return &ipLimiter{burst: float64(l.Burst), every: l.Every, max: maxLimited, buckets: map[netip.Prefix]*list.Element{}}
}

// remoteKey is the address a request is limited and audited under.
func remoteKey(remoteAddr string) netip.Prefix {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{} // all unparsable addresses share one bucket
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = ipv6LimitBits
	}
	p, _ := ip.Prefix(bits)
	return p
}

// allow takes a token for key at now, or says how long until one is there.
func (l *ipLimiter) allow(key netip.Prefix, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b *bucket
	if e := l.buckets[key]; e != nil {
		l.lru.MoveToFront(e)
		b = e.Value.(*bucket)
	} else {
		l.prune(now)
		if len(l.buckets) >= l.max {
			// Full of buckets still refilling: forgetting the oldest
			// gives that address a full bucket again, which is what a
			// refused caller would have had anyway a minute later;
			// refusing every new address instead would lock out every
			// installer for as long as the flood lasts.
			old := l.lru.Back()
			delete(l.buckets, old.Value.(*bucket).key)
			l.lru.Remove(old)
		}
		b = &bucket{key: key, tokens: l.burst, at: now}
		l.buckets[key] = l.lru.PushFront(b)
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.burst, b.tokens+float64(d)/float64(l.every))
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) * float64(l.every))
}

// prune forgets the least recently used buckets that have refilled (they
// are what a new bucket would be), stopping at the first that has not:
// each bucket is looked at once more than it is forgotten, so the cost is
// amortised over the requests that made the buckets, never a scan of all
// of them under the lock.
func (l *ipLimiter) prune(now time.Time) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		l.looked++
		b := e.Value.(*bucket)
		if b.tokens+float64(now.Sub(b.at))/float64(l.every) < l.burst {
			return
		}
		delete(l.buckets, b.key)
		l.lru.Remove(e)
	}
}

// limitAnonymous answers 429 with Retry-After and returns false when r's
// address has used up its anonymous requests.
func (s *Server) limitAnonymous(w http.ResponseWriter, r *http.Request) bool {
	// Real time (CertNow), not Now: tests pin Now to judge sample times.
	ok, wait := s.anonLimit.allow(remoteKey(r.RemoteAddr), s.cfg.CertNow())
	if ok {
		return true
	}
	s.count(func(st *Stats) { st.Refused[CodeRateLimited]++ })
	secs := max(1, int(math.Ceil(wait.Seconds())))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeRefusal(w, refuse(http.StatusTooManyRequests, CodeRateLimited,
		"too many requests from your address to %s: try again in %d seconds", r.URL.Path, secs))
	return false
}
