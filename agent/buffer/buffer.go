// Package buffer is the agent's store-and-forward queue: a bbolt file that
// holds samples from the moment a poll worker hands them over until the
// ingest has acknowledged the batch that carries them.
//
// Samples arrive with Append, which returns only once they are on disk;
// concurrent appends share one transaction and one fsync (group commit).
// Seal turns the oldest pending samples into a sealed, encoded batch under
// the next sequence number; the uplink reads sealed batches with Next and
// Table, and removes them with Ack (stored) or Reject (refused for good).
// A size cap drops the oldest data first and counts every dropped sample;
// a full file system drops the same way, so the newest read is kept.
//
// See README.md for the file layout and the durability argument.
package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Options configure a Buffer. The zero value is a buffer capped at 1 GiB
// that fsyncs every commit and logs nothing.
type Options struct {
	// MaxBytes caps the buffer's live data (keys and values of everything
	// stored). Past it, Append drops the oldest data first: rejected
	// batches (already counted as rejected), then sealed batches, oldest
	// sequence first, then the oldest pending records; every dropped
	// sample is added to the persisted DroppedSamples counter. The file
	// itself is larger than its live data by bbolt's page overhead and
	// free pages. Zero means 1 GiB.
	MaxBytes int64
	// Logger receives drops, rejections and damaged records. Nil discards.
	Logger *slog.Logger
	// NoSync skips fsync: a crash of the machine (not only of the agent)
	// may then lose acknowledged samples. For tests and benchmarks only.
	NoSync bool
	// LockTimeout is how long Open waits for another process to release
	// the file. Zero means 2 seconds.
	LockTimeout time.Duration
	// FirstSeq is the sequence number of the first batch of a new file
	// (an existing file goes on from its own). Zero means 1. The ingest
	// names and deduplicates batches by agent and sequence number, so a
	// buffer that replaces a lost or damaged one must not number from 1
	// again: its batches would collide with ones the ingest already holds
	// and be refused. The agent passes the time in milliseconds, which
	// grows faster than any buffer seals batches.
	FirstSeq uint64
	// ReserveBytes is the size of the disk-full reserve, a file beside
	// the buffer (its path with ".reserve" added) that the buffer deletes
	// when its file system is full and even dropping the oldest data
	// fails for lack of space (bbolt needs free pages to delete), and
	// makes again once there is room. Zero means 1 MiB; negative means no
	// reserve. A buffer opened on a file system with less room than the
	// reserve does not grow its file (it drops its oldest data to stay
	// within it, as on a full disk) until the reserve can be made. With
	// NoSync the reserve is not fsynced either.
	ReserveBytes int64
}

const (
	defaultMaxBytes    = 1 << 30
	defaultLockTimeout = 2 * time.Second
	// maxGroup bounds how many Append calls share one commit, so one
	// transaction stays a reasonable size however many workers wait.
	maxGroup = 1024
	// maxLinger bounds how long the committer waits for a group to fill.
	maxLinger = 2 * time.Millisecond
	// maxReason bounds the stored rejection reason.
	maxReason = 1024
)

// Errors the buffer returns; check with errors.Is.
var (
	// ErrLocked means another process (usually another agent) has the
	// buffer file open.
	ErrLocked = errors.New("buffer file in use by another process")
	// ErrCorrupt means the buffer file is damaged or not a buffer.
	ErrCorrupt = errors.New("buffer file damaged")
	// ErrClosed means the buffer was closed.
	ErrClosed = errors.New("buffer closed")
	// ErrTooLarge means a single Append is larger than the whole cap.
	ErrTooLarge = errors.New("append larger than the buffer cap")
)

// Bucket names; see README.md.
var (
	bMeta     = []byte("meta")
	bPending  = []byte("pending")
	bSealed   = []byte("sealed")
	bTables   = []byte("tables")
	bRefs     = []byte("table_refs")
	bRejected = []byte("rejected")
	// bDroppedSeqs remembers the sample counts of the last sealed batches
	// the cap dropped, made when first needed. A batch the uplink already
	// holds in memory can be dropped and still reach the ingest; its Ack
	// then takes its samples back off the dropped count, which stays exact.
	bDroppedSeqs = []byte("dropped_seqs")
	// bMarks holds the marks of AppendOnce (value: the number of the
	// record stored with the mark, 8 bytes BE), made when first needed.
	bMarks = []byte("marks")
	// bStates holds the states of AppendState by key (a device's name),
	// made when first needed.
	bStates = []byte("states")

	dataBuckets = [][]byte{bPending, bSealed, bTables, bRefs, bRejected}

	kFormat   = []byte("format")
	kNextSeq  = []byte("next_seq")
	kNextRec  = []byte("next_rec")
	kDropped  = []byte("dropped_samples")
	kRejected = []byte("rejected_batches")
)

// fileFormat is the layout version stored under meta/format.
const fileFormat = 1

// Sealer encodes the samples of the batch with sequence number seq. It runs
// inside the buffer's write transaction, so it must not call the Buffer.
type Sealer func(seq uint64, samples []telemetry.Sample) (batch.Encoded, error)

// Sealed is a sealed batch as the uplink sends it.
type Sealed struct {
	Seq       uint64
	Data      []byte // the encoded batch; the caller owns it
	TableHash batch.TableHash
	Samples   int
	SealedAt  time.Time
}

// Stats describe the buffer's contents. They are kept in memory, so Stats
// is cheap enough to call on every batch.
type Stats struct {
	PendingSamples uint64 // appended, not yet sealed
	SealedBatches  uint64 // sealed, not yet acknowledged or rejected
	SealedSamples  uint64
	// DroppedSamples counts samples the cap dropped since the file was
	// created; it survives restarts.
	DroppedSamples uint64
	// RejectedBatches counts batches the ingest refused since the file was
	// created; it survives restarts.
	RejectedBatches uint64
	Bytes           int64  // live data, what MaxBytes caps
	NextSeq         uint64 // the sequence number the next Seal will use
	// OldestPending is when the oldest pending samples were appended; zero
	// if nothing is pending.
	OldestPending time.Time
}

// counters is the in-memory state behind Stats. A write transaction works
// on a copy and publishes it only after the commit succeeded.
type counters struct {
	pendingSamples, pendingRecords uint64
	sealedBatches, sealedSamples   uint64
	dropped, rejected              uint64
	bytes                          int64
	nextSeq, nextRec               uint64
	oldestPending                  int64 // Unix ms; valid if pendingRecords > 0
}

// Buffer is an open buffer file. Its methods are safe for concurrent use.
type Buffer struct {
	db   *bolt.DB
	path string
	log  *slog.Logger
	max  int64
	now  func() time.Time
	// firstSeq numbers the first batch if Open creates the file.
	firstSeq uint64

	// wmu serializes write transactions with the publication of their
	// counters, so a commit can never publish stale counters over a newer
	// one.
	wmu sync.Mutex
	mu  sync.RWMutex // guards c
	c   counters

	reserve reserveState

	closeMu sync.RWMutex // held for reading while handing a request to the committer
	closed  bool
	reqs    chan *appendReq
	wg      sync.WaitGroup
}

// Open opens the buffer file at path, creating it (mode 0600) if needed.
// It fails with an error wrapping ErrLocked if another process holds the
// file for longer than opts.LockTimeout, and with one wrapping ErrCorrupt
// if the file is damaged; both name the file and say what to do.
func Open(path string, opts Options) (*Buffer, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = defaultMaxBytes
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("opening buffer %s: negative MaxBytes %d", path, opts.MaxBytes)
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = defaultLockTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Buffer{path: path, log: log, max: opts.MaxBytes, firstSeq: max(opts.FirstSeq, 1), now: time.Now, reqs: make(chan *appendReq, maxGroup)}
	b.reserve = reserveState{path: path + ".reserve", size: opts.ReserveBytes, every: reserveRetry, noSync: opts.NoSync}
	if b.reserve.size == 0 {
		b.reserve.size = defaultReserve
	}

	db, err := openBolt(path, opts)
	if err != nil {
		return nil, err
	}
	b.db = db
	if err := b.load(); err != nil {
		db.Close()
		return nil, err
	}
	if err := b.ensureReserve(); err != nil {
		// The file system has less room than the reserve: it is full, or
		// as good as. Growing the file would soon end in a full disk with
		// no reserve to release, where even a drop fails; instead the
		// buffer stays within the pages it has (live data takes about
		// half of them at worst) until the reserve can be made.
		b.log.Warn("buffer's file system has no room for the disk-full reserve", "err", err)
		b.diskFull(max(b.c.bytes, b.reserve.highWater/2))
	}
	b.wg.Add(1)
	go b.commitLoop()
	return b, nil
}

// openBolt opens the bbolt file, turning a fault on a damaged or truncated
// file into an error instead of a crash.
func openBolt(path string, opts Options) (db *bolt.DB, err error) {
	var file *os.File
	defer func() {
		if r := recover(); r != nil {
			// bbolt has the file open and locked; closing it releases the lock.
			if file != nil {
				file.Close()
			}
			db, err = nil, corruptErr(path, fmt.Errorf("%v", r))
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout: opts.LockTimeout,
		NoSync:  opts.NoSync,
		// The array freelist allocates first-fit from the lowest free
		// page, so the pages a transaction keeps cluster at the file's
		// start and what a drop frees stays one contiguous run a large
		// record can reuse. The hashmap freelist picks a free span by map
		// order, at random: after a full disk dropped everything, a
		// record of half the file failed about 1 time in 40 because a
		// page kept by the drop landed mid-file (TestDiskFullGroup).
		// Both cost the same here (BenchmarkAppend, BenchmarkDrain).
		FreelistType: bolt.FreelistArrayType,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		},
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("opening buffer %s: %w (is another sightglass-agent running?): stop it, or give this one a different buffer path", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch),
		// bbolt has no sentinel for a file cut short before its meta pages.
		err != nil && strings.Contains(err.Error(), "file size too small"):
		return nil, corruptErr(path, err)
	case err != nil:
		return nil, fmt.Errorf("opening buffer %s: %w", path, err)
	}
	return db, nil
}

func corruptErr(path string, cause error) error {
	return fmt.Errorf("opening buffer %s: %w (%v): stop the agent, move the file aside (keep it for inspection) and start again with an empty buffer; samples in the damaged file are not sent",
		path, ErrCorrupt, cause)
}

// load checks the file's structure, creates the buckets of a new file and
// recomputes the counters from what is stored, so they can never drift
// from the data across restarts.
func (b *Buffer) load() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = corruptErr(b.path, fmt.Errorf("%v", r))
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))

	fi, err := os.Stat(b.path)
	if err != nil {
		return fmt.Errorf("opening buffer %s: %w", b.path, err)
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		if need := tx.Size(); need > fi.Size() {
			return corruptErr(b.path, fmt.Errorf("file is %d bytes but its pages reach %d: truncated", fi.Size(), need))
		}
		b.reserve.highWater = tx.Size()
		meta := tx.Bucket(bMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return corruptErr(b.path, errors.New("a bbolt file, but not a sightglass buffer"))
			}
			return b.create(tx)
		}
		if f := getU64(meta, kFormat); f != fileFormat {
			return fmt.Errorf("opening buffer %s: file format %d, this agent reads format %d: run the agent version that wrote it until the buffer drains, or move the file aside",
				b.path, f, fileFormat)
		}
		for _, name := range dataBuckets {
			if tx.Bucket(name) == nil {
				return corruptErr(b.path, fmt.Errorf("bucket %q missing", name))
			}
		}
		c := counters{
			nextSeq:  getU64(meta, kNextSeq),
			nextRec:  getU64(meta, kNextRec),
			dropped:  getU64(meta, kDropped),
			rejected: getU64(meta, kRejected),
		}
		if c.nextSeq == 0 || c.nextRec == 0 {
			return corruptErr(b.path, errors.New("sequence counters missing"))
		}
		err := tx.Bucket(bPending).ForEach(func(k, v []byte) error {
			n, at, err := recordHeader(v)
			if err != nil {
				// Counted as zero here; Seal drops it and logs it.
				b.log.Error("damaged pending record in buffer", "path", b.path, "record", fmt.Sprintf("%x", k), "err", err)
			}
			if c.pendingRecords == 0 {
				c.oldestPending = at
			}
			c.pendingRecords++
			c.pendingSamples += uint64(n)
			c.bytes += int64(len(k) + len(v))
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bSealed).ForEach(func(k, v []byte) error {
			h, _, err := decodeSealed(v)
			if err != nil {
				b.log.Error("damaged sealed batch in buffer", "path", b.path, "batch_seq", fmt.Sprintf("%x", k), "err", err)
			}
			c.sealedBatches++
			c.sealedSamples += uint64(h.samples)
			c.bytes += int64(len(k) + len(v))
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range [][]byte{bTables, bRefs, bRejected} {
			_ = tx.Bucket(name).ForEach(func(k, v []byte) error {
				c.bytes += int64(len(k) + len(v))
				return nil
			})
		}
		b.c = c
		// Nothing changed: roll back rather than pay a commit.
		return errNoop
	})
	if errors.Is(err, errNoop) {
		return nil
	}
	return err
}

// create makes the buckets of a new buffer file.
func (b *Buffer) create(tx *bolt.Tx) error {
	meta, err := tx.CreateBucket(bMeta)
	if err != nil {
		return fmt.Errorf("creating buffer %s: %w", b.path, err)
	}
	for _, name := range dataBuckets {
		if _, err := tx.CreateBucket(name); err != nil {
			return fmt.Errorf("creating buffer %s: %w", b.path, err)
		}
	}
	b.c = counters{nextSeq: b.firstSeq, nextRec: 1}
	for k, v := range map[string]uint64{string(kFormat): fileFormat, string(kNextSeq): b.firstSeq, string(kNextRec): 1, string(kDropped): 0, string(kRejected): 0} {
		if err := meta.Put([]byte(k), u64key(v)); err != nil {
			return fmt.Errorf("creating buffer %s: %w", b.path, err)
		}
	}
	return nil
}

func getU64(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// errNoop rolls back a write transaction that found nothing to do; update
// turns it into success.
var errNoop = errors.New("nothing to do")

// update runs fn in a write transaction on a copy of the counters, persists
// the counters that live in the meta bucket, and publishes the copy once
// the transaction committed.
func (b *Buffer) update(fn func(tx *bolt.Tx, c *counters) error) error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	old := b.c // only writers change b.c, and they hold wmu
	c := old
	err := b.db.Update(func(tx *bolt.Tx) error {
		if err := fn(tx, &c); err != nil {
			return err
		}
		meta := tx.Bucket(bMeta)
		for _, kv := range []struct {
			k        []byte
			old, new uint64
		}{
			{kNextSeq, old.nextSeq, c.nextSeq},
			{kNextRec, old.nextRec, c.nextRec},
			{kDropped, old.dropped, c.dropped},
			{kRejected, old.rejected, c.rejected},
		} {
			if kv.old != kv.new {
				if err := meta.Put(kv.k, u64key(kv.new)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if errors.Is(err, errNoop) {
		return nil
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.c = c
	b.mu.Unlock()
	return nil
}

// Stats returns the buffer's counters.
func (b *Buffer) Stats() Stats {
	b.mu.RLock()
	c := b.c
	b.mu.RUnlock()
	s := Stats{
		PendingSamples:  c.pendingSamples,
		SealedBatches:   c.sealedBatches,
		SealedSamples:   c.sealedSamples,
		DroppedSamples:  c.dropped,
		RejectedBatches: c.rejected,
		Bytes:           c.bytes,
		NextSeq:         c.nextSeq,
	}
	if c.pendingRecords > 0 {
		s.OldestPending = time.UnixMilli(c.oldestPending)
	}
	return s
}

// Close waits for appends already handed over to commit, then closes the
// file. Appends after Close fail with ErrClosed.
func (b *Buffer) Close() error {
	b.closeMu.Lock()
	if b.closed {
		b.closeMu.Unlock()
		return nil
	}
	b.closed = true
	close(b.reqs)
	b.closeMu.Unlock()
	b.wg.Wait()
	b.wmu.Lock() // let a Seal, Ack or Reject in progress finish
	defer b.wmu.Unlock()
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("closing buffer %s: %w", b.path, err)
	}
	return nil
}

// isClosed reports whether Close was called.
func (b *Buffer) isClosed() bool {
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	return b.closed
}
