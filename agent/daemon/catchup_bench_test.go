package daemon

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/buffer"
	"github.com/sightglass-bms/sightglass/agent/uplink"
	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
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
				row[p] = telemetry.Sample{PointID: uint64(p)*2654435761 + 1, Time: start + int64(m)*60_000, Value: 20 + 5*math.Sin(float64(m)/60+float64(p))}
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
		for buf.Stats().SealedBatches > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(began)
		b.StopTimer()
		ucancel()
		<-udone
		cancel()
		<-done
		buf.Close()
		b.ReportMetric(took.Seconds(), "s/day-backlog")
		b.ReportMetric(float64(backlog.SealedSamples)/took.Seconds(), "samples/s")
		b.ReportMetric(float64(backlog.SealedBatches), "batches")
	}
}
