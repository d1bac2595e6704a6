package buffer

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
	bolt "go.etcd.io/bbolt"
)

// appendReq is one Append call waiting for the committer.
type appendReq struct {
	rec  []byte
	n    int
	at   int64
	mark []byte // nil unless AppendOnce
	dup  bool   // set by the committer: mark was held already, rec not stored
	// stateKey and state, when stateKey is set, are stored with the record
	// (AppendState).
	stateKey string
	state    []byte
	// err is the request's answer, set by the committer: requests in one
	// group may be answered differently (see commitFull).
	err  error
	done chan error
}

// need is what storing r takes at least: its record, mark and state, and
// the record's key.
func (r *appendReq) need() int64 {
	return int64(len(r.rec) + len(r.mark) + len(r.state) + 8)
}

// groupNeed is the sum of the requests' needs.
func groupNeed(group []*appendReq) int64 {
	var n int64
	for _, r := range group {
		n += r.need()
	}
	return n
}

// answer sets err as the answer of every request in group.
func answer(group []*appendReq, err error) {
	for _, r := range group {
		r.err = err
	}
}

// Append stores samples as one pending record. When it returns nil the
// samples are on disk (unless Options.NoSync) and will be sealed, sent and
// acknowledged, or counted as dropped by the cap or a full disk. On a full
// disk Append drops the oldest data to store these samples; it fails with
// the file system's error (ENOSPC, EDQUOT) only when nothing is left to
// drop, or at once, dropping nothing, when the samples need more than
// dropping everything could free. Concurrent calls are committed
// together, with one fsync per commit; a call refused on a full disk
// fails alone, and the others of its commit are stored without it.
//
// Once the samples are handed to the committer, Append waits for the commit
// even if ctx is cancelled, so that a nil error always means stored and an
// error (almost always) means not stored.
func (b *Buffer) Append(ctx context.Context, samples []telemetry.Sample) error {
	_, err := b.appendMarked(ctx, nil, "", nil, samples)
	return err
}

// AppendOnce is Append for data read from a source the reader consumes
// afterwards (a trend file moved aside once buffered): mark names the data,
// and is stored in the same transaction as the samples. If the buffer holds
// mark already — the data was buffered, then the agent died before its
// source was consumed, and the source was read again — nothing is stored
// and dup is true, so the caller consumes the source without the samples
// being sent twice. The last maxMarks marks are kept, far more than the
// reads that can be in that window.
func (b *Buffer) AppendOnce(ctx context.Context, mark []byte, samples []telemetry.Sample) (dup bool, err error) {
	if len(mark) == 0 {
		return false, fmt.Errorf("appending %d samples to buffer: empty mark (use Append for data without one)", len(samples))
	}
	return b.appendMarked(ctx, mark, "", nil, samples)
}

// AppendState is Append that also stores state under key in the same
// transaction as the samples: a reader's place in its source (how far each
// trend log has been read), which State returns after a crash, consistent
// with the samples the buffer holds. There is one state per key, replaced
// each time; it is not bounded here, since refusing it would refuse the
// samples too (a driver's checkpoint must stay small).
func (b *Buffer) AppendState(ctx context.Context, key string, state []byte, samples []telemetry.Sample) error {
	if key == "" || state == nil {
		return fmt.Errorf("appending %d samples to buffer: a state needs a key and a value (use Append for samples alone)", len(samples))
	}
	_, err := b.appendMarked(ctx, nil, key, state, samples)
	return err
}

// State returns the state last stored under key with AppendState.
func (b *Buffer) State(key string) ([]byte, bool, error) {
	var out []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		if sb := tx.Bucket(bStates); sb != nil {
			if v := sb.Get([]byte(key)); v != nil {
				out = bytes.Clone(v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("reading state %q from buffer %s: %w", key, b.path, err)
	}
	return out, out != nil, nil
}

func (b *Buffer) appendMarked(ctx context.Context, mark []byte, stateKey string, state []byte, samples []telemetry.Sample) (bool, error) {
	if len(samples) == 0 {
		return false, nil
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("appending %d samples to buffer: %w", len(samples), err)
	}
	req, err := b.newRequest(mark, stateKey, state, samples) // outside any lock: callers encode in parallel
	if err != nil {
		return false, err
	}
	b.closeMu.RLock()
	if b.closed {
		b.closeMu.RUnlock()
		return false, fmt.Errorf("appending %d samples to buffer: %w", len(samples), ErrClosed)
	}
	select {
	case b.reqs <- req:
	case <-ctx.Done():
		b.closeMu.RUnlock()
		return false, fmt.Errorf("appending %d samples to buffer: %w", len(samples), ctx.Err())
	}
	b.closeMu.RUnlock()
	if err := <-req.done; err != nil {
		return false, fmt.Errorf("appending %d samples to buffer %s: %w", len(samples), b.path, err)
	}
	return req.dup, nil
}

// newRequest encodes samples as a record and makes the request that hands
// it to the committer, refusing a record larger than the whole cap.
func (b *Buffer) newRequest(mark []byte, stateKey string, state []byte, samples []telemetry.Sample) (*appendReq, error) {
	at := b.now().UnixMilli()
	rec, err := encodeRecord(samples, at)
	if err != nil {
		return nil, fmt.Errorf("appending %d samples to buffer: %w", len(samples), err)
	}
	if size := int64(len(rec) + 8); size > b.max {
		return nil, fmt.Errorf("appending %d samples to buffer: %w (%d bytes, cap %d): raise the buffer cap or poll fewer points on this device",
			len(samples), ErrTooLarge, size, b.max)
	}
	return &appendReq{rec: rec, n: len(samples), at: at, mark: mark, stateKey: stateKey, state: state, done: make(chan error, 1)}, nil
}

// commitLoop is the group committer. It takes the first waiting append,
// gathers every other append queued behind it (they piled up while the
// previous commit was fsyncing), commits them in one transaction and
// answers them all. Under load the group grows by itself; alone, an append
// is committed at once, with no batching delay.
//
// One refinement keeps groups large: the appenders answered by a commit
// need a moment to come back with their next samples, and a committer that
// took only the first of them would alternate small and large groups. So
// while the group is smaller than the previous one, it waits a little (a
// quarter of the previous commit's duration, at most maxLinger) for the
// rest. A commit is mostly fsync, so the wait costs little latency and
// saves whole commits.
func (b *Buffer) commitLoop() {
	defer b.wg.Done()
	group := make([]*appendReq, 0, maxGroup)
	lastSize, lastDur := 0, time.Duration(0)
	for first := range b.reqs {
		group = append(group[:0], first)
		open := b.gather(&group, lastSize, min(lastDur/4, maxLinger))
		start := time.Now()
		b.commitAppends(group)
		lastSize, lastDur = len(group), time.Since(start)
		for _, r := range group {
			r.done <- r.err
		}
		clear(group) // drop references to the records
		if !open {
			return
		}
	}
}

// gather adds queued appends to group: all that are waiting, and, while the
// group is smaller than want, those arriving within linger. It reports
// false if the channel was closed.
func (b *Buffer) gather(group *[]*appendReq, want int, linger time.Duration) bool {
	for len(*group) < maxGroup {
		select {
		case r, ok := <-b.reqs:
			if !ok {
				return false
			}
			*group = append(*group, r)
			continue
		default:
		}
		break
	}
	if len(*group) >= want || linger <= 0 {
		return true
	}
	timer := time.NewTimer(linger)
	defer timer.Stop()
	for len(*group) < want && len(*group) < maxGroup {
		select {
		case r, ok := <-b.reqs:
			if !ok {
				return false
			}
			*group = append(*group, r)
		case <-timer.C:
			return true
		}
	}
	return true
}

// commitAppends stores a group of records in one transaction and applies
// the cap, and sets each request's answer (err). When the file system is
// full (or the quota used up), it drops the oldest data to make room and
// commits again, so that the newest read is kept, as the cap would keep it.
func (b *Buffer) commitAppends(group []*appendReq) {
	// Before the commit, so the reserve, when there is room for it again,
	// is made before the data takes that room.
	b.restoreReserve()
	var dropped dropInfo
	err := b.commitGroup(group, &dropped)
	if isNoSpace(err) {
		b.commitFull(group, err)
		return
	}
	if err == nil {
		b.logDropped(dropped)
	}
	answer(group, err)
}

// commitGroup stores group in one transaction and applies the cap,
// setting *dropped to what the cap dropped for it.
func (b *Buffer) commitGroup(group []*appendReq, dropped *dropInfo) error {
	return b.update(func(tx *bolt.Tx, c *counters) error {
		var err error
		*dropped, err = b.putGroup(tx, c, group)
		return err
	})
}

// logDropped logs what a successful commit's cap dropped.
func (b *Buffer) logDropped(d dropInfo) {
	// Under the disk cap every append drops: the change into that state
	// was logged once (diskFull), so this is only detail.
	level := slog.LevelWarn
	if b.reserve.diskCap > 0 {
		level = slog.LevelDebug
	}
	d.log(b, level, "buffer full: dropped oldest data")
}

// commitFull handles a group whose commit failed with cause, a full file
// system. The group holds reads of different devices that only happened
// to arrive together, so each is answered on its own merits:
//
//   - A read that needs more than dropping everything could ever give it
//     (see roomCeiling; a read larger than the disk) is refused at once,
//     with nothing dropped for it: the doubling of makeRoom would otherwise
//     wipe the whole backlog and refuse it all the same. Only that read
//     fails; the others are committed without it.
//   - The rest are committed in consecutive parts that each fit the
//     ceiling (in one part, unless reads that each fit exceed it
//     together), each part dropping the oldest data as it needs, so that
//     small reads are never refused for the company they arrived in.
//
// Where the file system cannot say how much it could free, the group is
// committed whole, as makeRoom can.
func (b *Buffer) commitFull(group []*appendReq, cause error) {
	ceiling, ok := b.roomCeiling()
	if !ok {
		b.commitRoom(group, cause)
		return
	}
	parts := b.splitGroup(group, ceiling, cause)
	for _, part := range parts {
		err := cause
		if len(parts) > 1 || len(part) < len(group) {
			// The commit that failed held other reads: this part alone
			// may fit without dropping anything.
			var dropped dropInfo
			if err = b.commitGroup(part, &dropped); err == nil {
				b.logDropped(dropped)
				answer(part, nil)
				continue
			}
			if !isNoSpace(err) {
				answer(part, err)
				continue
			}
		}
		b.commitRoom(part, err)
	}
}

// commitRoom commits group, whose commit failed with cause (a full file
// system), by dropping the oldest data for it (makeRoom), and answers it.
func (b *Buffer) commitRoom(group []*appendReq, cause error) {
	var dropped dropInfo
	err := b.makeRoom(cause, groupNeed(group), func() error { return b.commitGroup(group, &dropped) })
	if err == nil {
		b.logDropped(dropped)
	}
	answer(group, err)
}

// splitGroup refuses (answers with an error wrapping cause) each request
// of group that alone, with the commit's slack, needs more than ceiling,
// and returns the others in order, in consecutive parts that each need no
// more than ceiling.
func (b *Buffer) splitGroup(group []*appendReq, ceiling int64, cause error) [][]*appendReq {
	var parts [][]*appendReq
	var part []*appendReq
	var partNeed int64
	for _, r := range group {
		need := r.need()
		// With roomSlack: the commit needs its branch pages and freelist
		// too, and a read that fits only without them would still empty
		// the buffer.
		if need+roomSlack > ceiling {
			b.log.Warn("buffer's file system full and a read larger than all the space the buffer could free: refused it, dropped nothing for it",
				"path", b.path, "samples", r.n, "need_bytes", need, "ceiling_bytes", ceiling, "group_reads", len(group))
			r.err = fmt.Errorf("%w (this read of %d samples needs %d bytes, more than the %d the buffer could have by dropping everything it holds; nothing dropped for it): free space on the buffer's file system, give the buffer its own, or poll fewer points on this device",
				cause, r.n, need, ceiling)
			continue
		}
		if len(part) > 0 && partNeed+need+roomSlack > ceiling {
			parts = append(parts, part)
			part, partNeed = nil, 0
		}
		part = append(part, r)
		partNeed += need
	}
	if len(part) > 0 {
		parts = append(parts, part)
	}
	return parts
}

// putGroup stores a group of records in tx and applies the cap.
func (b *Buffer) putGroup(tx *bolt.Tx, c *counters, group []*appendReq) (dropInfo, error) {
	pend := tx.Bucket(bPending)
	pend.FillPercent = 1 // keys only ever grow: pack pages full
	for _, r := range group {
		r.dup = false // a retried transaction starts over
		if r.mark != nil {
			dup, err := putMark(tx, r.mark, c.nextRec)
			if err != nil {
				return dropInfo{}, err
			}
			if r.dup = dup; dup {
				continue
			}
		}
		if r.stateKey != "" {
			sb, err := tx.CreateBucketIfNotExists(bStates)
			if err != nil {
				return dropInfo{}, err
			}
			if err := sb.Put([]byte(r.stateKey), r.state); err != nil {
				return dropInfo{}, err
			}
		}
		key := u64key(c.nextRec)
		if err := pend.Put(key, r.rec); err != nil {
			return dropInfo{}, err
		}
		c.nextRec++
		if c.pendingRecords == 0 {
			c.oldestPending = r.at
		}
		c.pendingRecords++
		c.pendingSamples += uint64(r.n)
		c.bytes += int64(len(key) + len(r.rec))
	}
	return b.enforceCap(tx, c)
}

// roomSlack is added to what a commit that failed for lack of space needs:
// bbolt also rewrites the branch pages above the new records and the
// freelist, so freeing only the records' own bytes would rarely be enough.
const roomSlack = 64 << 10

// makeRoom handles a commit that failed with cause, a full file system:
// it drops the oldest data (in the cap's order, counted as the cap counts
// it) in a transaction of its own, which frees the pages the retried
// commit then reuses, and calls retry. A drop that itself finds no room
// releases the disk-full reserve and is tried again. Each round that still
// finds no room drops twice as much; it gives up, wrapping cause, when
// nothing is left to drop or dropping fails too. need is what the commit
// needs; commitFull keeps reads that could never fit away from here.
func (b *Buffer) makeRoom(cause error, need int64, retry func() error) error {
	target := 2*need + roomSlack
	for {
		var d dropInfo
		err := b.update(func(tx *bolt.Tx, c *counters) error {
			start := c.bytes
			var err error
			d, err = b.dropOldest(tx, c, func(c *counters) bool { return start-c.bytes >= target })
			if err == nil && d.empty() {
				return errNoop
			}
			return err
		})
		if isNoSpace(err) && b.releaseReserve() {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w (dropping the oldest data to make room failed too: %v): free space on the buffer's file system", cause, err)
		}
		if d.empty() {
			return fmt.Errorf("%w (the buffer holds nothing more it could drop): free space on the buffer's file system or give the buffer its own", cause)
		}
		d.log(b, slog.LevelWarn, "buffer's file system full: dropped oldest data to keep the newest")
		if err = retry(); !isNoSpace(err) {
			if err == nil {
				b.diskFull(b.Stats().Bytes)
			}
			return err
		}
		cause = err
		target *= 2
	}
}

// roomCeiling is an upper bound on the space a commit could have if the
// buffer dropped everything: the blocks its file holds on disk (live data,
// free pages, bbolt's own), those of the reserve if it is there, and what
// the file system has free. ok is false when the file system cannot say.
func (b *Buffer) roomCeiling() (ceiling int64, ok bool) {
	held, ok := allocated(b.path)
	if !ok {
		return 0, false
	}
	free, ok := fsFree(b.path)
	if !ok {
		return 0, false
	}
	reserve, _ := allocated(b.reserve.path) // none once released
	return held + reserve + free, true
}

// isNoSpace reports whether err means the buffer's file system is full or
// its owner's quota used up. bbolt passes a failed page write on as it is,
// but turns a failed resize of the file into text, so the text counts too.
func isNoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, syscall.ENOSPC.Error()) || strings.Contains(msg, syscall.EDQUOT.Error())
}

// CountDropped adds to DroppedSamples samples that were read but not
// stored because Append failed and the caller gave up on them (the file
// system full with nothing left to drop, say), so that the buffer's count,
// which survives restarts and goes upstream in every batch header, covers
// every sample lost on the agent. The count is written before CountDropped
// returns nil; on an error nothing was counted, and the caller must report
// the samples itself.
func (b *Buffer) CountDropped(ctx context.Context, samples int) error {
	if samples <= 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("counting %d dropped samples in buffer %s: %w", samples, b.path, err)
	}
	if b.isClosed() {
		return fmt.Errorf("counting %d dropped samples in buffer %s: %w", samples, b.path, ErrClosed)
	}
	err := b.update(func(_ *bolt.Tx, c *counters) error {
		c.dropped += uint64(samples)
		return nil
	})
	if err != nil {
		return fmt.Errorf("counting %d dropped samples in buffer %s: %w", samples, b.path, err)
	}
	b.log.Warn("counted samples dropped after the buffer refused them", "path", b.path, "dropped_samples", samples, "total_dropped_samples", b.Stats().DroppedSamples)
	return nil
}

// maxMarks bounds the marks of AppendOnce kept. A mark is needed only
// between the append and the consuming of its source (one poll, or one
// restart after a crash), so this is far more than enough.
const maxMarks = 4096

// markCheck is how often (in records) putMark counts the marks.
const markCheck = 64

// putMark records mark with the number of the record it comes with and
// reports whether it was there already. Past maxMarks it forgets the
// oldest half: record numbers only grow, so they order marks by age.
// Counting walks the bucket, so it is not done at every mark.
func putMark(tx *bolt.Tx, mark []byte, rec uint64) (dup bool, err error) {
	mb, err := tx.CreateBucketIfNotExists(bMarks)
	if err != nil {
		return false, err
	}
	if mb.Get(mark) != nil {
		return true, nil
	}
	if err := mb.Put(mark, u64key(rec)); err != nil {
		return false, err
	}
	// Every markCheck marks only (the bucket's own sequence counts them;
	// record numbers also advance for unmarked appends): the bucket holds
	// at most maxMarks+markCheck marks.
	n, err := mb.NextSequence()
	if err != nil {
		return false, err
	}
	if n%markCheck == 0 {
		if n := mb.Stats().KeyN; n > maxMarks {
			return false, forgetOldestMarks(mb, n-maxMarks/2)
		}
	}
	return false, nil
}

// forgetOldestMarks deletes the n oldest marks.
func forgetOldestMarks(mb *bolt.Bucket, n int) error {
	type entry struct {
		key []byte
		rec uint64
	}
	var all []entry
	err := mb.ForEach(func(k, v []byte) error {
		var rec uint64
		if len(v) == 8 {
			rec = binary.BigEndian.Uint64(v)
		}
		all = append(all, entry{bytes.Clone(k), rec})
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortFunc(all, func(a, b entry) int { return cmp.Compare(a.rec, b.rec) })
	for _, e := range all[:min(n, len(all))] {
		if err := mb.Delete(e.key); err != nil {
			return err
		}
	}
	return nil
}

// dropInfo tallies what one enforceCap call dropped, for the log.
type dropInfo struct {
	samples                   uint64
	sealed, records, rejected int
}

// empty reports whether nothing was dropped.
func (d dropInfo) empty() bool {
	return d.samples == 0 && d.rejected == 0 && d.records == 0 && d.sealed == 0
}

func (d dropInfo) log(b *Buffer, level slog.Level, msg string) {
	if d.empty() {
		return
	}
	b.log.Log(context.Background(), level, msg,
		"path", b.path, "max_bytes", b.max, "dropped_samples", d.samples,
		"sealed_batches", d.sealed, "pending_records", d.records, "rejected_batches", d.rejected,
		"total_dropped_samples", b.Stats().DroppedSamples)
}

// enforceCap deletes the oldest data until the live data fits the cap, or
// the disk cap while the disk is full (see reserve.go).
func (b *Buffer) enforceCap(tx *bolt.Tx, c *counters) (dropInfo, error) {
	limit := b.max
	if dc := b.reserve.diskCap; dc > 0 {
		limit = min(limit, dc)
	}
	return b.dropOldest(tx, c, func(c *counters) bool { return c.bytes <= limit })
}

// dropOldest deletes the oldest data until enough reports true or nothing
// is left: rejected batches first (kept only for inspection, already
// counted as rejected), then sealed batches by sequence, then pending
// records. Every dropped sample is counted in c.dropped.
func (b *Buffer) dropOldest(tx *bolt.Tx, c *counters, enough func(*counters) bool) (dropInfo, error) {
	var d dropInfo
	pendingTouched := false
	for !enough(c) {
		if k, v := tx.Bucket(bRejected).Cursor().First(); k != nil {
			h, _, _ := decodeRejected(v)
			if err := b.deleteBatch(tx, bRejected, k, h.hash, int64(len(k)+len(v)), c); err != nil {
				return d, err
			}
			d.rejected++
			continue
		}
		if k, v := tx.Bucket(bSealed).Cursor().First(); k != nil {
			h, _, err := decodeSealed(v)
			if err != nil {
				b.log.Error("dropping damaged sealed batch", "path", b.path, "batch_seq", fmt.Sprintf("%x", k), "err", err)
			}
			if err := b.deleteBatch(tx, bSealed, k, h.hash, int64(len(k)+len(v)), c); err != nil {
				return d, err
			}
			c.sealedBatches--
			c.sealedSamples -= uint64(h.samples)
			c.dropped += uint64(h.samples)
			d.samples += uint64(h.samples)
			d.sealed++
			if err := rememberDropped(tx, k, h.samples); err != nil {
				return d, err
			}
			continue
		}
		if k, v := tx.Bucket(bPending).Cursor().First(); k != nil {
			n, _, _ := recordHeader(v)
			size := int64(len(k) + len(v))
			if err := tx.Bucket(bPending).Delete(k); err != nil {
				return d, err
			}
			c.bytes -= size
			c.pendingRecords--
			c.pendingSamples -= uint64(n)
			c.dropped += uint64(n)
			d.samples += uint64(n)
			d.records++
			pendingTouched = true
			continue
		}
		break // nothing left to drop (for the cap this cannot happen: a record fits it)
	}
	if pendingTouched {
		refreshOldest(tx, c)
	}
	return d, nil
}

// deleteBatch deletes a sealed or rejected batch and releases its table.
func (b *Buffer) deleteBatch(tx *bolt.Tx, bucket, key []byte, h batch.TableHash, size int64, c *counters) error {
	if err := tx.Bucket(bucket).Delete(key); err != nil {
		return err
	}
	c.bytes -= size
	return unrefTable(tx, h, c)
}

// refreshOldest sets c.oldestPending from the first pending record after
// records were removed.
func refreshOldest(tx *bolt.Tx, c *counters) {
	if c.pendingRecords == 0 {
		c.oldestPending = 0
		return
	}
	if k, v := tx.Bucket(bPending).Cursor().First(); k != nil {
		_, at, _ := recordHeader(v)
		c.oldestPending = at
	}
}

// maxDroppedSeqs bounds the dropped batches remembered: far more than the
// uplink ever holds in flight.
const maxDroppedSeqs = 1024

// rememberDropped records that the sealed batch key, of samples samples,
// was dropped, forgetting the oldest such record past maxDroppedSeqs.
func rememberDropped(tx *bolt.Tx, key []byte, samples int) error {
	ds, err := tx.CreateBucketIfNotExists(bDroppedSeqs)
	if err != nil {
		return err
	}
	if err := ds.Put(key, u64key(uint64(samples))); err != nil {
		return err
	}
	if ds.Stats().KeyN > maxDroppedSeqs {
		if k, _ := ds.Cursor().First(); k != nil {
			return ds.Delete(k)
		}
	}
	return nil
}
