// Package repotest finds the repository a test runs in, so tests can
// reach the shared fixtures and peer scripts under testdata/ from any
// package directory. It is for tests only; programs never depend on the
// source tree.
package repotest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Root returns the directory holding go.mod, walking up from the working
// directory (go test runs each package in its own directory). It fails the
// test when there is none.
func Root(t testing.TB) string {
	t.Helper()
	dir, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// Find is Root for callers without a testing.TB (a TestMain, a helper
// process): the directory holding go.mod, or an error.
func Find() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run the test inside the repository")
		}
		dir = parent
	}
}

// Peers is the directory of the independent peers' scripts and their
// installed packages (testdata/peers, filled by `npm ci --prefix
// testdata/peers` in .ci/run).
func Peers(t testing.TB) string {
	t.Helper()
	return filepath.Join(Root(t), "testdata", "peers")
}
