package enroll

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// Uplink is what the renewer needs from the agent's uplink: the renewal request
// over the agent's mTLS transport and a way to make the next connection
// present the new certificate.
type Uplink interface {
	RequestRenewal(ctx context.Context, request []byte) (int, []byte, error)
	CertificateRotated()
}

// Renewal timing. Renewal starts at two thirds of the lifetime, moved by up
// to a twentieth either way so a fleet enrolled in one afternoon does not
// renew in one second; a failure is retried after a jittered delay that
// doubles up to retryMax, leaving a week-long certificate days of retries.
const (
	retryBase = time.Minute
	retryMax  = time.Hour
)

// Renewer keeps the agent's certificate fresh.
type Renewer struct {
	// Dir is the certificate directory (agent.crt, agent.key, ca.crt).
	Dir string
	// Cert is the certificate the uplink presents; the renewer replaces it.
	Cert *atomic.Pointer[tls.Certificate]
	// Up sends the renewal and is told of the rotation.
	Up Uplink
	// Log receives what happened; required.
	Log *slog.Logger
	// Now and Rand are the clock and the jitter source (time.Now and
	// rand.Int64N when nil); tests replace them.
	Now  func() time.Time
	Rand func(int64) int64
}

func (r *Renewer) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Renewer) rand(n int64) int64 {
	if n <= 0 {
		return 0
	}
	if r.Rand != nil {
		return r.Rand(n)
	}
	return rand.Int64N(n)
}

// RenewAt is when the certificate leaf should be renewed.
func (r *Renewer) RenewAt(notBefore, notAfter time.Time) time.Time {
	life := notAfter.Sub(notBefore)
	spread := life / 20
	return notBefore.Add(life*2/3 - spread + time.Duration(r.rand(int64(2*spread)+1)))
}

// Run renews the certificate whenever it is due until ctx is done.
func (r *Renewer) Run(ctx context.Context) error {
	failures := 0
	for {
		leaf := r.Cert.Load().Leaf
		wait := r.RenewAt(leaf.NotBefore, leaf.NotAfter).Sub(r.now())
		if failures > 0 {
			wait = min(retryBase<<min(failures-1, 10), retryMax)
			wait = wait/2 + time.Duration(r.rand(int64(wait/2)))
		}
		if wait > 0 {
			r.Log.Debug("next certificate renewal", "in", wait.Round(time.Second), "not_after", leaf.NotAfter)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		if err := r.RenewOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			left := leaf.NotAfter.Sub(r.now())
			lvl := slog.LevelWarn
			if left < 24*time.Hour {
				lvl = slog.LevelError
			}
			r.Log.Log(ctx, lvl, "renewing the agent certificate failed; retrying", "err", err, "failures", failures, "expires_in", left.Round(time.Minute))
			continue
		}
		if failures > 0 {
			r.Log.Info("certificate renewal recovered", "after_failures", failures)
		}
		failures = 0
	}
}

// RenewOnce makes a new key, asks the ingest for a certificate for it,
// stores the pair and makes the uplink use it.
func (r *Renewer) RenewOnce(ctx context.Context) error {
	key, csr, err := pki.NewAgentKey()
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]any{"csr": csr})
	status, data, err := r.Up.RequestRenewal(ctx, body)
	if err != nil {
		return fmt.Errorf("asking the ingest to renew: %w", err)
	}
	var rep reply
	if err := json.Unmarshal(data, &rep); err != nil {
		return fmt.Errorf("renewal: %d with an answer that is not JSON", status)
	}
	if status != http.StatusOK {
		return fmt.Errorf("renewal refused: %s (%d %s)", rep.Error, status, rep.Code)
	}
	nb, err := pki.NewBundle(key, []byte(rep.Certificate), nil)
	if err != nil {
		return fmt.Errorf("renewal: %w", err)
	}
	oldID, err := pki.IdentityFromCert(r.Cert.Load().Leaf)
	if err != nil {
		return err
	}
	if nb.Identity != oldID {
		return fmt.Errorf("the renewed certificate names %s, not %s: refusing it", nb.Identity, oldID)
	}
	if err := pki.RotateAgentCert(r.Dir, key, []byte(rep.Certificate)); err != nil {
		return err
	}
	cert, _, _, err := pki.LoadAgentBundle(r.Dir)
	if err != nil {
		return fmt.Errorf("loading the renewed certificate: %w", err)
	}
	r.Cert.Store(&cert)
	r.Up.CertificateRotated()
	r.Log.Info("agent certificate renewed", "serial", pki.SerialHex(cert.Leaf), "not_after", cert.Leaf.NotAfter)
	return nil
}
