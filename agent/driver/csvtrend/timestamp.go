package csvtrend

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A layout is one timestamp form the driver accepts. Layouts without a zone
// are parsed as wall-clock readings and placed in the configured time zone.
type layout struct {
	text string
	// zoned layouts carry a numeric offset and need no time zone.
	zoned bool
}

// layouts lists the accepted forms. time.Parse accepts fractional seconds
// after the seconds field even where the layout has none, so the ISO forms
// cover "2025-01-01 00:15:00.250" too.
var layouts = []layout{
	{"2006-01-02 15:04:05", false},
	{"2006-01-02T15:04:05", false},
	{time.RFC3339Nano, true},
	{"2006-01-02 15:04:05Z07:00", true},
	{"2006-01-02 15:04", false},
	{"2006-01-02T15:04", false},
	{"1/2/2006 15:04", false},
	{"1/2/2006 15:04:05", false},
	{"1/2/2006 3:04 PM", false},
	{"1/2/2006 3:04:05 PM", false},
	{"2-Jan-06 3:04:05 PM", false},
	{"2-Jan-06 3:04 PM", false},
	{"2-Jan-2006 3:04:05 PM", false},
	{"2-Jan-06 15:04:05", false},
}

// clock turns the timestamp cells of one file into instants. It remembers
// the layout that matched last, because a file uses one form throughout,
// and the previous instant, to place wall-clock times that occur twice
// when daylight saving time ends.
type clock struct {
	loc  *time.Location
	last int
	prev time.Time
}

func newClock(loc *time.Location) *clock { return &clock{loc: loc} }

// parse returns the instant a timestamp cell names.
//
// A trailing alphabetic token other than AM/PM is a zone abbreviation
// ("CDT"); it must be one the configured time zone uses, since
// abbreviations are ambiguous across the world (CST is also China's).
func (c *clock) parse(cell string) (time.Time, error) {
	s := strings.TrimSpace(cell)
	if s == "" {
		return time.Time{}, errors.New("empty timestamp")
	}
	abbr := ""
	if i := strings.LastIndexByte(s, ' '); i > 0 && isZoneAbbr(s[i+1:]) {
		abbr, s = s[i+1:], strings.TrimSpace(s[:i])
	}
	// time.Parse wants AM/PM in capitals; exports write either.
	if n := len(s); n >= 2 {
		if ap := strings.ToUpper(s[n-2:]); (ap == "AM" || ap == "PM") && ap != s[n-2:] {
			s = s[:n-2] + ap
		}
	}
	for k := range layouts {
		i := (c.last + k) % len(layouts)
		l := layouts[i]
		if l.zoned && abbr != "" {
			continue
		}
		t, err := time.Parse(l.text, s)
		if err != nil {
			continue
		}
		c.last = i
		switch {
		case l.zoned:
			// The offset in the cell is authoritative.
		case abbr != "":
			t, err = c.resolveAbbr(t, abbr)
			if err != nil {
				return time.Time{}, err
			}
		default:
			t = c.resolveWall(t)
		}
		c.prev = t
		return t, nil
	}
	return time.Time{}, fmt.Errorf("timestamp %q: not one of the accepted forms (2025-01-01 00:15:00, RFC 3339, 5/7/2022 12:00, 07-May-22 12:00:00 PM CDT)", truncate(cell, 40))
}

// isZoneAbbr reports whether tok looks like a zone abbreviation: 1 to 5
// ASCII letters, not AM or PM.
func isZoneAbbr(tok string) bool {
	if len(tok) == 0 || len(tok) > 5 {
		return false
	}
	if u := strings.ToUpper(tok); u == "AM" || u == "PM" {
		return false
	}
	for i := 0; i < len(tok); i++ {
		ch := tok[i]
		if (ch < 'A' || ch > 'Z') && (ch < 'a' || ch > 'z') {
			return false
		}
	}
	return true
}

// zoneOffsets returns the (abbreviation, offset) pairs the location uses
// around wall (a wall-clock reading stored as UTC): the day before and
// after, and January and July of its year, so that both the standard and
// the daylight-saving abbreviation are known whatever the season.
func (c *clock) zoneOffsets(wall time.Time) map[string]int {
	probes := []time.Time{
		wall.Add(-24 * time.Hour), wall, wall.Add(24 * time.Hour),
		time.Date(wall.Year(), time.January, 1, 12, 0, 0, 0, time.UTC),
		time.Date(wall.Year(), time.July, 1, 12, 0, 0, 0, time.UTC),
	}
	m := make(map[string]int, 2)
	for _, p := range probes {
		name, off := p.In(c.loc).Zone()
		m[strings.ToUpper(name)] = off
	}
	return m
}

// resolveAbbr places wall in the offset the abbreviation names. UTC and
// GMT are unambiguous and accepted in any configured zone.
func (c *clock) resolveAbbr(wall time.Time, abbr string) (time.Time, error) {
	u := strings.ToUpper(abbr)
	if u == "UTC" || u == "GMT" || u == "Z" {
		return wall, nil
	}
	offs := c.zoneOffsets(wall)
	off, ok := offs[u]
	if !ok {
		known := make([]string, 0, len(offs))
		for name := range offs {
			known = append(known, name)
		}
		slices.Sort(known)
		return time.Time{}, fmt.Errorf("zone abbreviation %q is not used by time zone %s (it uses %s): set settings.timezone to the zone the export was made in",
			abbr, c.loc, strings.Join(known, ", "))
	}
	return wall.Add(-time.Duration(off) * time.Second), nil
}

// resolveWall places a wall-clock reading without a zone in the configured
// location. A reading that occurs twice (the hour repeated when daylight
// saving time ends) becomes the earliest instant not before the previous
// row's, so a log written in time order crosses the repeated hour
// correctly; otherwise the first occurrence. A reading that never occurs
// (the hour skipped when daylight saving time starts) is read with the
// offset in force before the change, as a clock not yet moved forward
// would have shown it.
func (c *clock) resolveWall(wall time.Time) time.Time {
	// Fixed arrays: this runs once per row and must not allocate.
	var offs [3]int
	var valid [3]time.Time
	no, nv := 0, 0
	for _, p := range [...]time.Time{wall.Add(-24 * time.Hour), wall, wall.Add(24 * time.Hour)} {
		_, off := p.In(c.loc).Zone()
		if slices.Contains(offs[:no], off) {
			continue
		}
		offs[no] = off
		no++
		if t := wall.Add(-time.Duration(off) * time.Second); sameWall(t.In(c.loc), wall) {
			valid[nv] = t
			nv++
		}
	}
	switch nv {
	case 0:
		return wall.Add(-time.Duration(offs[0]) * time.Second)
	case 1:
		return valid[0]
	}
	cands := valid[:nv]
	slices.SortFunc(cands, func(a, b time.Time) int { return a.Compare(b) })
	if !c.prev.IsZero() {
		for _, t := range cands {
			if !t.Before(c.prev) {
				return t
			}
		}
	}
	return cands[0]
}

// sameWall reports whether t's wall clock reads as wall's (stored as UTC).
func sameWall(t, wall time.Time) bool {
	y1, m1, d1 := t.Date()
	y2, m2, d2 := wall.Date()
	h1, i1, s1 := t.Clock()
	h2, i2, s2 := wall.Clock()
	return y1 == y2 && m1 == m2 && d1 == d2 && h1 == h2 && i1 == i2 && s1 == s2
}

// truncate shortens s for a log line or an error, so a garbage cell cannot
// flood either.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
