package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// AuditEntry is one line of the audit log. Each entry's Hash is SHA-256 over
// the previous entry's hash and this entry's fields, so changing, removing
// or reordering any entry breaks every hash after it (VerifyAudit).
type AuditEntry struct {
	Seq     int64     `json:"seq"`
	At      time.Time `json:"at"`
	Actor   string    `json:"actor"`   // who: "cli", "agent:ag-…", "user:…", "ingest"
	Action  string    `json:"action"`  // what: "enroll", "renew", "revoke", "batch_refused", …
	Subject string    `json:"subject"` // on what: an agent id, a token hash prefix, a user
	Detail  string    `json:"detail"`
	Prev    []byte    `json:"prev"`
	Hash    []byte    `json:"hash"`
}

// auditHash is the chain function. Fields are length-prefixed so no two
// different entries hash alike.
func auditHash(prev []byte, e AuditEntry) []byte {
	h := sha256.New()
	h.Write(prev)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(e.Seq))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(e.At.UnixMilli()))
	h.Write(n[:])
	for _, s := range []string{e.Actor, e.Action, e.Subject, e.Detail} {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	return h.Sum(nil)
}

// Audit appends an entry to the audit log and returns it with its sequence
// number and hash. Appends from several processes are serialised by the
// write transaction, so the chain never forks.
func (s *DB) Audit(ctx context.Context, actor, action, subject, detail string) (AuditEntry, error) {
	e := AuditEntry{At: s.now().UTC().Truncate(time.Millisecond), Actor: actor, Action: action, Subject: subject, Detail: detail}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var prev []byte
		var seq int64
		err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&seq, &prev)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if prev == nil {
			prev = []byte{}
		}
		e.Seq, e.Prev = seq+1, prev
		e.Hash = auditHash(prev, e)
		_, err = tx.ExecContext(ctx, `INSERT INTO audit (seq, at, actor, action, subject, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			e.Seq, ms(e.At), e.Actor, e.Action, e.Subject, e.Detail, e.Prev, e.Hash)
		return err
	})
	if err != nil {
		return AuditEntry{}, fmt.Errorf("writing audit entry %s %s: %w", action, subject, err)
	}
	return e, nil
}

// AuditLog returns up to limit entries after seq after, oldest first.
func (s *DB) AuditLog(ctx context.Context, after int64, limit int) ([]AuditEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, actor, action, subject, detail, prev, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the audit log: %w", err)
	}
	return scanAudit(rows)
}

// scanAudit reads audit rows selected as AuditLog selects them.
func scanAudit(rows *sql.Rows) ([]AuditEntry, error) {
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var at int64
		if err := rows.Scan(&e.Seq, &at, &e.Actor, &e.Action, &e.Subject, &e.Detail, &e.Prev, &e.Hash); err != nil {
			return nil, fmt.Errorf("reading the audit log: %w", err)
		}
		e.At = fromMS(at)
		out = append(out, e)
	}
	return out, rows.Err()
}

// VerifyAudit walks the whole audit log and checks every link of the hash
// chain; it returns the number of entries checked, or an error wrapping
// ErrAuditBroken that names the first entry that does not verify.
func (s *DB) VerifyAudit(ctx context.Context) (int64, error) {
	var n int64
	prev := []byte{}
	for {
		page, err := s.AuditLog(ctx, n, 1000)
		if err != nil {
			return n, err
		}
		if len(page) == 0 {
			return n, nil
		}
		for _, e := range page {
			if e.Seq != n+1 {
				return n, fmt.Errorf("%w: entry %d follows entry %d", ErrAuditBroken, e.Seq, n)
			}
			if !bytes.Equal(e.Prev, prev) || !bytes.Equal(auditHash(prev, e), e.Hash) {
				return n, fmt.Errorf("%w at entry %d (%s %s at %s)", ErrAuditBroken, e.Seq, e.Action, e.Subject, e.At.Format(time.RFC3339))
			}
			prev, n = e.Hash, e.Seq
		}
	}
}
