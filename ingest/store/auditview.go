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
	return scanAudit(rows)
}
