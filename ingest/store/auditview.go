package store

import (
	"context"
	"fmt"
)

// AuditRecent returns up to limit entries before seq before (0: the
// newest), newest first: the admin page's view of the log.
func (s *DB) AuditRecent(ctx context.Context, before int64, limit int) ([]AuditEntry, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, actor, action, subject, detail, prev, hash FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT ?`, before, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the audit log: %w", err)
	}
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
