package modbus

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/atomicfile"
)

// What the driver learned about a device (holes, cuts, block size,
// unsupported tables) is kept in <data_dir>/modbus/<device>.json, so a
// restart does not ask the device again. Each hole carries when the device
// last refused it and how often in a row, so its backoff survives a
// restart; each area carries when its other limits were first learned.
// Each is trusted for learnedTTL from its own time and then learned
// afresh, so a device whose firmware changed is not held to its old limits
// forever however often the file is rewritten; the file is ignored when
// the device's address changed.
const learnedTTL = 7 * 24 * time.Hour

// learnedVersion is the file's format: 2 gives every hole and area a time
// of its own; 1 (still read) had only the file's.
const learnedVersion = 2

type learnedFile struct {
	Version int    `json:"version"`
	Address string `json:"address"`
	// Learned is when the file was written: the time of every hole and
	// area that has none of its own (all of them, in version 1).
	Learned time.Time     `json:"learned"`
	Areas   []learnedArea `json:"areas"`
}

type learnedArea struct {
	Unit  byte   `json:"unit"`
	Table string `json:"table"`
	// Learned is when the area's limits other than holes were first
	// learned; zero: the file's time.
	Learned     time.Time     `json:"learned,omitzero"`
	OK          int           `json:"ok_len,omitempty"`
	Bad         int           `json:"bad_len,omitempty"`
	Holes       []learnedHole `json:"holes,omitempty"`
	Cuts        []int         `json:"cuts,omitempty"`
	HoleCuts    []int         `json:"hole_cuts,omitempty"`
	Unsupported bool          `json:"unsupported,omitempty"`
}

// learnedHole is one hole: [Start, End), when the device last refused it
// (zero: the file's time) and how many times in a row (0: once).
type learnedHole struct {
	Start    int       `json:"start"`
	End      int       `json:"end"`
	Learned  time.Time `json:"learned,omitzero"`
	Refusals int       `json:"refusals,omitempty"`
}

// UnmarshalJSON reads a hole as written now, or as the [start, end] pair
// of a version 1 file.
func (h *learnedHole) UnmarshalJSON(data []byte) error {
	if b := bytes.TrimSpace(data); len(b) > 0 && b[0] == '[' {
		var pair []int
		if err := json.Unmarshal(b, &pair); err != nil {
			return err
		}
		if len(pair) != 2 {
			return fmt.Errorf("a hole is [start, end], not %d numbers", len(pair))
		}
		*h = learnedHole{Start: pair[0], End: pair[1]}
		return nil
	}
	type plain learnedHole // without this method
	return json.Unmarshal(data, (*plain)(h))
}

// stateFile returns where a device's learned limits live, or "" when the
// agent gave no data directory.
func stateFile(dataDir, device string) string {
	if dataDir == "" {
		return ""
	}
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, device)
	return filepath.Join(dataDir, "modbus", name+".json")
}

// snapshotLocked returns what is worth keeping of the learned limits, in
// a stable order; empty when nothing was learned.
func (d *Driver) snapshotLocked() []learnedArea {
	var out []learnedArea
	for a, l := range d.learned {
		la := learnedArea{Unit: a.unit, Table: a.table.String(), Cuts: slices.Clone(l.cuts),
			HoleCuts: slices.Clone(l.holeCuts), Unsupported: l.unsupported}
		if l.badLen != 0 {
			// okLen only matters while probing below a refused length.
			la.OK, la.Bad = l.okLen, l.badLen
		}
		for _, h := range l.holes {
			la.Holes = append(la.Holes, learnedHole{Start: h.start, End: h.end, Learned: h.learned.UTC(), Refusals: h.refusals})
		}
		slices.Sort(la.Cuts)
		slices.Sort(la.HoleCuts)
		slices.SortFunc(la.Holes, func(a, b learnedHole) int { return cmp.Compare(a.Start, b.Start) })
		if la.Bad != 0 || len(la.Cuts) > 0 || len(la.HoleCuts) > 0 || la.Unsupported {
			la.Learned = l.since.UTC()
		}
		if la.Learned.IsZero() && len(la.Holes) == 0 {
			continue
		}
		out = append(out, la)
	}
	slices.SortFunc(out, func(a, b learnedArea) int {
		return cmp.Or(cmp.Compare(a.Unit, b.Unit), cmp.Compare(a.Table, b.Table))
	})
	return out
}

// loadLearned restores the limits learned by an earlier run, each unless
// it is older than learnedTTL. A missing or unreadable file only means
// learning again.
func (d *Driver) loadLearned() {
	if d.state == "" {
		return
	}
	data, err := os.ReadFile(d.state)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var f learnedFile
	if err == nil {
		err = json.Unmarshal(data, &f)
	}
	switch {
	case err != nil:
		d.log.Warn("cannot read the device's learned limits; learning them again", "file", d.state, "err", err)
		return
	case f.Version != 1 && f.Version != learnedVersion || f.Address != d.cfg.address:
		return
	}
	now := d.now()
	// A time ahead of the clock (which was set back since) would keep a
	// limit for ever and a hole from being asked again: take it as now.
	timeOf := func(t time.Time) time.Time {
		if t.IsZero() {
			t = f.Learned
		}
		if t.After(now) {
			t = now
		}
		return t
	}
	stale := func(t time.Time) bool { return now.Sub(t) > learnedTTL }
	expired, kept := 0, 0
	d.mu.Lock()
	for _, la := range f.Areas {
		t := slices.Index(tableNames[:], la.Table)
		if t < 0 {
			continue
		}
		l := d.limitsLocked(area{la.Unit, table(t)})
		switch since := timeOf(la.Learned); {
		case la.Bad == 0 && len(la.Cuts) == 0 && len(la.HoleCuts) == 0 && !la.Unsupported:
		case stale(since):
			expired++
		default:
			l.okLen, l.badLen, l.unsupported, l.since = la.OK, la.Bad, la.Unsupported, since
			l.cuts, l.holeCuts = la.Cuts, la.HoleCuts
			kept++
		}
		for _, h := range la.Holes {
			switch learned := timeOf(h.Learned); {
			case h.Start < 0 || h.Start >= h.End || h.End > 1<<16:
				continue
			case stale(learned):
				expired++
			default:
				l.holes = append(l.holes, hole{span: span{h.Start, h.End}, learned: learned, refusals: max(h.Refusals, 1)})
				kept++
			}
		}
	}
	d.saved = d.snapshotLocked()
	d.mu.Unlock()
	if expired > 0 {
		d.log.Info("some of the device's learned limits are over a week old; learning them again", "file", d.state, "expired", expired)
	}
	if kept > 0 {
		d.log.Info("restored the device's learned limits", "file", d.state, "limits", kept)
	}
}

// saveLearned writes the learned limits when they changed since the last
// save, atomically. Failing to save costs a restart some requests, no
// data, so it is logged and not returned.
func (d *Driver) saveLearned() {
	if d.state == "" {
		return
	}
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	d.mu.Lock()
	areas := d.snapshotLocked()
	same := slicesEqualJSON(areas, d.saved)
	now := d.now()
	d.mu.Unlock()
	if same {
		return
	}
	data, err := json.MarshalIndent(learnedFile{Version: learnedVersion, Address: d.cfg.address, Learned: now.UTC(), Areas: areas}, "", "  ")
	if err == nil {
		err = os.MkdirAll(filepath.Dir(d.state), 0o700)
	}
	if err == nil {
		err = atomicfile.Write(d.state, data, 0o600)
	}
	if err != nil {
		d.warnOnce("save:"+d.state, "cannot keep the device's learned limits; a restart will learn them again", "file", d.state, "err", err)
		return
	}
	d.mu.Lock()
	d.saved = areas
	d.mu.Unlock()
}

func slicesEqualJSON(a, b []learnedArea) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}
