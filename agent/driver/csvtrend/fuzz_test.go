package csvtrend

import (
	"bytes"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// FuzzParse: the parser never panics on arbitrary bytes, and what it
// accepts is consistent: the header alone reads the same columns, every
// row is either counted or reported, and samples are well-formed.
// Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fileA))
	f.Add([]byte("Timestamp,Value (°F)\n07-May-22 12:00:00 PM CDT,72.4\n"))
	loc, err := time.LoadLocation("America/Chicago")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, from := range []string{pointFromAuto, pointFromColumn, pointFromFile} {
			p := &parser{loc: loc, states: defaultStates, pointFrom: from}
			res, err := p.parse(t.Context(), "/x/fuzz.csv", data, func(ref string) []uint64 { return []uint64{1, 2} })
			cols, herr := p.header("/x/fuzz.csv", bytes.NewReader(data))
			if err != nil {
				continue
			}
			if herr != nil {
				t.Fatalf("parse accepted what header refused: %v", herr)
			}
			if len(cols) != len(res.columns) {
				t.Fatalf("header read %d columns, parse %d", len(cols), len(res.columns))
			}
			if len(res.samples)%2 != 0 {
				t.Fatalf("%d samples: each cell must feed both point IDs", len(res.samples))
			}
			for _, s := range res.samples {
				if s.PointID != 1 && s.PointID != 2 || s.Status != telemetry.StatusOK || s.Value != s.Value {
					t.Fatalf("bad sample %+v", s)
				}
			}
		}
	})
}
