package config

import (
	"testing"
)

// FuzzParse feeds the loader arbitrary YAML: a validated configuration or
// an error, never a panic.
func FuzzParse(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add([]byte("listen: 127.0.0.1:0\nca_dir: ca\ndatabase: x.db\nstore: {kind: azure, azure: {account_url: 'https://a.blob.core.windows.net', container: c, auth: managed-identity}}\n"))
	f.Add([]byte("store: [1, 2]\n"))
	f.Add([]byte("max_skew: 99999999999999h\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml", "/base")
		if err == nil && c == nil {
			t.Fatal("no config and no error")
		}
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config Validate refuses: %v", verr)
			}
		}
	})
}
