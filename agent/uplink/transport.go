package uplink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// newTransport builds the HTTP/2-over-TLS-1.3 transport with the client
// certificate. It only dials; it never listens.
func newTransport(cfg Config, conns *connTracker, sessions *sessionCache) (*http.Transport, error) {
	// Bound to the uplink NIC (the named one, else the one holding the
	// local address), the names of the ingest and the proxy included:
	// their DNS queries leave by the uplink too, never by a DNS server the
	// routing table finds on the control side. enroll and check dial the
	// same way.
	dial, err := uplinkDial(cfg.Interface, cfg.LocalAddr)
	if err != nil {
		return nil, fmt.Errorf("uplink: %w", err)
	}
	proxy := cfg.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	certFn := cfg.Cert
	return &http.Transport{
		Proxy:       proxy,
		DialContext: conns.wrap(dial),
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			RootCAs:    cfg.Roots,
			// Resumed sessions skip the certificate exchange on reconnects
			// over a slow uplink; the cache is emptied at every certificate
			// rotation so no session of the old certificate is resumed.
			ClientSessionCache: sessions,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				c, err := certFn()
				if err != nil {
					return nil, fmt.Errorf("loading the agent's client certificate: %w", err)
				}
				if c == nil {
					return nil, errors.New("loading the agent's client certificate: none available; enroll the agent")
				}
				return c, nil
			},
		},
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    15 * time.Second,
		IdleConnTimeout:        90 * time.Second,
		MaxIdleConnsPerHost:    cfg.MaxInFlight, // over HTTP/1.1 each upload holds a connection
		MaxResponseHeaderBytes: 64 << 10,
	}, nil
}

// uplinkDial returns the uplink's dial function. With an interface named,
// or no local address, the dialer is made once. With only a local address,
// the NIC holding it is looked up at each dial: an address missing when
// the agent starts (DHCP late, a cable out) must fail dials, which the
// uplink retries while the buffer keeps everything, not the agent's start.
// A local address that is no IP address is refused here, once.
func uplinkDial(ifname, local string) (func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	if ifname != "" || local == "" {
		d, err := nicbind.DialerFrom(ifname, local)
		if err != nil {
			return nil, err
		}
		d.KeepAlive = 30 * time.Second
		return d.DialContext, nil
	}
	if _, err := netip.ParseAddr(local); err != nil {
		return nil, fmt.Errorf("local address %q is not an IP address: give the uplink NIC's address, without a port", local)
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d, err := nicbind.DialerFrom("", local)
		if err != nil {
			return nil, fmt.Errorf("dialing %s: %w", addr, err)
		}
		d.KeepAlive = 30 * time.Second
		return d.DialContext(ctx, network, addr)
	}, nil
}

// connTracker closes every connection the transport opened once Run has
// stopped. Without it a connection whose dial finished after the last
// request (the transport keeps dialing in the background when another
// connection served the request) would sit idle until IdleConnTimeout, and
// a stopped uplink would still hold sockets to the ingest or the proxy.
type connTracker struct {
	mu      sync.Mutex
	open    bool // Run is running: dials are allowed
	conns   map[*trackedConn]struct{}
	started chan struct{} // closed at the first start
	once    sync.Once
}

func newConnTracker() *connTracker {
	return &connTracker{conns: map[*trackedConn]struct{}{}, started: make(chan struct{})}
}

// waitStarted blocks until Run has started once, or ctx is done.
func (ct *connTracker) waitStarted(ctx context.Context) error {
	select {
	case <-ct.started:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wrap returns dial with every connection it makes tracked.
func (ct *connTracker) wrap(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, ct: ct}
		ct.mu.Lock()
		defer ct.mu.Unlock()
		if !ct.open {
			c.Close()
			return nil, fmt.Errorf("dialing %s: uplink stopped", addr)
		}
		ct.conns[tc] = struct{}{}
		return tc, nil
	}
}

// start allows dials; Run calls it first.
func (ct *connTracker) start() {
	ct.mu.Lock()
	ct.open = true
	ct.mu.Unlock()
	ct.once.Do(func() { close(ct.started) })
}

// stop refuses further dials and closes every connection still open.
func (ct *connTracker) stop() {
	ct.mu.Lock()
	ct.open = false
	conns := ct.conns
	ct.conns = map[*trackedConn]struct{}{}
	ct.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// trackedConn removes itself from its tracker when closed.
type trackedConn struct {
	net.Conn
	ct *connTracker
}

func (c *trackedConn) Close() error {
	c.ct.mu.Lock()
	delete(c.ct.conns, c)
	c.ct.mu.Unlock()
	return c.Conn.Close()
}

// sessionCache is a TLS client session cache that can be emptied: the
// transport copies the cache pointer into every connection's config, so
// the cache itself must change, not the pointer.
type sessionCache struct {
	mu sync.Mutex
	c  tls.ClientSessionCache
}

// sessionCacheSize holds tickets for the ingest behind a few names.
const sessionCacheSize = 16

func newSessionCache() *sessionCache {
	return &sessionCache{c: tls.NewLRUClientSessionCache(sessionCacheSize)}
}

func (s *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.Get(key)
}

func (s *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.Put(key, cs)
}

// reset forgets every session.
func (s *sessionCache) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c = tls.NewLRUClientSessionCache(sessionCacheSize)
}
