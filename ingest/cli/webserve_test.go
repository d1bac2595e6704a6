package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
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

// TestServeDashboard runs serve with the dashboard and its redirect, signs
// in over HTTPS with the CA's certificate and finds a batch uploaded by an
// agent in the building's live values: the Observer is wired.
func TestServeDashboard(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	caDir, db := filepath.Join(dir, "ca"), filepath.Join(dir, "ingest.db")
	if _, _, err := run(t, ctx, "ca", "init", "--dir", caDir); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	if _, _, err := run(t, ctx, "agents", "issue", "--ca-dir", caDir, "--db", db, "--tenant", "acme", "--site", "s1", "--out", bundle); err != nil {
		t.Fatal(err)
	}
	const pw = "a long and unusual passphrase"
	if _, err := runIn(t, pw+"\n", "users", "add", "eng", "--role", "engineer", "--site", "acme/s1", "--password-stdin", "--db", db); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, "listen: 127.0.0.1:0\nweb_listen: 127.0.0.1:0\nweb_http_listen: 127.0.0.1:0\nca_dir: ca\ndatabase: ingest.db\nstore:\n  kind: dir\n  dir: archive\n")

	sctx, cancel := context.WithCancel(ctx)
	pr, pwr := io.Pipe()
	root := New()
	root.SetArgs([]string{"serve", "--config", cfg})
	root.SetOut(pwr)
	root.SetErr(io.Discard)
	done := make(chan error, 1)
	go func() {
		err := root.ExecuteContext(sctx)
		pwr.CloseWithError(fmt.Errorf("serve returned: %v", err))
		done <- err
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	rd := bufio.NewReader(pr)
	var agentAddr, webAddr, httpAddr string
	for webAddr == "" {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("serve output: %v", err)
		}
		if m := regexp.MustCompile(`^listening on https://(\S+)`).FindStringSubmatch(line); m != nil {
			agentAddr = m[1]
		}
		if m := regexp.MustCompile(`^dashboard on https://(\S+)/ \(http://(\S+) redirects there\)`).FindStringSubmatch(line); m != nil {
			webAddr, httpAddr = m[1], m[2]
		}
	}
	go io.Copy(io.Discard, rd)

	// An agent uploads one batch.
	cert, roots, id, err := pki.LoadAgentBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	atr := &http.Transport{TLSClientConfig: pki.ClientTLSConfig(cert, roots), ForceAttemptHTTP2: true}
	defer atr.CloseIdleConnections()
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	enc, err := batch.Encode(&batch.Batch{Header: batch.Header{AgentID: id.Agent, Site: id.Site, Seq: 1, SentAt: at.UnixMilli()},
		Samples: []telemetry.Sample{{PointID: 0xa1, Time: at.UnixMilli(), Value: 21.5}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []struct {
		method, path string
		body         []byte
	}{{"PUT", "/v1/tables/" + enc.TableHash.String(), enc.Table}, {"POST", "/v1/batches", enc.Data}} {
		r, _ := http.NewRequest(req.method, "https://"+agentAddr+req.path, bytes.NewReader(req.body))
		r.Header.Set(server.SentAtHeader, strconv.FormatInt(time.Now().UnixMilli(), 10))
		resp, err := (&http.Client{Transport: atr}).Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s: %d", req.method, req.path, resp.StatusCode)
		}
	}

	// Plain HTTP: a permanent redirect to the dashboard and nothing else.
	nr := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := nr.Get("http://" + httpAddr + "/b/acme/s1?q=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://"+webAddr+"/b/acme/s1?q=x" {
		t.Errorf("http redirect: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}

	// The browser trusts the CA; sign in and see the live value.
	jar, _ := cookiejar.New(nil)
	wtr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer wtr.CloseIdleConnections()
	wc := &http.Client{Transport: wtr, Jar: jar}
	get := func(path string) string {
		t.Helper()
		resp, err := wc.Get("https://" + webAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.Header.Get("Strict-Transport-Security") == "" {
			t.Errorf("%s: no HSTS", path)
		}
		return string(b)
	}
	tok := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(get("/login"))
	if tok == nil {
		t.Fatal("no login form")
	}
	resp, err = wc.PostForm("https://"+webAddr+"/login", url.Values{"csrf": {tok[1]}, "name": {"eng"}, "password": {pw}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if page := get("/b/acme/s1"); !strings.Contains(page, "00000000000000a1") || !strings.Contains(page, "21.5") {
		t.Errorf("the building page lacks the uploaded value:\n%s", page)
	}
}
