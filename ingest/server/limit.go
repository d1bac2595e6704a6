package server

import (
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
	// anonymous requests are refused until buckets refill (fail closed).
	maxLimited = 100_000
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
// its /64, which one host usually owns whole).
type ipLimiter struct {
	burst float64
	every time.Duration

	mu      sync.Mutex
	buckets map[netip.Prefix]*bucket
}

type bucket struct {
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
	return &ipLimiter{burst: float64(l.Burst), every: l.Every, buckets: map[netip.Prefix]*bucket{}}
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
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// allow takes a token for key at now, or says how long until one is there.
func (l *ipLimiter) allow(key netip.Prefix, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxLimited {
			l.prune(now)
		}
		if len(l.buckets) >= maxLimited {
			return false, l.every
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
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

// prune forgets the buckets that have refilled: they are what a new
// bucket would be.
func (l *ipLimiter) prune(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+float64(now.Sub(b.at))/float64(l.every) >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// limitAnonymous answers 429 with Retry-After and returns false when r's
// address has used up its anonymous requests.
func (s *Server) limitAnonymous(w http.ResponseWriter, r *http.Request) bool {
	ok, wait := s.anonLimit.allow(remoteKey(r.RemoteAddr), s.cfg.Now())
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
