//go:build race

package subprocess

// raceEnabled: under the race detector a capped address space fails in the
// race runtime's own words, not "out of memory".
const raceEnabled = true
