package modbus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// fedConn is a net.Conn whose answers are given bytes, prefixed by the
// transaction id of the request written, so inputs reach past that check.
type fedConn struct {
	mu   sync.Mutex
	feed []byte
	r    io.Reader
}

func (c *fedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.r == nil && len(p) >= 2 {
		c.r = io.MultiReader(bytes.NewReader(p[:2]), bytes.NewReader(c.feed))
	}
	return len(p), nil
}

func (c *fedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.r == nil {
		return 0, io.EOF
	}
	return c.r.Read(p)
}

func (c *fedConn) Close() error                     { return nil }
func (c *fedConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fedConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fedConn) SetDeadline(time.Time) error      { return nil }
func (c *fedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fedConn) SetWriteDeadline(time.Time) error { return nil }

// yamlText is driver.Settings over YAML text.
type yamlText string

func (s yamlText) Decode(v any) error { return yaml.Load([]byte(s), v, yaml.WithKnownFields()) }

// FuzzReadResponse feeds arbitrary answers (after the transaction id) to
// a driver reading a mix of registers and bits, through the real path:
// transport frame checks, goburrow's verify and decode, the length checks
// and the value decoding. It must never panic, and a sample it returns as
// OK must come from an answer of the right size.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte{0, 0, 0, 9, 1, 3, 6, 0x41, 0x48, 0, 0, 0, 5}) // hr 0+3: 12.5, bits 5
	f.Add([]byte{0, 0, 0, 3, 1, 0x83, 2})                      // exception 2
	f.Add([]byte{0, 0, 0, 3, 1, 0x83, 6})                      // busy
	f.Add([]byte{0, 0, 0, 6, 1, 3, 4, 0x41, 0x48})             // cut off
	f.Add([]byte{0, 0, 0, 0, 1})                               // length 0
	f.Add([]byte{0, 0, 0, 5, 1, 3, 2, 0, 1})                   // one register for two
	f.Add([]byte{0, 0, 0, 4, 1, 1, 1, 5})                      // coils
	f.Add([]byte{0, 1, 0, 7, 1, 3, 4, 0x41, 0x48, 0, 0})       // protocol id 1
	f.Add([]byte{0, 0, 0, 7, 2, 3, 4, 0x41, 0x48, 0, 0})       // wrong unit
	f.Add([]byte{0, 0, 0, 7, 1, 4, 4, 0x41, 0x48, 0, 0})       // wrong function
	f.Add([]byte{0, 0, 0, 7, 1, 3, 5, 0x41, 0x48, 0, 0})       // count disagrees
	f.Add([]byte{0, 0, 0xff, 0xff, 1, 3, 4, 0x41, 0x48, 0, 0}) // huge length
	points := []driver.Point{{ID: 1, Ref: "hr/0/float32"}, {ID: 2, Ref: "hr/2/bits0-3"}, {ID: 3, Ref: "coil/0"}, {ID: 4, Ref: "ir/5/string4"}}
	f.Fuzz(func(t *testing.T, feed []byte) {
		d, err := newDriver(driver.Device{Name: "fuzz", Settings: yamlText("host: 127.0.0.1\nrequest_timeout: 1s"), Points: points})
		if err != nil {
			t.Fatal(err)
		}
		// Every dial gets the same feed: a split or retry reads it again.
		d.tr.dial = func(context.Context) (net.Conn, error) { return &fedConn{feed: feed}, nil }
		if err := d.Connect(t.Context()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		samples, err := d.Read(ctx, points)
		if err != nil {
			if errors.Is(err, driver.ErrRefused) {
				t.Fatalf("a read was refused: %v", err)
			}
			return
		}
		if len(samples) != len(points) {
			t.Fatalf("%d samples for %d points", len(samples), len(points))
		}
		for _, s := range samples {
			if s.Status > telemetry.MaxStatus || s.Time == 0 {
				t.Fatalf("bad sample %+v", s)
			}
		}
	})
}

// FuzzDecodeDeviceID checks the Read Device Identification decoder.
func FuzzDecodeDeviceID(f *testing.F) {
	f.Add([]byte{14, 1, 1, 0, 0, 3, 0, 3, 'A', 'B', 'C', 1, 2, 'P', 'M', 2, 1, '1'})
	f.Add([]byte{14, 2, 2, 0xff, 4, 1, 4, 5, 'm', 'o', 'd', 'e', 'l'})
	f.Add([]byte{14, 1, 1, 0, 0, 2, 0, 9, 'x'})
	f.Add([]byte{13, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := decodeDeviceID(data)
		if err != nil {
			return
		}
		n := 0
		for _, v := range p.objects {
			n += len(v)
		}
		if n > len(data) {
			t.Fatalf("decoded %d bytes of objects from %d bytes", n, len(data))
		}
	})
}

// FuzzParseRef checks that any ref either fails with an error or parses
// to a spec whose canonical ref parses back to the same spec.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"40001", "400001/float32", "u3/hr/100/float64", "hr/10/bits4-7", "ir/0/string10", "coil/65535", "u255/di/0", "30001/int16", "hr/65535", "hr/1/bit15", "u1/hr/-1"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, ref string, oneBased bool) {
		s, err := parseRef(ref, refDefaults{unit: 1, oneBased: oneBased})
		if err != nil {
			return
		}
		canon := s.ref()
		back, err := parseRef(canon, refDefaults{unit: 9})
		if err != nil {
			t.Fatalf("%q -> %q does not parse: %v", ref, canon, err)
		}
		if back != s {
			t.Fatalf("%q -> %q -> %+v, want %+v", ref, canon, back, s)
		}
		if int(s.addr)+s.size() > 65536 {
			t.Fatalf("%q spans past the address space: %+v", ref, s)
		}
	})
}

// FuzzLearnedFile feeds arbitrary learned-limit files (a disk fills up, a
// card corrupts, someone edits one) to a starting driver: it must never
// panic, keep only holes that are real spans with a refusal count, and
// what it kept must survive a save and a reload unchanged.
func FuzzLearnedFile(f *testing.F) {
	now := time.Now().UTC()
	f.Add([]byte(`{"version": 1, "address": "127.0.0.1:502", "learned": "` + now.Format(time.RFC3339) + `",
		"areas": [{"unit": 1, "table": "hr", "ok_len": 8, "bad_len": 9, "holes": [[15, 16]], "cuts": [20, 22]}]}`))
	f.Add([]byte(`{"version": 2, "address": "127.0.0.1:502", "learned": "` + now.Format(time.RFC3339) + `",
		"areas": [{"unit": 1, "table": "hr", "learned": "` + now.Add(-time.Hour).Format(time.RFC3339) + `", "cuts": [5], "hole_cuts": [7],
		"holes": [{"start": 3, "end": 4, "learned": "` + now.Add(-9*24*time.Hour).Format(time.RFC3339) + `", "refusals": 2}, {"start": 7, "end": 9}]},
		{"unit": 2, "table": "ir", "unsupported": true}]}`))
	f.Add([]byte(`{"version": 2, "address": "127.0.0.1:502", "learned": "2999-01-01T00:00:00Z", "areas": [{"unit": 1, "table": "coil", "holes": [[5, 2], [0, 70000], {"start": -1, "end": 3}]}]}`))
	f.Add([]byte(`{"version": 2, "areas": [{"holes": [[1, 2, 3]]}]}`))
	f.Add([]byte(`{"version": 1`))
	load := func(t *testing.T, dir string) *Driver {
		d, err := newDriver(driver.Device{Name: "fuzz", Settings: yamlText("host: 127.0.0.1"), DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		file := stateFile(dir, "fuzz")
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		d := load(t, dir)
		d.mu.Lock()
		kept := d.snapshotLocked()
		for a, l := range d.learned {
			for _, h := range l.holes {
				if h.start < 0 || h.start >= h.end || h.end > 1<<16 || h.refusals < 1 || h.learned.After(time.Now()) {
					t.Fatalf("area %+v kept a bad hole %+v", a, h)
				}
			}
		}
		d.saved = nil // make the save below write what was kept
		d.mu.Unlock()
		d.saveLearned()
		d2 := load(t, dir)
		d2.mu.Lock()
		again := d2.snapshotLocked()
		d2.mu.Unlock()
		if !slicesEqualJSON(kept, again) {
			a, _ := json.Marshal(kept)
			b, _ := json.Marshal(again)
			t.Fatalf("kept %s, after a save and reload %s", a, b)
		}
	})
}
