package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"time"
)

// Password checks share the process with the agents' batch listener, and
// each argon2id check holds 19 MiB for tens of milliseconds: sixty
// concurrent sign-ins for unknown names took the process from 49 MB to a
// gigabyte. A semaphore bounds them; a request that cannot get a slot
// soon is answered 503 with Retry-After rather than queued without end.

// DefaultPasswordCheckWait is how long a sign-in waits for a free slot.
const DefaultPasswordCheckWait = 2 * time.Second

// busyRetryAfter is what a 503 for want of a slot tells the browser.
const busyRetryAfter = 2 * time.Second

// errBusy means no password check could start in time.
var errBusy = errors.New("too many password checks at once")

// defaultPasswordChecks is twice the CPUs Go may use: argon2id is CPU
// bound, so more at once only adds memory, not throughput.
func defaultPasswordChecks() int { return 2 * runtime.GOMAXPROCS(0) }

// hashSlot waits up to cfg.PasswordCheckWait for a password-check slot and
// returns its release, or an error wrapping errBusy (or the context's
// error when the client went away).
func (s *Server) hashSlot(ctx context.Context) (func(), error) {
	select {
	case s.hashSem <- struct{}{}:
		return func() { <-s.hashSem }, nil
	default:
	}
	t := time.NewTimer(s.cfg.PasswordCheckWait)
	defer t.Stop()
	select {
	case s.hashSem <- struct{}{}:
		return func() { <-s.hashSem }, nil
	case <-t.C:
		return nil, fmt.Errorf("waiting %v for one of %d password-check slots: %w", s.cfg.PasswordCheckWait, cap(s.hashSem), errBusy)
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a password-check slot: %w", ctx.Err())
	}
}

// hash hashes a new password in a slot.
func (s *Server) hash(ctx context.Context, pw string) (string, error) {
	release, err := s.hashSlot(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	return HashPassword(pw, s.cfg.HashParams)
}

// busy answers a request whose password check could not run: 503 with
// Retry-After when the slots were full, else a server error.
func (s *Server) busy(w http.ResponseWriter, r *http.Request, err error) {
	if !errors.Is(err, errBusy) {
		s.serverError(w, r, err)
		return
	}
	s.log.Warn("refused a password check: every slot busy", "path", r.URL.Path, "slots", cap(s.hashSem))
	w.Header().Set("Retry-After", strconv.Itoa(int(busyRetryAfter/time.Second)))
	s.errorPage(w, r, http.StatusServiceUnavailable, "The server is busy checking other sign-ins. Wait a moment and try again.")
}
