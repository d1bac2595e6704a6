package observequeue

import (
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob"
)

// FuzzParseMarkerName: whatever is listed under Prefix, parsing never
// panics, and a name it accepts is exactly the one MarkerName writes for
// what it parsed, and a valid blob name.
func FuzzParseMarkerName(f *testing.F) {
	f.Add(MarkerName(id, 7))
	f.Add("_observe/acme.s1.ag-1.7")
	f.Add("_observe/acme.s1.ag-1.99999999999999999999")
	f.Add("_observe/README")
	f.Fuzz(func(t *testing.T, name string) {
		got, seq, err := ParseMarkerName(name)
		if err != nil {
			return
		}
		if back := MarkerName(got, seq); back != name {
			t.Fatalf("ParseMarkerName(%q) = %v, %d, written back as %q", name, got, seq, back)
		}
		if err := blob.ValidName(name); err != nil {
			t.Fatalf("accepted %q, which is not a blob name: %v", name, err)
		}
	})
}
