package uplink

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/batch"
)

var (
	tableA = batch.TableHash{0xa, 1, 2, 3}
	tableB = batch.TableHash{0xb, 4, 5, 6}
)

func TestUpload(t *testing.T) {
	tests := []struct {
		name        string
		maxInFlight int
		inOrder     bool
	}{
		{"one at a time, in order", 1, true},
		{"pipelined", 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.cfg.MaxInFlight = tt.maxInFlight
			e.ingest.tables[tableA.String()] = []byte("table A")
			const n = 20
			e.src.add(1, n, tableA, 300)
			u, err := New(e.cfg, e.src)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, u)
			e.src.wait(n)
			stop()

			acked, rejected, pending := e.src.snapshot()
			if len(acked) != n || len(rejected) != 0 || pending != 0 {
				t.Fatalf("acked %v, rejected %v, pending %d; want all %d acked", acked, rejected, pending, n)
			}
			e.ingest.mu.Lock()
			defer e.ingest.mu.Unlock()
			for seq := uint64(1); seq <= n; seq++ {
				if e.ingest.posts[seq] != 1 {
					t.Errorf("batch %d posted %d times, want 1", seq, e.ingest.posts[seq])
				}
			}
			if tt.inOrder && !slices.IsSorted(e.ingest.order) {
				t.Errorf("arrival order %v, want increasing", e.ingest.order)
			}
			if e.ingest.maxCur > tt.maxInFlight {
				t.Errorf("ingest saw %d concurrent requests, MaxInFlight is %d", e.ingest.maxCur, tt.maxInFlight)
			}
			if e.ingest.protos["HTTP/2.0"] != n {
				t.Errorf("protocols %v, want HTTP/2.0 only", e.ingest.protos)
			}
			if !slices.Equal(slices.Compact(e.ingest.cns), []string{"agent-1"}) {
				t.Errorf("client certificates %v, want agent-1", e.ingest.cns)
			}
			st := u.Stats()
			if st.Batches != n || st.Samples != 10*n || st.Bytes != 300*n || st.InFlight != 0 ||
				st.ConsecutiveFailures != 0 || st.LastSuccess.IsZero() || st.LastError != "" {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestUnknownTable(t *testing.T) {
	t.Run("uploaded then batch retried", func(t *testing.T) {
		e := newTestEnv(t)
		e.cfg.MaxInFlight = 1
		e.ingest.requireTables = true
		e.src.tables[tableA] = []byte("encoded table A")
		e.src.tables[tableB] = []byte("encoded table B")
		e.src.add(1, 3, tableA, 100)
		e.src.add(4, 5, tableB, 100)
		u, err := New(e.cfg, e.src)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, u)
		e.src.wait(5)
		stop()

		if acked, rejected, _ := e.src.snapshot(); len(acked) != 5 || len(rejected) != 0 {
			t.Fatalf("acked %v rejected %v, want 5 acked", acked, rejected)
		}
		e.ingest.mu.Lock()
		defer e.ingest.mu.Unlock()
		for h, want := range map[batch.TableHash]string{tableA: "encoded table A", tableB: "encoded table B"} {
			if got := string(e.ingest.tables[h.String()]); got != want {
				t.Errorf("table %s stored as %q, want %q", h, got, want)
			}
			if e.ingest.puts[h.String()] != 1 {
				t.Errorf("table %s put %d times, want 1", h, e.ingest.puts[h.String()])
			}
		}
		wantPosts := map[uint64]int{1: 2, 2: 1, 3: 1, 4: 2, 5: 1}
		for seq, want := range wantPosts {
			if got := e.ingest.posts[seq]; got != want {
				t.Errorf("batch %d posted %d times, want %d (422 then retry for the first of each table)", seq, got, want)
			}
		}
		if st := u.Stats(); st.Tables != 2 || st.Batches != 5 || st.ConsecutiveFailures != 0 {
			t.Errorf("stats %+v, want 2 tables, 5 batches, no failures", st)
		}
	})
	t.Run("missing from the buffer: rejected", func(t *testing.T) {
		e := newTestEnv(t)
		e.ingest.requireTables = true
		e.src.add(1, 1, tableA, 100) // no table A in the source
		u, err := New(e.cfg, e.src)
		if err != nil {
			t.Fatal(err)
		}
		run(t, u)
		e.src.wait(1)
		_, rejected, _ := e.src.snapshot()
		if !strings.Contains(rejected[1], "unknown point table") {
			t.Errorf("reject reasons %v, want batch 1 rejected for its missing table", rejected)
		}
	})
}

func TestPermanentRefusal(t *testing.T) {
	tests := []struct {
		name       string
		prepare    func(*fakeIngest)
		wantReason string
	}{
		{
			name:       "409 conflict",
			prepare:    func(f *fakeIngest) { f.stored[2] = []byte("other bytes") },
			wantReason: "different bytes already stored under seq 2",
		},
		{
			name: "400 bad request",
			prepare: func(f *fakeIngest) {
				f.before = func(w http.ResponseWriter, r *http.Request) bool {
					if r.Header.Get(SeqHeader) != "2" {
						return false
					}
					writeJSON(w, http.StatusBadRequest, map[string]string{"error": "timestamps out of window", "code": "bad_time"})
					return true
				}
			},
			wantReason: "timestamps out of window (code bad_time)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.ingest.tables[tableA.String()] = nil
			tt.prepare(e.ingest)
			e.src.add(1, 3, tableA, 100)
			u, err := New(e.cfg, e.src)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, u)
			e.src.wait(3)
			stop()
			acked, rejected, _ := e.src.snapshot()
			slices.Sort(acked)
			if !slices.Equal(acked, []uint64{1, 3}) || len(rejected) != 1 || !strings.Contains(rejected[2], tt.wantReason) {
				t.Errorf("acked %v, rejected %v; want 1 and 3 acked, 2 rejected with %q", acked, rejected, tt.wantReason)
			}
			if n := e.logs.count(slog.LevelError, "refused a batch"); n != 1 {
				t.Errorf("%d error logs about the refusal, want 1:\n%s", n, e.logs)
			}
			if st := u.Stats(); st.Rejected != 1 || st.Batches != 2 {
				t.Errorf("stats %+v, want 1 rejected, 2 batches", st)
			}
		})
	}
}

// gateListener drops every connection while down, as a dead ingest would.
type gateListener struct {
	net.Listener
	down atomic.Bool
}

func (l *gateListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || !l.down.Load() {
			return c, err
		}
		c.Close()
	}
}

func TestServerDownThenUp(t *testing.T) {
	ca := newTestCA(t, "ca")
	client := ca.issue(t, "agent-1", false)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &gateListener{Listener: inner}
	ln.down.Store(true)
	ingest := newFakeIngest()
	ingest.requireTables = true
	srv := startIngest(t, ingest, ca.issue(t, "ingest", true), ca.pool, ln, nil)
	src := newMemSource()
	src.tables[tableA] = []byte("table")
	src.add(1, 8, tableA, 1000)
	logs := &logRecorder{}
	u, err := New(Config{
		URL: srv.URL, Cert: func() (*tls.Certificate, error) { return &client, nil }, Roots: ca.pool, Proxy: noProxy,
		BackoffBase: time.Millisecond, BackoffMax: 10 * time.Millisecond, Logger: slog.New(logs),
	}, src)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, u)
	// Several failed rounds, as the uplink counts them. Counting dropped
	// connections instead is not the same: a failure is recorded only once
	// its attempt returns (after asking the refusal probe), and one whose
	// attempt began before the first success is stale and not recorded, so
	// with the ingest back up after three drops the uplink could have
	// recorded no failure at all, and rightly log neither the outage nor a
	// recovery.
	deadline := time.Now().Add(time.Minute) // bounds a hang only
	for u.Stats().ConsecutiveFailures < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the uplink recorded %d failed rounds in a minute against a dead ingest: %+v", u.Stats().ConsecutiveFailures, u.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if acked, _, _ := src.snapshot(); len(acked) != 0 {
		t.Fatalf("acked %v while the ingest was down", acked)
	}
	ln.down.Store(false)
	src.wait(8)
	stop()

	acked, rejected, pending := src.snapshot()
	if len(acked) != 8 || len(rejected) != 0 || pending != 0 {
		t.Fatalf("acked %v rejected %v pending %d, want all 8 acked", acked, rejected, pending)
	}
	ingest.mu.Lock()
	for seq := uint64(1); seq <= 8; seq++ {
		if len(ingest.stored[seq]) != 1000 {
			t.Errorf("batch %d not stored", seq)
		}
	}
	ingest.mu.Unlock()
	if n := logs.count(slog.LevelWarn, "upload failed"); n != 1 {
		t.Errorf("%d upload failure logs, want 1 (logged when it changes):\n%s", n, logs)
	}
	if n := logs.count(slog.LevelInfo, "uplink recovered after"); n != 1 {
		t.Errorf("%d recovery logs, want 1:\n%s", n, logs)
	}
	if st := u.Stats(); st.ConsecutiveFailures != 0 || st.LastError == "" || st.Batches != 8 {
		t.Errorf("stats %+v", st)
	}
}

// connectProxy is an HTTP CONNECT proxy on 127.0.0.1 that tunnels to
// loopback addresses only and records the targets.
type connectProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	targets []string
	wg      sync.WaitGroup
}

func startConnectProxy(t *testing.T) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{ln: ln}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		// Tunnels end when the uplink closes its connections: a stopped
		// uplink must hold none open.
		p.wg.Wait()
	})
	return p
}

func (p *connectProxy) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	host, _, err := net.SplitHostPort(req.Host)
	if req.Method != http.MethodConnect || err != nil || !net.ParseIP(host).IsLoopback() {
		fmt.Fprint(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, req.Host)
	p.mu.Unlock()
	up, err := net.Dial("tcp", req.Host)
	if err != nil {
		fmt.Fprint(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	fmt.Fprint(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{})
	go func() {
		io.Copy(up, br)
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

func TestProxyTunnel(t *testing.T) {
	e := newTestEnv(t)
	p := startConnectProxy(t)
	e.cfg.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: p.ln.Addr().String()})
	e.ingest.tables[tableA.String()] = nil
	e.src.add(1, 5, tableA, 100)
	u, err := New(e.cfg, e.src)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, u)
	e.src.wait(5)
	stop()
	if acked, _, _ := e.src.snapshot(); len(acked) != 5 {
		t.Errorf("acked %v, want 5", acked)
	}
	want := strings.TrimPrefix(e.server.URL, "https://")
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.targets) == 0 || slices.ContainsFunc(p.targets, func(s string) bool { return s != want }) {
		t.Errorf("proxy tunnelled to %v, want only %s", p.targets, want)
	}
}

func TestUntrustedPeer(t *testing.T) {
	tests := []struct {
		name            string
		serverCA        bool // server certificate from another CA
		clientCA        bool // client certificate from another CA
		wantErrContains string
	}{
		{"server certificate from another CA", true, false, "certificate"},
		// The ingest's refusal reaches the client as a broken pipe, a reset
		// or an h2 setup failure depending on timing: any error will do.
		{"client certificate from another CA", false, true, "Post"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, other := newTestCA(t, "ca"), newTestCA(t, "other ca")
			serverIssuer, clientIssuer := ca, ca
			if tt.serverCA {
				serverIssuer = other
			}
			if tt.clientCA {
				clientIssuer = other
			}
			client := clientIssuer.issue(t, "agent-1", false)
			hellos := make(chan struct{}, 100)
			ingest := newFakeIngest()
			srv := startIngest(t, ingest, serverIssuer.issue(t, "ingest", true), ca.pool, nil,
				func() { hellos <- struct{}{} })
			src := newMemSource()
			src.add(1, 3, tableA, 100)
			u, err := New(Config{
				URL: srv.URL, Cert: func() (*tls.Certificate, error) { return &client, nil }, Roots: ca.pool, Proxy: noProxy,
				BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond,
				MaxInFlight: 1, // one handshake per attempt: a third hello means two failures were recorded
			}, src)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, u)
			for range 3 {
				<-hellos
			}
			stop()
			if acked, rejected, pending := src.snapshot(); len(acked) != 0 || len(rejected) != 0 || pending != 3 {
				t.Errorf("acked %v, rejected %v, pending %d; want nothing acked or rejected", acked, rejected, pending)
			}
			ingest.mu.Lock()
			if len(ingest.posts) != 0 {
				t.Errorf("the ingest served %v", ingest.posts)
			}
			ingest.mu.Unlock()
			if st := u.Stats(); st.ConsecutiveFailures == 0 || !strings.Contains(st.LastError, tt.wantErrContains) {
				t.Errorf("stats %+v, want failures with an error naming the %s", st, tt.wantErrContains)
			}
		})
	}
}

func TestCertificateRotated(t *testing.T) {
	e := newTestEnv(t)
	certs := []tls.Certificate{e.ca.issue(t, "agent-old", false), e.ca.issue(t, "agent-new", false)}
	var current atomic.Int32
	e.cfg.Cert = func() (*tls.Certificate, error) { return &certs[current.Load()], nil }
	e.ingest.tables[tableA.String()] = nil
	u, err := New(e.cfg, e.src)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	e.src.add(1, 1, tableA, 100)
	u.Notify()
	e.src.wait(1)

	current.Store(1)
	u.CertificateRotated()
	e.src.add(2, 2, tableA, 100)
	u.Notify()
	e.src.wait(1)

	e.ingest.mu.Lock()
	defer e.ingest.mu.Unlock()
	if !slices.Equal(e.ingest.cns, []string{"agent-old", "agent-new"}) {
		t.Errorf("ingest saw client certificates %v, want agent-old then agent-new", e.ingest.cns)
	}
}

func TestLocalAddr(t *testing.T) {
	// All of 127.0.0.0/8 is loopback on Linux: dialing from 127.0.0.2 shows
	// that the configured source address is used.
	probe, err := net.ListenPacket("udp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("127.0.0.2 not usable here: %v", err)
	}
	probe.Close()
	e := newTestEnv(t)
	e.cfg.LocalAddr = "127.0.0.2"
	var mu sync.Mutex
	var remotes []string
	e.ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		remotes = append(remotes, r.RemoteAddr)
		mu.Unlock()
		return false
	}
	e.src.add(1, 2, tableA, 100)
	u, err := New(e.cfg, e.src)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, u)
	e.src.wait(2)
	stop()
	mu.Lock()
	defer mu.Unlock()
	for _, r := range remotes {
		if host, _, _ := net.SplitHostPort(r); host != "127.0.0.2" {
			t.Errorf("request came from %s, want 127.0.0.2", r)
		}
	}
}

// ownListeningSockets returns the TCP sockets of this process in LISTEN
// state, as "inode local_address" strings from /proc.
func ownListeningSockets(t *testing.T) map[string]bool {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	own := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			own[strings.TrimSuffix(inode, "]")] = true
		}
	}
	const listen = "0A"
	out := map[string]bool{}
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 9 && fields[3] == listen && own[fields[9]] {
				out[fields[9]+" "+fields[1]] = true
			}
		}
	}
	return out
}

func TestNoListeningSocket(t *testing.T) {
	e := newTestEnv(t)
	before := ownListeningSockets(t)
	// The scan must see the test server's own listener, or it proves nothing.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(e.server.URL, "https://"))
	var p int
	fmt.Sscan(port, &p)
	portHex := fmt.Sprintf(":%04X", p)
	if !slices.ContainsFunc(slices.Collect(maps.Keys(before)), func(s string) bool { return strings.HasSuffix(s, portHex) }) {
		t.Fatalf("the /proc scan does not see the test server listening on %s: %v", port, before)
	}
	e.ingest.tables[tableA.String()] = nil
	e.src.add(1, 4, tableA, 100)
	u, err := New(e.cfg, e.src)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	e.src.wait(4)
	// Connections to the ingest are still open (idle, HTTP/2) here.
	for s := range ownListeningSockets(t) {
		if !before[s] {
			t.Errorf("a new listening socket appeared while the uplink ran: %s", s)
		}
	}
}

// TestTwoHundredThatIsNotTheIngestsAnswer: a 2xx whose body is not the
// ingest's answer for this batch (a captive portal's page, another seq) is
// retried, not taken as stored: the batch stays until the ingest has it.
func TestTwoHundredThatIsNotTheIngestsAnswer(t *testing.T) {
	for _, tt := range []struct {
		name   string
		answer func(w http.ResponseWriter)
	}{
		{"an html page", func(w http.ResponseWriter) { w.WriteHeader(http.StatusOK); io.WriteString(w, "<html>welcome</html>") }},
		{"another batch's seq", func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, map[string]any{"status": "stored", "seq": 99})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.ingest.tables[tableA.String()] = nil
			var fooled atomic.Int32
			e.ingest.before = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodPost || fooled.Load() >= 2 {
					return false
				}
				fooled.Add(1)
				tt.answer(w)
				return true
			}
			e.src.add(1, 1, tableA, 100)
			u, err := New(e.cfg, e.src)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, u)
			e.src.wait(1)
			stop()
			acked, rejected, _ := e.src.snapshot()
			e.ingest.mu.Lock()
			_, stored := e.ingest.stored[1]
			e.ingest.mu.Unlock()
			if !stored || !slices.Equal(acked, []uint64{1}) || len(rejected) != 0 || fooled.Load() != 2 {
				t.Errorf("stored %v, acked %v, rejected %v after %d fake answers; want it stored by the ingest, then acked", stored, acked, rejected, fooled.Load())
			}
		})
	}
}
