package benchtable

import (
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	in := `goos: linux
BenchmarkWire/spp=15-2 	      34	  32952743 ns/op	         1.474 B/sample	        163.2 samples/batch	21548971 B/op	   75948 allocs/op
BenchmarkNaiveZstd/spp=15-2     	      39	  28706180 ns/op	         4.043 B/sample	    1542 B/op	       0 allocs/op
BenchmarkAppend-2   	   16448	     89795 ns/op	        19.24 bytes/sample	   1113649 samples/s	    9597 B/op	      25 allocs/op
PASS
`
	res, err := Parse(strings.NewReader(in))
	if err != nil || len(res) != 3 {
		t.Fatalf("Parse = %+v, %v", res, err)
	}
	var out strings.Builder
	if err := Write(&out, res); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"wire spp=15", "1.474 B/sample", "naive+zstd 4.043 B/sample", "2.74x fewer bytes", "Append", "1.1136e+06 samples/s"} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "allocs/op") {
		t.Errorf("standard units in the table:\n%s", got)
	}
}
