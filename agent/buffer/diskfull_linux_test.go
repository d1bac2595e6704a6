package buffer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// tinyDisk mounts a tmpfs of size bytes on a fresh directory, so the
// buffer meets a real ENOSPC from the kernel, through bbolt's own writes
// (bbolt has no write hook to inject one, and a fault injected above it
// would not prove that bbolt's error still says ENOSPC). Mounting needs
// root: without it the test is skipped, unless CI is set, where a skip
// would hide the only test of a full disk.
func tinyDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size))
	if err != nil {
		msg := fmt.Sprintf("mounting a %d-byte tmpfs for the disk-full test needs root (CAP_SYS_ADMIN): %v", size, err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// Registered after TempDir's removal, so it runs before it; the
	// buffer, opened later, is closed before this.
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting the test tmpfs %s: %v", dir, err)
		}
	})
	return dir
}

// fillerDisk is tinyDisk(size) holding a file, filler, of fillerSize
// bytes: space a test gives back by deleting it.
func fillerDisk(t *testing.T, size int, fillerSize int64) (dir, filler string) {
	t.Helper()
	dir = tinyDisk(t, size)
	filler = filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, zeroReader{}, fillerSize); err != nil {
		t.Fatal(err)
	}
	return dir, filler
}

// fill writes path until the file system refuses (ENOSPC), so the file
// takes all the space left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for i := 0; ; i++ {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", path, err)
			}
			return
		}
		if i > 1<<16 {
			t.Fatalf("filling %s: 256 MiB written and the test tmpfs is not full", path)
		}
	}
}

// TestDiskFull drives the buffer into a real full file system: appends go
// on succeeding, keeping the newest read and dropping the oldest data; the
// drop is counted exactly and survives a restart; once space returns the
// buffer goes on without dropping; and a read that cannot be stored at all
// (nothing left to drop) is counted by CountDropped, persistently.
func TestDiskFull(t *testing.T) {
	ctx := context.Background()
	// Leave the buffer and its reserve about 3 MiB: the rest goes to a file we delete to
	// give space back.
	disk, filler := fillerDisk(t, 8<<20, 5<<20)

	path := filepath.Join(disk, "buffer.db")
	opts := Options{} // the 1 GiB default cap is far above the disk: only ENOSPC limits
	b := openT(t, path, opts)
	defer func() { b.Close() }()

	const perRead, perBatch = 100, 1000
	appended := 0
	appendRead := func() {
		t.Helper()
		if err := b.Append(ctx, mkSamples(appended, perRead)); err != nil {
			t.Fatalf("append of samples %d+%d: %v (a full disk must drop the oldest data, not the newest read)", appended, perRead, err)
		}
		appended += perRead
	}
	sealFull := 0
	seal := func() {
		t.Helper()
		// A seal, like the agent's, may fail for lack of space; the
		// samples stay pending, and the next append makes room.
		if _, _, err := b.Seal(ctx, perBatch, fakeSeal); err != nil {
			if !isNoSpace(err) {
				t.Fatal(err)
			}
			sealFull++
		}
	}

	// Fill: with no uplink, sealed batches pile up until the disk is full,
	// then go on until far more was dropped than the reserve held, so
	// the drops after the first (the reserve long gone) are exercised too.
	const dropAtLeast = 100_000
	for i := 0; b.Stats().DroppedSamples < dropAtLeast; i++ {
		if i > 50_000 {
			t.Fatalf("%d samples appended and only %d dropped: the test disk never filled (%+v)", appended, b.Stats().DroppedSamples, b.Stats())
		}
		appendRead()
		if i%5 == 4 {
			seal()
		}
	}
	full := b.Stats()
	t.Logf("disk full: %d samples appended, %d dropped, %d sealed batches kept, %d seals refused for lack of space", appended, full.DroppedSamples, full.SealedBatches, sealFull)
	if _, err := os.Stat(path + ".reserve"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the disk filled and the reserve is still there (%v): the drops never needed it, so the test shows nothing about it", err)
	}

	// The count survives a restart on the full disk (reopen checks the
	// recomputed counters equal the ones kept), and the restarted buffer,
	// which knows nothing of the full disk and has no reserve, goes on
	// keeping the newest reads.
	b = reopen(t, b, path, opts)
	for i := 0; b.Stats().DroppedSamples < full.DroppedSamples+dropAtLeast/10; i++ {
		if i > 50_000 {
			t.Fatalf("after the restart on a full disk, %d samples appended and only %d more dropped", appended, b.Stats().DroppedSamples-full.DroppedSamples)
		}
		appendRead()
		if i%5 == 4 {
			seal()
		}
	}

	// Space returns: the reserve is made again, the disk cap lifted, and
	// appends go on without dropping. (Retry at once, not after a minute;
	// the committer reads this after the next Append hands it a request.)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	b.reserve.every = 0
	before := b.Stats().DroppedSamples
	for range 50 {
		appendRead()
	}
	if st := b.Stats(); st.DroppedSamples != before {
		t.Fatalf("with space back, dropped samples went from %d to %d", before, st.DroppedSamples)
	}
	if fi, err := os.Stat(path + ".reserve"); err != nil || fi.Size() != defaultReserve {
		t.Fatalf("with space back, the reserve was not made again: %v", err)
	}

	// Exactly the newest samples survive, in order, and survivors plus
	// dropped are everything appended: nothing lost uncounted, nothing
	// counted twice.
	b = reopen(t, b, path, opts)
	dropped := int(b.Stats().DroppedSamples)
	got := drainAll(t, b, perBatch)
	if want := mkSamples(dropped, appended-dropped); !sameSamples(got, want) {
		t.Fatalf("survivors: got %d samples, want the newest %d of %d (dropped %d)", len(got), len(want), appended, dropped)
	}

	// A read larger than the whole disk, with a backlog in the buffer: no
	// drop could ever make room for it, so Append must fail with the
	// disk's error at once and drop nothing (doubling the drop until the
	// buffer was empty lost the backlog and refused the read all the
	// same), and CountDropped must count the read where it survives a
	// restart.
	const backlog = 5000
	backlogStart := appended
	for range backlog / perRead {
		appendRead()
	}
	fill(t, filler)
	held := b.Stats()
	big := mkSamples(appended, 500_000) // about 9 MB: more than the whole disk
	err := b.Append(ctx, big)
	if !isNoSpace(err) {
		t.Fatalf("append of %d samples to a buffer on a full disk: %v, want an error saying the disk is full", len(big), err)
	}
	if st := b.Stats(); st != held {
		t.Fatalf("an append that could never fit changed the buffer (it must drop nothing):\nbefore %+v\nafter  %+v", held, st)
	}
	if err := b.CountDropped(ctx, len(big)); err != nil {
		t.Fatalf("counting the refused read on a full disk: %v", err)
	}
	b = reopen(t, b, path, opts)
	if got, want := b.Stats().DroppedSamples, uint64(dropped+len(big)); got != want {
		t.Fatalf("dropped samples after counting the refused read and a restart = %d, want %d", got, want)
	}
	// And space returning once more ends it, with the backlog intact.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	appendRead()
	if got, want := drainAll(t, b, perBatch), mkSamples(backlogStart, appended-backlogStart); !sameSamples(got, want) {
		t.Fatalf("after the refused read: got %d samples, want the backlog and the next read, %d", len(got), len(want))
	}
}

// TestDiskFullLargeRead: on a full disk, a read larger than any free space
// but smaller than what dropping the backlog frees is stored, the oldest
// data dropped for it and counted; the bound that refuses reads larger
// than the disk must not refuse this one.
func TestDiskFullLargeRead(t *testing.T) {
	ctx := context.Background()
	disk, filler := fillerDisk(t, 8<<20, 5<<20)
	path := filepath.Join(disk, "buffer.db")
	b := openT(t, path, Options{})
	defer func() { b.Close() }()

	// Pending records until the disk is full and appends drop.
	const perRead = 1000
	appended := 0
	for i := 0; b.Stats().DroppedSamples == 0; i++ {
		if i > 10_000 {
			t.Fatalf("%d samples appended and the test disk never filled", appended)
		}
		if err := b.Append(ctx, mkSamples(appended, perRead)); err != nil {
			t.Fatalf("append of samples %d+%d: %v", appended, perRead, err)
		}
		appended += perRead
	}
	full := b.Stats()
	// A read of about a third of what the buffer holds: more than the
	// disk has free, far less than dropping the backlog frees.
	n := int(full.Bytes/3) / 19 // about 19 bytes a sample in a record
	if err := b.Append(ctx, mkSamples(appended, n)); err != nil {
		t.Fatalf("append of %d samples (about %d bytes) with %d live bytes to drop: %v", n, full.Bytes/3, full.Bytes, err)
	}
	appended += n
	st := b.Stats()
	if st.DroppedSamples <= full.DroppedSamples {
		t.Fatalf("the large read was stored without dropping anything (%+v before, %+v after): the test shows nothing", full, st)
	}
	b = reopen(t, b, path, Options{})
	dropped := int(b.Stats().DroppedSamples)
	if err := os.Remove(filler); err != nil { // room to seal the rest
		t.Fatal(err)
	}
	if got, want := drainAll(t, b, 10_000), mkSamples(dropped, appended-dropped); !sameSamples(got, want) {
		t.Fatalf("survivors: got %d samples, want the newest %d of %d (dropped %d)", len(got), len(want), appended, dropped)
	}
}

// TestDiskFullGroup: the reads of one group commit come from different
// devices and only happened to arrive together, so a full disk answers
// each on its own. A read larger than all the space dropping could give
// fails alone, its message naming it, while the small reads beside it are
// stored, dropping no more of the backlog than they need; and reads that
// each fit but together exceed that space are all stored, the oldest data
// dropped for them and counted.
//
// The group is handed to commitAppends directly: which appends the
// committer gathers into one group depends on timing, and the test must
// not.
func TestDiskFullGroup(t *testing.T) {
	tests := []struct {
		name string
		// reads builds the group, in order, from the buffer's ceiling;
		// refused lists the indexes that must fail.
		reads   func(t *testing.T, ceiling int64) [][2]int // base, n of each read
		refused []int
	}{
		{
			name: "one oversized read among small ones",
			reads: func(t *testing.T, ceiling int64) [][2]int {
				// The big one, about 9.5 MB, more than the whole disk.
				return [][2]int{{groupBase, 100}, {bigBase, 500_000}, {groupBase + 100, 100}, {groupBase + 200, 100}}
			},
			refused: []int{1},
		},
		{
			name: "reads that fit alone and not together",
			reads: func(t *testing.T, ceiling int64) [][2]int {
				n := int(ceiling*55/100) / 19 // about 19 bytes a sample in a record
				return [][2]int{{groupBase, n}, {groupBase + n, n}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			disk, filler := fillerDisk(t, 8<<20, 3<<20)
			path := filepath.Join(disk, "buffer.db")
			// A small reserve: the ceiling counts it, but makeRoom releases
			// it only for a drop, never for a read, so with the default
			// (1 MiB) a read of half the ceiling could not be stored.
			opts := Options{ReserveBytes: 64 << 10}
			b := openT(t, path, opts)
			defer func() { b.Close() }()

			// A backlog of about 3 MB, then a full disk.
			const backlog, perRead = 150_000, 1000
			for i := 0; i < backlog; i += perRead {
				if err := b.Append(ctx, mkSamples(i, perRead)); err != nil {
					t.Fatal(err)
				}
			}
			fill(t, filler)
			ceiling, ok := b.roomCeiling()
			if !ok {
				t.Fatal("the test tmpfs cannot say how much space the buffer could free")
			}

			reads := tt.reads(t, ceiling)
			group := make([]*appendReq, len(reads))
			var stored, need int64
			for i, rd := range reads {
				r, err := b.newRequest(nil, "", nil, mkSamples(rd[0], rd[1]))
				if err != nil {
					t.Fatal(err)
				}
				group[i] = r
				need += r.need()
				if !slices.Contains(tt.refused, i) {
					stored += int64(rd[1])
					if r.need()+roomSlack > ceiling {
						t.Fatalf("read %d needs %d bytes, more than the %d dropping could give: the test is wrong", i, r.need(), ceiling)
					}
				}
			}
			if need+roomSlack <= ceiling {
				t.Fatalf("the group needs %d bytes, within the %d dropping could give: the test shows nothing", need, ceiling)
			}
			b.commitAppends(group)

			for i, r := range group {
				switch {
				case !slices.Contains(tt.refused, i) && r.err != nil:
					t.Errorf("read %d (%d samples) refused for the company it arrived in: %v", i, r.n, r.err)
				case slices.Contains(tt.refused, i) && !isNoSpace(r.err):
					t.Errorf("read %d (%d samples, larger than the disk): %v, want an error saying the disk is full", i, r.n, r.err)
				case slices.Contains(tt.refused, i) && !strings.Contains(r.err.Error(), fmt.Sprintf("read of %d samples", r.n)):
					t.Errorf("read %d refused with %q, which does not name it (%d samples)", i, r.err, r.n)
				}
			}

			// Survivors are the newest of the backlog and the stored reads,
			// in order; survivors plus dropped are all of them.
			b = reopen(t, b, path, opts)
			dropped := int(b.Stats().DroppedSamples)
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			var want []telemetry.Sample
			want = append(want, mkSamples(0, backlog)...)
			for i, rd := range reads {
				if !slices.Contains(tt.refused, i) {
					want = append(want, mkSamples(rd[0], rd[1])...)
				}
			}
			if dropped > len(want) {
				t.Fatalf("dropped %d samples of %d", dropped, len(want))
			}
			if got := drainAll(t, b, 10_000); !sameSamples(got, want[dropped:]) {
				t.Fatalf("survivors: got %d samples, want the newest %d of %d (dropped %d)", len(got), len(want)-dropped, len(want), dropped)
			}
			// The last read stored is kept whole, and the refused read cost
			// the backlog nothing: what was dropped is no more than the
			// stored reads needed.
			if last := reads[len(reads)-1]; dropped > len(want)-last[1] {
				t.Errorf("dropped %d samples: part of the newest read (%d samples) was lost", dropped, last[1])
			}
			if len(tt.refused) > 0 && dropped >= backlog/2 {
				t.Errorf("dropped %d of the %d backlog samples for %d samples of small reads: the refused read's size drove the drop", dropped, backlog, stored)
			}
		})
	}
}

// Bases of the samples a group test appends, apart from the backlog's.
const (
	groupBase = 1_000_000
	bigBase   = 10_000_000
)
