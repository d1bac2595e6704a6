// Package benchtable turns `go test -bench` output into the table `make
// bench` prints: one row per benchmark with its domain metrics (B/sample,
// samples/s, requests per poll …), and the wire-format rows set beside the
// naive+zstd reference measured in the same run.
package benchtable

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Result is one benchmark line.
type Result struct {
	Name    string             // without the Benchmark prefix and -GOMAXPROCS suffix
	Metrics map[string]float64 // unit -> value, the standard ones included
	Units   []string           // in the order printed
}

var procs = regexp.MustCompile(`-\d+$`)

// Parse reads benchmark lines from r; other lines are ignored.
func Parse(r io.Reader) ([]Result, error) {
	var out []Result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		res := Result{Name: procs.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), ""), Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			res.Metrics[f[i+1]] = v
			res.Units = append(res.Units, f[i+1])
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// standard are go test's own units, left out of the table for brevity.
var standard = map[string]bool{"ns/op": true, "B/op": true, "allocs/op": true, "MB/s": true}

// Write prints the table: first the wire rows ("wire spp=15 1.474
// B/sample, naive+zstd 4.043, 2.74x fewer bytes"), then every benchmark
// with its domain metrics.
func Write(w io.Writer, results []Result) error {
	naive := map[string]float64{}
	for _, r := range results {
		if sub, ok := strings.CutPrefix(r.Name, "NaiveZstd/"); ok {
			naive[sub] = r.Metrics["B/sample"]
		}
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, r := range results {
		sub, ok := strings.CutPrefix(r.Name, "Wire/")
		if !ok {
			continue
		}
		line := fmt.Sprintf("wire %s\t%.3f B/sample", sub, r.Metrics["B/sample"])
		if n := naive[sub]; n > 0 {
			line += fmt.Sprintf("\tnaive+zstd %.3f B/sample\t%.2fx fewer bytes", n, n/r.Metrics["B/sample"])
		}
		fmt.Fprintln(tw, line)
	}
	fmt.Fprintln(tw)
	for _, r := range results {
		var parts []string
		units := append([]string(nil), r.Units...)
		sort.SliceStable(units, func(i, j int) bool { return !standard[units[i]] && standard[units[j]] })
		for _, u := range units {
			if standard[u] && u != "ns/op" {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %s", strconv.FormatFloat(r.Metrics[u], 'g', 5, 64), u))
		}
		fmt.Fprintf(tw, "%s\t%s\n", r.Name, strings.Join(parts, "\t"))
	}
	return tw.Flush()
}
