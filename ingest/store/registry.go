package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Token is an enrollment token as stored: only its hash.
type Token struct {
	Hash         []byte
	Tenant, Site string
	CreatedAt    time.Time
	ExpiresAt    time.Time
	CreatedBy    string
	UsedAt       time.Time // zero while unused
	UsedBy       string    // the agent id it enrolled
}

// Agent is an enrolled agent.
type Agent struct {
	ID, Tenant, Site string
	EnrolledAt       time.Time
	RevokedAt        time.Time // zero unless revoked
	RevokeReason     string
}

// Revoked reports whether the agent is revoked.
func (a Agent) Revoked() bool { return !a.RevokedAt.IsZero() }

// Cert is a certificate issued to an agent.
type Cert struct {
	Serial              string // lower-case hex
	AgentID             string
	NotBefore, NotAfter time.Time
	IssuedAt            time.Time
}

// CertStatus is what a status query by serial answers.
type CertStatus string

// The answers of a status query.
const (
	CertGood    CertStatus = "good"
	CertRevoked CertStatus = "revoked"
	CertExpired CertStatus = "expired"
	CertUnknown CertStatus = "unknown"
)

// CreateToken stores a new enrollment token.
func (s *DB) CreateToken(ctx context.Context, t Token) error {
	if len(t.Hash) == 0 || t.Tenant == "" || t.Site == "" || t.ExpiresAt.IsZero() {
		return errors.New("storing enrollment token: hash, tenant, site and expiry are required")
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.now()
	}
	_, err := s.exec(ctx, `INSERT INTO tokens (hash, tenant, site, created_at, expires_at, created_by) VALUES (?, ?, ?, ?, ?, ?)`,
		t.Hash, t.Tenant, t.Site, ms(t.CreatedAt), ms(t.ExpiresAt), t.CreatedBy)
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("storing enrollment token: %w", ErrExists)
		}
		return fmt.Errorf("storing enrollment token: %w", err)
	}
	return nil
}

// Enroll redeems the token with hash for a new agent and records the agent
// and its first certificate, all in one transaction: a token enrolls
// exactly one agent even when two requests race, and a failure leaves the
// token unused. issue is called inside the transaction with the token's
// tenant and site and returns the agent and certificate to record; its
// error aborts everything. issue must not write to s: it runs in this
// write's turn, and a write of its own would wait for that turn for ever.
func (s *DB) Enroll(ctx context.Context, hash []byte, issue func(tenant, site string) (Agent, Cert, error)) (Agent, Cert, error) {
	var agent Agent
	var cert Cert
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var t Token
		var exp, used int64
		err := tx.QueryRowContext(ctx, `SELECT tenant, site, expires_at, used_at FROM tokens WHERE hash = ?`, hash).Scan(&t.Tenant, &t.Site, &exp, &used)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		now := s.now()
		if used != 0 {
			return ErrTokenUsed
		}
		if !now.Before(fromMS(exp)) {
			return ErrTokenExpired
		}
		agent, cert, err = issue(t.Tenant, t.Site)
		if err != nil {
			return err
		}
		if agent.EnrolledAt.IsZero() {
			agent.EnrolledAt = now
		}
		res, err := tx.ExecContext(ctx, `UPDATE tokens SET used_at = ?, used_by = ? WHERE hash = ? AND used_at = 0`, ms(now), agent.ID, hash)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrTokenUsed
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO agents (id, tenant, site, enrolled_at) VALUES (?, ?, ?, ?)`,
			agent.ID, agent.Tenant, agent.Site, ms(agent.EnrolledAt)); err != nil {
			return fmt.Errorf("recording agent %s: %w", agent.ID, err)
		}
		return insertCert(ctx, tx, cert, now)
	})
	if err != nil {
		return Agent{}, Cert{}, fmt.Errorf("enrolling with token: %w", err)
	}
	return agent, cert, nil
}

// AddAgent records an agent that was issued a certificate outside
// enrollment (`sightglass-ingest agents issue`), with that certificate.
func (s *DB) AddAgent(ctx context.Context, a Agent, c Cert) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if a.EnrolledAt.IsZero() {
			a.EnrolledAt = s.now()
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO agents (id, tenant, site, enrolled_at) VALUES (?, ?, ?, ?)`,
			a.ID, a.Tenant, a.Site, ms(a.EnrolledAt)); err != nil {
			if isUnique(err) {
				return ErrExists
			}
			return err
		}
		return insertCert(ctx, tx, c, s.now())
	})
	if err != nil {
		return fmt.Errorf("recording agent %s: %w", a.ID, err)
	}
	return nil
}

// Renew records a renewed certificate for agentID. It refuses a revoked or
// unknown agent; issue is called inside the transaction, so a revocation
// racing a renewal either comes first (and the renewal fails) or after.
// Like Enroll's, issue must not write to s.
func (s *DB) Renew(ctx context.Context, agentID string, issue func(Agent) (Cert, error)) (Cert, error) {
	var cert Cert
	err := s.tx(ctx, func(tx *sql.Tx) error {
		a, err := agentRow(tx.QueryRowContext(ctx, agentSelect+` WHERE id = ?`, agentID))
		if err != nil {
			return err
		}
		if a.Revoked() {
			return fmt.Errorf("agent %s was revoked at %s (%s): enroll a new agent with a new token: %w", a.ID, a.RevokedAt.Format(time.RFC3339), a.RevokeReason, ErrRevoked)
		}
		cert, err = issue(a)
		if err != nil {
			return err
		}
		return insertCert(ctx, tx, cert, s.now())
	})
	if err != nil {
		return Cert{}, fmt.Errorf("renewing agent %s: %w", agentID, err)
	}
	return cert, nil
}

func insertCert(ctx context.Context, tx *sql.Tx, c Cert, now time.Time) error {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = now
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO certs (serial, agent_id, not_before, not_after, issued_at) VALUES (?, ?, ?, ?, ?)`,
		strings.ToLower(c.Serial), c.AgentID, ms(c.NotBefore), ms(c.NotAfter), ms(c.IssuedAt))
	if err != nil {
		return fmt.Errorf("recording certificate %s: %w", c.Serial, err)
	}
	return nil
}

// Revoke revokes the agent: from now on its certificates are refused at
// every handshake and request, and it cannot renew. Revoking twice keeps
// the first time and reason.
func (s *DB) Revoke(ctx context.Context, agentID, reason string) (Agent, error) {
	var a Agent
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at = 0`,
			ms(s.now()), reason, agentID); err != nil {
			return err
		}
		var err error
		a, err = agentRow(tx.QueryRowContext(ctx, agentSelect+` WHERE id = ?`, agentID))
		return err
	})
	if err != nil {
		return Agent{}, fmt.Errorf("revoking agent %s: %w", agentID, err)
	}
	return a, nil
}

const agentSelect = `SELECT id, tenant, site, enrolled_at, revoked_at, revoke_reason FROM agents`

func agentRow(row interface{ Scan(...any) error }) (Agent, error) {
	var a Agent
	var enrolled, revoked int64
	err := row.Scan(&a.ID, &a.Tenant, &a.Site, &enrolled, &revoked, &a.RevokeReason)
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, ErrNotFound
	}
	if err != nil {
		return Agent{}, err
	}
	a.EnrolledAt, a.RevokedAt = fromMS(enrolled), fromMS(revoked)
	return a, nil
}

// Agent returns the agent with id, or ErrNotFound.
func (s *DB) Agent(ctx context.Context, id string) (Agent, error) {
	a, err := agentRow(s.db.QueryRowContext(ctx, agentSelect+` WHERE id = ?`, id))
	if err != nil {
		return Agent{}, fmt.Errorf("looking up agent %s: %w", id, err)
	}
	return a, nil
}

// Agents lists every agent, by tenant, site and id.
func (s *DB) Agents(ctx context.Context) ([]Agent, error) {
	rows, err := s.db.QueryContext(ctx, agentSelect+` ORDER BY tenant, site, id`)
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	defer rows.Close()
	var out []Agent
	for rows.Next() {
		a, err := agentRow(rows)
		if err != nil {
			return nil, fmt.Errorf("listing agents: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// Certs lists the certificates issued to agentID, newest first.
func (s *DB) Certs(ctx context.Context, agentID string) ([]Cert, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT serial, agent_id, not_before, not_after, issued_at FROM certs WHERE agent_id = ? ORDER BY issued_at DESC, serial`, agentID)
	if err != nil {
		return nil, fmt.Errorf("listing certificates of %s: %w", agentID, err)
	}
	return certRows(rows)
}

// RevokedCerts lists every certificate of a revoked agent that has not yet
// expired, with its agent's revocation time: what a CRL must carry.
func (s *DB) RevokedCerts(ctx context.Context) ([]Cert, []time.Time, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT c.serial, c.agent_id, c.not_before, c.not_after, c.issued_at, a.revoked_at
		FROM certs c JOIN agents a ON a.id = c.agent_id WHERE a.revoked_at != 0 AND c.not_after > ? ORDER BY c.serial`, ms(s.now()))
	if err != nil {
		return nil, nil, fmt.Errorf("listing revoked certificates: %w", err)
	}
	defer rows.Close()
	var certs []Cert
	var at []time.Time
	for rows.Next() {
		var c Cert
		var nb, na, ia, ra int64
		if err := rows.Scan(&c.Serial, &c.AgentID, &nb, &na, &ia, &ra); err != nil {
			return nil, nil, fmt.Errorf("listing revoked certificates: %w", err)
		}
		c.NotBefore, c.NotAfter, c.IssuedAt = fromMS(nb), fromMS(na), fromMS(ia)
		certs = append(certs, c)
		at = append(at, fromMS(ra))
	}
	return certs, at, rows.Err()
}

func certRows(rows *sql.Rows) ([]Cert, error) {
	defer rows.Close()
	var out []Cert
	for rows.Next() {
		var c Cert
		var nb, na, ia int64
		if err := rows.Scan(&c.Serial, &c.AgentID, &nb, &na, &ia); err != nil {
			return nil, err
		}
		c.NotBefore, c.NotAfter, c.IssuedAt = fromMS(nb), fromMS(na), fromMS(ia)
		out = append(out, c)
	}
	return out, rows.Err()
}

// CertStatus answers a status query for the certificate with serial (hex):
// revoked if its agent is revoked, expired past its NotAfter, good
// otherwise, unknown if we never issued it.
func (s *DB) CertStatus(ctx context.Context, serial string) (CertStatus, Cert, Agent, error) {
	var c Cert
	var nb, na, ia int64
	err := s.db.QueryRowContext(ctx, `SELECT serial, agent_id, not_before, not_after, issued_at FROM certs WHERE serial = ?`, strings.ToLower(serial)).
		Scan(&c.Serial, &c.AgentID, &nb, &na, &ia)
	if errors.Is(err, sql.ErrNoRows) {
		return CertUnknown, Cert{}, Agent{}, nil
	}
	if err != nil {
		return "", Cert{}, Agent{}, fmt.Errorf("looking up certificate %s: %w", serial, err)
	}
	c.NotBefore, c.NotAfter, c.IssuedAt = fromMS(nb), fromMS(na), fromMS(ia)
	a, err := s.Agent(ctx, c.AgentID)
	if err != nil {
		return "", Cert{}, Agent{}, err
	}
	switch {
	case a.Revoked():
		return CertRevoked, c, a, nil
	case !s.now().Before(c.NotAfter):
		return CertExpired, c, a, nil
	}
	return CertGood, c, a, nil
}

// AgentAllowed is the check the listener makes at every handshake and
// request: nil if the agent with this certificate serial may talk to us,
// else an error saying why. A certificate we have no record of is refused
// too, so a CA key used outside the ingest cannot mint working agents.
func (s *DB) AgentAllowed(ctx context.Context, agentID, serial string) error {
	var revoked int64
	var reason string
	err := s.db.QueryRowContext(ctx, `SELECT a.revoked_at, a.revoke_reason FROM certs c JOIN agents a ON a.id = c.agent_id WHERE c.serial = ? AND c.agent_id = ?`,
		strings.ToLower(serial), agentID).Scan(&revoked, &reason)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("agent %s: certificate %s is not in the registry: %w", agentID, serial, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("checking agent %s: %w", agentID, err)
	}
	if revoked != 0 {
		return fmt.Errorf("agent %s was revoked at %s (%s): %w", agentID, fromMS(revoked).Format(time.RFC3339), reason, ErrRevoked)
	}
	return nil
}

func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}
