package modbus

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
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
// restart does not ask the device again. It is trusted for learnedTTL and
// then learned afresh, so a device whose firmware changed is not held to
// its old limits forever; the file is ignored when the device's address
// changed.
const learnedTTL = 7 * 24 * time.Hour

type learnedFile struct {
	Version int           `json:"version"`
	Address string        `json:"address"`
	Learned time.Time     `json:"learned"`
	Areas   []learnedArea `json:"areas"`
}

type learnedArea struct {
	Unit        byte     `json:"unit"`
	Table       string   `json:"table"`
	OK          int      `json:"ok_len,omitempty"`
	Bad         int      `json:"bad_len,omitempty"`
	Holes       [][2]int `json:"holes,omitempty"`
	Cuts        []int    `json:"cuts,omitempty"`
	Unsupported bool     `json:"unsupported,omitempty"`
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
		la := learnedArea{Unit: a.unit, Table: a.table.String(), Cuts: slices.Clone(l.cuts), Unsupported: l.unsupported}
		if l.badLen != 0 {
			// okLen only matters while probing below a refused length.
			la.OK, la.Bad = l.okLen, l.badLen
		}
		for _, h := range l.holes {
			la.Holes = append(la.Holes, [2]int{h.start, h.end})
		}
		slices.Sort(la.Cuts)
		if la.Bad == 0 && len(la.Holes) == 0 && len(la.Cuts) == 0 && !la.Unsupported {
			continue
		}
		out = append(out, la)
	}
	slices.SortFunc(out, func(a, b learnedArea) int {
		return cmp.Or(cmp.Compare(a.Unit, b.Unit), cmp.Compare(a.Table, b.Table))
	})
	return out
}

// loadLearned restores the limits learned by an earlier run. A missing,
// stale or unreadable file only means learning again.
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
	case f.Version != 1 || f.Address != d.cfg.address:
		return
	case time.Since(f.Learned) > learnedTTL:
		d.log.Info("the device's learned limits are over a week old; learning them again", "file", d.state)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, la := range f.Areas {
		t := slices.Index(tableNames[:], la.Table)
		if t < 0 {
			continue
		}
		l := d.limitsLocked(area{la.Unit, table(t)})
		l.okLen, l.badLen, l.cuts, l.unsupported = la.OK, la.Bad, la.Cuts, la.Unsupported
		for _, h := range la.Holes {
			if h[0] < h[1] {
				l.holes = append(l.holes, span{h[0], h[1]})
			}
		}
	}
	d.saved = f.Areas
	d.log.Info("restored the device's learned limits", "file", d.state, "areas", len(f.Areas))
}

// saveLearned writes the learned limits when they changed since the last
// save, atomically. Failing to save costs a restart some requests, no
// data, so it is logged and not returned.
func (d *Driver) saveLearned() {
	if d.state == "" {
		return
	}
	d.mu.Lock()
	areas := d.snapshotLocked()
	same := slicesEqualJSON(areas, d.saved)
	d.mu.Unlock()
	if same {
		return
	}
	data, err := json.MarshalIndent(learnedFile{Version: 1, Address: d.cfg.address, Learned: time.Now().UTC(), Areas: areas}, "", "  ")
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
