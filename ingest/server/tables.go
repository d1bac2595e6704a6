package server

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/pointtable"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

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
	sctx, cancel := context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
	defer cancel()
	created, err := s.store.Put(sctx, blob.TableName(id.Tenant, id.Site, want.String()), body)
	log := s.log.With("tenant", id.Tenant, "site", id.Site, "agent", id.Agent, "table", want.String())
	switch {
	case errors.Is(err, blob.ErrConflict):
		log.Error("stored point table differs from an upload with the same hash")
		return 0, tableReply{}, refuse(http.StatusConflict, CodeConflict,
			"a different point table is stored under hash %s: call an operator", want)
	case err != nil:
		return 0, tableReply{}, s.storeFailed(log, "writing point table", err)
	}
	s.tables.Add(id.Tenant, id.Site, want, ids)
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

// resolver finds point tables among those uploaded for the identity's
// tenant and site only: one site cannot use another's tables.
func (s *Server) resolver(ctx context.Context, id pki.Identity, look *tableLookup) batch.TableResolver {
	return &lookingResolver{
		tables: pointtable.New(s.store, s.tables).Resolver(ctx, id.Tenant, id.Site),
		look:   look,
	}
}

// lookingResolver notes in look why a lookup failed.
type lookingResolver struct {
	tables batch.TableResolver
	look   *tableLookup
}

func (r *lookingResolver) PointTable(h batch.TableHash) ([]uint64, error) {
	ids, err := r.tables.PointTable(h)
	var te *pointtable.Error
	switch {
	case err == nil:
	case errors.As(err, &te) && te.Missing():
		r.look.missing = h
	default:
		// The store failed, or holds a damaged table: ours to fix.
		r.look.storeErr = err
	}
	return ids, err
}
