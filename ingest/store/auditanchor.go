package store

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob"
)

// The hash chain proves the audit log consistent with itself, not
// complete: whoever can write the database (drop the no-delete trigger)
// can delete the newest entries, or rewrite the whole chain with fresh
// hashes, and VerifyAudit would still pass. Anchors close that gap from
// outside the database: the newest entry's number and hash, written now
// and then into the archive (blob.Store) as create-if-absent blobs, which
// the database's writer cannot change. VerifyAuditAnchors then tells "entries after N
// missing" and "entry N differs from its anchor" apart from an intact log.

// AnchorPrefix is the archive folder of the anchors. It names no tenant or
// building (a leading underscore, like the readiness probe's _ready/), and
// an anchor holds only a sequence number and a hash.
const AnchorPrefix = "_audit/"

// DefaultAnchorEvery is how often RunAuditAnchors anchors the newest entry
// when the log has grown: the longest stretch of entries that could be
// deleted unnoticed, besides those since the last shutdown's anchor.
const DefaultAnchorEvery = 5 * time.Minute

// anchorTimeout bounds one anchor write, the final one at shutdown too.
const anchorTimeout = 30 * time.Second

// AuditAnchor is one anchor: an audit entry's sequence number and hash.
// Nothing else, so two replicas anchoring the same entry write the same
// bytes and create-if-absent accepts both.
type AuditAnchor struct {
	Seq  int64  `json:"seq"`
	Hash string `json:"hash"` // hex
}

// anchorName is the anchor of entry seq; zero-padded so names sort as
// numbers.
func anchorName(seq int64) string { return fmt.Sprintf("%s%020d.anchor", AnchorPrefix, seq) }

// parseAnchorName returns the entry an anchor's name says it anchors.
func parseAnchorName(name string) (int64, bool) {
	s, ok := strings.CutPrefix(name, AnchorPrefix)
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, ".anchor")
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseInt(s, 10, 64)
	return seq, err == nil && seq > 0
}

// newestAudit returns the newest entry's sequence number and hash; zero
// when the log is empty.
func (s *DB) newestAudit(ctx context.Context) (int64, []byte, error) {
	var seq int64
	var hash []byte
	err := s.db.QueryRowContext(ctx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("reading the newest audit entry: %w", err)
	}
	return seq, hash, nil
}

// AnchorAudit writes an anchor of the newest audit entry into anchors and
// returns it (Seq 0 when the log is empty). Anchoring an entry twice is
// harmless. An anchor of the same entry with another hash means the log
// was rewritten since: the error wraps ErrAuditBroken.
func (s *DB) AnchorAudit(ctx context.Context, anchors blob.Store) (AuditAnchor, error) {
	seq, hash, err := s.newestAudit(ctx)
	if err != nil || seq == 0 {
		return AuditAnchor{}, err
	}
	a := AuditAnchor{Seq: seq, Hash: hex.EncodeToString(hash)}
	data, err := json.Marshal(a)
	if err != nil {
		return AuditAnchor{}, err
	}
	if _, err := anchors.Put(ctx, anchorName(seq), append(data, '\n')); err != nil {
		if errors.Is(err, blob.ErrConflict) {
			return a, fmt.Errorf("%w: entry %d differs from its anchor %s: the log was rewritten after it was anchored", ErrAuditBroken, seq, anchorName(seq))
		}
		return a, fmt.Errorf("anchoring audit entry %d in the archive as %s: %w", seq, anchorName(seq), err)
	}
	return a, nil
}

// RunAuditAnchors anchors the newest audit entry every interval while the
// log grows, and once more when ctx ends (so a clean shutdown leaves no
// entry unanchored), until then. Failures are logged when they start and
// when they end, not at every tick; a rewritten log is logged as an error
// each time it is seen.
func (s *DB) RunAuditAnchors(ctx context.Context, anchors blob.Store, every time.Duration, log *slog.Logger) {
	if every <= 0 {
		every = DefaultAnchorEvery
	}
	var last int64
	failing := false
	anchor := func(ctx context.Context) {
		seq, _, err := s.newestAudit(ctx)
		if err == nil && (seq == 0 || seq == last) {
			return
		}
		var a AuditAnchor
		if err == nil {
			a, err = s.AnchorAudit(ctx, anchors)
		}
		switch {
		case errors.Is(err, ErrAuditBroken):
			log.Error("the audit log does not match its anchor in the archive: run `sightglass-ingest audit verify --config …`", "err", err)
		case err != nil:
			if !failing {
				log.Warn("anchoring the audit log in the archive failed; retrying at the next interval", "err", err)
			}
			failing = true
		default:
			if failing {
				log.Info("anchoring the audit log works again", "seq", a.Seq)
			}
			failing, last = false, a.Seq
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), anchorTimeout)
			anchor(fctx)
			cancel()
			return
		case <-t.C:
			actx, cancel := context.WithTimeout(ctx, anchorTimeout)
			anchor(actx)
			cancel()
		}
	}
}

// AnchorCheck is what VerifyAuditAnchors found.
type AnchorCheck struct {
	Entries int64 `json:"entries"` // entries in the log, chain verified
	Anchors int   `json:"anchors"` // anchors in the archive, every one agreeing
	Newest  int64 `json:"newest"`  // the newest anchored entry; 0 with no anchor
}

// VerifyAuditAnchors verifies the hash chain (VerifyAudit), then the
// anchors in anchors against the log, oldest first: every one, or the
// newest of them when newest > 0. The error wraps ErrAuditBroken and says
// "entries after N missing" when an anchor names an entry the log no
// longer has, or "entry N differs from its anchor" when the log holds
// another entry N than the one anchored. Every anchor counts, not only the
// newest: a chain rewritten between two anchors while serve ran is
// anchored, rewritten, by the later one; newest trades that for time on
// a long history (one anchor every few minutes).
func (s *DB) VerifyAuditAnchors(ctx context.Context, anchors blob.Store, newest int) (AnchorCheck, error) {
	n, err := s.VerifyAudit(ctx)
	c := AnchorCheck{Entries: n}
	if err != nil {
		return c, err
	}
	names, err := anchors.List(ctx, AnchorPrefix)
	if err != nil {
		return c, fmt.Errorf("listing the audit anchors in the archive: %w", err)
	}
	type named struct {
		name string
		seq  int64
	}
	var list []named
	for _, name := range names {
		if seq, ok := parseAnchorName(name); ok {
			list = append(list, named{name, seq})
		}
	}
	slices.SortFunc(list, func(a, b named) int { return cmp.Compare(a.seq, b.seq) })
	if newest > 0 && len(list) > newest {
		list = list[len(list)-newest:]
	}
	for _, an := range list {
		data, err := anchors.Get(ctx, an.name)
		if err != nil {
			return c, fmt.Errorf("reading the audit anchor %s: %w", an.name, err)
		}
		var a AuditAnchor
		want, herr := []byte(nil), error(nil)
		if err = json.Unmarshal(data, &a); err == nil {
			want, herr = hex.DecodeString(a.Hash)
		}
		if err != nil || herr != nil || a.Seq != an.seq || len(want) == 0 {
			return c, fmt.Errorf("%w: the anchor %s is damaged (it should say {\"seq\":%d,\"hash\":…})", ErrAuditBroken, an.name, an.seq)
		}
		if a.Seq > n {
			return c, fmt.Errorf("%w: entries after %d missing: the archive anchors entry %d (%s), the log ends at %d", ErrAuditBroken, n, a.Seq, an.name, n)
		}
		var have []byte
		if err := s.db.QueryRowContext(ctx, `SELECT hash FROM audit WHERE seq = ?`, a.Seq).Scan(&have); err != nil {
			return c, fmt.Errorf("reading audit entry %d: %w", a.Seq, err)
		}
		if !bytes.Equal(have, want) {
			return c, fmt.Errorf("%w: entry %d differs from its anchor %s: the log was rewritten up to there", ErrAuditBroken, a.Seq, an.name)
		}
		c.Anchors, c.Newest = c.Anchors+1, a.Seq
	}
	return c, nil
}
