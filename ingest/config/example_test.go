package config

import "testing"

// The shipped example must stay valid as the config grows.
func TestExampleConfigIsValid(t *testing.T) {
	if _, err := LoadFile("../../configs/ingest.example.yaml"); err != nil {
		t.Fatal(err)
	}
}
