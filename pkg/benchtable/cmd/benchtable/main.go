// Command benchtable reads `go test -bench` output on stdin and prints the
// table of `make bench`.
package main

import (
	"fmt"
	"os"

	"github.com/sightglass-bms/sightglass/pkg/benchtable"
)

func main() {
	res, err := benchtable.Parse(os.Stdin)
	if err == nil {
		err = benchtable.Write(os.Stdout, res)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}
