package batch

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Defaults for Limits, and what Encode refuses to exceed so that every
// batch it writes decodes with the defaults.
const (
	DefaultMaxDecompressed = 64 << 20
	DefaultMaxSamples      = 4_000_000
	DefaultMaxPoints       = 1_000_000
	// MaxIDLen bounds Header.AgentID and Header.Site, in bytes.
	MaxIDLen = 64
)

// ErrInvalid means Encode was given a batch it cannot encode (empty,
// missing identity, unknown status, ...); the error says which field.
var ErrInvalid = errors.New("invalid batch")

// Encoded is the result of Encode.
type Encoded struct {
	// Data is the encoded batch, zstd-compressed when that makes it
	// smaller, with its checksum.
	Data []byte
	// Table is EncodePointTable of the batch's sorted distinct point ids,
	// and TableHash its hash, which Data references. The receiver must
	// have the table to decode Data: send it once per distinct point set.
	Table     []byte
	TableHash TableHash
}

// Limits bound what Decode accepts; a zero field means its default.
type Limits struct {
	MaxDecompressed int // payload bytes, after decompression if compressed (default 64 MiB)
	MaxSamples      int // default 4,000,000
	MaxPoints       int // default 1,000,000
}

func (l Limits) withDefaults() Limits {
	if l.MaxDecompressed <= 0 {
		l.MaxDecompressed = DefaultMaxDecompressed
	}
	if l.MaxSamples <= 0 {
		l.MaxSamples = DefaultMaxSamples
	}
	if l.MaxPoints <= 0 {
		l.MaxPoints = DefaultMaxPoints
	}
	// The header's counts are 32-bit.
	l.MaxSamples = min(l.MaxSamples, math.MaxUint32)
	l.MaxPoints = min(l.MaxPoints, math.MaxUint32)
	return l
}

// Tables is a TableResolver over a map, for tests and small caches.
type Tables map[TableHash][]uint64

// PointTable implements TableResolver.
func (t Tables) PointTable(h TableHash) ([]uint64, error) {
	ids, ok := t[h]
	if !ok {
		return nil, fmt.Errorf("point table %s: %w", h, ErrUnknownTable)
	}
	return ids, nil
}

// Health fields in header order; bit i of the health mask says field i
// is present (nonzero).
func healthFields(h *Health) [7]uint64 {
	return [7]uint64{h.BufferSamples, h.BufferBytes, h.DroppedSamples, h.PollErrors,
		uint64(h.DevicesUp), uint64(h.DevicesDown), h.UptimeSeconds}
}

// flagAllOK, bit 7 of the header's mask byte (bits 0-6 say which health
// fields are present): every status is ok and the status section is
// absent.
const flagAllOK = 0x80

// Encode validates b and encodes it. b is not modified: the header's
// Start, End, Points and Samples are computed from the samples, which may
// come in any order. Errors wrap ErrInvalid, or ErrTooLarge when the batch
// exceeds the default Limits.
func Encode(b *Batch) (Encoded, error) {
	if err := validate(b); err != nil {
		return Encoded{}, fmt.Errorf("encoding batch: %w", err)
	}
	samples := b.Samples
	if !slices.IsSortedFunc(samples, compareSamples) {
		samples = slices.Clone(samples)
		slices.SortStableFunc(samples, compareSamples)
	}
	p, err := newPlan(samples)
	if err != nil {
		return Encoded{}, fmt.Errorf("encoding batch: %w", err)
	}
	table := EncodePointTable(p.ids)
	hash := HashPointTable(table)
	payload := p.appendPayload(make([]byte, 0, 128+4*len(samples)), &b.Header, hash)
	if len(payload) > DefaultMaxDecompressed {
		return Encoded{}, fmt.Errorf("encoding batch: %d bytes before compression, limit is %d: split it: %w",
			len(payload), DefaultMaxDecompressed, ErrTooLarge)
	}
	data, err := seal(payload)
	if err != nil {
		return Encoded{}, fmt.Errorf("encoding batch: %w", err)
	}
	return Encoded{Data: data, Table: table, TableHash: hash}, nil
}

func compareSamples(a, b telemetry.Sample) int {
	if c := cmp.Compare(a.PointID, b.PointID); c != 0 {
		return c
	}
	return cmp.Compare(a.Time, b.Time)
}

func validate(b *Batch) error {
	if b == nil || len(b.Samples) == 0 {
		return fmt.Errorf("no samples: %w", ErrInvalid)
	}
	for _, f := range []struct{ name, v string }{{"agent id", b.AgentID}, {"site", b.Site}} {
		if f.v == "" {
			return fmt.Errorf("%s is empty: %w", f.name, ErrInvalid)
		}
		if len(f.v) > MaxIDLen {
			return fmt.Errorf("%s is %d bytes, at most %d allowed: %w", f.name, len(f.v), MaxIDLen, ErrInvalid)
		}
	}
	if len(b.Samples) > DefaultMaxSamples {
		return fmt.Errorf("%d samples, at most %d per batch: split it: %w", len(b.Samples), DefaultMaxSamples, ErrTooLarge)
	}
	lo, hi := b.Samples[0].Time, b.Samples[0].Time
	for i, s := range b.Samples {
		if s.Status > telemetry.MaxStatus {
			return fmt.Errorf("sample %d (point %d): unknown status %d: %w", i, s.PointID, s.Status, ErrInvalid)
		}
		lo, hi = min(lo, s.Time), max(hi, s.Time)
	}
	if hi-lo < 0 { // wrapped: the span does not fit int64
		return fmt.Errorf("samples span %d to %d ms, too far apart for one batch: %w", lo, hi, ErrInvalid)
	}
	// The header stores SentAt relative to the end; it must fit int64.
	if (hi > 0 && b.SentAt < math.MinInt64+hi) || (hi < 0 && b.SentAt > math.MaxInt64+hi) {
		return fmt.Errorf("sent at %d is too far from the samples' end %d: %w", b.SentAt, hi, ErrInvalid)
	}
	return nil
}

// plan is everything the encoder decided before writing.
type plan struct {
	samples    []telemetry.Sample
	ids        []uint64
	cols       []column
	groups     [][]int64 // time columns shared by points
	start, end int64
	allOK      bool
}

func newPlan(samples []telemetry.Sample) (*plan, error) {
	p := &plan{samples: samples, allOK: true, start: samples[0].Time, end: samples[0].Time}
	for lo := 0; lo < len(samples); {
		hi := lo + 1
		for hi < len(samples) && samples[hi].PointID == samples[lo].PointID {
			hi++
		}
		p.ids = append(p.ids, samples[lo].PointID)
		p.cols = append(p.cols, column{id: samples[lo].PointID, lo: lo, hi: hi})
		lo = hi
	}
	if len(p.ids) > DefaultMaxPoints {
		return nil, fmt.Errorf("%d points, at most %d per batch: split it: %w", len(p.ids), DefaultMaxPoints, ErrTooLarge)
	}

	// Time groups: points polled together have identical time columns,
	// which are written once.
	times := make([]int64, len(samples))
	values := make([]float64, len(samples))
	for i, s := range samples {
		times[i], values[i] = s.Time, s.Value
		p.start, p.end = min(p.start, s.Time), max(p.end, s.Time)
		if s.Status != telemetry.StatusOK {
			p.allOK = false
		}
	}
	byHash := make(map[uint64][]int)
	var scratch planScratch
	for i := range p.cols {
		c := &p.cols[i]
		ts := times[c.lo:c.hi]
		h := hashTimes(ts)
		c.group = -1
		for _, g := range byHash[h] {
			if slices.Equal(p.groups[g], ts) {
				c.group = g
				break
			}
		}
		if c.group < 0 {
			c.group = len(p.groups)
			p.groups = append(p.groups, ts)
			byHash[h] = append(byHash[h], c.group)
		}
		planValues(c, values[c.lo:c.hi], &scratch)
	}
	return p, nil
}

func hashTimes(ts []int64) uint64 {
	// FNV-1a over the words; collisions only cost a comparison.
	h := uint64(14695981039346656037)
	for _, t := range ts {
		h ^= uint64(t)
		h *= 1099511628211
	}
	return h ^ uint64(len(ts))
}

func (p *plan) appendPayload(out []byte, hd *Header, hash TableHash) []byte {
	h := *hd
	h.Start, h.End = p.start, p.end
	h.Points, h.Samples = uint32(len(p.cols)), uint32(len(p.samples))
	out = appendHeader(out, &h, p.allOK, hash)
	return p.appendBody(out)
}

// appendHeader writes the header as given, counts and time range
// included.
func appendHeader(out []byte, hd *Header, allOK bool, hash TableHash) []byte {
	out = appendString(out, hd.AgentID)
	out = appendString(out, hd.Site)
	out = appendUvarint(out, hd.Seq)
	out = appendVarint(out, hd.Start)
	out = appendUvarint(out, uint64(hd.End-hd.Start))
	out = appendVarint(out, hd.SentAt-hd.End)
	out = appendUvarint(out, uint64(hd.Points))
	out = appendUvarint(out, uint64(hd.Samples))
	hf := healthFields(&hd.Health)
	var mask byte
	if allOK {
		mask |= flagAllOK
	}
	for i, v := range hf {
		if v != 0 {
			mask |= 1 << i
		}
	}
	out = append(out, mask)
	for _, v := range hf {
		if v != 0 {
			out = appendUvarint(out, v)
		}
	}
	return append(out, hash[:]...)
}

func (p *plan) appendBody(out []byte) []byte {
	// Body. Sections hold like with like (all timestamps, then all
	// descriptors, run lengths, values by form, statuses) so that zstd
	// finds similar bytes next to each other.
	out = appendUvarint(out, uint64(len(p.groups)))
	if len(p.groups) == 1 {
		// The common case, every point polled together: the group's size
		// is samples/points and its first time is the batch start, so
		// neither is written (it matters for small batches).
		out = appendTimes(out, p.groups[0], p.start, false)
	} else {
		for _, g := range p.groups {
			out = appendUvarint(out, uint64(len(g)))
		}
		for i := range p.cols {
			out = appendUvarint(out, uint64(p.cols[i].group))
		}
		for _, g := range p.groups {
			out = appendTimes(out, g, p.start, true)
		}
	}
	out = appendDescriptors(out, p.cols)
	for i := range p.cols {
		for _, n := range p.cols[i].runLens {
			out = appendUvarint(out, uint64(n-1))
		}
	}
	for form := byte(0); form < numForms; form++ {
		for i := range p.cols {
			if c := &p.cols[i]; c.desc>>4&3 == form {
				out = appendValues(out, c)
			}
		}
	}
	if !p.allOK {
		for i := range p.cols {
			c := &p.cols[i]
			for lo := c.lo; lo < c.hi; {
				hi := lo + 1
				for hi < c.hi && p.samples[hi].Status == p.samples[lo].Status {
					hi++
				}
				out = append(out, byte(p.samples[lo].Status))
				out = appendUvarint(out, uint64(hi-lo-1))
				lo = hi
			}
		}
	}
	return out
}

// appendDescriptors writes the value descriptors as a palette: the
// distinct descriptors in increasing order, then each point's index into
// it in as few bits as the palette needs (none when all points share one).
// A batch uses a handful of descriptors, so a point costs two or three
// bits instead of a byte, which matters when it has one sample.
func appendDescriptors(out []byte, cols []column) []byte {
	var index [descReserved]byte // descriptor -> palette index + 1
	for i := range cols {
		index[cols[i].desc] = 1
	}
	k := 0
	for _, u := range index {
		if u != 0 {
			k++
		}
	}
	out = appendUvarint(out, uint64(k))
	k = 0
	for c, u := range index {
		if u != 0 {
			out = append(out, byte(c))
			index[c] = byte(k)
			k++
		}
	}
	if k == 1 {
		return out
	}
	width := uint(bits.Len(uint(k - 1)))
	w := bitWriter{out: out}
	for i := range cols {
		w.write(uint64(index[cols[i].desc]), width)
	}
	return w.flush()
}

// appendTimes writes a time column: the first time as an offset from the
// batch start (unless it is implied), the first delta, then deltas of
// deltas, which are zero for regular polling.
func appendTimes(out []byte, ts []int64, start int64, first bool) []byte {
	if first {
		out = appendUvarint(out, uint64(ts[0]-start))
	}
	if len(ts) < 2 {
		return out
	}
	prev := ts[1] - ts[0]
	out = appendUvarint(out, uint64(prev))
	for i := 2; i < len(ts); i++ {
		d := ts[i] - ts[i-1]
		out = appendVarint(out, d-prev)
		prev = d
	}
	return out
}

// Decode decodes and validates data, resolving its point table with
// tables. It returns the samples sorted by point id, then time (samples of
// one point at the same time keep their encoded order). Every error wraps
// ErrCorrupt, ErrTooLarge, ErrVersion or ErrUnknownTable (or is the
// resolver's own failure) and says where the problem is.
func Decode(data []byte, tables TableResolver, lim Limits) (*Batch, error) {
	lim = lim.withDefaults()
	payload, release, err := unseal(data, lim.MaxDecompressed)
	if err != nil {
		return nil, fmt.Errorf("decoding batch: %w", err)
	}
	defer release()
	b, err := decodePayload(payload, tables, lim)
	if err != nil {
		return nil, fmt.Errorf("decoding batch: %w", err)
	}
	return b, nil
}

func decodePayload(payload []byte, tables TableResolver, lim Limits) (*Batch, error) {
	r := &reader{b: payload}
	b := &Batch{}
	hd := &b.Header
	var err error
	if hd.AgentID, err = readID(r); err != nil {
		return nil, fmt.Errorf("header: agent id: %w", err)
	}
	if hd.Site, err = readID(r); err != nil {
		return nil, fmt.Errorf("header: site: %w", err)
	}
	if hd.Seq, err = r.uvarint(); err != nil {
		return nil, fmt.Errorf("header: seq: %w", err)
	}
	if hd.Start, err = r.varint(); err != nil {
		return nil, fmt.Errorf("header: start: %w", err)
	}
	span, err := r.uvarint()
	if err != nil {
		return nil, fmt.Errorf("header: end: %w", err)
	}
	// uint64(MaxInt64)-uint64(start) is MaxInt64-start computed without
	// overflow, for any start.
	if span > uint64(math.MaxInt64)-uint64(hd.Start) {
		return nil, fmt.Errorf("header: end: start %d + %d overflows: %w", hd.Start, span, ErrCorrupt)
	}
	hd.End = hd.Start + int64(span)
	sent, err := r.varint()
	if err != nil {
		return nil, fmt.Errorf("header: sent at: %w", err)
	}
	if (sent > 0 && hd.End > math.MaxInt64-sent) || (sent < 0 && hd.End < math.MinInt64-sent) {
		return nil, fmt.Errorf("header: sent at: overflows: %w", ErrCorrupt)
	}
	hd.SentAt = hd.End + sent
	npoints, err := r.uvarint()
	if err != nil {
		return nil, fmt.Errorf("header: points: %w", err)
	}
	nsamples, err := r.uvarint()
	if err != nil {
		return nil, fmt.Errorf("header: samples: %w", err)
	}
	if npoints == 0 || nsamples < npoints {
		return nil, fmt.Errorf("header: %d points, %d samples: %w", npoints, nsamples, ErrCorrupt)
	}
	if npoints > uint64(lim.MaxPoints) {
		return nil, fmt.Errorf("header: %d points, limit is %d: %w", npoints, lim.MaxPoints, ErrTooLarge)
	}
	if nsamples > uint64(lim.MaxSamples) {
		return nil, fmt.Errorf("header: %d samples, limit is %d: %w", nsamples, lim.MaxSamples, ErrTooLarge)
	}
	hd.Points, hd.Samples = uint32(npoints), uint32(nsamples)
	mask, err := readHealth(r, &hd.Health)
	if err != nil {
		return nil, fmt.Errorf("header: health: %w", err)
	}
	hb, err := r.bytes(len(TableHash{}))
	if err != nil {
		return nil, fmt.Errorf("header: table hash: %w", err)
	}
	hash := TableHash(hb)

	// Resolve the table before the body: an unknown table is the one error
	// the sender can fix (by uploading it), so say it first.
	if tables == nil {
		return nil, fmt.Errorf("point table %s: no resolver: %w", hash, ErrUnknownTable)
	}
	ids, err := tables.PointTable(hash)
	if err != nil {
		return nil, fmt.Errorf("resolving point table %s: %w", hash, err)
	}
	if ids == nil {
		return nil, fmt.Errorf("point table %s: %w", hash, ErrUnknownTable)
	}
	if uint64(len(ids)) != npoints {
		return nil, fmt.Errorf("point table %s has %d ids, header says %d points: %w", hash, len(ids), npoints, ErrCorrupt)
	}
	if !isStrictlyIncreasing(ids) {
		return nil, fmt.Errorf("point table %s is not sorted and distinct: %w", hash, ErrCorrupt)
	}

	d := bodyDecoder{r: r, b: b, ids: ids, span: span, allOK: mask&flagAllOK != 0}
	if err := d.decode(); err != nil {
		return nil, err
	}
	if r.remaining() != 0 {
		return nil, fmt.Errorf("%d trailing bytes after the last section: %w", r.remaining(), ErrCorrupt)
	}
	return b, nil
}

func readID(r *reader) (string, error) {
	n, err := r.uvarint()
	if err != nil {
		return "", err
	}
	if n == 0 || n > MaxIDLen {
		return "", fmt.Errorf("length %d, want 1 to %d: %w", n, MaxIDLen, ErrCorrupt)
	}
	b, err := r.bytes(int(n))
	return string(b), err
}

// readHealth reads the mask byte and the health fields it announces, and
// returns the mask.
func readHealth(r *reader, h *Health) (byte, error) {
	mask, err := r.byte()
	if err != nil {
		return 0, err
	}
	var f [7]uint64
	for i := range f {
		if mask&(1<<i) == 0 {
			continue
		}
		if f[i], err = r.uvarint(); err != nil {
			return 0, fmt.Errorf("field %d: %w", i, err)
		}
		if f[i] == 0 {
			return 0, fmt.Errorf("field %d: present but zero: %w", i, ErrCorrupt)
		}
	}
	if f[4] > math.MaxUint32 || f[5] > math.MaxUint32 {
		return 0, fmt.Errorf("device counts overflow 32 bits: %w", ErrCorrupt)
	}
	*h = Health{BufferSamples: f[0], BufferBytes: f[1], DroppedSamples: f[2], PollErrors: f[3],
		DevicesUp: uint32(f[4]), DevicesDown: uint32(f[5]), UptimeSeconds: f[6]}
	return mask, nil
}

// bodyDecoder decodes the sections after the header.
type bodyDecoder struct {
	r     *reader
	b     *Batch
	ids   []uint64
	span  uint64
	allOK bool

	groupN   []int // samples per group
	groupOff []int // offset of the group's times in times
	times    []int64
	pointGrp []int32
	pointOff []int // offset of the point's samples
	desc     []byte
	runOff   []int // the point's runs are runs[runOff[p]:runOff[p+1]]
	runs     []int32
}

func (d *bodyDecoder) decode() error {
	r, hd := d.r, &d.b.Header
	np := int(hd.Points)
	// Every point takes at least one byte of values, so the point count is
	// bounded by the bytes left before anything sized by it is allocated.
	if np > r.remaining() {
		return fmt.Errorf("header: %d points cannot fit in %d bytes: %w", np, r.remaining(), ErrCorrupt)
	}
	ng64, err := r.uvarint()
	if err != nil {
		return fmt.Errorf("time groups: count: %w", err)
	}
	if ng64 == 0 || ng64 > uint64(np) {
		return fmt.Errorf("time groups: %d groups for %d points: %w", ng64, np, ErrCorrupt)
	}
	ng := int(ng64)
	d.groupN = make([]int, ng)
	d.groupOff = make([]int, ng)
	d.pointGrp = make([]int32, np)
	totalTimes := 0
	if ng == 1 {
		if hd.Samples%hd.Points != 0 {
			return fmt.Errorf("one time group, but %d samples are not a multiple of %d points: %w", hd.Samples, hd.Points, ErrCorrupt)
		}
		d.groupN[0] = int(hd.Samples / hd.Points)
		totalTimes = d.groupN[0]
	}
	for g := range d.groupN {
		if ng == 1 {
			break
		}
		n, err := r.uvarint()
		if err != nil {
			return fmt.Errorf("time group %d: count: %w", g, err)
		}
		if n == 0 || n > uint64(hd.Samples) {
			return fmt.Errorf("time group %d: %d times: %w", g, n, ErrCorrupt)
		}
		d.groupN[g], d.groupOff[g] = int(n), totalTimes
		totalTimes += int(n)
		if totalTimes > int(hd.Samples) {
			return fmt.Errorf("time group %d: more times than the %d samples: %w", g, hd.Samples, ErrCorrupt)
		}
	}
	if ng > 1 {
		next := 0
		for p := range d.pointGrp {
			g, err := r.uvarint()
			if err != nil {
				return fmt.Errorf("point %d: time group: %w", p, err)
			}
			// Groups are numbered in order of first use.
			if g > uint64(next) {
				return fmt.Errorf("point %d: time group %d out of order (next new group is %d): %w", p, g, next, ErrCorrupt)
			}
			if int(g) == next {
				next++
			}
			d.pointGrp[p] = int32(g)
		}
		if next != ng {
			return fmt.Errorf("time groups: %d declared, %d used: %w", ng, next, ErrCorrupt)
		}
	}
	d.pointOff = make([]int, np+1)
	total := 0
	for p, g := range d.pointGrp {
		d.pointOff[p] = total
		total += d.groupN[g]
	}
	d.pointOff[np] = total
	if total != int(hd.Samples) {
		return fmt.Errorf("header says %d samples, the points hold %d: %w", hd.Samples, total, ErrCorrupt)
	}

	// Every time takes at least one byte (the first of a single group
	// takes none).
	if totalTimes-1 > r.remaining() {
		return fmt.Errorf("time groups: %d times cannot fit in %d bytes: %w", totalTimes, r.remaining(), ErrCorrupt)
	}
	d.times = make([]int64, totalTimes)
	sawStart, sawEnd := false, false
	for g := range d.groupN {
		ts := d.times[d.groupOff[g] : d.groupOff[g]+d.groupN[g]]
		first, last, err := d.readTimes(ts, ng > 1)
		if err != nil {
			return fmt.Errorf("time group %d: %w", g, err)
		}
		sawStart = sawStart || first == 0
		sawEnd = sawEnd || last == d.span
	}
	if !sawStart || !sawEnd {
		return fmt.Errorf("header time range %d..%d does not match the samples: %w", hd.Start, hd.End, ErrCorrupt)
	}

	if err := d.readDescriptors(np); err != nil {
		return fmt.Errorf("value descriptors: %w", err)
	}
	if err := d.readRuns(); err != nil {
		return err
	}

	samples := make([]telemetry.Sample, total)
	d.b.Samples = samples
	for p := range np {
		g := d.pointGrp[p]
		ts := d.times[d.groupOff[g] : d.groupOff[g]+d.groupN[g]]
		out := samples[d.pointOff[p]:d.pointOff[p+1]]
		id := d.ids[p]
		for i := range out {
			out[i].PointID = id
			out[i].Time = ts[i]
		}
	}
	var vals []float64
	for form := byte(0); form < numForms; form++ {
		for p := range np {
			if d.desc[p]>>4&3 != form {
				continue
			}
			if vals, err = d.readValues(p, vals); err != nil {
				return fmt.Errorf("point %d values: %w", p, err)
			}
		}
	}
	if !d.allOK {
		for p := range np {
			if err := d.readStatuses(samples[d.pointOff[p]:d.pointOff[p+1]]); err != nil {
				return fmt.Errorf("point %d statuses: %w", p, err)
			}
		}
	}
	return nil
}

// readDescriptors reads the descriptor palette and each point's index
// into it, and fills d.desc. The palette must be in increasing order and
// every entry used, so a set of descriptors has one encoding.
func (d *bodyDecoder) readDescriptors(np int) error {
	r := d.r
	k, err := r.uvarint()
	if err != nil {
		return fmt.Errorf("palette size: %w", err)
	}
	if k == 0 || k > uint64(np) || k > descReserved {
		return fmt.Errorf("%d descriptors for %d points: %w", k, np, ErrCorrupt)
	}
	palette, err := r.bytes(int(k))
	if err != nil {
		return fmt.Errorf("palette: %w", err)
	}
	for i, c := range palette {
		form, scale := c>>4&3, int(c&0xf)
		if c&descReserved != 0 || scale > maxScale || (scale != 0 && (form == formF32 || form == formXOR)) {
			return fmt.Errorf("bad value descriptor %#x: %w", c, ErrCorrupt)
		}
		if i > 0 && c <= palette[i-1] {
			return fmt.Errorf("palette not in increasing order at %#x: %w", c, ErrCorrupt)
		}
	}
	d.desc = make([]byte, np)
	if k == 1 {
		for p := range d.desc {
			d.desc[p] = palette[0]
		}
		return nil
	}
	width := uint(bits.Len64(k - 1))
	if need := (uint64(np)*uint64(width) + 7) / 8; need > uint64(r.remaining()) {
		return fmt.Errorf("%d points' indexes need %d bytes, %d left: %w", np, need, r.remaining(), ErrCorrupt)
	}
	var used [descReserved]bool
	br := bitReader{b: r.b[r.off:]}
	for p := range d.desc {
		i, err := br.read(width)
		if err != nil {
			return fmt.Errorf("point %d: %w", p, err)
		}
		if i >= k {
			return fmt.Errorf("point %d: index %d, palette has %d: %w", p, i, k, ErrCorrupt)
		}
		d.desc[p] = palette[i]
		used[i] = true
	}
	n, err := br.finish()
	if err != nil {
		return fmt.Errorf("indexes: %w", err)
	}
	r.off += n
	for i := range palette {
		if !used[i] {
			return fmt.Errorf("descriptor %#x in the palette but unused: %w", palette[i], ErrCorrupt)
		}
	}
	return nil
}

// readTimes fills ts and returns the first and last offsets from the
// batch start, each checked against the span so no time leaves
// [Start, End] and nothing overflows.
func (d *bodyDecoder) readTimes(ts []int64, withFirst bool) (first, last uint64, err error) {
	r, start := d.r, d.b.Start
	var off uint64
	if withFirst {
		if off, err = r.uvarint(); err != nil {
			return 0, 0, fmt.Errorf("first time: %w", err)
		}
	}
	if off > d.span {
		return 0, 0, fmt.Errorf("first time after the batch end: %w", ErrCorrupt)
	}
	first = off
	ts[0] = start + int64(off)
	if len(ts) == 1 {
		return first, off, nil
	}
	delta, err := r.uvarint()
	if err != nil {
		return 0, 0, fmt.Errorf("time 1: %w", err)
	}
	if delta > d.span-off {
		return 0, 0, fmt.Errorf("time 1 after the batch end: %w", ErrCorrupt)
	}
	off += delta
	ts[1] = start + int64(off)
	for i := 2; i < len(ts); i++ {
		u, err := r.uvarint()
		if err != nil {
			return 0, 0, fmt.Errorf("time %d: %w", i, err)
		}
		// Apply the zigzagged delta of delta without overflow: delta
		// stays in [0, span-off].
		if u&1 == 0 {
			dd := u >> 1
			if dd > d.span-off || delta > d.span-off-dd {
				return 0, 0, fmt.Errorf("time %d after the batch end: %w", i, ErrCorrupt)
			}
			delta += dd
		} else {
			dd := u>>1 + 1
			if dd > delta {
				return 0, 0, fmt.Errorf("time %d goes backwards: %w", i, ErrCorrupt)
			}
			delta -= dd
		}
		off += delta
		ts[i] = start + int64(off)
	}
	return first, off, nil
}

func (d *bodyDecoder) readRuns() error {
	r := d.r
	d.runOff = make([]int, len(d.desc)+1)
	defer func() { d.runOff[len(d.desc)] = len(d.runs) }()
	for p, c := range d.desc {
		d.runOff[p] = len(d.runs)
		if c&descRuns == 0 {
			continue
		}
		n := d.pointOff[p+1] - d.pointOff[p]
		for sum := 0; sum < n; {
			u, err := r.uvarint()
			if err != nil {
				return fmt.Errorf("point %d runs: %w", p, err)
			}
			if u >= uint64(n-sum) {
				return fmt.Errorf("point %d runs: run of %d overshoots the %d samples: %w", p, u+1, n, ErrCorrupt)
			}
			d.runs = append(d.runs, int32(u+1))
			sum += int(u + 1)
		}
	}
	return nil
}

// readValues decodes point p's value stream into its samples, using vals
// as scratch, which it returns for reuse.
func (d *bodyDecoder) readValues(p int, vals []float64) ([]float64, error) {
	c := d.desc[p]
	out := d.b.Samples[d.pointOff[p]:d.pointOff[p+1]]
	n := len(out)
	var runs []int32
	if c&descRuns != 0 {
		runs = d.runs[d.runOff[p]:d.runOff[p+1]]
		n = len(runs)
	}
	if cap(vals) < n {
		vals = make([]float64, n)
	}
	vals = vals[:n]
	r := d.r
	switch form, k := c>>4&3, int(c&0xf); form {
	case formDec64, formDec32:
		m := int64(0)
		for i := range vals {
			dm, err := r.varint()
			if err != nil {
				return vals, fmt.Errorf("value %d: %w", i, err)
			}
			// Both |m| and |dm| bounded keeps the sum from overflowing.
			if dm > 2*maxMantissa || dm < -2*maxMantissa {
				return vals, fmt.Errorf("value %d: mantissa out of range: %w", i, ErrCorrupt)
			}
			m += dm
			if m > maxMantissa || m < -maxMantissa {
				return vals, fmt.Errorf("value %d: mantissa out of range: %w", i, ErrCorrupt)
			}
			vals[i] = decimalValue(m, form, k)
		}
	case formF32:
		b, err := r.bytes(4 * n)
		if err != nil {
			return vals, err
		}
		for i := range vals {
			u := uint32(b[4*i])<<24 | uint32(b[4*i+1])<<16 | uint32(b[4*i+2])<<8 | uint32(b[4*i+3])
			vals[i] = float64(math.Float32frombits(u))
		}
	case formXOR:
		br := bitReader{b: r.b[r.off:]}
		if err := xorDecode(&br, vals); err != nil {
			return vals, err
		}
		used, err := br.finish()
		if err != nil {
			return vals, err
		}
		r.off += used
	}
	if runs == nil {
		for i := range out {
			out[i].Value = vals[i]
		}
		return vals, nil
	}
	pos := 0
	for j, n := range runs {
		v := vals[j]
		for i := pos; i < pos+int(n); i++ {
			out[i].Value = v
		}
		pos += int(n)
	}
	return vals, nil
}

func (d *bodyDecoder) readStatuses(out []telemetry.Sample) error {
	r := d.r
	for pos := 0; pos < len(out); {
		s, err := r.byte()
		if err != nil {
			return err
		}
		if telemetry.Status(s) > telemetry.MaxStatus {
			return fmt.Errorf("unknown status %d: %w", s, ErrCorrupt)
		}
		u, err := r.uvarint()
		if err != nil {
			return err
		}
		if u >= uint64(len(out)-pos) {
			return fmt.Errorf("run of %d overshoots the %d samples: %w", u+1, len(out), ErrCorrupt)
		}
		for i := pos; i <= pos+int(u); i++ {
			out[i].Status = telemetry.Status(s)
		}
		pos += int(u) + 1
	}
	return nil
}
