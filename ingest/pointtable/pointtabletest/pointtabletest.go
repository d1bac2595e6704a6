// Package pointtabletest helps test the readers of point tables: a store
// whose table reads stall the way a read from an unreachable Azure
// endpoint does, to prove that a reader's context reaches every fetch.
package pointtabletest

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/sightglass-bms/sightglass/ingest/blob"
)

// Stall is a blob.Store whose Gets of point tables (names with "/tables/")
// call OnStall, when set, and then wait for their context to end. OnStall
// is the moment an operator presses Ctrl-C: pass the reader's cancel. A
// Get under a context that can never end fails at once instead of hanging
// the test, with an error that says so. Everything else goes to Store.
type Stall struct {
	blob.Store
	OnStall func()

	mu     sync.Mutex
	stalls int
}

// Get implements blob.Store.
func (s *Stall) Get(ctx context.Context, name string) ([]byte, error) {
	if !strings.Contains(name, "/tables/") {
		return s.Store.Get(ctx, name)
	}
	if ctx.Done() == nil {
		return nil, fmt.Errorf("point table %s read without the caller's context: it would wait for ever", name)
	}
	s.mu.Lock()
	s.stalls++
	s.mu.Unlock()
	if s.OnStall != nil {
		s.OnStall()
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// Stalls returns how many table reads stalled.
func (s *Stall) Stalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stalls
}
