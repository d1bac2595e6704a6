package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// TestLoadManyAgentsIntegration has 200 agents, each with its own
// certificate, post batches concurrently for a bounded time while others
// send malformed, oversized or replayed batches, or connect with revoked or
// foreign certificates: every good batch is stored once, every bad request
// refused, and the server's memory stays bounded.
func TestLoadManyAgentsIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: skipped with -short")
	}
	const good, bad, perAgent = 200, 40, 3
	e := newTrustEnv(t)
	type agent struct {
		id     string
		client *http.Client
	}
	enroll := func(n int) []agent {
		out := make([]agent, n)
		for i := range out {
			c, er, _ := e.enroll(e.token("s1", time.Hour))
			out[i] = agent{er.Agent, c}
		}
		return out
	}
	goods, bads := enroll(good), enroll(bad)
	for _, a := range bads[:10] {
		if _, err := e.db.Revoke(context.Background(), a.id, "load test"); err != nil {
			t.Fatal(err)
		}
	}
	other, err := pki.Init(t.TempDir(), pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.NewAgentBundle(tenant, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	fcert, _ := tls.X509KeyPair(foreign.CertPEM, foreign.KeyPEM)
	foreignClient := clientWith(t, pki.ClientTLSConfig(fcert, e.ca.Pool()))

	var stored, refused, unexpected atomic.Int64
	post := func(c *http.Client, body []byte) (int, error) {
		req, _ := http.NewRequest(http.MethodPost, e.base+"/v1/batches", bytes.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, a := range goods {
		wg.Go(func() {
			for seq := range uint64(perAgent) {
				enc := e.encode(a.id, seq+1, samples(20, now))
				put, _ := http.NewRequest(http.MethodPut, e.base+"/v1/tables/"+enc.TableHash.String(), bytes.NewReader(enc.Table))
				if resp, err := a.client.Do(put.WithContext(ctx)); err == nil {
					resp.Body.Close()
				}
				st, err := post(a.client, enc.Data)
				switch {
				case err == nil && st == http.StatusOK:
					stored.Add(1)
				default:
					unexpected.Add(1)
					t.Errorf("good agent %s seq %d: %d %v", a.id, seq+1, st, err)
				}
			}
		})
	}
	for i, a := range bads {
		wg.Go(func() {
			var body []byte
			switch {
			case i < 10: // revoked: refused at the handshake or with 403
				body = e.encode(a.id, 1, samples(5, now)).Data
			case i < 20: // malformed
				body = []byte(fmt.Sprintf("SGB\x01not a batch %d", i))
			case i < 30: // oversized
				body = make([]byte, DefaultMaxBatchBytes+1)
			default: // a replay under a seq already stored, with other bytes
				first := e.encode(a.id, 1, samples(5, now))
				put, _ := http.NewRequest(http.MethodPut, e.base+"/v1/tables/"+first.TableHash.String(), bytes.NewReader(first.Table))
				if resp, err := a.client.Do(put); err == nil {
					resp.Body.Close()
				}
				if st, err := post(a.client, first.Data); err != nil || st != http.StatusOK {
					t.Errorf("first batch of the replaying agent: %d %v", st, err)
				}
				second := e.encode(a.id, 1, samples(6, now))
				put, _ = http.NewRequest(http.MethodPut, e.base+"/v1/tables/"+second.TableHash.String(), bytes.NewReader(second.Table))
				if resp, err := a.client.Do(put); err == nil {
					resp.Body.Close()
				}
				body = second.Data
			}
			st, err := post(a.client, body)
			if err == nil && st < 400 {
				unexpected.Add(1)
				t.Errorf("bad request %d from %s was accepted: %d", i, a.id, st)
				return
			}
			refused.Add(1)
		})
	}
	wg.Go(func() {
		// Go's client withholds a certificate the server's CA list does
		// not name, so this is refused as anonymous (401), or at the
		// handshake by a client that sends it anyway.
		if st, err := post(foreignClient, e.encode("a", 1, samples(3, now)).Data); err == nil && st < 400 {
			t.Errorf("a foreign certificate was accepted: %d", st)
		}
		refused.Add(1)
	})
	wg.Wait()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if got := stored.Load(); got != good*perAgent {
		t.Errorf("%d good batches stored, want %d", got, good*perAgent)
	}
	if got := refused.Load(); got != bad+1 {
		t.Errorf("%d bad requests refused, want %d", got, bad+1)
	}
	// The whole test process, 240 TLS clients included, in a bounded heap.
	if ms.HeapInuse > 1<<30 {
		t.Errorf("heap in use %d MiB after the load", ms.HeapInuse>>20)
	}
	batches := 0
	for _, n := range e.list() {
		if len(n) > 4 && n[len(n)-4:] == ".sgb" {
			batches++
		}
	}
	if want := good*perAgent + (bad - 30); batches != want { // the replaying agents' first batches
		t.Errorf("%d batch blobs, want %d", batches, want)
	}
	t.Logf("stored %d, refused %d, heap in use %d MiB", stored.Load(), refused.Load(), ms.HeapInuse>>20)
}
