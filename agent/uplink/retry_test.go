package uplink

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// maxJitter makes the backoff deterministic: always the ceiling.
func maxJitter(n int64) int64 { return n - 1 }

func TestBackoff(t *testing.T) {
	tests := []struct {
		name string
		n    int
		rnd  func(int64) int64
		want time.Duration
	}{
		{"first failure, top of range", 1, maxJitter, time.Second},
		{"third failure doubles twice", 3, maxJitter, 4 * time.Second},
		{"capped at max", 20, maxJitter, time.Minute},
		{"shift overflow stays capped", 200, maxJitter, time.Minute},
		{"bottom of range is zero", 5, func(int64) int64 { return 0 }, 0},
		{"n below 1 counts as 1", 0, maxJitter, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := backoff(tt.n, time.Second, time.Minute, tt.rnd); got != tt.want {
				t.Errorf("backoff(%d) = %v, want %v", tt.n, got, tt.want)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"120", 120 * time.Second, true},
		{" 0 ", 0, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"99999999999999999999", 0, false}, // overflows uint64: unreadable
		{"18446744073709551615", (1 << 31) * time.Second, true},
		{"-5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		status int
		code   string
		want   verdict
	}{
		{200, "", stored},
		{201, "", stored},
		{422, codeUnknownTable, needTable},
		{422, "bad_time", rejected},
		{409, "conflict", rejected},
		{400, "", rejected},
		{400, codeBadClock, retry},
		{413, "", rejected},
		{408, "", retry},
		{429, "", retry},
		{401, "", retry},
		{403, "", retry},
		{404, "", retry},
		{405, "", retry},
		{407, "", retry},
		{421, "", retry},
		{500, "", retry},
		{503, "", retry},
		{302, "", retry},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status)+" "+tt.code, func(t *testing.T) {
			if got := classify(tt.status, tt.code); got != tt.want {
				t.Errorf("classify(%d, %q) = %v, want %v", tt.status, tt.code, got, tt.want)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := newTestEnv(t).cfg
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no URL", func(c *Config) { c.URL = "" }, "no ingest URL"},
		{"plain http", func(c *Config) { c.URL = "http://127.0.0.1:1" }, "scheme must be https"},
		{"no host", func(c *Config) { c.URL = "https:///x" }, "no host"},
		{"query", func(c *Config) { c.URL = "https://h/?a=b" }, "query"},
		{"no certificate", func(c *Config) { c.Cert = nil }, "Config.Cert"},
		{"no roots", func(c *Config) { c.Roots = nil }, "Config.Roots"},
		{"local address with port", func(c *Config) { c.LocalAddr = "10.0.0.1:80" }, "not an IP address"},
		{"negative in-flight", func(c *Config) { c.MaxInFlight = -1 }, "MaxInFlight is negative"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "Timeout is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.change(&cfg)
			_, err := New(cfg, newMemSource())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	t.Run("every problem in one error", func(t *testing.T) {
		cfg := ok
		cfg.URL, cfg.Cert, cfg.MaxInFlight = "ftp://x", nil, -2
		_, err := New(cfg, newMemSource())
		for _, want := range []string{"scheme must be https", "Config.Cert", "MaxInFlight is negative"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("New() error = %v, want it to name %q", err, want)
			}
		}
	})
	if _, err := New(ok, newMemSource()); err != nil {
		t.Errorf("New(valid config) = %v", err)
	}
}

// arrivals records when requests reached the fake ingest.
type arrivals struct {
	mu    sync.Mutex
	times []time.Time
}

func (a *arrivals) add() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.times = append(a.times, time.Now())
	return len(a.times)
}

func (a *arrivals) gap(i int) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.times[i].Sub(a.times[i-1])
}

func TestRetryAfterHonoured(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header func(now time.Time) string
		want   time.Duration
	}{
		{"503 in seconds", http.StatusServiceUnavailable, func(time.Time) string { return "120" }, 120 * time.Second},
		{"429 as a date", http.StatusTooManyRequests, func(now time.Time) string {
			return now.Add(90 * time.Second).UTC().Format(http.TimeFormat)
		}, 90 * time.Second},
		{"capped", http.StatusServiceUnavailable, func(time.Time) string { return "86400" }, DefaultRetryAfterMax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var arr arrivals
				ingest := newFakeIngest()
				ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
					if arr.add() > 1 {
						return false
					}
					w.Header().Set("Retry-After", tt.header(time.Now()))
					writeJSON(w, tt.status, map[string]string{"error": "busy", "code": "busy"})
					return true
				}
				src := newMemSource()
				src.add(1, 1, tableA, 100)
				u := memUplink(t, Config{MaxInFlight: 1}, src, ingest)
				stop := run(t, u)
				src.wait(1)
				stop()
				if got := arr.gap(1); got != tt.want {
					t.Errorf("retried after %v, want %v", got, tt.want)
				}
			})
		})
	}
}

func TestBackoffSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var arr arrivals
		ingest := newFakeIngest()
		ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
			if arr.add() > 6 {
				return false
			}
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "disk full", "code": "internal"})
			return true
		}
		src := newMemSource()
		src.add(1, 1, tableA, 100)
		logs := &logRecorder{}
		u := memUplink(t, Config{BackoffBase: time.Second, BackoffMax: 8 * time.Second, Logger: slog.New(logs)}, src, ingest)
		u.rnd = maxJitter
		stop := run(t, u)
		src.wait(1)
		stop()
		want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
		for i, w := range want {
			if got := arr.gap(i + 1); got != w {
				t.Errorf("wait before attempt %d: %v, want %v", i+2, got, w)
			}
		}
		if n := logs.count(slog.LevelWarn, "upload failed"); n != 1 {
			t.Errorf("%d failure logs for one repeated error, want 1:\n%s", n, logs)
		}
		if n := logs.count(slog.LevelInfo, "uplink recovered after 6 failures"); n != 1 {
			t.Errorf("%d recovery logs, want 1:\n%s", n, logs)
		}
		if st := u.Stats(); st.ConsecutiveFailures != 0 || !strings.Contains(st.LastError, "disk full") {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestInFlightBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var blocked atomic.Int32
		ingest := newFakeIngest()
		ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
			blocked.Add(1)
			defer blocked.Add(-1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return false
		}
		src := newMemSource()
		src.add(1, 10, tableA, 100)
		u := memUplink(t, Config{MaxInFlight: 4}, src, ingest)
		stop := run(t, u)
		synctest.Wait() // everything that can start has started
		if n := blocked.Load(); n != 4 {
			t.Errorf("%d requests in flight, want 4", n)
		}
		if st := u.Stats(); st.InFlight != 4 {
			t.Errorf("Stats().InFlight = %d, want 4", st.InFlight)
		}
		close(release)
		src.wait(10)
		stop()
		if ingest.maxCur != 4 {
			t.Errorf("ingest saw up to %d concurrent requests, want 4", ingest.maxCur)
		}
	})
}

func TestConcurrentFailuresCountOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		all := make(chan struct{})
		var n atomic.Int32
		ingest := newFakeIngest()
		ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
			switch k := n.Add(1); {
			case k > 4:
				return false
			case k == 4:
				close(all)
			}
			<-all // the four fail together, as in an outage
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": "upstream down", "code": "down"})
			return true
		}
		src := newMemSource()
		src.add(1, 4, tableA, 100)
		logs := &logRecorder{}
		u := memUplink(t, Config{MaxInFlight: 4, Logger: slog.New(logs)}, src, ingest)
		u.rnd = maxJitter
		start := time.Now()
		stop := run(t, u)
		src.wait(4)
		stop()
		if n := logs.count(slog.LevelInfo, "recovered after 1 failures"); n != 1 {
			t.Errorf("want one failed round, logs:\n%s", logs)
		}
		if got := time.Since(start); got != DefaultBackoffBase {
			t.Errorf("recovered after %v, want one backoff of %v", got, DefaultBackoffBase)
		}
	})
}

func TestBandwidthCap(t *testing.T) {
	tests := []struct {
		name     string
		cap      int64
		min, max time.Duration
	}{
		{"no cap", 0, 0, 0},
		// 100 kB at 10 kB/s: 10 s, less the last chunk that leaves at once.
		{"10 kB/s", 10_000, 10*time.Second - paceChunk*time.Second/10_000, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				src := newMemSource()
				src.add(1, 5, tableA, 20_000)
				u := memUplink(t, Config{MaxInFlight: 2, BytesPerSecond: tt.cap}, src, newFakeIngest())
				start := time.Now()
				stop := run(t, u)
				src.wait(5)
				elapsed := time.Since(start)
				stop()
				if elapsed < tt.min || elapsed > tt.max {
					t.Errorf("5×20 kB sent in %v, want between %v and %v", elapsed, tt.min, tt.max)
				}
			})
		})
	}
}

func TestNotifyAndPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := newMemSource()
		u := memUplink(t, Config{PollInterval: time.Hour}, src, newFakeIngest())
		start := time.Now()
		stop := run(t, u)
		synctest.Wait()

		src.add(1, 1, tableA, 100)
		u.Notify()
		src.wait(1)
		if got := time.Since(start); got != 0 {
			t.Errorf("a notified batch left after %v, want at once", got)
		}
		// Run asks the source for the next batch as soon as batch 1 has
		// left; only once it has found none and waits is a batch added
		// without Notify one that must wait for the poll.
		synctest.Wait()

		src.add(2, 2, tableA, 100) // no Notify: the poll finds it
		synctest.Wait()
		if acked, _, _ := src.snapshot(); len(acked) != 1 {
			t.Fatalf("acked %v before the poll", acked)
		}
		src.wait(1)
		if got := time.Since(start); got != time.Hour {
			t.Errorf("an unnotified batch left after %v, want at the poll (1h)", got)
		}
		stop()
	})
}

func TestCancelLeavesBatchInSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ingest := newFakeIngest()
		ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
			<-r.Context().Done() // an ingest that never answers
			return true
		}
		src := newMemSource()
		src.add(1, 2, tableA, 100)
		u := memUplink(t, Config{}, src, ingest)
		stop := run(t, u)
		synctest.Wait()
		stop() // Run returned nil: checked by run
		acked, rejected, pending := src.snapshot()
		if len(acked) != 0 || len(rejected) != 0 || pending != 2 {
			t.Errorf("acked %v rejected %v pending %d; want both batches left in the source", acked, rejected, pending)
		}
		if st := u.Stats(); st.InFlight != 0 || st.ConsecutiveFailures != 0 {
			t.Errorf("stats after cancel %+v, want nothing in flight and no failure counted", st)
		}
	})
}

func TestTimeoutIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var arr arrivals
		ingest := newFakeIngest()
		ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
			if arr.add() > 1 {
				return false
			}
			<-r.Context().Done() // the first request hangs until its timeout
			return true
		}
		src := newMemSource()
		src.add(1, 1, tableA, 100)
		u := memUplink(t, Config{Timeout: 7 * time.Second}, src, ingest)
		u.rnd = func(int64) int64 { return 0 }
		stop := run(t, u)
		src.wait(1)
		stop()
		if got := arr.gap(1); got != 7*time.Second {
			t.Errorf("retried after %v, want after the 7s timeout", got)
		}
		if st := u.Stats(); !strings.Contains(st.LastError, "deadline exceeded") {
			t.Errorf("last error %q, want a timeout", st.LastError)
		}
	})
}

// flakySource fails Next a number of times before working.
type flakySource struct {
	*memSource
	fails atomic.Int32
}

func (s *flakySource) Next(after uint64) (Batch, bool, error) {
	if s.fails.Add(-1) >= 0 {
		return Batch{}, false, errors.New("bbolt: database not open")
	}
	return s.memSource.Next(after)
}

func TestSourceErrorLoggedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &flakySource{memSource: newMemSource()}
		src.fails.Store(3)
		src.add(1, 1, tableA, 100)
		logs := &logRecorder{}
		u := memUplink(t, Config{PollInterval: time.Minute, Logger: slog.New(logs)}, src, newFakeIngest())
		start := time.Now()
		stop := run(t, u)
		src.wait(1)
		stop()
		if got := time.Since(start); got != 3*time.Minute {
			t.Errorf("batch left after %v, want after three polls", got)
		}
		if n := logs.count(slog.LevelError, "reading the next batch"); n != 1 {
			t.Errorf("%d buffer error logs, want 1:\n%s", n, logs)
		}
		if n := logs.count(slog.LevelInfo, "reading the buffer works again"); n != 1 {
			t.Errorf("%d buffer recovery logs, want 1:\n%s", n, logs)
		}
	})
}
