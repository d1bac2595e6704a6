// Package demo runs the whole Sightglass system on one machine from the
// built binaries: a CA, an ingest with its directory archive, an agent with
// a certificate from that CA, and simulated devices. `make demo` uses it, and
// so do the end-to-end tests, which kill and restart its processes.
package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Stack is a local Sightglass system in one directory.
type Stack struct {
	// Bin holds sightglass-agent and sightglass-ingest.
	Bin string
	// Dir is the working directory; Init empties it.
	Dir string
	// Logs receives the children's output; nil discards it.
	Logs io.Writer
	// Tenant and Site are the opaque ids the agent's certificate names.
	Tenant, Site string
	// Azure, when set, makes the ingest archive into an Azure Blob Storage
	// emulator instead of ArchiveDir.
	Azure *AzureArchive

	// IngestURL is where the agent sends batches; fixed by Init so the
	// ingest can restart on the same port.
	IngestURL  string
	ingestAddr string
	// DashboardURL and DashboardPassword are the dashboard and the demo
	// user's password (user DemoUser), both made by Init.
	DashboardURL, DashboardPassword string

	ingest, agent *proc
	token         string // the enrollment token, until the agent used it
	// reserved hold the ingest's ports while it is not running: from
	// Init, and from StopIngest, until StartIngest.
	reserved []*reservation
	// ingestPorts are the ports of ingestAddr and DashboardURL.
	ingestPorts []int
}

// AzureArchive is an emulator account and container the ingest archives
// into, in shared-key-emulator mode (the ingest creates the container).
type AzureArchive struct {
	// AccountURL is the emulator's account endpoint, such as
	// http://127.0.0.1:10000/devstoreaccount1.
	AccountURL string
	// Container is the archive's container.
	Container string
}

// proc is a running child; done is closed when it has exited, with err set.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Paths inside the stack's directory.
func (s *Stack) caDir() string        { return filepath.Join(s.Dir, "ingest", "ca") }
func (s *Stack) ArchiveDir() string   { return filepath.Join(s.Dir, "ingest", "archive") }
func (s *Stack) ingestConfig() string { return filepath.Join(s.Dir, "ingest", "ingest.yaml") }
func (s *Stack) database() string     { return filepath.Join(s.Dir, "ingest", "ingest.db") }

// AgentDir is the agent's data directory (buffer, secret, status socket).
func (s *Stack) AgentDir() string { return filepath.Join(s.Dir, "agent") }

// AgentConfig is the agent's configuration file.
func (s *Stack) AgentConfig() string { return filepath.Join(s.Dir, "agent", "agent.yaml") }

// StatusSocket is the agent's status socket.
func (s *Stack) StatusSocket() string { return filepath.Join(s.AgentDir(), "agent.sock") }

// Init empties Dir, creates the CA, issues the agent's certificate and
// writes the ingest's configuration. It holds the ports it chose for the
// ingest until StartIngest (or Close).
func (s *Stack) Init(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	if s.Tenant == "" {
		s.Tenant = "demo"
	}
	if s.Site == "" {
		s.Site = "site-0001"
	}
	dir, err := filepath.Abs(s.Dir)
	if err != nil {
		return err
	}
	s.Dir = dir
	if err := os.RemoveAll(s.Dir); err != nil {
		return fmt.Errorf("emptying %s: %w", s.Dir, err)
	}
	if err := os.MkdirAll(filepath.Join(s.Dir, "ingest"), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(s.AgentDir(), 0o700); err != nil {
		return err
	}
	if _, err := s.runIngest(ctx, "ca", "init", "--dir", s.caDir()); err != nil {
		return err
	}
	port, err := s.reservePort()
	if err != nil {
		return err
	}
	s.ingestAddr = fmt.Sprintf("127.0.0.1:%d", port)
	s.IngestURL = "https://" + s.ingestAddr
	// The dashboard's setup names the demo building (sites name), which
	// enroll create --site needs: it refuses a building it does not know.
	web, err := s.initDashboard(ctx)
	if err != nil {
		return err
	}
	// The agent enrolls the way an installer's box does: a one-time token
	// from the operator, redeemed by `sightglass-agent enroll` once the
	// ingest runs (StartAgent), with a key made on the agent's side.
	tok, err := s.runIngest(ctx, "enroll", "create", "--ca-dir", s.caDir(), "--db", s.database(), "--tenant", s.Tenant, "--site", s.Site, "--ttl", "1h")
	if err != nil {
		return err
	}
	s.token = strings.TrimSpace(strings.SplitN(tok, "\n", 2)[0])
	cfg := fmt.Sprintf("listen: %s\nca_dir: %s\ndatabase: %s\n%s%slog_level: info\n",
		s.ingestAddr, s.caDir(), s.database(), s.storeYAML(), web)
	return os.WriteFile(s.ingestConfig(), []byte(cfg), 0o600)
}

// storeYAML is the ingest configuration's store section.
func (s *Stack) storeYAML() string {
	if s.Azure == nil {
		return fmt.Sprintf("store:\n  kind: dir\n  dir: %s\n", s.ArchiveDir())
	}
	return fmt.Sprintf("store:\n  kind: azure\n  azure:\n    account_url: %s\n    container: %s\n    auth: %s\n",
		s.Azure.AccountURL, s.Azure.Container, azure.AuthSharedKeyEmulator)
}

// OpenArchive opens the store the ingest archives into, for reading it.
func (s *Stack) OpenArchive() (blob.Store, error) {
	if s.Azure == nil {
		return blob.OpenDir(s.ArchiveDir())
	}
	return azure.New(azure.Options{AccountURL: s.Azure.AccountURL, Container: s.Azure.Container, SharedKey: azure.EmulatorSharedKey()})
}

// WriteAgentConfig writes the agent's configuration with the given devices
// section (YAML, a list) and batch interval.
func (s *Stack) WriteAgentConfig(devices string, batchInterval time.Duration) error {
	cfg := fmt.Sprintf(`site:
  name: Demo Building
data_dir: %s
uplink:
  url: %s
  batch_interval: %s
  timeout: 5s
poll:
  backoff_max: 5s
devices:
%s`, s.AgentDir(), s.IngestURL, batchInterval, devices)
	return os.WriteFile(s.AgentConfig(), []byte(cfg), 0o600)
}

func (s *Stack) runIngest(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(s.Bin, "sightglass-ingest"), args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("sightglass-ingest %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

func (s *Stack) start(name string, args ...string) (*proc, error) {
	cmd := exec.Command(filepath.Join(s.Bin, name), args...)
	w := s.Logs
	if w == nil {
		w = io.Discard
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// StartIngest starts the ingest and waits until it accepts connections.
func (s *Stack) StartIngest(ctx context.Context) error {
	s.release() // the ingest binds the ports Init held
	p, err := s.start("sightglass-ingest", "serve", "--config", s.ingestConfig())
	if err != nil {
		return err
	}
	s.ingest = p
	// The agents' listener and the dashboard's start one after the other:
	// wait for both, or a user (or a test) given the dashboard URL finds
	// nothing there yet.
	addrs := []string{s.ingestAddr}
	if u, err := url.Parse(s.DashboardURL); err == nil && u.Host != "" {
		addrs = append(addrs, u.Host)
	}
	for {
		for len(addrs) > 0 {
			c, err := net.DialTimeout("tcp", addrs[0], 100*time.Millisecond)
			if err != nil {
				break
			}
			c.Close()
			addrs = addrs[1:]
		}
		if len(addrs) == 0 {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("the ingest exited at start-up: %v (see its log)", p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StartAgent starts the agent and waits until its status socket answers.
func (s *Stack) StartAgent(ctx context.Context) error {
	if s.token != "" {
		out, err := exec.CommandContext(ctx, filepath.Join(s.Bin, "sightglass-agent"), "enroll", "--config", s.AgentConfig(), "--token", s.token).CombinedOutput()
		if err != nil {
			return fmt.Errorf("sightglass-agent enroll: %w\n%s", err, out)
		}
		s.token = ""
	}
	p, err := s.start("sightglass-agent", "run", "--config", s.AgentConfig())
	if err != nil {
		return err
	}
	s.agent = p
	for {
		if _, err := daemon.FetchStatus(ctx, s.StatusSocket()); err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("the agent exited at start-up: %v (see its log)", p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StopAgent sends sig (SIGTERM for a clean stop, SIGKILL for a crash) to the
// agent and waits for it to exit.
func (s *Stack) StopAgent(sig syscall.Signal) error { return s.agent.stop(sig) }

// StopIngest does the same for the ingest, and holds its ports until
// StartIngest starts it again on them.
func (s *Stack) StopIngest(sig syscall.Signal) error {
	err := s.ingest.stop(sig)
	if s.ingest != nil {
		s.holdIngestPorts()
	}
	return err
}

// holdIngestPorts reserves the ingest's ports again once it has exited.
// One that cannot be held (taken in the moment since the exit) is left:
// StartIngest then says the ingest could not start.
func (s *Stack) holdIngestPorts() {
	for _, port := range s.ingestPorts {
		if r, _, err := reserve(port); err == nil {
			s.reserved = append(s.reserved, r)
		}
	}
}

// stop signals the process and waits for it. After SIGKILL any exit is
// expected; after SIGTERM the process must exit cleanly.
func (p *proc) stop(sig syscall.Signal) error {
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 15s after %v; killed", filepath.Base(p.cmd.Path), sig)
	}
	if sig == syscall.SIGKILL {
		return nil
	}
	return p.err
}

// Close kills whatever is still running and frees the ports it holds.
func (s *Stack) Close() {
	_ = s.StopAgent(syscall.SIGKILL)
	_ = s.StopIngest(syscall.SIGKILL)
	s.agent, s.ingest = nil, nil
	s.release()
}

// AgentStatus asks the running agent for its status.
func (s *Stack) AgentStatus(ctx context.Context) (daemon.Status, error) {
	return daemon.FetchStatus(ctx, s.StatusSocket())
}

// WaitDrained waits until the agent's buffer holds nothing and its uplink
// is uploading nothing: every sample it acknowledged has been sent and
// acknowledged by the ingest. The uplink counts too because a batch the
// buffer's cap dropped while it was being uploaded is no longer in the
// buffer but may still arrive, and its acknowledgement changes the
// agent's dropped count.
func (s *Stack) WaitDrained(ctx context.Context) error {
	for {
		st, err := s.AgentStatus(ctx)
		if err == nil && st.Buffer.PendingSamples == 0 && st.Buffer.SealedBatches == 0 && st.Uplink.InFlight == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the agent's buffer to drain: %w (last status error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Archive decodes every stored batch.
func (s *Stack) Archive(ctx context.Context) (samples []telemetry.Sample, batches []*batch.Batch, err error) {
	store, err := s.OpenArchive()
	if err != nil {
		return nil, nil, err
	}
	return ReadStore(ctx, store)
}

// ReadArchive decodes every batch blob under an archive directory,
// resolving point tables from the same archive.
func ReadArchive(ctx context.Context, root string) ([]telemetry.Sample, []*batch.Batch, error) {
	store, err := blob.OpenDir(root)
	if err != nil {
		return nil, nil, err
	}
	return ReadStore(ctx, store)
}

// ReadStore decodes every batch blob in an archive store, resolving point
// tables from the same store.
func ReadStore(ctx context.Context, store blob.Store) ([]telemetry.Sample, []*batch.Batch, error) {
	names, err := store.List(ctx, "")
	if err != nil {
		return nil, nil, err
	}
	var samples []telemetry.Sample
	var batches []*batch.Batch
	tables := pointtable.New(store, nil)
	for _, name := range names {
		if !strings.HasSuffix(name, ".sgb") {
			continue
		}
		data, err := store.Get(ctx, name)
		if err != nil {
			return nil, nil, err
		}
		parts := strings.SplitN(name, "/", 3)
		b, err := batch.Decode(data, tables.Resolver(ctx, parts[0], parts[1]), batch.Limits{})
		if err != nil {
			return nil, nil, fmt.Errorf("decoding %s: %w", name, err)
		}
		batches = append(batches, b)
		samples = append(samples, b.Samples...)
	}
	return samples, batches, nil
}

// reservePort returns a free loopback port for the ingest and holds it
// until release. The ingest's configuration must name its ports before it
// runs, and a port merely found free could be taken by another process (a
// test of another package binding 127.0.0.1:0) during the seconds Init
// spends running ingest commands, or while a test keeps the ingest down;
// held, it is free only from just before the ingest starts until the
// ingest binds it.
func (s *Stack) reservePort() (int, error) {
	r, port, err := reserve(0)
	if err != nil {
		return 0, err
	}
	s.reserved = append(s.reserved, r)
	s.ingestPorts = append(s.ingestPorts, port)
	return port, nil
}

// release frees the ports the stack holds.
func (s *Stack) release() {
	for _, r := range s.reserved {
		r.release()
	}
	s.reserved = nil
}

// BuildBinaries builds sightglass-agent and sightglass-ingest into a new
// temporary directory, for tests that run them as real child processes,
// and returns it; remove it when done. It must run inside the module.
func BuildBinaries(prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"github.com/sightglass-bms/sightglass/agent/cmd/sightglass-agent",
		"github.com/sightglass-bms/sightglass/ingest/cmd/sightglass-ingest")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("building the binaries: %w\n%s", err, out.String())
	}
	return dir, nil
}
