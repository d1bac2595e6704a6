package opcua

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// maxPending bounds the values kept per subscribed point between Reads, so
// a stalled poller cannot grow memory without end; the oldest go first.
const maxPending = 1000

// subscription is the driver's one OPC UA subscription with a monitored
// item per subscribed point. The driver runs it itself, through the guard,
// rather than with gopcua's Subscribe, whose requests would bypass the
// guard. It lives as long as one session: after a reconnect the driver
// creates it anew.
type subscription struct {
	id      uint32
	cancel  context.CancelFunc
	done    chan struct{}
	handles map[string]uint32 // point ref -> client handle

	mu      sync.Mutex
	pending map[uint32][]*ua.DataValue // by client handle, oldest first
	// dropped counts values pushed out of a full queue (maxPending) and
	// values for handles this subscription never gave out.
	dropped uint64
}

// stop ends the publish loop and waits for it. A nil subscription is fine.
func (s *subscription) stop() {
	if s == nil {
		return
	}
	s.cancel()
	<-s.done
}

// push queues a value of a monitored item.
// Handles are 1 to len(handles), fixed before the publish loop starts: a
// value for any other handle (a confused or hostile server) is dropped, so
// it cannot grow a queue nobody reads.
func (s *subscription) push(handle uint32, dv *ua.DataValue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if handle == 0 || int(handle) > len(s.handles) {
		s.dropped++
		return
	}
	q, dropped := capQueue(append(s.pending[handle], dv))
	s.dropped += dropped
	s.pending[handle] = q
}

// capQueue keeps the newest maxPending values of q and says how many it
// dropped.
func capQueue(q []*ua.DataValue) ([]*ua.DataValue, uint64) {
	if len(q) <= maxPending {
		return q, 0
	}
	return q[len(q)-maxPending:], uint64(len(q) - maxPending)
}

// takeQueue removes and returns the queue m holds for k.
func takeQueue[K comparable](m map[K][]*ua.DataValue, k K) []*ua.DataValue {
	q := m[k]
	delete(m, k)
	return q
}

// droppedValues is how many values the subscription dropped so far.
func (s *subscription) droppedValues() uint64 {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// drain removes and returns every value queued, by point ref.
func (s *subscription) drain() map[string][]*ua.DataValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]*ua.DataValue{}
	for ref, h := range s.handles {
		if q := s.pending[h]; len(q) > 0 {
			out[ref] = q
		}
	}
	clear(s.pending)
	return out
}

// retire stops sub, a subscription the driver let go of, and keeps the
// values it had received that no Read took yet: they reached the agent,
// and the next Reads return them (before the new subscription's) rather
// than lose them with the session. A nil sub is fine.
func (d *Driver) retire(sub *subscription) {
	if sub == nil {
		return
	}
	sub.stop()
	left := sub.drain()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.carry == nil {
		d.carry = map[string][]*ua.DataValue{}
	}
	for ref, q := range left {
		var dropped uint64
		d.carry[ref], dropped = capQueue(append(d.carry[ref], q...))
		d.carryDropped += dropped
	}
}

// carried removes and returns the values kept for ref from retired
// subscriptions.
func (d *Driver) carried(ref string) []*ua.DataValue {
	d.mu.Lock()
	defer d.mu.Unlock()
	return takeQueue(d.carry, ref)
}

// take removes and returns the values queued for handle.
func (s *subscription) take(handle uint32) []*ua.DataValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return takeQueue(s.pending, handle)
}

// subscribe creates the subscription and its monitored items and starts
// the publish loop. An item the server refuses (a node that is gone) is a
// faulty point, not a failed subscription.
func (d *Driver) subscribe(ctx context.Context) error {
	pubMs := float64(d.cfg.publishing) / float64(time.Millisecond)
	// The server answers a Publish at least every keep-alive; keep that
	// well inside the request timeout so a quiet subscription is not
	// mistaken for a dead server.
	keepAlive := uint32(max(1, int64(d.cfg.requestTimeout/2)/int64(d.cfg.publishing)))
	var cres *ua.CreateSubscriptionResponse
	err := d.g.Send(ctx, &ua.CreateSubscriptionRequest{
		RequestedPublishingInterval: pubMs,
		RequestedMaxKeepAliveCount:  keepAlive,
		RequestedLifetimeCount:      keepAlive * 6,
		PublishingEnabled:           true,
	}, func(v ua.Response) error { return assign(v, &cres) })
	if err != nil {
		return fmt.Errorf("creating the subscription: %w", err)
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &subscription{
		id:      cres.SubscriptionID,
		cancel:  cancel,
		done:    make(chan struct{}),
		handles: map[string]uint32{},
		pending: map[uint32][]*ua.DataValue{},
	}
	d.mu.Lock()
	maxItems := max(1, d.maxNodes)
	d.mu.Unlock()
	items := make([]*ua.MonitoredItemCreateRequest, 0, len(d.subs))
	for i, p := range d.subs {
		pc := d.points[p.Ref]
		h := uint32(i + 1)
		s.handles[p.Ref] = h
		params := &ua.MonitoringParameters{
			ClientHandle:     h,
			SamplingInterval: float64(pc.sampling) / float64(time.Millisecond),
			QueueSize:        pc.queue,
			DiscardOldest:    true,
		}
		if pc.sampling == 0 {
			params.SamplingInterval = -1 // the publishing interval
		}
		if pc.dbType != ua.DeadbandTypeNone {
			params.Filter = ua.NewExtensionObject(&ua.DataChangeFilter{
				Trigger:       ua.DataChangeTriggerStatusValue,
				DeadbandType:  uint32(pc.dbType),
				DeadbandValue: pc.deadband,
			})
		}
		items = append(items, &ua.MonitoredItemCreateRequest{
			ItemToMonitor:       valueID(pc.node),
			MonitoringMode:      ua.MonitoringModeReporting,
			RequestedParameters: params,
		})
	}
	for start := 0; start < len(items); start += maxItems {
		chunk := items[start:min(start+maxItems, len(items))]
		var mres *ua.CreateMonitoredItemsResponse
		err := d.g.Send(ctx, &ua.CreateMonitoredItemsRequest{
			SubscriptionID:     s.id,
			TimestampsToReturn: ua.TimestampsToReturnBoth,
			ItemsToCreate:      chunk,
		}, func(v ua.Response) error { return assign(v, &mres) })
		if err != nil {
			cancel()
			return fmt.Errorf("creating %d monitored items: %w", len(chunk), err)
		}
		if len(mres.Results) != len(chunk) {
			cancel()
			return fmt.Errorf("creating %d monitored items: the server answered %d results", len(chunk), len(mres.Results))
		}
		for i, r := range mres.Results {
			if r.StatusCode != ua.StatusOK {
				// Report it the way a Read would: the point's next
				// sample carries the bad status.
				s.push(chunk[i].RequestedParameters.ClientHandle, &ua.DataValue{Status: r.StatusCode, ServerTimestamp: d.now()})
			}
		}
	}
	d.mu.Lock()
	d.sub = s
	d.mu.Unlock()
	go d.publish(lctx, s)
	return nil
}

// publish is the subscription's loop: one Publish outstanding at a time,
// acknowledging what it received. Any failure marks the session lost, and
// the next Read reconnects and subscribes again.
func (d *Driver) publish(ctx context.Context, s *subscription) {
	defer close(s.done)
	var acks []*ua.SubscriptionAcknowledgement
	for ctx.Err() == nil {
		var res *ua.PublishResponse
		err := d.g.Send(ctx, &ua.PublishRequest{SubscriptionAcknowledgements: acks}, func(v ua.Response) error { return assign(v, &res) })
		if ctx.Err() != nil {
			return
		}
		if err == nil && res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
			err = res.ResponseHeader.ServiceResult
		}
		if err != nil {
			d.mu.Lock()
			if d.lost == nil {
				d.lost = fmt.Errorf("subscription %d: publish failed: %w", s.id, err)
			}
			d.mu.Unlock()
			return
		}
		acks = nil
		ack, err := deliver(s, res)
		if ack != nil {
			acks = append(acks, ack)
		}
		if err != nil {
			d.mu.Lock()
			if d.lost == nil {
				d.lost = err
			}
			d.mu.Unlock()
			return
		}
	}
}

// deliver queues the values of one PublishResponse and returns the
// acknowledgement to send with the next Publish (nil for a keep-alive). A
// status change the server reports ends the subscription with an error.
func deliver(s *subscription, res *ua.PublishResponse) (*ua.SubscriptionAcknowledgement, error) {
	msg := res.NotificationMessage
	if msg == nil || len(msg.NotificationData) == 0 {
		return nil, nil // a keep-alive
	}
	ack := &ua.SubscriptionAcknowledgement{SubscriptionID: res.SubscriptionID, SequenceNumber: msg.SequenceNumber}
	for _, eo := range msg.NotificationData {
		if eo == nil {
			continue
		}
		switch n := eo.Value.(type) {
		case *ua.DataChangeNotification:
			for _, item := range n.MonitoredItems {
				if item != nil && item.Value != nil {
					s.push(item.ClientHandle, item.Value)
				}
			}
		case *ua.StatusChangeNotification:
			if n.Status != ua.StatusOK {
				return ack, fmt.Errorf("subscription %d: server reports %w", s.id, n.Status)
			}
		}
	}
	return ack, nil
}

// subscribedSamples returns the values that arrived for points since the
// last Read; a point whose value did not change has none.
func (d *Driver) subscribedSamples(points []driver.Point) []telemetry.Sample {
	d.mu.Lock()
	s := d.sub
	d.mu.Unlock()
	if len(points) == 0 {
		return nil
	}
	now := d.now()
	var out []telemetry.Sample
	for _, p := range points {
		// Values a retired subscription left come first: they are older,
		// and they do not end a gap (they arrived before it).
		old := d.carried(p.Ref)
		var fresh []*ua.DataValue
		if s != nil {
			h, ok := s.handles[p.Ref]
			if !ok {
				// Not configured at start: only configured points are
				// monitored. Say so once per point instead of failing reads.
				d.noteFault(p, ua.StatusBadNodeIDUnknown, "mode subscribe on a point the device was not configured with")
				out = append(out, telemetry.Sample{PointID: p.ID, Time: now.UnixMilli(), Status: telemetry.StatusFault})
				continue
			}
			fresh = s.take(h)
		}
		for i, dv := range append(old, fresh...) {
			// A notification keeps the time the server gave it (each is a
			// change), but one not later than the point's last sample is
			// a repeat and is left out.
			smp := d.sample(p, dv, now)
			d.mu.Lock()
			m := d.tl.of(p.ID)
			d.mu.Unlock()
			if d.advance(p, m, smp.Time, true, i >= len(old), now) {
				out = append(out, smp)
			}
		}
	}
	return out
}
