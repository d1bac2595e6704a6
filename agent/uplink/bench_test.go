package uplink

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkUpload measures end-to-end throughput over loopback TLS 1.3 and
// HTTP/2, 64 KiB batches, 4 in flight, to an ingest that reads and discards.
func BenchmarkUpload(b *testing.B) {
	const size = 64 << 10
	e := newTestEnv(b)
	e.ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
		io.Copy(io.Discard, r.Body)
		writeJSON(w, http.StatusOK, map[string]any{"status": "stored"})
		return true
	}
	e.src.done = make(chan uint64, b.N)
	e.src.add(1, uint64(b.N), tableA, size)
	u, err := New(e.cfg, e.src)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	stop := run(b, u)
	e.src.wait(b.N)
	b.StopTimer()
	stop()
	secs := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/secs, "batches/s")
	b.ReportMetric(float64(b.N)*size/secs/1e6, "MB/s")
}
