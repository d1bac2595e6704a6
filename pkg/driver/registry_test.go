package driver

import (
	"strings"
	"testing"
)

func TestRegistry(t *testing.T) {
	nop := func(Device) (Driver, error) { return nil, nil }
	tests := []struct {
		name    string
		infos   []Info
		wantErr string
	}{
		{"ok", []Info{{Name: "a", New: nop}, {Name: "b", New: nop}}, ""},
		{"empty name", []Info{{Name: "", New: nop}}, "empty name"},
		{"nil factory", []Info{{Name: "a"}}, "nil factory"},
		{"duplicate", []Info{{Name: "a", New: nop}, {Name: "a", New: nop}}, "already registered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRegistry(tt.infos...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(r.Names(), ","); got != "a,b" {
				t.Errorf("Names() = %q", got)
			}
			if _, ok := r.Lookup("a"); !ok {
				t.Error("Lookup(a) failed")
			}
			if _, ok := r.Lookup("zz"); ok {
				t.Error("Lookup(zz) succeeded")
			}
		})
	}
}
