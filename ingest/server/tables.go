package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// maxCachedPoints bounds the table cache by the ids it holds (8 bytes
// each): 32 MiB, thousands of ordinary sites.
const maxCachedPoints = 4 << 20

// tableReply is the JSON of a successful PUT /v1/tables/{hash}.
type tableReply struct {
	Status string `json:"status"`
	Table  string `json:"table"`
}

// handleTable is PUT /v1/tables/{hash}: a point table is stored under the
// agent's tenant and site once it decodes and its hash is the one named.
func (s *Server) handleTable(w http.ResponseWriter, r *http.Request, id pki.Identity) {
	status, reply, rf := s.putTable(r, w, id)
	if rf != nil {
		s.count(func(st *Stats) { st.Refused[rf.code]++ })
		writeRefusal(w, rf)
		return
	}
	writeJSON(w, status, reply)
}

func (s *Server) putTable(r *http.Request, w http.ResponseWriter, id pki.Identity) (int, tableReply, *refusal) {
	hashText := strings.TrimPrefix(r.URL.Path, "/v1/tables/")
	want, err := batch.ParseTableHash(hashText)
	if err != nil {
		return 0, tableReply{}, refuse(http.StatusBadRequest, CodeBadTableHash,
			"%q is not a point table hash: want %d lower-case hex digits (batch.TableHash.String)", hashText, 2*len(batch.TableHash{}))
	}
	body, rf := readBody(w, r, s.cfg.MaxTableBytes, "point table")
	if rf != nil {
		return 0, tableReply{}, rf
	}
	ids, got, err := batch.DecodePointTable(body)
	if err != nil {
		return 0, tableReply{}, refuse(http.StatusBadRequest, CodeBadTable, "%v: send the table as batch.EncodePointTable writes it", err)
	}
	if got != want {
		return 0, tableReply{}, refuse(http.StatusBadRequest, CodeTableHashMismatch,
			"the table's hash is %s, not %s as the path says: PUT it to /v1/tables/%s", got, want, got)
	}
	created, err := s.store.Put(r.Context(), blob.TableName(id.Tenant, id.Site, want.String()), body)
	log := s.log.With("tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "table", want.String())
	switch {
	case errors.Is(err, blob.ErrConflict):
		log.Error("stored point table differs from an upload with the same hash")
		return 0, tableReply{}, refuse(http.StatusConflict, CodeConflict,
			"a different point table is stored under hash %s: call an operator", want)
	case err != nil:
		return 0, tableReply{}, s.storeFailed(log, "writing point table", err)
	}
	s.tables.add(tableKey{id.Tenant, id.Site, want}, ids)
	if created {
		s.count(func(st *Stats) { st.TablesStored++ })
		log.Debug("point table stored", "points", len(ids))
		return http.StatusCreated, tableReply{Status: StatusStored, Table: want.String()}, nil
	}
	s.count(func(st *Stats) { st.TablesDuplicate++ })
	return http.StatusOK, tableReply{Status: StatusDuplicate, Table: want.String()}, nil
}

// tableLookup records why resolving a batch's point table failed, which
// the decoder's error alone cannot tell: a table the site never uploaded
// (the agent's to fix) or a store failure (ours).
type tableLookup struct {
	missing  batch.TableHash
	storeErr error
}

// resolverFunc adapts a function to batch.TableResolver.
type resolverFunc func(batch.TableHash) ([]uint64, error)

func (f resolverFunc) PointTable(h batch.TableHash) ([]uint64, error) { return f(h) }

// resolver finds point tables among those uploaded for the identity's
// tenant and site only: one site cannot use another's tables.
func (s *Server) resolver(ctx context.Context, id pki.Identity, look *tableLookup) batch.TableResolver {
	return resolverFunc(func(h batch.TableHash) ([]uint64, error) {
		key := tableKey{id.Tenant, id.Site, h}
		if ids, ok := s.tables.get(key); ok {
			return ids, nil
		}
		name := blob.TableName(id.Tenant, id.Site, h.String())
		data, err := s.store.Get(ctx, name)
		if errors.Is(err, blob.ErrNotFound) {
			look.missing = h
			return nil, fmt.Errorf("%w %s", batch.ErrUnknownTable, h)
		}
		if err != nil {
			look.storeErr = err
			return nil, fmt.Errorf("reading point table %s: %w", name, err)
		}
		ids, got, err := batch.DecodePointTable(data)
		if err == nil && got != h {
			err = fmt.Errorf("its hash is %s", got)
		}
		if err != nil {
			look.storeErr = fmt.Errorf("archived point table %s is damaged: %w", name, err)
			return nil, look.storeErr
		}
		s.tables.add(key, ids)
		return ids, nil
	})
}

type tableKey struct {
	tenant, site string
	hash         batch.TableHash
}

// tableCache keeps decoded point tables, which are immutable (named by
// their hash), so that a batch costs no store read for its table. It is
// bounded by the total number of ids and evicts the oldest entries first.
type tableCache struct {
	mu     sync.Mutex
	max    int
	points int
	m      map[tableKey][]uint64
	order  []tableKey
}

func newTableCache(maxPoints int) *tableCache {
	return &tableCache{max: maxPoints, m: map[tableKey][]uint64{}}
}

func (c *tableCache) get(k tableKey) ([]uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids, ok := c.m[k]
	return ids, ok
}

func (c *tableCache) add(k tableKey, ids []uint64) {
	if len(ids) > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; ok {
		return
	}
	for c.points+len(ids) > c.max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		c.points -= len(c.m[old])
		delete(c.m, old)
	}
	c.m[k] = ids
	c.order = append(c.order, k)
	c.points += len(ids)
}
