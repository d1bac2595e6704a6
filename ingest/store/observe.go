package store

import (
	"context"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// Observe is ObserveBatch for a batch from the agent with identity id: the
// shape of the ingest server's Observer, so a DB can be handed to it as is.
func (s *DB) Observe(ctx context.Context, id pki.Identity, b *batch.Batch) error {
	return s.ObserveBatch(ctx, SiteRef{Tenant: id.Tenant, Site: id.Site}, id.Agent, b)
}
