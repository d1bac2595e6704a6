// Package daemon assembles the running agent from its configuration:
// drivers feed the poll scheduler, which appends to the bbolt buffer; a
// sealer turns pending samples into batches; the uplink sends them to the
// ingest; a unix socket answers `sightglass-agent status`. The agent opens
// no TCP listening socket.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sightglass-bms/sightglass/agent/buffer"
	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/enroll"
	"github.com/sightglass-bms/sightglass/agent/poll"
	"github.com/sightglass-bms/sightglass/agent/uplink"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/anon"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// Options are what Run needs.
type Options struct {
	Config   *config.Config
	Registry *driver.Registry
	Logger   *slog.Logger
	// Version is reported in status.
	Version string
	// SizeMemory, if set, is told how many points the agent polls once
	// the devices are built, so the command can size the process's soft
	// memory limit to them.
	SizeMemory func(points int)
	// Undiscovered, if set, is told the devices whose discovery failed
	// because they did not answer, so the command can start the agent
	// again later to discover them.
	Undiscovered func(devices []string)
}

// Agent is a running agent.
type Agent struct {
	cfg      *config.Config
	log      *slog.Logger
	identity pki.Identity
	version  string
	started  time.Time

	buf   *buffer.Buffer
	sched *poll.Scheduler
	up    *uplink.Uplink

	mu       sync.Mutex
	lastSeal time.Time
}

// Run runs the agent until ctx is cancelled. Everything it needs from disk
// is checked before anything starts, so a bad certificate or a locked buffer
// is reported at once.
func Run(ctx context.Context, opts Options) error {
	cfg, log := opts.Config, opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := refuseForwarding(os.DirFS("/proc/sys"), cfg.Network, log); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("creating data dir %s: %w", cfg.DataDir, err)
	}
	cert, roots, id, err := pki.LoadAgentBundle(cfg.Uplink.CertDir)
	if err != nil {
		return fmt.Errorf("loading the agent's certificate from %s: %w (enroll the agent first: sightglass-agent enroll --token TOKEN --ingest URL)", cfg.Uplink.CertDir, err)
	}
	secret, created, err := anon.LoadOrCreateSecret(filepath.Join(cfg.DataDir, "site.key"))
	if err != nil {
		return fmt.Errorf("loading the site secret: %w", err)
	}
	if created {
		log.Info("created a new site secret; export it with a passphrase so a replacement box keeps the same point ids", "path", filepath.Join(cfg.DataDir, "site.key"))
	}
	pseud := anon.New(secret)
	devices, undiscovered, err := buildDevices(ctx, cfg, opts.Registry, anon.NewRegistry(pseud), log)
	if err != nil {
		return err
	}
	if len(undiscovered) > 0 && opts.Undiscovered != nil {
		opts.Undiscovered(undiscovered)
	}
	if opts.SizeMemory != nil {
		n := 0
		for _, d := range devices {
			n += len(d.Points)
		}
		opts.SizeMemory(n)
	}
	buf, err := openBuffer(cfg.Buffer.Path, buffer.Options{MaxBytes: int64(cfg.Buffer.MaxBytes), FirstSeq: firstSeq(time.Now(), cert.Leaf), Logger: log.With("component", "buffer")}, log)
	if err != nil {
		return fmt.Errorf("opening the buffer: %w", err)
	}
	defer buf.Close()

	a := &Agent{cfg: cfg, log: log, identity: id, version: opts.Version, started: time.Now(), buf: buf, lastSeal: time.Now()}
	jitter := *cfg.Poll.Jitter
	a.sched, err = poll.New(devices, buf, poll.Options{Jitter: jitter, BackoffBase: cfg.Poll.BackoffBase, BackoffMax: cfg.Poll.BackoffMax, Logger: log.With("component", "poll")})
	if err != nil {
		return fmt.Errorf("starting the poller: %w", err)
	}
	var current atomic.Pointer[tls.Certificate]
	current.Store(&cert)
	a.up, err = uplink.New(uplink.Config{
		URL:         cfg.Uplink.URL,
		Cert:        func() (*tls.Certificate, error) { return current.Load(), nil },
		Roots:       roots,
		LocalAddr:   cfg.Uplink.LocalAddress,
		Interface:   cfg.Network.Uplink.Interface, // "" without a network section
		MaxInFlight: cfg.Uplink.MaxInFlight,
		Timeout:     cfg.Uplink.Timeout,
		Logger:      log.With("component", "uplink"),
	}, source{buf})
	if err != nil {
		return fmt.Errorf("starting the uplink: %w", err)
	}
	status, err := listenStatus(cfg.StatusSocket)
	if err != nil {
		return err
	}
	log.Info("agent running", "agent", id.Agent, "site", id.Site, "devices", len(devices), "ingest", cfg.Uplink.URL, "status_socket", cfg.StatusSocket)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.sched.Run(gctx) })
	g.Go(func() error { return a.up.Run(gctx) })
	g.Go(func() error { return a.sealLoop(gctx) })
	g.Go(func() error { return serveStatus(gctx, status, a, log) })
	renewer := &enroll.Renewer{Dir: cfg.Uplink.CertDir, Cert: &current, Up: a.up, Log: log.With("component", "renew")}
	g.Go(func() error { return renewer.Run(gctx) })
	catalog := Catalog(devices, cfg.Site.Catalog)
	g.Go(func() error { return sendCatalog(gctx, a.up, catalog, log.With("component", "catalog")) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	log.Info("agent stopped", "pending_samples", buf.Stats().PendingSamples, "sealed_batches", buf.Stats().SealedBatches)
	return err
}

// sealLoop seals pending samples into batches when the batch interval has
// passed or enough samples are waiting, and wakes the uplink.
func (a *Agent) sealLoop(ctx context.Context) error {
	tick := min(a.cfg.Uplink.BatchInterval, time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st := a.buf.Stats()
		if st.PendingSamples == 0 {
			continue
		}
		a.mu.Lock()
		due := time.Since(a.lastSeal) >= a.cfg.Uplink.BatchInterval
		a.mu.Unlock()
		if !due && st.PendingSamples < uint64(a.cfg.Uplink.BatchMaxSamples) {
			continue
		}
		if err := a.sealAll(ctx); err != nil {
			a.log.Error("sealing a batch failed; samples stay pending and are retried", "err", err)
			continue
		}
		a.up.Notify()
	}
}

// sealAll seals everything pending, in batches of at most BatchMaxSamples.
func (a *Agent) sealAll(ctx context.Context) error {
	for {
		// The sealer runs inside the buffer's write transaction and must not
		// call back into the buffer, so the health it reports is read first.
		h := a.health()
		_, ok, err := a.buf.Seal(ctx, a.cfg.Uplink.BatchMaxSamples, func(seq uint64, samples []telemetry.Sample) (batch.Encoded, error) {
			return a.seal(seq, samples, h)
		})
		if err != nil {
			return err
		}
		if !ok {
			a.mu.Lock()
			a.lastSeal = time.Now()
			a.mu.Unlock()
			return nil
		}
	}
}

func (a *Agent) seal(seq uint64, samples []telemetry.Sample, h batch.Health) (batch.Encoded, error) {
	b := &batch.Batch{
		Header: batch.Header{
			AgentID: a.identity.Agent,
			Site:    a.identity.Site,
			Seq:     seq,
			SentAt:  time.Now().UnixMilli(),
			Health:  h,
		},
		Samples: samples,
	}
	return batch.Encode(b)
}

// health summarises the agent's own state for the batch header.
func (a *Agent) health() batch.Health {
	st := a.buf.Stats()
	h := batch.Health{
		BufferSamples:  st.PendingSamples + st.SealedSamples,
		BufferBytes:    uint64(max(st.Bytes, 0)),
		DroppedSamples: st.DroppedSamples,
		UptimeSeconds:  uint64(time.Since(a.started).Seconds()),
	}
	ph := a.sched.Health()
	h.PollErrors = ph.PollErrors
	h.DevicesUp = ph.DevicesUp
	h.DevicesDown = ph.DevicesDown
	// Samples the buffer refused are lost too: report them with the cap's drops.
	h.DroppedSamples += ph.DroppedSamples
	return h
}

// firstSeq numbers the first batch of a new buffer file: the time in
// milliseconds, so that a buffer replacing a damaged or deleted one numbers
// above every batch the old one sealed (the ingest would refuse a reused
// sequence number as a conflict, and the samples with it). An agent seals
// a batch per batch_interval (a second at the least), or a few a second
// when many points fill batch_max_samples — far below a thousand a second,
// which a millisecond count would have to be outrun by; milliseconds take
// 6 bytes in a batch header where microseconds would take 8. A box whose
// clock is wrong (no RTC, no time sync yet) still numbers from no earlier
// than its certificate's issue time, which comes from the ingest's clock.
func firstSeq(now time.Time, cert *x509.Certificate) uint64 {
	if cert != nil && now.Before(cert.NotBefore) {
		now = cert.NotBefore
	}
	return uint64(max(now.UnixMilli(), 1))
}

// The buffer stores a trend export read again after a crash once, not
// twice, and a trend log's backfill place with the samples it read: the
// scheduler finds it is a StateSink.
var _ poll.StateSink = (*buffer.Buffer)(nil)

// A read the buffer could not store is counted in the buffer's persisted
// drop count, so status and batch headers still show it after a restart.
var _ poll.DropCounter = (*buffer.Buffer)(nil)

// source adapts the buffer to the uplink's Source.
type source struct{ b *buffer.Buffer }

func (s source) Next(after uint64) (uplink.Batch, bool, error) {
	sb, ok, err := s.b.Next(after)
	if err != nil || !ok {
		return uplink.Batch{}, ok, err
	}
	return uplink.Batch{Seq: sb.Seq, Data: sb.Data, TableHash: sb.TableHash, Samples: sb.Samples}, true, nil
}
func (s source) Table(h batch.TableHash) ([]byte, error) { return s.b.Table(h) }
func (s source) Ack(seq uint64) error                    { return s.b.Ack(seq) }
func (s source) Reject(seq uint64, reason string) error  { return s.b.Reject(seq, reason) }
