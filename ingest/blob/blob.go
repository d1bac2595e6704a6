// Package blob is the ingest's archive: a store of immutable, named blobs
// written create-if-absent, so any number of ingest replicas can write to one
// archive and a retried upload can never replace what was stored first.
//
// Store is the interface; Dir is the local-directory implementation (the
// embedded default). Every implementation must pass blobtest.Run.
package blob

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Store is the archive: create-if-absent writes of immutable blobs.
// Implementations are safe for concurrent use, including by several
// processes sharing the same backing store.
type Store interface {
	// Put stores data under name if absent. If a blob exists with
	// identical bytes it returns (false, nil); with different bytes, an
	// error wrapping ErrConflict.
	Put(ctx context.Context, name string, data []byte) (created bool, err error)
	// Get returns the blob's bytes, or an error wrapping ErrNotFound.
	Get(ctx context.Context, name string) ([]byte, error)
	// List returns the names that start with prefix, sorted. The prefix
	// is a plain string prefix (as in Azure Blob Storage): "t1/s1/20"
	// matches "t1/s1/2026/..."; end it with "/" to list a folder.
	List(ctx context.Context, prefix string) ([]string, error)
}

// Errors stores wrap; check with errors.Is.
var (
	// ErrNotFound means no blob has the name.
	ErrNotFound = errors.New("blob not found")
	// ErrConflict means a blob with the name exists with different bytes.
	ErrConflict = errors.New("blob exists with different content")
	// ErrBadName means a name or prefix is not valid (see ValidName).
	ErrBadName = errors.New("invalid blob name")
)

// MaxNameLen is the longest valid name in bytes.
const MaxNameLen = 1024

// ValidName reports whether name is a valid blob name: slash-separated
// relative segments of [A-Za-z0-9._-], none empty, "." or "..", at most
// MaxNameLen bytes. The charset keeps names portable between a file system
// and Azure and leaves other characters (like '~') free for stores' own
// temporary files.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrBadName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrBadName, len(name), MaxNameLen)
	}
	for seg := range strings.SplitSeq(name, "/") {
		if err := validSegment(seg); err != nil {
			return fmt.Errorf("%w %q: %v", ErrBadName, name, err)
		}
	}
	return nil
}

func validSegment(seg string) error {
	switch seg {
	case "":
		return errors.New("empty segment (leading, trailing or double slash)")
	case ".", "..":
		return fmt.Errorf("segment %q not allowed", seg)
	}
	if i := strings.IndexFunc(seg, func(r rune) bool { return !nameChar(r) }); i >= 0 {
		return fmt.Errorf("character %q not allowed: use A-Z, a-z, 0-9, '.', '_' and '-'", seg[i])
	}
	return nil
}

func nameChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}

// ValidPrefix reports whether prefix may be passed to List: empty, or a
// valid name, or a valid name followed by "/", or a valid name's folder part
// followed by a partial segment of name characters.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if len(prefix) > MaxNameLen {
		return fmt.Errorf("%w: prefix of %d bytes, longer than %d", ErrBadName, len(prefix), MaxNameLen)
	}
	folder, last := "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		folder, last = prefix[:i], prefix[i+1:]
		if err := ValidName(folder); err != nil {
			return fmt.Errorf("prefix %q: %w", prefix, err)
		}
	}
	if i := strings.IndexFunc(last, func(r rune) bool { return !nameChar(r) }); i >= 0 {
		return fmt.Errorf("%w: prefix %q: character %q not allowed", ErrBadName, prefix, last[i])
	}
	return nil
}

// BatchName is where a batch is archived:
// {tenant}/{site}/{yyyy}/{mm}/{dd}/{hh}/{agent}-{seq:020d}.sgb, with t (the
// batch's time) in UTC. The zero-padded sequence makes names sort in order.
func BatchName(tenant, site, agent string, seq uint64, t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%s/%s/%04d/%02d/%02d/%02d/%s-%020d.sgb", tenant, site, t.Year(), t.Month(), t.Day(), t.Hour(), agent, seq)
}

// ClaimName is the idempotency record for (agent, seq):
// {tenant}/{site}/claims/{agent}/{seq:020d}. It maps the pair to one batch;
// because a batch's hour in BatchName depends on its time, a retry with
// different bytes could land under another name, and the claim is what makes
// it detectable.
func ClaimName(tenant, site, agent string, seq uint64) string {
	return fmt.Sprintf("%s/%s/claims/%s/%020d", tenant, site, agent, seq)
}

// StoredName is the stored marker of a batch claim, {claim}.stored,
// written once the batch blob is in the archive: with it a retry of the
// batch answers duplicate without writing the blob again, even after
// compaction merged the blob into its day and deleted it.
func StoredName(claimName string) string { return claimName + ".stored" }

// ParseBatchName is BatchName's inverse: the tenant, site, agent and seq of
// a batch blob's name; ok is false for any other name.
func ParseBatchName(name string) (tenant, site, agent string, seq uint64, ok bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 7 || !strings.HasSuffix(parts[6], ".sgb") {
		return "", "", "", 0, false
	}
	base := strings.TrimSuffix(parts[6], ".sgb")
	i := strings.LastIndexByte(base, '-')
	if i <= 0 || len(base)-i-1 != 20 {
		return "", "", "", 0, false
	}
	seq, err := strconv.ParseUint(base[i+1:], 10, 64)
	if err != nil {
		return "", "", "", 0, false
	}
	return parts[0], parts[1], base[:i], seq, true
}

// TableName is where a point table is archived: {tenant}/{site}/tables/{hash}.sgt.
func TableName(tenant, site, hash string) string {
	return tenant + "/" + site + "/tables/" + hash + ".sgt"
}
