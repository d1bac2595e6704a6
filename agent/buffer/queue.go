package buffer

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
	bolt "go.etcd.io/bbolt"
)

// Seal takes the oldest pending records (whole records, as many as fit in
// maxSamples; a first record larger than that gives its first maxSamples
// and stays pending with the rest), has seal encode them under the next
// sequence number, and stores the result as a sealed batch, its point
// table (once per distinct table) and the removal of the records, all in
// one transaction: either the batch exists and the records are gone, or
// nothing changed. It returns false if nothing is pending.
//
// Sequence numbers start at 1, increase by one per sealed batch and never
// repeat for the life of the file, not even after a failed seal (which
// consumes none). Damaged pending records are dropped, counted and logged.
func (b *Buffer) Seal(ctx context.Context, maxSamples int, seal Sealer) (Sealed, bool, error) {
	if maxSamples < 1 {
		return Sealed{}, false, fmt.Errorf("sealing a batch: maxSamples is %d, want at least 1", maxSamples)
	}
	if err := ctx.Err(); err != nil {
		return Sealed{}, false, fmt.Errorf("sealing a batch: %w", err)
	}
	if b.isClosed() {
		return Sealed{}, false, fmt.Errorf("sealing a batch: %w", ErrClosed)
	}
	var (
		out     Sealed
		found   bool
		damaged dropInfo
	)
	err := b.update(func(tx *bolt.Tx, c *counters) error {
		pend := tx.Bucket(bPending)
		var (
			keys, bad [][]byte
			samples   []telemetry.Sample
			size      int64
		)
		cur := pend.Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			n, _, herr := recordHeader(v)
			if herr == nil && len(keys) > 0 && len(samples)+n > maxSamples {
				break
			}
			var err error
			before := len(samples)
			if samples, err = decodeRecord(v, samples); err != nil {
				samples = samples[:before]
				b.log.Error("dropping damaged pending record", "path", b.path, "record", fmt.Sprintf("%x", k), "samples", n, "err", err)
				bad = append(bad, bytes.Clone(k)) // deleted after the walk: a cursor may skip after Delete
				c.bytes -= int64(len(k) + len(v))
				c.pendingRecords--
				c.pendingSamples -= uint64(n)
				c.dropped += uint64(n)
				damaged.samples += uint64(n)
				damaged.records++
				continue
			}
			keys = append(keys, bytes.Clone(k))
			size += int64(len(k) + len(v))
			if len(samples) >= maxSamples {
				break
			}
		}
		for _, k := range bad {
			if err := pend.Delete(k); err != nil {
				return err
			}
		}
		if len(keys) == 0 {
			if damaged.records == 0 {
				return errNoop
			}
			refreshOldest(tx, c)
			return nil
		}

		// One record larger than a batch may hold (a trend export is one
		// read) is split: the first maxSamples go into this batch and the
		// rest stays pending under the same key, in this transaction. A
		// batch over the ingest's limits would be refused for good.
		var rest []byte
		if len(keys) == 1 && len(samples) > maxSamples {
			v := pend.Get(keys[0])
			_, at, _ := recordHeader(v)
			var err error
			if rest, err = encodeRecord(samples[maxSamples:], at); err != nil {
				return fmt.Errorf("splitting a pending record of %d samples: %w", len(samples), err)
			}
			size = int64(len(keys[0])+len(v)) - int64(len(keys[0])+len(rest))
			samples = samples[:maxSamples]
		}

		seq := c.nextSeq
		enc, err := seal(seq, samples)
		if err != nil {
			return fmt.Errorf("encoding batch %d of %d samples: %w", seq, len(samples), err)
		}
		if len(enc.Data) == 0 || len(enc.Table) == 0 {
			return fmt.Errorf("encoding batch %d of %d samples: the sealer returned no data or no point table", seq, len(samples))
		}
		sealedAt := b.now().UnixMilli()
		key := u64key(seq)
		val := encodeSealed(sealedHeader{samples: len(samples), sealedAt: sealedAt, hash: enc.TableHash}, enc.Data)
		sb := tx.Bucket(bSealed)
		sb.FillPercent = 1 // sequence keys only grow
		if err := sb.Put(key, val); err != nil {
			return err
		}
		if err := refTable(tx, enc.TableHash, enc.Table, c); err != nil {
			return err
		}
		if rest != nil {
			if err := pend.Put(keys[0], rest); err != nil {
				return err
			}
			keys = keys[:0] // the record stays, shorter
		}
		for _, k := range keys {
			if err := pend.Delete(k); err != nil {
				return err
			}
		}
		c.bytes += int64(len(key)+len(val)) - size
		c.pendingRecords -= uint64(len(keys))
		c.pendingSamples -= uint64(len(samples))
		c.sealedBatches++
		c.sealedSamples += uint64(len(samples))
		c.nextSeq++
		refreshOldest(tx, c)
		out = Sealed{Seq: seq, Data: enc.Data, TableHash: enc.TableHash, Samples: len(samples), SealedAt: msTime(sealedAt)}
		found = true
		return nil
	})
	if err != nil {
		return Sealed{}, false, fmt.Errorf("sealing a batch in buffer %s: %w", b.path, err)
	}
	if damaged.records > 0 {
		damaged.log(b, slog.LevelWarn, "dropped damaged pending records")
	}
	return out, found, nil
}

// Next returns the oldest sealed batch with a sequence number above after,
// or false if there is none. Next(0) returns the oldest; the uplink passes
// the last sequence it has in flight to pipeline several batches.
func (b *Buffer) Next(after uint64) (Sealed, bool, error) {
	if after == math.MaxUint64 {
		return Sealed{}, false, nil
	}
	if b.isClosed() {
		return Sealed{}, false, fmt.Errorf("reading the next batch: %w", ErrClosed)
	}
	var (
		out   Sealed
		found bool
	)
	err := b.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bSealed).Cursor().Seek(u64key(after + 1))
		if k == nil {
			return nil
		}
		seq := binary.BigEndian.Uint64(k)
		h, data, err := decodeSealed(v)
		if err != nil {
			return fmt.Errorf("batch %d: %w", seq, err)
		}
		out = Sealed{Seq: seq, Data: bytes.Clone(data), TableHash: h.hash, Samples: h.samples, SealedAt: msTime(h.sealedAt)}
		found = true
		return nil
	})
	if err != nil {
		return Sealed{}, false, fmt.Errorf("reading the next batch after %d from buffer %s: %w", after, b.path, err)
	}
	return out, found, nil
}

// Table returns the encoded point table with hash h. It fails with an
// error wrapping batch.ErrUnknownTable if no stored batch references it.
func (b *Buffer) Table(h batch.TableHash) ([]byte, error) {
	if b.isClosed() {
		return nil, fmt.Errorf("reading point table %x: %w", h[:], ErrClosed)
	}
	var out []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		out = bytes.Clone(tx.Bucket(bTables).Get(h[:]))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading point table %x from buffer %s: %w", h[:], b.path, err)
	}
	if out == nil {
		return nil, fmt.Errorf("reading point table %x from buffer %s: %w", h[:], b.path, batch.ErrUnknownTable)
	}
	return out, nil
}

// Ack deletes the sealed batch seq, which the ingest has stored, and any
// point table no remaining batch references. Acknowledging a batch that is
// not there (already acknowledged or rejected) does nothing, so retries are
// safe; acknowledging one the cap dropped while the uplink was sending it
// takes its samples back off the dropped count, since they arrived.
func (b *Buffer) Ack(seq uint64) error {
	if b.isClosed() {
		return fmt.Errorf("acknowledging batch %d: %w", seq, ErrClosed)
	}
	err := b.update(func(tx *bolt.Tx, c *counters) error {
		key := u64key(seq)
		v := tx.Bucket(bSealed).Get(key)
		if v == nil {
			if ds := tx.Bucket(bDroppedSeqs); ds != nil {
				if n := ds.Get(key); len(n) == 8 {
					c.dropped -= min(c.dropped, binary.BigEndian.Uint64(n))
					return ds.Delete(key)
				}
			}
			return errNoop
		}
		h, _, err := decodeSealed(v)
		if err != nil {
			b.log.Error("acknowledged a damaged sealed batch", "path", b.path, "batch_seq", seq, "err", err)
		}
		if err := b.deleteBatch(tx, bSealed, key, h.hash, int64(len(key)+len(v)), c); err != nil {
			return err
		}
		c.sealedBatches--
		c.sealedSamples -= uint64(h.samples)
		return nil
	})
	if err != nil {
		return fmt.Errorf("acknowledging batch %d in buffer %s: %w", seq, b.path, err)
	}
	return nil
}

// Reject moves the sealed batch seq, which the ingest refused for good
// (for example a 409: different bytes under the same name), to the rejected
// bucket, where it is kept for inspection until the cap needs the space. It
// is counted in Stats.RejectedBatches and logged, and no longer blocks the
// queue. Rejecting a batch that is not there does nothing.
func (b *Buffer) Reject(seq uint64, reason string) error {
	if b.isClosed() {
		return fmt.Errorf("rejecting batch %d: %w", seq, ErrClosed)
	}
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	var samples int
	err := b.update(func(tx *bolt.Tx, c *counters) error {
		key := u64key(seq)
		v := tx.Bucket(bSealed).Get(key)
		if v == nil {
			return errNoop
		}
		h, data, err := decodeSealed(v)
		if err != nil {
			return fmt.Errorf("batch %d: %w", seq, err)
		}
		h.rejectedAt = b.now().UnixMilli()
		h.reason = reason
		rv := encodeRejected(h, data)
		oldSize := int64(len(key) + len(v))
		if err := tx.Bucket(bRejected).Put(key, rv); err != nil {
			return err
		}
		// The table reference moves with the batch, so it stays decodable.
		if err := tx.Bucket(bSealed).Delete(key); err != nil {
			return err
		}
		c.bytes += int64(len(key)+len(rv)) - oldSize
		c.sealedBatches--
		c.sealedSamples -= uint64(h.samples)
		c.rejected++
		samples = h.samples
		return nil
	})
	if err != nil {
		return fmt.Errorf("rejecting batch %d in buffer %s: %w", seq, b.path, err)
	}
	if samples > 0 {
		b.log.Error("ingest rejected batch; kept in the buffer's rejected bucket and not retried",
			"path", b.path, "batch_seq", seq, "samples", samples, "reason", reason)
	}
	return nil
}

// refTable stores table under h unless present and counts one more
// reference to it.
func refTable(tx *bolt.Tx, h batch.TableHash, table []byte, c *counters) error {
	tables, refs := tx.Bucket(bTables), tx.Bucket(bRefs)
	n := getU64(refs, h[:])
	if n == 0 {
		if err := tables.Put(h[:], table); err != nil {
			return err
		}
		c.bytes += int64(len(h) + len(table))
		c.bytes += int64(len(h) + 8) // the refs entry created below
	} else if existing := tables.Get(h[:]); existing != nil && !bytes.Equal(existing, table) {
		return fmt.Errorf("point table %x: a different table is stored under the same hash", h[:])
	}
	return refs.Put(h[:], u64key(n+1))
}

// unrefTable drops one reference to table h and deletes the table with its
// last reference.
func unrefTable(tx *bolt.Tx, h batch.TableHash, c *counters) error {
	tables, refs := tx.Bucket(bTables), tx.Bucket(bRefs)
	n := getU64(refs, h[:])
	switch {
	case n > 1:
		return refs.Put(h[:], u64key(n-1))
	case n == 1:
		if err := refs.Delete(h[:]); err != nil {
			return err
		}
		c.bytes -= int64(len(h) + 8)
	}
	if t := tables.Get(h[:]); t != nil {
		size := int64(len(h) + len(t))
		if err := tables.Delete(h[:]); err != nil {
			return err
		}
		c.bytes -= size
	}
	return nil
}

// msTime converts Unix ms to a time.Time.
func msTime(ms int64) time.Time { return time.UnixMilli(ms) }
