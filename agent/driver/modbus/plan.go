package modbus

import (
	"cmp"
	"slices"
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
// be read at all, no read may cover both sides of a cut (the unmapped gap
// behind it made a bridging read fail), and reads of badLen registers fail
// while reads of okLen succeed. Holes and cuts only accumulate and badLen
// only shrinks, so learning ends.
type limits struct {
	okLen, badLen int // 0: unknown
	holes         []span
	cuts          []int // a cut at c: no read covers both c-1 and c
	unsupported   bool  // the unit answered "illegal function" for the table
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
	return slices.ContainsFunc(l.holes, s.overlaps)
}

// allows reports whether one read may cover s.
func (l *limits) allows(s span) bool {
	if m := l.maxLen(); m > 0 && s.end-s.start > m {
		return false
	}
	if l.hole(s) {
		return false
	}
	return !slices.ContainsFunc(l.cuts, func(c int) bool { return s.start < c && c < s.end })
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
// contiguous registers. Items in a hole or an unsupported table are not
// planned: skipped returns them.
func plan(items []*item, learned func(area) *limits, opts planOptions) (blocks []block, skipped []*item) {
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b *item) int {
		return cmp.Or(a.area.less(b.area), cmp.Compare(a.span.start, b.span.start), cmp.Compare(a.span.end, b.span.end))
	})
	var cur *block
	for _, it := range sorted {
		lim := learned(it.area)
		if lim.unsupported || lim.hole(it.span) {
			skipped = append(skipped, it)
			continue
		}
		maxLen, gap := opts.maxRegisters, opts.maxGap
		if it.area.table.bits() {
			maxLen, gap = opts.maxBits, 16*opts.maxGap
		}
		if cur != nil && cur.area == it.area {
			joined := span{cur.span.start, max(cur.span.end, it.span.end)}
			if it.span.start-cur.span.end <= gap && joined.end-joined.start <= maxLen && lim.allows(joined) {
				cur.span = joined
				cur.items = append(cur.items, it)
				continue
			}
		}
		blocks = append(blocks, block{area: it.area, span: it.span, items: []*item{it}})
		cur = &blocks[len(blocks)-1]
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
