package batch

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
)

// Value forms. A point's value column uses one form, chosen by the encoder
// as the smallest that reproduces every value bit for bit.
const (
	// formDec64: value = float64(m) / 10^scale, m an integer with
	// |m| <= 2^53; m is written as zigzag varint deltas. scale 0 is the
	// integer form (counters, states, binaries).
	formDec64 = 0
	// formDec32: value = float64(float32(float64(m) / 10^scale)): a decimal
	// that a device stored as float32 (66.38 arrives as 66.37999725341797).
	formDec32 = 1
	// formF32: 4 big-endian bytes of the float32 bits.
	formF32 = 2
	// formXOR: Gorilla-style XOR of consecutive float64 bits; the only form
	// for NaN, ±Inf and -0, which it keeps bit for bit.
	formXOR  = 3
	numForms = 4

	// maxScale is the largest decimal scale, 10^9: beyond it float32 and
	// float64 noise stop being decimals worth finding.
	maxScale = 9
	// maxMantissa keeps m exactly representable as a float64.
	maxMantissa = 1 << 53

	// Descriptor byte: bit 7 reserved (0), bit 6 runs, bits 5-4 form,
	// bits 3-0 scale.
	descRuns     = 0x40
	descReserved = 0x80
)

var pow10 = [maxScale + 1]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// decimal reports whether v is exactly the decimal m/10^k in the given
// form, and m.
func decimal(v float64, form uint8, k int) (int64, bool) {
	m := math.Round(v * pow10[k])
	if !(math.Abs(m) <= maxMantissa) { // also refuses NaN
		return 0, false
	}
	mi := int64(m)
	return mi, math.Float64bits(decimalValue(mi, form, k)) == math.Float64bits(v)
}

// decimalValue is the decoder's formula; the encoder verifies against it.
func decimalValue(m int64, form uint8, k int) float64 {
	v := float64(m) / pow10[k]
	if form == formDec32 {
		v = float64(float32(v))
	}
	return v
}

// column is the encoder's plan for one point.
type column struct {
	id     uint64
	lo, hi int // the point's samples in the sorted slice
	group  int // time group
	desc   byte
	// runLens holds the run lengths when desc has descRuns.
	runLens []int
	// vals is what the value stream holds: every value, or one per run.
	vals []float64
	// mant is vals as decimal mantissas for the decimal forms.
	mant []int64
}

// planValues chooses the form of one point's values: the smallest
// encoding (before zstd) among the forms that reproduce them exactly, each
// with and without run-length coding. Ties go to the simpler form.
func planValues(c *column, values []float64, scratch *planScratch) {
	// Runs of equal bits: 58-81% of consecutive values in real trends are
	// equal, which a run length says in about one byte per run.
	runVals := scratch.runVals[:0]
	runLens := scratch.runLens[:0]
	for i, v := range values {
		if i > 0 && math.Float64bits(v) == math.Float64bits(values[i-1]) {
			runLens[len(runLens)-1]++
			continue
		}
		runVals = append(runVals, v)
		runLens = append(runLens, 1)
	}
	scratch.runVals, scratch.runLens = runVals, runLens
	runCost := 0
	for _, n := range runLens {
		runCost += uvarintLen(uint64(n - 1))
	}

	best, bestDesc := math.MaxInt, byte(0)
	// Candidates come simplest first and only a strictly smaller one
	// replaces the best, so ties go to the simpler encoding.
	consider := func(desc byte, plain, runs int) {
		if plain < best {
			best, bestDesc = plain, desc
		}
		if runs+runCost < best {
			best, bestDesc = runs+runCost, desc|descRuns
		}
	}

	finite, f32 := true, true
	for _, v := range runVals {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			finite = false
		}
		if math.Float64bits(float64(float32(v))) != math.Float64bits(v) {
			f32 = false
		}
	}
	f32 = f32 && finite
	if finite {
		for _, form := range []uint8{formDec64, formDec32} {
			if form == formDec32 && !f32 {
				continue
			}
			k, ok := decimalScale(runVals, form)
			if !ok {
				continue
			}
			plain := decimalCost(values, form, k)
			runs := decimalCost(runVals, form, k)
			consider(form<<4|byte(k), plain, runs)
		}
	}
	if f32 {
		consider(formF32<<4, 4*len(values), 4*len(runVals))
	}
	consider(formXOR<<4, (xorBits(values)+7)/8, (xorBits(runVals)+7)/8)

	c.desc = bestDesc
	src := values
	c.runLens = nil
	if bestDesc&descRuns != 0 {
		src = slices.Clone(runVals)
		c.runLens = slices.Clone(runLens)
	}
	c.vals = src
	c.mant = nil
	if form := bestDesc >> 4 & 3; form == formDec64 || form == formDec32 {
		k := int(bestDesc & 0xf)
		c.mant = make([]int64, len(src))
		for i, v := range src {
			c.mant[i], _ = decimal(v, form, k)
		}
	}
}

type planScratch struct {
	runVals []float64
	runLens []int
}

// decimalScale finds the smallest scale at which every value is an exact
// decimal in form. A value exact at scale k is exact at every larger
// scale (same rational, same correctly rounded division), so the search
// only moves up.
func decimalScale(values []float64, form uint8) (int, bool) {
	k := 0
	for _, v := range values {
		for {
			if _, ok := decimal(v, form, k); ok {
				break
			}
			if k++; k > maxScale {
				return 0, false
			}
		}
	}
	return k, true
}

func decimalCost(values []float64, form uint8, k int) int {
	n, prev := 0, int64(0)
	for _, v := range values {
		m, _ := decimal(v, form, k)
		n += uvarintLen(zigzag(m - prev))
		prev = m
	}
	return n
}

// appendValues writes c's value stream.
func appendValues(out []byte, c *column) []byte {
	switch c.desc >> 4 & 3 {
	case formDec64, formDec32:
		prev := int64(0)
		for _, m := range c.mant {
			out = appendVarint(out, m-prev)
			prev = m
		}
	case formF32:
		for _, v := range c.vals {
			out = binary.BigEndian.AppendUint32(out, math.Float32bits(float32(v)))
		}
	case formXOR:
		w := bitWriter{out: out}
		xorEncode(&w, c.vals)
		out = w.flush()
	}
	return out
}

// The XOR form, after Gorilla (Pelkonen et al., VLDB 2015), with a 6-bit
// leading-zero count so no value is ever approximated:
//
//	first value: 64 bits
//	then x = bits ^ previous bits:
//	  x == 0                                   '0'
//	  x fits the previous meaningful window    '10' + window bits of x
//	  otherwise                                '11' + 6 bits leading zeros
//	                                           + 6 bits (length-1) + length bits
func xorEncode(w *bitWriter, values []float64) {
	var prev uint64
	lead, trail := uint(0), uint(0)
	haveWindow := false
	for i, v := range values {
		b := math.Float64bits(v)
		if i == 0 {
			w.write(b, 64)
			prev = b
			continue
		}
		x := b ^ prev
		prev = b
		if x == 0 {
			w.write(0, 1)
			continue
		}
		l, t := uint(bits.LeadingZeros64(x)), uint(bits.TrailingZeros64(x))
		if haveWindow && l >= lead && t >= trail {
			w.write(0b10, 2)
			w.write(x>>trail, 64-lead-trail)
			continue
		}
		n := 64 - l - t
		w.write(0b11, 2)
		w.write(uint64(l), 6)
		w.write(uint64(n-1), 6)
		w.write(x>>t, n)
		lead, trail, haveWindow = l, t, true
	}
}

// xorBits is the size xorEncode would produce, in bits.
func xorBits(values []float64) int {
	var prev uint64
	lead, trail := 0, 0
	haveWindow := false
	n := 0
	for i, v := range values {
		b := math.Float64bits(v)
		if i == 0 {
			n += 64
			prev = b
			continue
		}
		x := b ^ prev
		prev = b
		if x == 0 {
			n++
			continue
		}
		l, t := bits.LeadingZeros64(x), bits.TrailingZeros64(x)
		if haveWindow && l >= lead && t >= trail {
			n += 2 + 64 - lead - trail
			continue
		}
		n += 2 + 12 + 64 - l - t
		lead, trail, haveWindow = l, t, true
	}
	return n
}

// xorDecode fills dst from r.
func xorDecode(r *bitReader, dst []float64) error {
	var prev uint64
	lead, trail := uint(0), uint(0)
	haveWindow := false
	for i := range dst {
		if i == 0 {
			b, err := r.read(64)
			if err != nil {
				return err
			}
			prev = b
			dst[i] = math.Float64frombits(b)
			continue
		}
		ctl, err := r.read(1)
		if err != nil {
			return err
		}
		if ctl == 0 {
			dst[i] = math.Float64frombits(prev)
			continue
		}
		if ctl, err = r.read(1); err != nil {
			return err
		}
		if ctl == 0 {
			if !haveWindow {
				return fmt.Errorf("value %d reuses a window before any was set: %w", i, ErrCorrupt)
			}
			x, err := r.read(64 - lead - trail)
			if err != nil {
				return err
			}
			if x == 0 {
				return fmt.Errorf("value %d: empty window: %w", i, ErrCorrupt)
			}
			prev ^= x << trail
			dst[i] = math.Float64frombits(prev)
			continue
		}
		hdr, err := r.read(12)
		if err != nil {
			return err
		}
		l, n := uint(hdr>>6), uint(hdr&63)+1
		if l+n > 64 {
			return fmt.Errorf("value %d: window of %d bits after %d leading zeros: %w", i, n, l, ErrCorrupt)
		}
		x, err := r.read(n)
		if err != nil {
			return err
		}
		if x>>(n-1) != 1 || x&1 != 1 {
			// A window must start and end on a set bit; anything else is
			// not what the encoder writes.
			return fmt.Errorf("value %d: window not trimmed: %w", i, ErrCorrupt)
		}
		lead, trail, haveWindow = l, 64-l-n, true
		prev ^= x << trail
		dst[i] = math.Float64frombits(prev)
	}
	return nil
}
