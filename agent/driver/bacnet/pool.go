package bacnet

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/sightglass-bms/sightglass/pkg/bacnet"
)

// BACnet/IP devices answer to the port they were asked from, and a
// building has one BACnet port per NIC: devices configured with the same
// local address share one client (one socket), counted by reference.
var pool = struct {
	mu      sync.Mutex
	clients map[string]*sharedClient
}{clients: map[string]*sharedClient{}}

type sharedClient struct {
	c    *bacnet.Client
	key  string
	cfg  bacnet.Config
	refs int
}

func acquireClient(ctx context.Context, cfg bacnet.Config, log *slog.Logger) (*sharedClient, error) {
	key := cfg.Local
	shared := true
	if ap, err := netip.ParseAddrPort(key); err == nil && ap.Port() == 0 {
		shared = false // an ephemeral port is nobody else's
	}
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if sc := pool.clients[key]; shared && sc != nil {
		want, have := cfg, sc.cfg
		want.Logger, have.Logger = nil, nil
		if want != have {
			return nil, fmt.Errorf("devices sharing local_address %s must share broadcast, bbmd and max_per_network: give this device the same settings or another local address", key)
		}
		sc.refs++
		return sc, nil
	}
	cfg.Logger = log
	c, err := bacnet.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	sc := &sharedClient{c: c, key: key, cfg: cfg, refs: 1}
	if shared {
		pool.clients[key] = sc
	}
	return sc, nil
}

func (sc *sharedClient) release() {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	sc.refs--
	if sc.refs > 0 {
		return
	}
	if pool.clients[sc.key] == sc {
		delete(pool.clients, sc.key)
	}
	sc.c.Close()
}
