// Package pointtable resolves the point tables that archived batches
// reference by hash. A table is read from its site's folder of the archive
// (blob.TableName: {tenant}/{site}/tables/{hash}.sgt), checked against the
// hash it is named by, and kept in a cache bounded by the ids it holds.
//
// Every reader of the archive resolves tables through it: the ingest's
// batch endpoint, compaction, archive cat and export, and the hot store's
// rebuild. Each fetch runs under the caller's context, so an interrupted
// command does not wait for a table on its way from Azure.
package pointtable

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/pkg/batch"
)

// DefaultMaxPoints bounds a cache by the ids it holds (8 bytes each):
// 32 MiB, the tables of thousands of ordinary sites.
const DefaultMaxPoints = 4 << 20

// ErrDamaged means an archived point table does not decode, or decodes to
// a table with another hash than the one it is stored under.
var ErrDamaged = errors.New("archived point table is damaged")

// Error is a failed lookup. Err wraps batch.ErrUnknownTable when the table
// is not in the archive, ErrDamaged when it is there but unusable, and the
// store's own error (a context's end included) otherwise; check with
// errors.Is.
type Error struct {
	Tenant, Site string
	Hash         batch.TableHash
	// Name is the table's blob name.
	Name string
	Err  error
}

// Error names the table, its site and its blob, then what went wrong.
func (e *Error) Error() string {
	return fmt.Sprintf("point table %s of site %s/%s (%s): %v", e.Hash, e.Tenant, e.Site, e.Name, e.Err)
}

// Unwrap returns Err, for errors.Is and errors.As.
func (e *Error) Unwrap() error { return e.Err }

// Missing reports whether the table is not in the archive, as opposed to
// the archive failing to answer.
func (e *Error) Missing() bool { return errors.Is(e.Err, batch.ErrUnknownTable) }

// Archive looks point tables up in one blob store through a Cache. It is
// safe for concurrent use.
type Archive struct {
	store blob.Store
	cache *Cache
}

// New returns an Archive reading store. cache may be shared with other
// Archives, of other stores too: a table is cached only after its bytes
// hashed to its name, so whichever store it came from, it is the same
// table. A nil cache means a new one of DefaultMaxPoints.
func New(store blob.Store, cache *Cache) *Archive {
	if cache == nil {
		cache = NewCache(DefaultMaxPoints)
	}
	return &Archive{store: store, cache: cache}
}

// Cache returns the Archive's cache, so that a table known otherwise (the
// ingest has just stored it) can be added.
func (a *Archive) Cache() *Cache { return a.cache }

// Lookup returns the ids of the point table of tenant/site with hash h,
// from the cache or else from the archive. A site can only reach its own
// tables. Errors are *Error.
func (a *Archive) Lookup(ctx context.Context, tenant, site string, h batch.TableHash) ([]uint64, error) {
	if ids, ok := a.cache.get(key{tenant, site, h}); ok {
		return ids, nil
	}
	name := blob.TableName(tenant, site, h.String())
	fail := func(err error) error { return &Error{Tenant: tenant, Site: site, Hash: h, Name: name, Err: err} }
	data, err := a.store.Get(ctx, name)
	switch {
	case errors.Is(err, blob.ErrNotFound):
		return nil, fail(fmt.Errorf("not in the archive: an agent uploads it (PUT /v1/tables/%s) before any batch using it, so a stored batch without it means the archive lost it; restore the blob from a backup: %w", h, batch.ErrUnknownTable))
	case err != nil:
		return nil, fail(fmt.Errorf("reading it from the archive: %w (check that the store is reachable, then retry)", err))
	}
	ids, got, err := batch.DecodePointTable(data)
	if err == nil && got != h {
		err = fmt.Errorf("its bytes hash to %s", got)
	}
	if err != nil {
		return nil, fail(fmt.Errorf("%w: %v: restore the blob from a backup, or have the site's agent upload the table again after deleting it", ErrDamaged, err))
	}
	a.cache.Add(tenant, site, h, ids)
	return ids, nil
}

// Resolver returns a batch.TableResolver over the tables of tenant/site
// for batch.Decode, whose resolver has no context of its own: it fetches
// under ctx, so make one per operation and do not keep it past ctx.
func (a *Archive) Resolver(ctx context.Context, tenant, site string) batch.TableResolver {
	return resolver{ctx: ctx, a: a, tenant: tenant, site: site}
}

type resolver struct {
	ctx          context.Context // the operation's, for batch.Decode's callbacks only
	a            *Archive
	tenant, site string
}

func (r resolver) PointTable(h batch.TableHash) ([]uint64, error) {
	return r.a.Lookup(r.ctx, r.tenant, r.site, h)
}

// key names a table within the archive: the same hash under another site
// is another site's table, which a batch must not be able to use.
type key struct {
	tenant, site string
	hash         batch.TableHash
}

type entry struct {
	key key
	ids []uint64
}

// Cache keeps decoded point tables, which are immutable (named by their
// hash), so that a batch costs no store read for its table. It is bounded
// by the total number of ids held and evicts the least recently used
// tables first. It is safe for concurrent use.
type Cache struct {
	mu     sync.Mutex
	max    int
	points int
	m      map[key]*list.Element // of *entry
	lru    list.List             // most recently used first
}

// NewCache returns a cache holding at most maxPoints ids (DefaultMaxPoints
// when maxPoints <= 0). A table larger than that is never cached.
func NewCache(maxPoints int) *Cache {
	if maxPoints <= 0 {
		maxPoints = DefaultMaxPoints
	}
	return &Cache{max: maxPoints, m: map[key]*list.Element{}}
}

// Get returns the cached ids of the table of tenant/site with hash h.
func (c *Cache) Get(tenant, site string, h batch.TableHash) ([]uint64, bool) {
	return c.get(key{tenant, site, h})
}

func (c *Cache) get(k key) ([]uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(el)
	return el.Value.(*entry).ids, true
}

// Add caches the ids of the table of tenant/site with hash h. The caller
// vouches that ids are that table's (decoded from bytes that hash to h);
// the ids must not be modified afterwards.
func (c *Cache) Add(tenant, site string, h batch.TableHash, ids []uint64) {
	if len(ids) > c.max {
		return
	}
	k := key{tenant, site, h}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[k]; ok {
		c.lru.MoveToFront(el)
		return
	}
	for c.points+len(ids) > c.max {
		old := c.lru.Back()
		e := old.Value.(*entry)
		c.lru.Remove(old)
		delete(c.m, e.key)
		c.points -= len(e.ids)
	}
	c.m[k] = c.lru.PushFront(&entry{key: k, ids: ids})
	c.points += len(ids)
}

// Stats returns how many tables and ids the cache holds.
func (c *Cache) Stats() (tables, points int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m), c.points
}
