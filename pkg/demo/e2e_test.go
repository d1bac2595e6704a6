package demo

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/agent/uplink"
	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure/azuritetest"
	"github.com/sightglass-bms/sightglass/pkg/anon"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// binDir holds the binaries built once for every test in this package.
var binDir string

func TestMain(m *testing.M) {
	// testing.Short reads the flags, which m.Run would parse too late.
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		dir, err := BuildBinaries("sightglass-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

// trendFixture writes n CSV exports of rows rows each, every row carrying
// three points, and returns the samples they must produce (ids left zero;
// keyed by column in want).
type trendFixture struct {
	dir  string
	want map[string][]telemetry.Sample // column -> samples, ids unset
	rows int
}

const fixtureHeader = "timestamp,Zone Temp (°F),Fan Status,Valve Cmd (%)"

// write writes file number i of the fixture into dir.
func (f *trendFixture) write(t *testing.T, i, rows int) {
	t.Helper()
	var b strings.Builder
	b.WriteString(fixtureHeader + "\n")
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for r := 0; r < rows; r++ {
		n := f.rows
		f.rows++
		ts := base.Add(time.Duration(n) * time.Minute)
		temp := 68 + float64(n%40)/10
		fan := []string{"On", "Off"}[n/7%2]
		valve := ""
		if n%3 == 0 { // empty cells: not logged
			valve = fmt.Sprintf("%d", n%100)
		}
		fmt.Fprintf(&b, "%s,%.1f,%s,%s\n", ts.Format("2006-01-02 15:04:05"), temp, fan, valve)
		ms := ts.UnixMilli()
		f.want["Zone Temp"] = append(f.want["Zone Temp"], telemetry.Sample{Time: ms, Value: temp})
		f.want["Fan Status"] = append(f.want["Fan Status"], telemetry.Sample{Time: ms, Value: map[string]float64{"On": 1, "Off": 0}[fan]})
		if valve != "" {
			f.want["Valve Cmd"] = append(f.want["Valve Cmd"], telemetry.Sample{Time: ms, Value: float64(n % 100)})
		}
	}
	name := filepath.Join(f.dir, fmt.Sprintf("export-%05d.csv", i))
	if err := os.WriteFile(name+".part", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(name+".part", name); err != nil {
		t.Fatal(err)
	}
}

// expected returns the fixture's samples with the ids the agent computes
// from its site secret.
func (f *trendFixture) expected(t *testing.T, s *Stack, device string) []telemetry.Sample {
	t.Helper()
	secret, _, err := anon.LoadOrCreateSecret(filepath.Join(s.AgentDir(), "site.key"))
	if err != nil {
		t.Fatal(err)
	}
	p := anon.New(secret)
	var out []telemetry.Sample
	for col, samples := range f.want {
		id := p.PointID(anon.Ref("csvtrend", device, col))
		for _, smp := range samples {
			smp.PointID = id
			out = append(out, smp)
		}
	}
	sortSamples(out)
	return out
}

func sortSamples(s []telemetry.Sample) {
	sort.Slice(s, func(i, j int) bool {
		if s[i].PointID != s[j].PointID {
			return s[i].PointID < s[j].PointID
		}
		return s[i].Time < s[j].Time
	})
}

// newStack starts an ingest archiving into a directory and prepares an
// agent watching one trend folder.
func newStack(t *testing.T) (*Stack, *trendFixture) {
	t.Helper()
	return newStackOn(t, nil)
}

// newAzuriteStack starts Azurite and a stack whose ingest archives into it
// (store kind azure, shared-key-emulator mode).
func newAzuriteStack(t *testing.T) (*Stack, *trendFixture, *azuritetest.Server) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	srv := azuritetest.Start(t, azuritetest.Options{})
	s, f := newStackOn(t, &AzureArchive{AccountURL: srv.AccountURL, Container: "sightglass-archive"})
	return s, f, srv
}

// newStackOn starts an ingest archiving into az, or a directory when az is
// nil, and prepares an agent watching one trend folder.
func newStackOn(t *testing.T, az *AzureArchive) (*Stack, *trendFixture) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	ctx := t.Context()
	s := &Stack{Bin: binDir, Dir: t.TempDir(), Logs: &testLog{t: t}, Azure: az}
	if err := s.Init(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	f := &trendFixture{dir: filepath.Join(s.Dir, "trends"), want: map[string][]telemetry.Sample{}}
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	devices := fmt.Sprintf(`  - name: ahu-1
    driver: csvtrend
    interval: 200ms
    settings: {path: %s, timezone: UTC, settle: 0s}
    points:
      - {ref: Zone Temp}
      - {ref: Fan Status}
      - {ref: Valve Cmd}
`, f.dir)
	if err := s.WriteAgentConfig(devices, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := s.StartIngest(ctx); err != nil {
		t.Fatal(err)
	}
	return s, f
}

// catchUpTimeout bounds how long the agent may take to send what it holds
// once the ingest answers again: a minute to send it, plus the longest wait
// its uplink may still be in. The uplink retries with full-jitter
// exponential backoff (a random wait of up to 1s·2^(n-1) after n failures
// in a row, at most 5 minutes), so after an outage of half a minute its
// next attempt can still be a minute away.
func catchUpTimeout(t *testing.T, s *Stack) time.Duration {
	t.Helper()
	const send = time.Minute
	st, err := s.AgentStatus(t.Context())
	if err != nil {
		return send + uplink.DefaultBackoffMax
	}
	// One more failure may come: an attempt begun before the ingest was back.
	return send + backoffCeiling(st.Uplink.ConsecutiveFailures+1)
}

// backoffCeiling is the longest wait the agent's uplink draws after n
// failures in a row (agent/uplink's backoff with the defaults the agent
// runs it with).
func backoffCeiling(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > 30 {
		return uplink.DefaultBackoffMax
	}
	return min(uplink.DefaultBackoffBase<<(n-1), uplink.DefaultBackoffMax)
}

// checkArchive waits for the agent to drain and compares the archive with
// want exactly: every sample once, values, times and statuses equal.
func checkArchive(t *testing.T, s *Stack, want []telemetry.Sample) {
	t.Helper()
	limit := catchUpTimeout(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	var got []telemetry.Sample
	for {
		var err error
		got, _, err = s.Archive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) >= len(want) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("archive holds %d samples after %v, want %d", len(got), limit, len(want))
		case <-time.After(200 * time.Millisecond):
		}
	}
	sortSamples(got)
	if len(got) != len(want) {
		t.Fatalf("archive holds %d samples, want %d (duplicates?)", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.PointID != w.PointID || g.Time != w.Time || math.Float64bits(g.Value) != math.Float64bits(w.Value) || g.Status != w.Status {
			t.Fatalf("sample %d: got %+v, want %+v", i, g, w)
		}
	}
}

func TestEndToEndIntegration(t *testing.T) {
	s, f := newStack(t)
	endToEnd(t, s, f)
}

// TestEndToEndAzuriteIntegration is the same run with the ingest archiving
// into Azurite through the Azure store.
func TestEndToEndAzuriteIntegration(t *testing.T) {
	s, f, _ := newAzuriteStack(t)
	endToEnd(t, s, f)
	names := archiveNames(t, s)
	for _, n := range names {
		if !strings.HasPrefix(n, s.Tenant+"/"+s.Site+"/") {
			t.Errorf("blob %s is outside {tenant}/{site}/", n)
		}
	}
	if len(names) == 0 {
		t.Fatal("nothing archived in Azurite")
	}
}

// endToEnd feeds six trend files to a running stack, checks the archive
// holds every sample exactly once, that the agent listens nowhere, and that
// no stored blob names the building.
func endToEnd(t *testing.T, s *Stack, f *trendFixture) {
	t.Helper()
	for i := range 3 {
		f.write(t, i, 50)
	}
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i := 3; i < 6; i++ {
		f.write(t, i, 50)
	}
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
	// Outbound only: the agent, with its uplink connection open, listens on
	// no TCP port and holds no UDP socket (no BACnet device configured).
	if l := listeningSockets(t, s.agent.cmd.Process.Pid); len(l) != 0 {
		t.Errorf("the agent listens: %v", l)
	}
	if err := s.WaitDrained(t.Context()); err != nil {
		t.Fatal(err)
	}
	processed, _ := filepath.Glob(filepath.Join(f.dir, "processed", "*.csv"))
	if len(processed) != 6 {
		t.Errorf("%d files moved to processed/, want 6", len(processed))
	}
	if err := s.StopAgent(syscall.SIGTERM); err != nil {
		t.Errorf("agent did not stop cleanly: %v", err)
	}
	scanArchiveForNames(t, s, []string{
		"Zone Temp", "Fan Status", "Valve Cmd", "°F", "export-", ".csv", "ahu-1", "Demo Building", "trends",
	})
}

// TestAzuriteKilledIntegration kills Azurite (SIGKILL) in the middle of a
// run and starts it again on the same port and location later: while it is
// down the ingest answers 503 and the agent keeps its batches; once it is
// back they all arrive, none twice.
func TestAzuriteKilledIntegration(t *testing.T) {
	s, f, srv := newAzuriteStack(t)
	f.write(t, 0, 40)
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
	// Azurite holds acknowledged writes in memory for 5s or more (see
	// azuritetest.WaitDurable); real Azure acknowledges only durable
	// ones. Kill it once what was acknowledged is on its disk.
	srv.WaitDurable(t, s.Azure.Container, archiveNames(t, s)...)
	srv.Kill()
	for i := 1; i < 5; i++ {
		f.write(t, i, 100)
	}
	st := waitBuffering(t, s)
	t.Logf("with Azurite down the agent buffers %d batches; last uplink error: %s", st.Buffer.SealedBatches, st.Uplink.LastError)
	if !strings.Contains(st.Uplink.LastError, "503") || !strings.Contains(st.Uplink.LastError, "store_unavailable") {
		t.Errorf("the uplink error %q is not the ingest's 503 store_unavailable", st.Uplink.LastError)
	}
	// Down a little longer, so several retries meet the dead store.
	time.Sleep(2 * time.Second)
	srv.Restart(t)
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
	if err := s.WaitDrained(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// waitBuffering waits until the agent holds a sealed batch it failed to
// send, and returns its status then.
func waitBuffering(t *testing.T, s *Stack) daemon.Status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := s.AgentStatus(t.Context())
		if err == nil && st.Buffer.SealedBatches > 0 && st.Uplink.LastError != "" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never buffered a batch it could not send: %+v, %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// archiveNames lists every blob in the stack's archive.
func archiveNames(t *testing.T, s *Stack) []string {
	t.Helper()
	store, err := s.OpenArchive()
	if err != nil {
		t.Fatal(err)
	}
	names, err := store.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestAgentKilledWhileUploadingIntegration kills the agent with SIGKILL
// again and again while it uploads, restarting it each time: nothing the
// buffer acknowledged may be lost, nothing may be stored twice.
func TestAgentKilledWhileUploadingIntegration(t *testing.T) {
	s, f := newStack(t)
	f.write(t, 0, 20)
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 6; round++ {
		f.write(t, round, 200)
		// Kill it as soon as it has started sending this round's data.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			st, err := s.AgentStatus(t.Context())
			if err == nil && (st.Uplink.InFlight > 0 || st.Buffer.SealedBatches > 0) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := s.StopAgent(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := s.StartAgent(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
}

// TestIngestDownIntegration stops the ingest for a while: the agent buffers
// and catches up once it is back.
func TestIngestDownIntegration(t *testing.T) {
	s, f := newStack(t)
	f.write(t, 0, 30)
	if err := s.StartAgent(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.StopIngest(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 5; i++ {
		f.write(t, i, 100)
	}
	// The agent keeps reading and buffering while the ingest is away.
	waitBuffering(t, s)
	if err := s.StartIngest(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkArchive(t, s, f.expected(t, s, "ahu-1"))
}

// scanArchiveForNames fails if any stored blob, decompressed where it is a
// batch, or any blob name contains one of the names.
func scanArchiveForNames(t *testing.T, s *Stack, names []string) {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	store, err := s.OpenArchive()
	if err != nil {
		t.Fatal(err)
	}
	scanStore(t, store, dec, names)
}

func scanStore(t *testing.T, store blob.Store, dec *zstd.Decoder, names []string) {
	t.Helper()
	blobs, err := store.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(blobs) == 0 {
		t.Fatal("the archive is empty")
	}
	for _, name := range blobs {
		data, err := store.Get(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		contents := [][]byte{data, []byte(name)}
		if strings.HasSuffix(name, ".sgb") {
			plain, err := batchPayload(dec, data)
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			contents = append(contents, plain)
		}
		for _, c := range contents {
			for _, n := range names {
				if bytes.Contains(c, []byte(n)) {
					t.Errorf("%s contains %q", name, n)
				}
			}
		}
	}
}

// batchPayload returns a stored batch's payload, laid out as
// pkg/batch/FORMAT.md says: "SGB", version, storage byte, body, CRC-32C;
// the body is the payload (storage 0) or a zstd frame without its magic
// number (storage 1).
func batchPayload(dec *zstd.Decoder, data []byte) ([]byte, error) {
	if len(data) < 9 {
		return nil, fmt.Errorf("%d bytes, too short for a batch", len(data))
	}
	body := data[5 : len(data)-4]
	switch data[4] {
	case 0:
		return body, nil
	case 1:
		plain, err := dec.DecodeAll(append([]byte{0x28, 0xb5, 0x2f, 0xfd}, body...), nil)
		if err != nil {
			return nil, fmt.Errorf("decompressing: %w", err)
		}
		return plain, nil
	}
	return nil, fmt.Errorf("unknown storage form %d", data[4])
}

// testLog sends the children's output to the test log.
type testLog struct{ t *testing.T }

func (l *testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
