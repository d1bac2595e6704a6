package opcua

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uasc"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// allowedService names the service of req if a read-only client may send
// it, and reports false for everything else. This is the allowlist: the
// session and secure-channel services, discovery of endpoints, the view
// services that browse, the attribute services that read (current values
// and history), and the subscription and monitored-item services that
// deliver values. Write, HistoryUpdate, Call, the node-management services,
// RegisterNodes, queries and anything this list does not name are refused.
func allowedService(req ua.Request) (string, bool) {
	switch r := req.(type) {
	case *ua.GetEndpointsRequest:
		return "GetEndpoints", true
	case *ua.FindServersRequest:
		return "FindServers", true
	case *ua.CreateSessionRequest:
		return "CreateSession", true
	case *ua.ActivateSessionRequest:
		return "ActivateSession", true
	case *ua.CloseSessionRequest:
		return "CloseSession", true
	case *ua.BrowseRequest:
		return "Browse", true
	case *ua.BrowseNextRequest:
		return "BrowseNext", true
	case *ua.TranslateBrowsePathsToNodeIDsRequest:
		return "TranslateBrowsePathsToNodeIds", true
	case *ua.ReadRequest:
		return "Read", true
	case *ua.HistoryReadRequest:
		// HistoryRead only reads; changing history is HistoryUpdate. The
		// details must still be a known read kind, so a future extension
		// object cannot slip through under a read's name.
		if r.HistoryReadDetails == nil {
			return "HistoryRead", false
		}
		switch r.HistoryReadDetails.Value.(type) {
		case *ua.ReadRawModifiedDetails, *ua.ReadProcessedDetails, *ua.ReadAtTimeDetails, *ua.ReadEventDetails:
			return "HistoryRead", true
		}
		return "HistoryRead", false
	case *ua.CreateSubscriptionRequest:
		return "CreateSubscription", true
	case *ua.ModifySubscriptionRequest:
		return "ModifySubscription", true
	case *ua.SetPublishingModeRequest:
		return "SetPublishingMode", true
	case *ua.PublishRequest:
		return "Publish", true
	case *ua.RepublishRequest:
		return "Republish", true
	case *ua.TransferSubscriptionsRequest:
		return "TransferSubscriptions", true
	case *ua.DeleteSubscriptionsRequest:
		return "DeleteSubscriptions", true
	case *ua.CreateMonitoredItemsRequest:
		return "CreateMonitoredItems", true
	case *ua.ModifyMonitoredItemsRequest:
		return "ModifyMonitoredItems", true
	case *ua.SetMonitoringModeRequest:
		return "SetMonitoringMode", true
	case *ua.DeleteMonitoredItemsRequest:
		return "DeleteMonitoredItems", true
	case nil:
		return "nil", false
	}
	return serviceName(req), false
}

// serviceName is a request's service for logs: its Go type without the
// package and the "Request" suffix.
func serviceName(req ua.Request) string {
	n := fmt.Sprintf("%T", req)
	for i := len(n) - 1; i >= 0; i-- {
		if n[i] == '.' {
			n = n[i+1:]
			break
		}
	}
	if len(n) > 7 && n[len(n)-7:] == "Request" {
		n = n[:len(n)-7]
	}
	if len(n) > 0 && n[0] == '*' {
		n = n[1:]
	}
	return n
}

// guard is the read-only guard at the wire. It owns the gopcua client,
// which is never handed out: every request the driver, its node helpers,
// discovery and subscriptions make goes through send, which checks the
// allowlist and refuses anything else before it is encoded. The session
// itself is opened step by step here (Dial, CreateSession, ActivateSession)
// rather than with the client's Connect, so the library's own monitor never
// runs: it would reconnect, recreate sessions and publish behind the
// guard's back.
type guard struct {
	log     *slog.Logger
	timeout time.Duration // per request

	mu      sync.Mutex
	client  *opcua.Client // nil when not connected
	sent    map[string]uint64
	refused map[string]uint64
}

// The guard is the only opcua.ClientInterface the driver hands to gopcua's
// node helpers, so they reach the server through send too.
var _ opcua.ClientInterface = (*guard)(nil)

func newGuard(log *slog.Logger, timeout time.Duration) *guard {
	return &guard{log: log, timeout: timeout, sent: map[string]uint64{}, refused: map[string]uint64{}}
}

// admit checks req against the allowlist, counting what it lets through
// and what it refuses. A refusal is logged and returned as an error
// wrapping driver.ErrRefused.
func (g *guard) admit(req ua.Request) error {
	name, ok := allowedService(req)
	g.mu.Lock()
	if ok {
		g.sent[name]++
	} else {
		g.refused[name]++
	}
	g.mu.Unlock()
	if ok {
		return nil
	}
	g.log.Error("read-only guard refused an OPC UA request", "service", name)
	return fmt.Errorf("sending %s: OPC UA service %s is not a read: %w", name, name, driver.ErrRefused)
}

// current returns the connected client.
func (g *guard) current() (*opcua.Client, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.client == nil {
		return nil, fmt.Errorf("no OPC UA session: connect first: %w", driver.ErrConnLost)
	}
	return g.client, nil
}

// Send sends req if the allowlist permits it, and calls h with the response.
func (g *guard) Send(ctx context.Context, req ua.Request, h func(ua.Response) error) error {
	if err := g.admit(req); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := g.current()
	if err != nil {
		return err
	}
	return c.Send(ctx, withDefaults(req), h)
}

// withDefaults fills what a ReadRequest built elsewhere (gopcua's node
// helpers) may leave nil: a nil DataEncoding encodes into a request that
// node-opcua never answers. The caller's request is not modified.
func withDefaults(req ua.Request) ua.Request {
	r, ok := req.(*ua.ReadRequest)
	if !ok {
		return req
	}
	c := *r
	c.NodesToRead = make([]*ua.ReadValueID, len(r.NodesToRead))
	for i, rv := range r.NodesToRead {
		v := *rv
		if v.AttributeID == 0 {
			v.AttributeID = ua.AttributeIDValue
		}
		if v.DataEncoding == nil {
			v.DataEncoding = &ua.QualifiedName{}
		}
		c.NodesToRead[i] = &v
	}
	return &c
}

// Read sends a ReadRequest through the guard.
func (g *guard) Read(ctx context.Context, req *ua.ReadRequest) (*ua.ReadResponse, error) {
	var res *ua.ReadResponse
	err := g.Send(ctx, req, func(v ua.Response) error { return assign(v, &res) })
	return res, err
}

// Browse sends a BrowseRequest through the guard.
func (g *guard) Browse(ctx context.Context, req *ua.BrowseRequest) (*ua.BrowseResponse, error) {
	var res *ua.BrowseResponse
	err := g.Send(ctx, req, func(v ua.Response) error { return assign(v, &res) })
	return res, err
}

// BrowseNext sends a BrowseNextRequest through the guard.
func (g *guard) BrowseNext(ctx context.Context, req *ua.BrowseNextRequest) (*ua.BrowseNextResponse, error) {
	var res *ua.BrowseNextResponse
	err := g.Send(ctx, req, func(v ua.Response) error { return assign(v, &res) })
	return res, err
}

// Node returns a node helper whose requests go through the guard.
func (g *guard) Node(id *ua.NodeID) *opcua.Node { return opcua.NewNode(id, g) }

// NodeFromExpandedNodeID returns a node helper whose requests go through
// the guard.
func (g *guard) NodeFromExpandedNodeID(id *ua.ExpandedNodeID) *opcua.Node {
	return opcua.NewNode(ua.NewNodeIDFromExpandedNodeID(id), g)
}

// ForgetSubscription is part of opcua.ClientInterface. The driver owns its
// subscriptions itself (see subscribe.go), so the library holds none.
func (g *guard) ForgetSubscription(context.Context, uint32) {}

// RequestTimeout is how long one request may take.
func (g *guard) RequestTimeout() time.Duration { return g.timeout }

// dial opens a secure channel to endpoint with opts and, when session is
// non-nil, creates and activates a session on it. OpenSecureChannel is
// sent by the channel itself; the session services pass admit like every
// other request.
func (g *guard) dial(ctx context.Context, endpoint string, opts []opcua.Option, session *uasc.SessionConfig) error {
	g.mu.Lock()
	busy := g.client != nil
	g.mu.Unlock()
	if busy {
		return fmt.Errorf("connecting to %s: already connected", endpoint)
	}
	c, err := opcua.NewClient(endpoint, append(opts, opcua.AutoReconnect(false))...)
	if err != nil {
		return fmt.Errorf("configuring the OPC UA client for %s: %w", endpoint, err)
	}
	if err := c.Dial(ctx); err != nil {
		return fmt.Errorf("opening a secure channel to %s: %w", endpoint, err)
	}
	if session != nil {
		if err := g.admit(&ua.CreateSessionRequest{}); err != nil {
			c.Close(context.WithoutCancel(ctx))
			return err
		}
		s, err := c.CreateSession(ctx, session)
		if err == nil && s == nil {
			// gopcua logs a bad server signature and returns no session.
			err = fmt.Errorf("the server's session signature does not verify with its certificate")
		}
		if err != nil {
			c.Close(context.WithoutCancel(ctx))
			return fmt.Errorf("creating a session on %s: %w", endpoint, err)
		}
		if err := g.admit(&ua.ActivateSessionRequest{}); err != nil {
			c.Close(context.WithoutCancel(ctx))
			return err
		}
		if err := c.ActivateSession(ctx, s); err != nil {
			c.Close(context.WithoutCancel(ctx))
			return fmt.Errorf("activating the session on %s (check the user credentials): %w", endpoint, err)
		}
	}
	g.mu.Lock()
	g.client = c
	g.mu.Unlock()
	return nil
}

// hangUp closes the session (CloseSession passes admit) and the channel.
// After a failure the server may be gone or hung, so it waits only
// briefly for the CloseSession answer; a graceful close waits longer.
func (g *guard) hangUp(ctx context.Context) { g.close(ctx, 300*time.Millisecond) }

// close is hangUp with the wait for CloseSession given.
func (g *guard) close(ctx context.Context, wait time.Duration) {
	g.mu.Lock()
	c := g.client
	g.client = nil
	g.mu.Unlock()
	if c == nil {
		return
	}
	if c.Session() != nil {
		// Close sends CloseSession, which the allowlist always admits;
		// admitting it here keeps the count honest.
		_ = g.admit(&ua.CloseSessionRequest{})
	}
	// Close also sends CloseSecureChannel and closes the socket.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wait)
	defer cancel()
	_ = c.Close(ctx)
}

// stats returns how many requests of each service were sent and refused.
func (g *guard) stats() (sent, refused map[string]uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	sent, refused = make(map[string]uint64, len(g.sent)), make(map[string]uint64, len(g.refused))
	for k, v := range g.sent {
		sent[k] = v
	}
	for k, v := range g.refused {
		refused[k] = v
	}
	return sent, refused
}

// refusals is the total number of refused requests.
func (g *guard) refusals() uint64 {
	_, r := g.stats()
	var n uint64
	for _, v := range r {
		n += v
	}
	return n
}

// sortedKeys is for stable log output.
func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// assign stores a response of the expected type in *dst, or says what came.
func assign[T ua.Response](v ua.Response, dst *T) error {
	r, ok := v.(T)
	if !ok {
		var want T
		return fmt.Errorf("unexpected OPC UA response %T, want %T", v, want)
	}
	*dst = r
	return nil
}
