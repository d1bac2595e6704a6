package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/observequeue"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/server"
	rdb "github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

func newServeCmd() *cobra.Command {
	var configPath, dataDir, addrFile string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Accept batches from agents and archive them",
		Long: `serve runs the agent listener (TLS 1.3, client certificates from the CA) and,
when internal_listen is set, the plain-HTTP /healthz and /readyz endpoints,
and, when web_listen is set, the dashboard (HTTPS; web_http_listen redirects
plain HTTP to it), until interrupted (SIGINT or SIGTERM); in-flight batches
are finished first. Every stored batch updates the dashboard's hot store; a
batch the hot store fails on (database locked, disk full) is recorded in the
archive under _observe/ and retried in the background until it is taken, also
after a restart (the pending count is on /healthz).

Without --config it uses the built-in configuration: listen on
127.0.0.1:8443, the CA in DATA/ca and the archive in DATA/archive, where DATA
is --data-dir. Relative paths in a --config file are relative to the file.

With store.kind azure the archive is an Azure Blob Storage container that
every replica shares, reached with a token credential (client-certificate,
managed-identity or workload-identity; see ingest/blob/azure/README.md).
While the store does not answer, batches get 503 and stay with the agents.`,
		Example: `  # demo: built-in config, data under ./sightglass-data
  sightglass-ingest ca init
  sightglass-ingest serve

  # production
  sightglass-ingest serve --config /etc/sightglass/ingest.yaml

  # tests and scripts: any free port, written to a file once listening
  sightglass-ingest serve --config ingest.yaml --addr-file /run/sightglass/addr`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg *config.Config
			var err error
			if configPath != "" {
				if cmd.Flags().Changed("data-dir") {
					return errors.New("--data-dir applies only to the built-in config: set ca_dir and store.dir in the --config file instead")
				}
				cfg, err = config.LoadFile(configPath)
			} else {
				cfg, err = config.Default(dataDir)
			}
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: cfg.Level()}))

			ca, err := pki.Load(cfg.CADir)
			if err != nil {
				return err
			}
			store, storeName, err := openStore(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			db, err := rdb.Open(cmd.Context(), cfg.Database, rdb.Options{})
			if err != nil {
				return err
			}
			defer db.Close()
			// The agent registry reads the same database through a pool
			// of connections of its own. Every handshake and request
			// checks it for revocation within a few seconds, and a write
			// waiting for SQLite's write lock holds its connection while
			// it waits: the hot store's writes, one for every batch, held
			// all of a shared pool's under load and good agents were
			// refused (503, or at the handshake). Reads never wait for a
			// writer in WAL mode, so a pool apart keeps them quick.
			reg, err := rdb.Open(cmd.Context(), cfg.Database, rdb.Options{})
			if err != nil {
				return err
			}
			defer reg.Close()
			// Batches the hot store fails on are recorded in the archive
			// and retried, so the dashboard does not silently miss them.
			qstore, ok := store.(observequeue.Store)
			if !ok {
				return fmt.Errorf("the archive (%T) cannot delete blobs, which the hot store's retry queue needs: this is a bug; report it", store)
			}
			scfg, qopts := serveConfigs(cfg, reg, db, batchLimits)
			queue, err := observequeue.New(qstore, db, log, qopts)
			if err != nil {
				return err
			}
			scfg.ObserveQueue = queue
			srv, err := server.New(scfg, store, ca, log)
			if err != nil {
				return err
			}

			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listening for agents: %w: change listen or stop what holds the port", err)
			}
			defer ln.Close()
			var iln net.Listener
			internal := "disabled"
			if cfg.InternalListen != "" {
				if iln, err = net.Listen("tcp", cfg.InternalListen); err != nil {
					return fmt.Errorf("listening for health checks: %w: change internal_listen or stop what holds the port", err)
				}
				defer iln.Close()
				internal = "http://" + iln.Addr().String()
			}
			addr := ln.Addr().String()
			if addrFile != "" {
				if err := atomicfile.Write(addrFile, []byte(addr+"\n"), 0o644); err != nil {
					return fmt.Errorf("writing --addr-file: %w", err)
				}
				defer os.Remove(addrFile)
			}
			log.Info("listening", "addr", addr, "internal", internal, "ca_dir", cfg.CADir, "store", storeName)
			fmt.Fprintf(cmd.OutOrStdout(), "listening on https://%s (health: %s)\n", addr, internal)

			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			dash, err := startDashboard(ctx, cancel, cfg, ca, db, log, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			// Anchor the audit log in the archive every few minutes and
			// at shutdown, so `audit verify --config` can tell deleted or
			// rewritten entries (store.RunAuditAnchors).
			anchored := make(chan struct{})
			go func() {
				defer close(anchored)
				db.RunAuditAnchors(ctx, store, rdb.DefaultAnchorEvery, log)
			}()
			// Retry what an earlier run left and what fails from now on.
			retried := make(chan struct{})
			go func() {
				defer close(retried)
				queue.Run(ctx)
			}()
			err = srv.Run(ctx, ln, iln)
			cancel()
			<-anchored
			<-retried
			if err := errors.Join(append(dash.wait(), err)...); err != nil {
				return err
			}
			st := srv.Stats()
			log.Info("stopped", "batches_stored", st.BatchesStored, "batches_duplicate", st.BatchesDuplicate,
				"samples", st.Samples, "bytes", st.Bytes, "refused", st.Refused,
				"observe_errors", st.ObserveErrors, "observe_pending", st.ObservePending)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "configuration file (default: the built-in one)")
	f.StringVar(&dataDir, "data-dir", defaultDataDir, "data directory of the built-in config")
	f.StringVar(&addrFile, "addr-file", "", "write the agent listener's host:port to this file once listening")
	return cmd
}

// batchLimits bound the batch decoder of serve: the decoder's defaults,
// which every batch an agent's encoder makes fits.
var batchLimits = batch.Limits{}

// serveConfigs makes the agent server's Config (without its ObserveQueue,
// which needs the queue made from the options) and its observe queue's
// Options from cfg, with the same limits for both: the queue decodes the
// batches the server accepted again, so a limit raised for the server
// alone would make the queue abandon exactly the batches that needed it.
// The registry and the hot store are two handles on one database (see
// serve), so the hot store's writes never take the registry's connections.
func serveConfigs(cfg *config.Config, registry, hot *rdb.DB, limits batch.Limits) (server.Config, observequeue.Options) {
	return server.Config{
			MaxBatchBytes: cfg.MaxBatchBytes,
			MaxSkew:       cfg.MaxSkew,
			MaxAge:        cfg.MaxAge,
			Limits:        limits,
			Registry:      registry,
			AgentValidity: cfg.AgentValidity,
			CatalogPolicy: cfg.CatalogPolicy,
			// The dashboard's latest values and rollups, written as
			// batches arrive.
			Observer: hot,
		}, observequeue.Options{
			Limits: limits,
		}
}
