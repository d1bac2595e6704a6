package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/secretbox"
	rdb "github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/ingest/web"
)

// dashboard is the running web listener of serve, if configured.
type dashboard struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

// pruneEvery is how often serve drops 5-minute rollups past their
// retention.
const pruneEvery = time.Hour

// startDashboard starts the hot store's upkeep (pruning old 5-minute
// rollups) and, when web_listen is set, the dashboard and its HTTP
// redirect; they run until ctx is done, and cancel is called if the
// dashboard fails so serve stops as a whole rather than half. It prints
// the URL.
func startDashboard(ctx context.Context, cancel context.CancelFunc, cfg *config.Config, ca *pki.CA, db *rdb.DB, log *slog.Logger, out io.Writer) (*dashboard, error) {
	// The TOTP secrets are checked and sealed even with the dashboard
	// off: a plaintext secret from an older release must not stay at rest.
	keys, err := openTOTPKeys(ctx, cfg, db, log)
	if err != nil {
		return nil, err
	}
	d := &dashboard{}
	if cfg.WebListen == "" {
		d.wg.Go(func() { prune(ctx, db, log) })
		return d, nil
	}
	var cert tls.Certificate
	if cfg.WebCertFile != "" {
		cert, err = tls.LoadX509KeyPair(cfg.WebCertFile, cfg.WebKeyFile)
	} else {
		cert, err = ca.ServerCertificate()
	}
	if err != nil {
		return nil, fmt.Errorf("loading the dashboard's certificate: %w: check web_cert_file and web_key_file", err)
	}
	proxies, err := cfg.TrustedProxies()
	if err != nil {
		return nil, err
	}
	srv, err := web.New(web.Config{
		TrustedProxies: proxies,
		Store:          db,
		TOTPKeys:       keys,
		Logger:         log.With("component", "web"),
		TLS:            &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		CAFingerprint:  pki.FingerprintOf(ca.Certificate()),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.WebListen)
	if err != nil {
		return nil, fmt.Errorf("listening for the dashboard: %w: change web_listen or stop what holds the port", err)
	}
	var hln net.Listener
	if cfg.WebHTTPListen != "" {
		if hln, err = net.Listen("tcp", cfg.WebHTTPListen); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listening for the dashboard's HTTP redirect: %w: change web_http_listen or stop what holds the port", err)
		}
	}
	// Started once nothing here can fail any more: an error return must
	// not leave it running against a database the caller closes.
	d.wg.Go(func() { prune(ctx, db, log) })
	addr := ln.Addr().String()
	run := func(f func() error) {
		d.wg.Go(func() {
			if err := f(); err != nil {
				d.mu.Lock()
				d.errs = append(d.errs, err)
				d.mu.Unlock()
				cancel()
			}
		})
	}
	run(func() error { return srv.Serve(ctx, ln) })
	redirect := ""
	if hln != nil {
		run(func() error { return web.ServeRedirect(ctx, hln, addr, log) })
		redirect = fmt.Sprintf(" (http://%s redirects there)", hln.Addr())
	}
	log.Info("dashboard listening", "addr", addr, "redirect", redirect)
	fmt.Fprintf(out, "dashboard on https://%s/%s\n", addr, redirect)
	return d, nil
}

// openTOTPKeys loads (on first start, creates) the key sealing the TOTP
// secrets and runs the start-up pass over them: a key that did not seal
// them stops serve with an error naming the file, and a key file made just
// now for a database whose secrets another key sealed is removed again,
// so the next start gives the same error instead of a second wrong key.
func openTOTPKeys(ctx context.Context, cfg *config.Config, db *rdb.DB, log *slog.Logger) (*secretbox.Keyring, error) {
	path := cfg.TOTPKeyFile()
	keys, created, err := secretbox.LoadOrCreate(path)
	if err != nil {
		return nil, fmt.Errorf("loading the TOTP key: %w: set web_totp_key_file to the key file, or fix the one named", err)
	}
	if created {
		log.Info("made the key that seals the dashboard's TOTP secrets: back it up apart from the database", "key_file", path, "key_id", keys.CurrentID())
	}
	rep, err := web.PrepareTOTPSecrets(ctx, db, keys, log.With("component", "web"))
	if err != nil {
		if created && errors.Is(err, web.ErrWrongTOTPKey) {
			os.Remove(path)
		}
		return nil, err
	}
	if rep.Upgraded > 0 {
		if _, err := db.Audit(ctx, "serve", "totp_seal_upgrade", path, fmt.Sprintf("sealed %d plaintext TOTP secrets under key %s", rep.Upgraded, rep.KeyID)); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// wait waits for the dashboard to stop and returns its errors.
func (d *dashboard) wait() []error {
	d.wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.errs
}

// prune deletes 5-minute rollups older than store.Keep5Min, and the
// record of batches folded in before store.KeepObserved, now and every
// pruneEvery until ctx is done. A failure is logged and tried again next
// time: it costs disk, not data (the hourly rows stay).
func prune(ctx context.Context, db *rdb.DB, log *slog.Logger) {
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		n, err := db.PruneRollups(ctx, rdb.Res5Min, time.Now().Add(-rdb.Keep5Min))
		if err == nil {
			_, err = db.PruneObserved(ctx, time.Now().Add(-rdb.KeepObserved))
		}
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("pruning the hot store failed; trying again in an hour", "err", err)
		case n > 0:
			log.Info("pruned old 5-minute rollups", "rows", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
