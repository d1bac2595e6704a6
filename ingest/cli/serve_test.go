package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/server"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// serving is a `serve` command running in-process.
type serving struct {
	addr, internal string
	stop           func() error // cancels it and returns its error
}

// startServe runs serve with args and waits for the line saying where it
// listens, which it prints once both listeners are open.
func startServe(t *testing.T, args ...string) serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var errOut bytes.Buffer
	root := New()
	root.SetArgs(append([]string{"serve"}, args...))
	root.SetOut(pw)
	root.SetErr(&errOut)
	done := make(chan error, 1)
	go func() {
		err := root.ExecuteContext(ctx)
		pw.CloseWithError(fmt.Errorf("serve returned: %v", err))
		done <- err
	}()
	stopped := false
	stop := func() error {
		cancel()
		stopped = true
		return <-done
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("serve printed no address: %v\nstderr:\n%s", err, errOut.String())
	}
	go io.Copy(io.Discard, pr) // nothing else is expected; never block serve
	m := regexp.MustCompile(`^listening on https://(\S+) \(health: (?:http://)?(\S+)\)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("unexpected first line %q", line)
	}
	return serving{addr: m[1], internal: m[2], stop: stop}
}

func writeConfig(t *testing.T, dir, yaml string) string {
	t.Helper()
	p := filepath.Join(dir, "ingest.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEndToEnd drives the commands as an operator would: make a CA, issue
// an agent, serve, upload a batch with the agent's bundle, read it back.
func TestEndToEnd(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, _, err := run(t, ctx, "ca", "init", "--dir", filepath.Join(dir, "ca")); err != nil {
		t.Fatalf("ca init: %v", err)
	}
	bundle := filepath.Join(dir, "bundle")
	if _, _, err := run(t, ctx, "agents", "issue", "--ca-dir", filepath.Join(dir, "ca"), "--db", filepath.Join(dir, "ingest.db"), "--tenant", "acme", "--site", "s1", "--out", bundle); err != nil {
		t.Fatalf("agents issue: %v", err)
	}
	cfg := writeConfig(t, dir, "listen: 127.0.0.1:0\ninternal_listen: 127.0.0.1:0\nca_dir: ca\ndatabase: ingest.db\nstore:\n  kind: dir\n  dir: archive\nlog_level: debug\n")
	addrFile := filepath.Join(dir, "addr")
	srv := startServe(t, "--config", cfg, "--addr-file", addrFile)

	if b, err := os.ReadFile(addrFile); err != nil || strings.TrimSpace(string(b)) != srv.addr {
		t.Errorf("--addr-file holds %q (err %v), want %s", b, err, srv.addr)
	}
	resp, err := http.Get("http://" + srv.internal + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %d", resp.StatusCode)
	}

	cert, roots, id, err := pki.LoadAgentBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: pki.ClientTLSConfig(cert, roots), ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	end := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	want := []telemetry.Sample{
		{PointID: 0xa1, Time: end.Add(-time.Minute).UnixMilli(), Value: 21.5},
		{PointID: 0xa1, Time: end.UnixMilli(), Value: 21.75},
		{PointID: 0xb2, Time: end.UnixMilli(), Value: 0, Status: telemetry.StatusCommFailure},
	}
	enc, err := batch.Encode(&batch.Batch{
		Header:  batch.Header{AgentID: id.Agent, Site: id.Site, Seq: 1, SentAt: end.UnixMilli()},
		Samples: want,
	})
	if err != nil {
		t.Fatal(err)
	}
	send := func(method, path string, body []byte) int {
		t.Helper()
		req, err := http.NewRequest(method, "https://"+srv.addr+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(server.SentAtHeader, strconv.FormatInt(time.Now().UnixMilli(), 10))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if code := send(http.MethodPut, "/v1/tables/"+enc.TableHash.String(), enc.Table); code != http.StatusCreated {
		t.Fatalf("PUT table: %d", code)
	}
	if code := send(http.MethodPost, "/v1/batches", enc.Data); code != http.StatusOK {
		t.Fatalf("POST batch: %d", code)
	}
	if err := srv.stop(); err != nil {
		t.Fatalf("serve after SIGINT-like cancel: %v", err)
	}
	if _, err := os.Stat(addrFile); !os.IsNotExist(err) {
		t.Errorf("--addr-file left behind after shutdown (err %v)", err)
	}

	out, stderr, err := run(t, ctx, "archive", "cat", "--store-dir", filepath.Join(dir, "archive"), "acme/")
	if err != nil {
		t.Fatalf("archive cat: %v\n%s", err, stderr)
	}
	var lines []string
	for _, s := range want {
		lines = append(lines, sampleJSON(s))
	}
	if got := strings.Split(strings.TrimSpace(out), "\n"); strings.Join(got, "\n") != strings.Join(lines, "\n") {
		t.Errorf("archive cat printed\n%s\nwant\n%s", out, strings.Join(lines, "\n"))
	}
}

// sampleJSON is the line archive cat prints for s, spelled out by hand.
func sampleJSON(s telemetry.Sample) string {
	v, _ := json.Marshal(s.Value)
	return fmt.Sprintf(`{"point":"%016x","time":"%s","value":%s,"status":"%s"}`,
		s.PointID, time.UnixMilli(s.Time).UTC().Format(time.RFC3339Nano), v, s.Status)
}

func TestServeRefuses(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown config key", []string{"--config", writeConfig(t, t.TempDir(), "ca_dir: x\nstore:\n  dir: y\nlisen: 1\n")}, []string{"line 4", "lisen"}},
		{"invalid config", []string{"--config", writeConfig(t, t.TempDir(), "ca_dir: x\nstore:\n  kind: s3\n")}, []string{":3: store.kind"}},
		{"missing config", []string{"--config", filepath.Join(dir, "nope.yaml")}, []string{"nope.yaml"}},
		{"data dir with config", []string{"--config", writeConfig(t, t.TempDir(), ""), "--data-dir", dir}, []string{"--data-dir"}},
		{"no CA in the data dir", []string{"--data-dir", t.TempDir()}, []string{"ca init"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, context.Background(), append([]string{"serve"}, tt.args...)...)
			if err == nil {
				t.Fatal("serve succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestServePortTaken(t *testing.T) {
	caDir := newCA(t)
	first := startServe(t, "--config", writeConfig(t, t.TempDir(), fmt.Sprintf("listen: 127.0.0.1:0\nca_dir: %s\ndatabase: db\nstore:\n  dir: a\n", caDir)))
	_, _, err := run(t, context.Background(), "serve", "--config",
		writeConfig(t, t.TempDir(), fmt.Sprintf("listen: %s\nca_dir: %s\ndatabase: db\nstore:\n  dir: a\n", first.addr, caDir)))
	if err == nil || !strings.Contains(err.Error(), "listening for agents") {
		t.Errorf("second serve on %s: err = %v, want a listen error", first.addr, err)
	}
	if err := first.stop(); err != nil {
		t.Errorf("first serve: %v", err)
	}
}
