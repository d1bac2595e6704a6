package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/poll"
)

// CatalogPoint is one entry of the point catalogue (PUT /v1/catalog).
type CatalogPoint struct {
	ID          uint64   `json:"id"`
	Name        string   `json:"name,omitempty"`
	Description string   `json:"description,omitempty"`
	Unit        string   `json:"unit,omitempty"`
	Kind        string   `json:"kind,omitempty"`
	Tags        []string `json:"tags,omitempty"`
}

// Catalog builds the point catalogue the site's policy lets the agent
// share: it goes to the ingest's relational store, never into a batch.
// With policy none it returns nil.
func Catalog(devs []poll.Device, policy string) []CatalogPoint {
	if policy == config.CatalogNone {
		return nil
	}
	var out []CatalogPoint
	for _, d := range devs {
		for _, p := range d.Points {
			c := CatalogPoint{ID: p.ID, Unit: p.Unit, Kind: p.Kind, Tags: p.Tags}
			if policy == config.CatalogFull {
				c.Name, c.Description = p.Name, p.Description
				// The device is a name too, so only a full catalogue
				// carries it: as a tag the dashboard can filter by.
				c.Tags = append(slices.Clone(p.Tags), "device:"+d.Name)
			}
			out = append(out, c)
		}
	}
	return out
}

// catalogSender uploads the catalogue over the uplink.
type catalogSender interface {
	SendCatalog(ctx context.Context, catalog []byte) (int, []byte, error)
}

// sendCatalog uploads the catalogue, retrying with a jittered backoff
// until the ingest takes it or ctx ends. A refusal that retrying cannot fix
// (4xx other than 429) is logged once and given up: batches flow anyway.
func sendCatalog(ctx context.Context, up catalogSender, points []CatalogPoint, log *slog.Logger) error {
	if points == nil {
		return nil
	}
	body, err := json.Marshal(map[string]any{"points": points})
	if err != nil {
		return fmt.Errorf("encoding the point catalogue: %w", err)
	}
	wait := 5 * time.Second
	for {
		status, data, err := up.SendCatalog(ctx, body)
		switch {
		case err == nil && status == http.StatusOK:
			log.Info("point catalogue sent", "points", len(points))
			return nil
		case err == nil && status >= 400 && status < 500 && status != http.StatusTooManyRequests:
			log.Error("the ingest refused the point catalogue; not retrying", "status", status, "answer", string(data[:min(len(data), 300)]))
			return nil
		case err == nil:
			err = fmt.Errorf("ingest answered %d", status)
		}
		log.Debug("sending the point catalogue failed; retrying", "err", err, "in", wait)
		t := time.NewTimer(wait/2 + time.Duration(rand.Int64N(int64(wait/2))))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Minute)
	}
}
