package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/sightglass-bms/sightglass/agent/buffer"
	"github.com/sightglass-bms/sightglass/agent/poll"
	"github.com/sightglass-bms/sightglass/agent/uplink"
)

// Status is what the running agent reports on its unix socket.
type Status struct {
	Agent     string             `json:"agent"`
	Site      string             `json:"site"`
	Version   string             `json:"version"`
	StartedAt time.Time          `json:"started_at"`
	Buffer    buffer.Stats       `json:"buffer"`
	Uplink    uplink.Stats       `json:"uplink"`
	Devices   []poll.DeviceStats `json:"devices"`
}

func (a *Agent) status() Status {
	return Status{
		Agent: a.identity.Agent, Site: a.identity.Site, Version: a.version, StartedAt: a.started,
		Buffer: a.buf.Stats(), Uplink: a.up.Stats(), Devices: a.sched.Stats(),
	}
}

// listenStatus opens the status socket. A socket file left by a crashed agent
// is replaced; one that still answers means another agent is running.
func listenStatus(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the status socket's directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("status socket %s answers: another agent is running with this data directory; stop it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale status socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("opening status socket %s: %w", path, err)
	}
	// Owner and group only: status shows device health an outsider need not see.
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting status socket %s: %w", path, err)
	}
	return ln, nil
}

func serveStatus(ctx context.Context, ln net.Listener, a *Agent, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(a.status()); err != nil {
			log.Debug("writing status", "err", err)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("status socket: %w", err)
	}
	return nil
}

// FetchStatus asks the agent listening on socket for its status.
func FetchStatus(ctx context.Context, socket string) (Status, error) {
	client := &http.Client{Transport: &http.Transport{
		// One question per call: a kept-alive connection would sit in the
		// agent until it timed out, and a script polling status would pile
		// them up.
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/status", nil)
	if err != nil {
		return Status{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Status{}, fmt.Errorf("asking the agent at %s for its status (is it running? is this its data directory?): %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return Status{}, fmt.Errorf("agent status: %s: %s", resp.Status, b)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return Status{}, fmt.Errorf("decoding the agent's status: %w", err)
	}
	return st, nil
}
