package modbus

import (
	"cmp"
	"slices"
	"time"
)

// Protocol limits of one read request.
const (
	maxReadRegisters = 125
	maxReadBits      = 2000
)

// area is one data table of one unit: the space a block read covers.
type area struct {
	unit  byte
	table table
}

func (a area) less(b area) int {
	return cmp.Or(cmp.Compare(a.unit, b.unit), cmp.Compare(a.table, b.table))
}

// span is a range of addresses [start, end).
type span struct{ start, end int }

func (s span) overlaps(o span) bool { return s.start < o.end && o.start < s.end }

// limits is what the driver has learned about one area: the holes cannot
// be read for now, no read may cover both sides of a cut (the unmapped gap
// behind it made a bridging read fail), and reads of badLen registers fail
// while reads of okLen succeed. Cuts only accumulate and badLen only
// shrinks, so learning ends; holes come and go (see hole).
type limits struct {
	okLen, badLen int // 0: unknown
	holes         []hole
	cuts          []int // a cut at c: no read covers both c-1 and c
	// holeCuts are cuts learned from a split whose halves did not both
	// read whole, most often because one held a hole: the refusal may
	// have been the hole's and not the gap's, so they go when a hole of
	// the area does, and the blocks around it can merge again (a gap
	// that is really unmapped is then cut again, for good).
	holeCuts    []int
	unsupported bool // the unit answered "illegal function" for the table
	// since is when the first of the limits other than holes was
	// learned (zero: none yet), so they expire together after
	// learnedTTL, however often the file is rewritten.
	since time.Time
}

// Hole retries. A device answering "illegal data address" or "illegal
// data value" for one point may mean it for a while only: a gateway whose
// serial device is rebooting, a device still starting, a drive in a fault
// state. So a hole is asked again, alone (a refusal then costs no other
// point its data), holeRetryBase after the device refused it, the wait
// doubling with each refusal in a row up to holeRetryMax. Ten minutes
// brings back a point that stumbled once within the same quarter hour;
// six hours keeps a register that really is missing to four requests a
// day.
const (
	holeRetryBase = 10 * time.Minute
	holeRetryMax  = 6 * time.Hour
)

// hole is a span the device refused to read on its own.
type hole struct {
	span
	learned  time.Time // when the device last refused it
	refusals int       // refusals in a row, at least 1
}

// retryAt returns when the hole is asked again.
func (h hole) retryAt() time.Time { return h.learned.Add(holeBackoff(h.refusals)) }

// holeBackoff is the wait after refusals refusals in a row.
func holeBackoff(refusals int) time.Duration {
	return min(holeRetryBase<<min(max(refusals-1, 0), 8), holeRetryMax)
}

// learnedAt marks that a limit other than a hole was learned at now.
func (l *limits) learnedAt(now time.Time) {
	if l.since.IsZero() {
		l.since = now
	}
}

// maxLen is the longest read to try, 0 for the protocol's limit. Between
// the longest read seen to work and the shortest refused it probes the
// middle, so the limit is found in a few polls rather than guessed low.
func (l *limits) maxLen() int {
	switch {
	case l.badLen == 0:
		return 0
	case l.okLen+1 >= l.badLen:
		return l.okLen
	}
	return (l.okLen + l.badLen) / 2
}

// succeeded records a read of n registers or bits that worked.
func (l *limits) succeeded(n int) {
	l.okLen = max(l.okLen, n)
	if l.badLen != 0 && n >= l.badLen {
		// What looked like a size limit was not one.
		l.badLen = 0
	}
}

// refused records that a contiguous read of n failed while its halves
// worked: the device's limit is below n.
func (l *limits) refused(n int) {
	if l.badLen == 0 || n < l.badLen {
		l.badLen = n
	}
}

func (l *limits) hole(s span) bool {
	return slices.ContainsFunc(l.holes, func(h hole) bool { return h.overlaps(s) })
}

// due reports whether every hole s overlaps is due to be asked again.
func (l *limits) due(s span, now time.Time) bool {
	return !slices.ContainsFunc(l.holes, func(h hole) bool { return h.overlaps(s) && now.Before(h.retryAt()) })
}

// refusedAlone records that the device refused a read of s on its own,
// at now: a new hole, or the holes s overlaps refused once more. It
// reports whether the hole is new.
func (l *limits) refusedAlone(s span, now time.Time) bool {
	known := false
	for i := range l.holes {
		if h := &l.holes[i]; h.overlaps(s) {
			h.learned, h.refusals, known = now, h.refusals+1, true
		}
	}
	if !known {
		l.holes = append(l.holes, hole{span: s, learned: now, refusals: 1})
	}
	return !known
}

// readable records that a read of s worked: no address in s is a hole any
// more. It reports whether a hole shrank or went, which also drops the
// cuts learned beside holes.
func (l *limits) readable(s span) bool {
	if !l.hole(s) {
		return false
	}
	var keep []hole
	for _, h := range l.holes {
		if !h.overlaps(s) {
			keep = append(keep, h)
			continue
		}
		// What is left of the hole on either side of s.
		if h.start < s.start {
			keep = append(keep, hole{span: span{h.start, s.start}, learned: h.learned, refusals: h.refusals})
		}
		if s.end < h.end {
			keep = append(keep, hole{span: span{s.end, h.end}, learned: h.learned, refusals: h.refusals})
		}
	}
	l.holes, l.holeCuts = keep, nil
	return true
}

// allows reports whether one read may cover s.
func (l *limits) allows(s span) bool {
	if m := l.maxLen(); m > 0 && s.end-s.start > m {
		return false
	}
	if l.hole(s) {
		return false
	}
	inside := func(c int) bool { return s.start < c && c < s.end }
	return !slices.ContainsFunc(l.cuts, inside) && !slices.ContainsFunc(l.holeCuts, inside)
}

// planOptions are the planner's knobs.
type planOptions struct {
	// maxRegisters and maxBits cap one read (at most the protocol's
	// limits).
	maxRegisters, maxBits int
	// maxGap is how many unused registers one read may bridge rather than
	// becoming two reads; bits bridge 16 times as many.
	maxGap int
}

// item is one distinct location to read: a span of one area and the
// points (indexes into the caller's list) decoded from it.
type item struct {
	area  area
	span  span
	specs []int
}

// block is one read request: a contiguous span of an area covering items.
type block struct {
	area  area
	span  span
	items []*item
}

// plan groups items into the fewest block reads it can: per area, items
// in address order join the current block while the block stays within
// the size limit, the gap it must bridge is at most maxGap and it crosses
// no hole or cut learned from the device. Greedy extension is optimal for
// such interval constraints, so on a contiguous map the count is the
// minimum, and bridging gaps never costs a read over grouping strictly
// contiguous registers. An item in a hole due to be asked again at now is
// a block of its own; items in other holes or an unsupported table are
// not planned: skipped returns them.
func plan(items []*item, learned func(area) *limits, now time.Time, opts planOptions) (blocks []block, skipped []*item) {
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b *item) int {
		return cmp.Or(a.area.less(b.area), cmp.Compare(a.span.start, b.span.start), cmp.Compare(a.span.end, b.span.end))
	})
	cur := -1 // index of the block items may join
	for _, it := range sorted {
		lim := learned(it.area)
		switch {
		case lim.unsupported:
			skipped = append(skipped, it)
			continue
		case lim.hole(it.span) && lim.due(it.span, now):
			// Alone, so that a refusal costs no other point its data.
			// No later item joins it: any block reaching past it
			// would cover the hole.
			blocks = append(blocks, block{area: it.area, span: it.span, items: []*item{it}})
			continue
		case lim.hole(it.span):
			skipped = append(skipped, it)
			continue
		}
		maxLen, gap := opts.maxRegisters, opts.maxGap
		if it.area.table.bits() {
			maxLen, gap = opts.maxBits, 16*opts.maxGap
		}
		if cur >= 0 && blocks[cur].area == it.area {
			b := &blocks[cur]
			joined := span{b.span.start, max(b.span.end, it.span.end)}
			if it.span.start-b.span.end <= gap && joined.end-joined.start <= maxLen && lim.allows(joined) {
				b.span = joined
				b.items = append(b.items, it)
				continue
			}
		}
		blocks = append(blocks, block{area: it.area, span: it.span, items: []*item{it}})
		cur = len(blocks) - 1
	}
	return blocks, skipped
}

// split divides a block that the device refused into two, at the widest
// gap between its items (the likeliest unmapped range) or, when the items
// are contiguous, in the middle. It reports whether the halves meet at a
// gap. A block of one item cannot be split.
func (b block) split() (left, right block, atGap bool) {
	best, bestGap := -1, 0
	end := b.items[0].span.end
	for i := 1; i < len(b.items); i++ {
		if g := b.items[i].span.start - end; g > bestGap {
			best, bestGap = i, g
		}
		end = max(end, b.items[i].span.end)
	}
	at := best
	if at < 0 {
		at = len(b.items) / 2
	}
	return sub(b.area, b.items[:at]), sub(b.area, b.items[at:]), best >= 0
}

func sub(a area, items []*item) block {
	b := block{area: a, items: items, span: items[0].span}
	for _, it := range items[1:] {
		b.span.end = max(b.span.end, it.span.end)
	}
	return b
}
