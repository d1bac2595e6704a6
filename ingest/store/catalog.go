package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
)

// CatalogPoint is one point's metadata as the agent shares it.
type CatalogPoint struct {
	ID          uint64   `json:"id"`
	Name        string   `json:"name,omitempty"`
	Description string   `json:"description,omitempty"`
	Unit        string   `json:"unit,omitempty"`
	Kind        string   `json:"kind,omitempty"`
	Tags        []string `json:"tags,omitempty"`
}

// PutCatalog replaces the catalogue entries of the given points of a site
// (points not listed keep theirs: an agent sends what it polls).
func (s *DB) PutCatalog(ctx context.Context, tenant, site, agentID string, points []CatalogPoint) error {
	now := ms(s.now())
	err := s.tx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO catalog (tenant, site, point_id, agent_id, name, description, unit, kind, tags, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant, site, point_id) DO UPDATE SET agent_id = excluded.agent_id, name = excluded.name,
			description = excluded.description, unit = excluded.unit, kind = excluded.kind, tags = excluded.tags, updated_at = excluded.updated_at`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, p := range points {
			tags, err := json.Marshal(nonNil(p.Tags))
			if err != nil {
				return err
			}
			if _, err := stmt.ExecContext(ctx, tenant, site, int64(p.ID), agentID, p.Name, p.Description, p.Unit, p.Kind, string(tags), now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storing the catalogue of %s/%s: %w", tenant, site, err)
	}
	return nil
}

// Catalog returns a site's catalogue, by point id.
func (s *DB) Catalog(ctx context.Context, tenant, site string) ([]CatalogPoint, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT point_id, name, description, unit, kind, tags FROM catalog WHERE tenant = ? AND site = ? ORDER BY point_id`, tenant, site)
	if err != nil {
		return nil, fmt.Errorf("reading the catalogue of %s/%s: %w", tenant, site, err)
	}
	defer rows.Close()
	var out []CatalogPoint
	for rows.Next() {
		var p CatalogPoint
		var id int64
		var tags string
		if err := rows.Scan(&id, &p.Name, &p.Description, &p.Unit, &p.Kind, &tags); err != nil {
			return nil, err
		}
		p.ID = uint64(id)
		if err := json.Unmarshal([]byte(tags), &p.Tags); err != nil {
			return nil, fmt.Errorf("point %016x: tags: %w", p.ID, err)
		}
		if len(p.Tags) == 0 {
			p.Tags = nil
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
