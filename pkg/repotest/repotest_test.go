package repotest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRootHoldsGoMod(t *testing.T) {
	root := Root(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("Root() = %s, which has no go.mod: %v", root, err)
	}
	if got := Peers(t); got != filepath.Join(root, "testdata", "peers") {
		t.Errorf("Peers() = %s", got)
	}
}

func TestFindOutsideARepository(t *testing.T) {
	t.Chdir(t.TempDir())
	if dir, err := Find(); err == nil {
		t.Fatalf("Find() outside a repository = %s, want an error", dir)
	}
}
