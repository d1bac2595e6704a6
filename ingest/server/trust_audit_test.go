package server

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
)

// auditRecorder is a Registry that keeps the audit entries it is given in
// memory: a database's goroutines would outlive a synctest bubble.
type auditRecorder struct {
	Registry
	mu      sync.Mutex
	entries []store.AuditEntry
}

func (a *auditRecorder) Audit(_ context.Context, actor, action, subject, detail string) (store.AuditEntry, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := store.AuditEntry{Actor: actor, Action: action, Subject: subject, Detail: detail}
	a.entries = append(a.entries, e)
	return e, nil
}

func (a *auditRecorder) all() []store.AuditEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]store.AuditEntry(nil), a.entries...)
}

// throttleServer is a Server with only what the audit throttle needs, on
// the clock of the test's bubble.
func throttleServer() (*Server, *auditRecorder) {
	rec := &auditRecorder{}
	s := &Server{log: slog.New(slog.DiscardHandler)}
	s.cfg.CertNow, s.cfg.Registry = time.Now, rec
	return s, rec
}

// leftOut matches the count an entry gives of the refusals left out.
var leftOut = regexp.MustCompile(`\((?:and )?(\d+) more like it since the last entry`)

// countedIn is how many refusals entries stand for: each itself and the
// ones it counts as left out, less those of the entries that only count.
func countedIn(t *testing.T, entries []store.AuditEntry) int {
	t.Helper()
	n := 0
	for _, e := range entries {
		m := leftOut.FindStringSubmatch(e.Detail)
		switch {
		case m == nil:
			n++
		case m[0][1] == 'a': // "and N more": this refusal and N left out
			k, _ := strconv.Atoi(m[1])
			n += 1 + k
		default: // "N more": a run that ended, N left out
			k, _ := strconv.Atoi(m[1])
			n += k
		}
	}
	return n
}

// TestRefusalRunEndsWithItsCount: a burst of refusals that stops is
// counted in the log once its window has passed (the periodic flush), not
// only if the same caller is refused again, which a guesser that gave up
// never is; the run is then forgotten.
func TestRefusalRunEndsWithItsCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, rec := throttleServer()
		stop := s.startRefusalFlush(t.Context())
		defer stop()
		k := refusalKey{"ip:192.0.2.1", "enroll_refused", "token unknown"}
		for range 5 {
			s.auditThrottled(t.Context(), k, "anonymous:192.0.2.1", "token:ab", "token unknown")
		}
		if n := len(rec.all()); n != 1 {
			t.Fatalf("%d entries for a burst of 5, want 1", n)
		}
		time.Sleep(refusalAuditEvery + refusalFlushEvery)
		synctest.Wait()
		entries := rec.all()
		if len(entries) != 2 {
			t.Fatalf("entries %+v, want the first and one counting the 4 left out", entries)
		}
		if e := entries[1]; e.Actor != "anonymous:192.0.2.1" || e.Action != "enroll_refused" || e.Subject != "token:ab" ||
			!regexp.MustCompile(`^token unknown \(4 more like it since the last entry, the last at \S+\)$`).MatchString(e.Detail) {
			t.Errorf("ending entry %+v", e)
		}
		s.mu.Lock()
		left := len(s.refusalsAudited)
		s.mu.Unlock()
		if left != 0 {
			t.Errorf("%d runs still tracked after the window, want 0", left)
		}
	})
}

// TestRefusalCountsWrittenAtStop: when the server stops, every count not
// yet written goes to the log, whatever the age of its run; a run with
// nothing left out adds no entry.
func TestRefusalCountsWrittenAtStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, rec := throttleServer()
		stop := s.startRefusalFlush(t.Context())
		for i := range 3 {
			s.auditThrottled(t.Context(), refusalKey{"ag-1", "batch_refused", CodeBadClock}, "agent:ag-1", "ag-1", fmt.Sprintf("bad_clock: try %d", i))
		}
		s.auditThrottled(t.Context(), refusalKey{"ag-2", "batch_refused", CodeBadClock}, "agent:ag-2", "ag-2", "bad_clock: once")
		time.Sleep(time.Minute)
		stop()
		entries := rec.all()
		if len(entries) != 3 || entries[2].Actor != "agent:ag-1" || !leftOut.MatchString(entries[2].Detail) || countedIn(t, entries) != 4 {
			t.Fatalf("entries %+v, want ag-1's first, ag-2's and one counting ag-1's 2 left out (try 2 the last)", entries)
		}
		if d := entries[2].Detail; !regexp.MustCompile(`^bad_clock: try 2 \(2 more like it`).MatchString(d) {
			t.Errorf("ending entry %q does not describe the newest refusal left out", d)
		}
	})
}

// TestRefusalRunsEndWhenFull: with every run tracked, a refusal from a new
// caller ends runs whose window has passed, writing what they left out,
// and gets a run of its own instead of the shared overflow run (old runs
// that had left refusals out used to be kept for ever, so a spread-out
// flood filled every slot); FlushAudit then writes every count left, so
// no refusal goes uncounted.
func TestRefusalRunsEndWhenFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, rec := throttleServer()
		old := time.Now().Add(-refusalAuditEvery)
		s.refusalsAudited = map[refusalKey]*refusalRun{}
		for i := range maxRefusalRuns {
			who := "ip:10.0.0." + strconv.Itoa(i)
			s.refusalsAudited[refusalKey{who, "enroll_refused", "malformed token"}] = &refusalRun{
				last: old, suppressed: 3, actor: "anonymous:" + who[3:], detail: "malformed token", at: old,
			}
		}
		s.auditThrottled(t.Context(), refusalKey{"ip:192.0.2.9", "enroll_refused", "malformed token"}, "anonymous:192.0.2.9", "", "malformed token")
		entries := rec.all()
		if len(entries) < 2 || entries[len(entries)-1].Actor != "anonymous:192.0.2.9" {
			t.Fatalf("%d entries, the last %+v: want ended runs' counts, then the new caller's own", len(entries), entries[len(entries)-1])
		}
		if n := len(entries) - 1; n > refusalPruneSample {
			t.Errorf("%d runs ended by one refusal, want at most %d (a bounded cost per request)", n, refusalPruneSample)
		}
		s.FlushAudit(t.Context())
		if got, want := countedIn(t, rec.all()), 3*maxRefusalRuns+1; got != want {
			t.Errorf("the log counts %d refusals, want %d", got, want)
		}
		if len(s.refusalsAudited) != 0 {
			t.Errorf("%d runs left after FlushAudit", len(s.refusalsAudited))
		}
	})
}
