package server

import (
	"context"
	"net/http"
)

// readyProbePrefix is listed to ask the store whether it answers; no blob
// lives under it, so the probe is cheap however large the archive.
const readyProbePrefix = "_ready/"

// Pinger is a blob store that can say cheaply whether it answers; /readyz
// uses it when the store has it, and a List of an empty prefix otherwise.
type Pinger interface {
	Ping(ctx context.Context) error
}

type statusReply struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// ObservePending is on /healthz with an ObserveQueue: batches the
	// hot store missed and will be given again. It does not make the
	// node unhealthy: the batches are archived, and the node still
	// takes new ones.
	ObservePending *int `json:"observe_pending,omitempty"`
}

// internalHandler serves /healthz and /readyz.
func (s *Server) internalHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeRefusal(w, refuse(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "use GET on %s", r.URL.Path))
			return
		}
		switch r.URL.Path {
		case "/healthz":
			rep := statusReply{Status: "ok"}
			if s.cfg.ObserveQueue != nil {
				n := s.cfg.ObserveQueue.Pending()
				rep.ObservePending = &n
			}
			writeJSON(w, http.StatusOK, rep)
		case "/readyz":
			if s.draining.Load() {
				writeJSON(w, http.StatusServiceUnavailable, statusReply{Status: "draining", Error: "shutting down"})
				return
			}
			if err := s.ping(r.Context()); err != nil {
				s.log.Warn("readiness check: blob store does not answer", "err", err)
				writeJSON(w, http.StatusServiceUnavailable, statusReply{Status: "unavailable", Error: "blob store does not answer"})
				return
			}
			writeJSON(w, http.StatusOK, statusReply{Status: "ok"})
		default:
			writeRefusal(w, refuse(http.StatusNotFound, CodeNotFound, "no such path %q: try /healthz or /readyz", r.URL.Path))
		}
	})
}

func (s *Server) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if p, ok := s.store.(Pinger); ok {
		return p.Ping(ctx)
	}
	_, err := s.store.List(ctx, readyProbePrefix)
	return err
}
