package opcua

import (
	"time"

	"github.com/gopcua/opcua/ua"
)

// mark is what the driver remembers of one point between Reads: the time
// of the newest live sample it emitted. It keeps a point's live samples
// strictly increasing in time, and it is where a backfill after an outage
// starts.
type mark struct {
	// last is the Unix ms of the newest live sample emitted; 0 for none.
	last int64
	// stuck is set while the point's samples cannot get a later time, so
	// that is logged once per episode rather than at every poll.
	stuck bool
	// heard is set once a live value of the point arrived in the current
	// session, and first is the time of the first live sample emitted in
	// it (0 when that value was left out): where the gap a backfill fills
	// ends.
	heard bool
	first int64
}

// timeline holds the marks, one per configured point. A point Read is
// given that the device was not configured with gets a mark too, but at
// most as many such marks are kept as points are configured (and at least
// minUnconfigured): when they overflow they are forgotten together, so
// memory stays bounded by the configuration whatever Read is handed. A
// forgotten mark can at worst let one repeated time through, which the
// archive's (point, time) idempotence removes.
type timeline struct {
	configured map[uint64]*mark
	extra      map[uint64]*mark
	extraMax   int
}

// minUnconfigured is the floor of the marks kept for unconfigured points.
const minUnconfigured = 64

func newTimeline(ids []uint64) *timeline {
	tl := &timeline{configured: make(map[uint64]*mark, len(ids)), extra: map[uint64]*mark{}, extraMax: max(len(ids), minUnconfigured)}
	for _, id := range ids {
		tl.configured[id] = &mark{}
	}
	return tl
}

// of returns the mark of point id, making one if needed. The caller holds
// the driver's mutex.
func (tl *timeline) of(id uint64) *mark {
	if m, ok := tl.configured[id]; ok {
		return m
	}
	if m, ok := tl.extra[id]; ok {
		return m
	}
	if len(tl.extra) >= tl.extraMax {
		clear(tl.extra)
	}
	m := &mark{}
	tl.extra[id] = m
	return m
}

// newSession forgets what the marks heard in the previous session.
func (tl *timeline) newSession() {
	for _, m := range tl.configured {
		m.heard, m.first = false, 0
	}
	for _, m := range tl.extra {
		m.heard, m.first = false, 0
	}
}

// size is how many marks are kept, for tests.
func (tl *timeline) size() int { return len(tl.configured) + len(tl.extra) }

// validTime reports whether t is a timestamp a server actually set: OPC UA
// encodes "none" as zero (1601), which gopcua decodes as the zero time or
// a time before 1970.
func validTime(t time.Time) bool { return !t.IsZero() && t.Unix() > 0 }

// polledTime picks the time of a polled value given the point's last
// emitted time (Unix ms, 0 for none): the source timestamp when it
// advanced past last, else the server timestamp of this read when that is
// later, else the agent's read time now when that is later. It reports
// false when none of them is later than last: the sample would repeat or
// precede one already emitted, and is left out.
//
// Many servers keep a steady node's source timestamp at the time its value
// last changed, so polling it would otherwise emit the same (point, time)
// every poll: duplicates that raw data and rollups count, and a
// completeness view that shows a steady point as losing data. With this
// rule each poll is one observation at a distinct, increasing time.
func polledTime(last int64, dv *ua.DataValue, now time.Time) (int64, bool) {
	if dv != nil {
		for _, t := range []time.Time{dv.SourceTimestamp, dv.ServerTimestamp} {
			if validTime(t) && t.UnixMilli() > last {
				return t.UnixMilli(), true
			}
		}
	}
	if ms := now.UnixMilli(); ms > last {
		return ms, true
	}
	return 0, false
}
