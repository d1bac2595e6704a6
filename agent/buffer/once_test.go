package buffer

import (
	"context"
	"fmt"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestAppendOnce: data appended with a mark is stored once — again with
// the same mark (the source read a second time after a crash) it is
// refused as a duplicate, across a reopen too, while other marks and plain
// appends are stored.
func TestAppendOnce(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	b := openT(t, path, Options{})
	defer func() { b.Close() }()

	steps := []struct {
		name    string
		mark    string // "" = plain Append
		base    int
		reopen  bool
		wantDup bool
	}{
		{"first read of a file", "file-a", 0, false, false},
		{"same file read again", "file-a", 0, false, true},
		{"another file", "file-b", 10, false, false},
		{"plain append", "", 20, false, false},
		{"file-a after a reopen", "file-a", 0, true, true},
		{"file-b after a reopen", "file-b", 10, false, true},
		{"new file after a reopen", "file-c", 30, false, false},
	}
	want := 0
	for _, st := range steps {
		if st.reopen {
			b = reopen(t, b, path, Options{})
		}
		samples := mkSamples(st.base, 5)
		if st.mark == "" {
			if err := b.Append(ctx, samples); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			want += len(samples)
			continue
		}
		dup, err := b.AppendOnce(ctx, []byte(st.mark), samples)
		if err != nil || dup != st.wantDup {
			t.Fatalf("%s: AppendOnce = dup %v, %v; want dup %v", st.name, dup, err, st.wantDup)
		}
		if !dup {
			want += len(samples)
		}
		if got := int(b.Stats().PendingSamples); got != want {
			t.Fatalf("%s: %d pending samples, want %d", st.name, got, want)
		}
	}
	if got := drainAll(t, b, 1000); len(got) != want {
		t.Fatalf("drained %d samples, want %d", len(got), want)
	}
	if _, err := b.AppendOnce(ctx, nil, mkSamples(0, 1)); err == nil {
		t.Fatal("AppendOnce with an empty mark: no error")
	}
}

// TestAppendOnceConcurrent: the same mark offered by many goroutines at
// once (so several land in one group commit) is stored exactly once.
func TestAppendOnceConcurrent(t *testing.T) {
	b := openT(t, tempPath(t), Options{})
	defer b.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored := 0
	for i := range 40 {
		wg.Go(func() {
			dup, err := b.AppendOnce(context.Background(), []byte(fmt.Sprint("m", i%4)), mkSamples(i%4*10, 3))
			if err != nil {
				t.Error(err)
				return
			}
			if !dup {
				mu.Lock()
				stored++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if stored != 4 || b.Stats().PendingSamples != 12 {
		t.Fatalf("stored %d of 4 marks, %d samples pending (want 12)", stored, b.Stats().PendingSamples)
	}
}

// TestMarksBounded: past maxMarks the oldest marks are forgotten and the
// newest kept.
func TestMarksBounded(t *testing.T) {
	ctx := context.Background()
	b := openT(t, tempPath(t), Options{NoSync: true})
	defer b.Close()
	for i := range maxMarks + markCheck + 10 {
		if _, err := b.AppendOnce(ctx, []byte(fmt.Sprint("mark-", i)), mkSamples(i, 1)); err != nil {
			t.Fatal(err)
		}
		// Another device's unmarked appends in between, as in the agent:
		// they advance the record numbers too.
		if err := b.Append(ctx, mkSamples(100_000+i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	b.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bMarks).Stats().KeyN; return nil })
	if n > maxMarks+markCheck {
		t.Errorf("%d marks kept, want at most %d", n, maxMarks+markCheck)
	}
	for _, tc := range []struct {
		i       int
		wantDup bool
	}{{0, false}, {maxMarks + markCheck + 9, true}, {maxMarks + markCheck, true}} {
		dup, err := b.AppendOnce(ctx, []byte(fmt.Sprint("mark-", tc.i)), mkSamples(tc.i, 1))
		if err != nil || dup != tc.wantDup {
			t.Errorf("mark %d: dup %v, %v; want %v", tc.i, dup, err, tc.wantDup)
		}
	}
}

// TestFirstSeq: a new file numbers its first batch FirstSeq; an existing
// file goes on from its own numbers whatever FirstSeq says.
func TestFirstSeq(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		firstSeq uint64
		want     uint64
	}{
		{"default", 0, 1},
		{"one", 1, 1},
		{"milliseconds", 1_764_582_400_000, 1_764_582_400_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempPath(t)
			b := openT(t, path, Options{FirstSeq: tt.firstSeq})
			if err := b.Append(ctx, mkSamples(0, 3)); err != nil {
				t.Fatal(err)
			}
			s, ok, err := b.Seal(ctx, 10, fakeSeal)
			if err != nil || !ok || s.Seq != tt.want {
				t.Fatalf("first Seal = seq %d, %v, %v; want seq %d", s.Seq, ok, err, tt.want)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			// Reopened with another FirstSeq: the file's own numbering wins.
			b = openT(t, path, Options{FirstSeq: tt.want + 1_000_000})
			defer b.Close()
			if got := b.Stats().NextSeq; got != tt.want+1 {
				t.Fatalf("reopened: next seq %d, want %d", got, tt.want+1)
			}
		})
	}
}

// TestAppendState: a state is stored with its samples, replaced by the
// next, and kept across a reopen; bad states are refused.
func TestAppendState(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	b := openT(t, path, Options{})
	defer func() { b.Close() }()
	if _, ok, err := b.State("vav-1"); ok || err != nil {
		t.Fatalf("State before any = %v, %v", ok, err)
	}
	steps := []struct {
		name   string
		state  string
		reopen bool
	}{
		{"first read", `{"tl1":100}`, false},
		{"next read", `{"tl1":200}`, false},
		{"after a reopen", `{"tl1":300}`, true},
	}
	want := 0
	for i, st := range steps {
		if st.reopen {
			b = reopen(t, b, path, Options{})
		}
		if err := b.AppendState(ctx, "vav-1", []byte(st.state), mkSamples(i*10, 2)); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		want += 2
		got, ok, err := b.State("vav-1")
		if err != nil || !ok || string(got) != st.state {
			t.Fatalf("%s: State = %q, %v, %v; want %q", st.name, got, ok, err, st.state)
		}
		if n := int(b.Stats().PendingSamples); n != want {
			t.Fatalf("%s: %d samples pending, want %d", st.name, n, want)
		}
	}
	if _, ok, _ := b.State("other"); ok {
		t.Error("another key has a state")
	}
	for _, bad := range []struct {
		name, key string
		state     []byte
	}{
		{"no key", "", []byte("x")},
		{"no state", "vav-1", nil},
	} {
		if err := b.AppendState(ctx, bad.key, bad.state, mkSamples(0, 1)); err == nil {
			t.Errorf("%s state taken", bad.name)
		}
	}
}

// TestSealSplitsARecordLargerThanABatch: one Append larger than a batch
// (a trend export is one read) is sealed maxSamples at a time, in order,
// the rest staying pending, with the counters right across a reopen.
func TestSealSplitsARecordLargerThanABatch(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	b := openT(t, path, Options{})
	defer func() { b.Close() }()
	all := mkSamples(0, 25)
	if err := b.Append(ctx, all); err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for i := range 2 {
		s, ok, err := b.Seal(ctx, 10, fakeSeal)
		if err != nil || !ok {
			t.Fatalf("seal %d: %v %v", i, ok, err)
		}
		sizes = append(sizes, s.Samples)
		if st := b.Stats(); st.PendingSamples != uint64(25-10*(i+1)) || st.SealedSamples != uint64(10*(i+1)) {
			t.Fatalf("after seal %d: %+v", i, st)
		}
	}
	b = reopen(t, b, path, Options{}) // counters recomputed from the file agree
	got := drainAll(t, b, 10)
	if sizes[0] != 10 || sizes[1] != 10 || !sameSamples(got, all) {
		t.Fatalf("sealed %v, drained %d samples: want batches of 10, 10, 5 holding every sample in order", sizes, len(got))
	}
}
