package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/buffer"
	"github.com/sightglass-bms/sightglass/agent/uplink"
	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/ingest/server"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// BenchmarkCatchUp measures how long the agent takes to drain a 24-hour
// backlog of 5,000 points polled every minute (7.2 million samples, sealed
// in batches of the default 50,000) once the uplink returns: real buffer,
// real uplink over mTLS on loopback, real ingest storing into a directory.
func BenchmarkCatchUp(b *testing.B) {
	const points, minutes, perBatch = 5000, 24 * 60, 50_000
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b.StopTimer()
	for range b.N {
		dir := b.TempDir()
		buf, err := buffer.Open(filepath.Join(dir, "buffer.db"), buffer.Options{MaxBytes: 4 << 30})
		if err != nil {
			b.Fatal(err)
		}
		ca, err := pki.Init(filepath.Join(dir, "ca"), pki.InitOptions{})
		if err != nil {
			b.Fatal(err)
		}
		bundle, err := ca.NewAgentBundle("t", "s1", time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now().Add(-25 * time.Hour).Truncate(time.Minute).UnixMilli()
		row := make([]telemetry.Sample, points)
		for m := range minutes {
			for p := range points {
				row[p] = backlogSample(start, p, m)
			}
			if err := buf.Append(context.Background(), row); err != nil {
				b.Fatal(err)
			}
		}
		for {
			_, ok, err := buf.Seal(context.Background(), perBatch, func(seq uint64, smp []telemetry.Sample) (batch.Encoded, error) {
				return batch.Encode(&batch.Batch{Header: batch.Header{AgentID: bundle.Identity.Agent, Site: "s1", Seq: seq, SentAt: time.Now().UnixMilli()}, Samples: smp})
			})
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				break
			}
		}
		store, err := blob.OpenDir(filepath.Join(dir, "archive"))
		if err != nil {
			b.Fatal(err)
		}
		srv, err := server.New(server.Config{}, store, ca, log)
		if err != nil {
			b.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.Serve(ctx, ln); close(done) }()
		cert, err := tls.X509KeyPair(bundle.CertPEM, bundle.KeyPEM)
		if err != nil {
			b.Fatal(err)
		}
		up, err := uplink.New(uplink.Config{URL: "https://" + ln.Addr().String(), Roots: ca.Pool(),
			Cert:  func() (*tls.Certificate, error) { return &cert, nil },
			Proxy: func(*http.Request) (*url.URL, error) { return nil, nil }, Logger: log}, source{buf})
		if err != nil {
			b.Fatal(err)
		}
		backlog := buf.Stats()
		b.StartTimer()
		began := time.Now()
		uctx, ucancel := context.WithCancel(context.Background())
		udone := make(chan struct{})
		go func() { up.Run(uctx); close(udone) }()
		up.Notify()
		// Bounded: an uplink that stalls fails the benchmark instead of
		// hanging it.
		for buf.Stats().SealedBatches > 0 {
			if time.Since(began) > 10*time.Minute {
				b.Fatalf("backlog not drained after %s: %+v", time.Since(began), buf.Stats())
			}
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(began)
		b.StopTimer()
		ucancel()
		<-udone
		cancel()
		<-done
		// A batch the ingest refuses leaves the sealed count too, so an
		// empty queue alone could be a fast failure: the drain counts only
		// if nothing was rejected and the archive holds every sample.
		if st := buf.Stats(); st.RejectedBatches != 0 || st.DroppedSamples != 0 {
			b.Fatalf("the ingest rejected %d batches (%d samples dropped): the drain time measures failures, not delivery", st.RejectedBatches, st.DroppedSamples)
		}
		buf.Close()
		if err := checkArchive(store, "t", "s1", start, points, minutes); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(took.Seconds(), "s/day-backlog")
		b.ReportMetric(float64(backlog.SealedSamples)/took.Seconds(), "samples/s")
		b.ReportMetric(float64(backlog.SealedBatches), "batches")
	}
}

// backlogID is the point id of backlog point p.
const backlogID = 2654435761

// backlogSample is the sample of point p at minute m of the backlog.
func backlogSample(start int64, p, m int) telemetry.Sample {
	return telemetry.Sample{PointID: uint64(p)*backlogID + 1, Time: start + int64(m)*60_000, Value: 20 + 5*math.Sin(float64(m)/60+float64(p))}
}

// checkArchive decodes every batch archived for tenant/site and checks
// that it holds each sample of the backlog exactly once, value included,
// and nothing else.
func checkArchive(store *blob.Dir, tenant, site string, start int64, points, minutes int) error {
	ctx := context.Background()
	names, err := store.List(ctx, tenant+"/"+site+"/")
	if err != nil {
		return fmt.Errorf("listing the archive: %w", err)
	}
	tables := pointtable.New(store, nil).Resolver(ctx, tenant, site)
	seen := make([]bool, points*minutes)
	total := 0
	for _, name := range names {
		if !strings.HasSuffix(name, ".sgb") {
			continue
		}
		data, err := store.Get(ctx, name)
		if err != nil {
			return fmt.Errorf("reading archived batch %s: %w", name, err)
		}
		bt, err := batch.Decode(data, tables, batch.Limits{})
		if err != nil {
			return fmt.Errorf("decoding archived batch %s: %w", name, err)
		}
		for _, s := range bt.Samples {
			p, m := int((s.PointID-1)/backlogID), int((s.Time-start)/60_000)
			if p < 0 || p >= points || m < 0 || m >= minutes || backlogSample(start, p, m) != s {
				return fmt.Errorf("archived batch %s holds a sample the backlog never had: %+v", name, s)
			}
			if seen[p*minutes+m] {
				return fmt.Errorf("archived batch %s repeats the sample of point %d at minute %d", name, p, m)
			}
			seen[p*minutes+m] = true
			total++
		}
	}
	if total != points*minutes {
		return fmt.Errorf("the archive holds %d of the backlog's %d samples", total, points*minutes)
	}
	return nil
}
