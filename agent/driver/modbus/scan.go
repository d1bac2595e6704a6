package modbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	gmodbus "github.com/goburrow/modbus"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// ScanOptions configure Scan.
type ScanOptions struct {
	// Address is host:port of the device or gateway. Required.
	Address string
	// LocalAddr is the local IP to dial from; empty lets the kernel choose.
	LocalAddr string
	// Units are the unit ids to probe, in order. Required.
	Units []byte
	// Timeout bounds each probe. Default 1s.
	Timeout time.Duration
	// Rate caps the requests per second, so a scan never floods a
	// gateway or a serial line behind it. Default 20.
	Rate float64
	// Logger receives the guard's refusals and debug lines; nil discards.
	Logger *slog.Logger
	// Progress, if set, is called after each unit with what it found.
	Progress func(done, total int, u UnitReport)
}

// UnitReport is what one unit id answered.
type UnitReport struct {
	Unit byte `json:"unit"`
	// Present is true when the unit answered anything, exceptions included.
	Present bool `json:"present"`
	// Identity is the unit's answer to 43/14, when it gave one.
	Identity *DeviceID `json:"identity,omitempty"`
	// Profile is the built-in profile matching the identity, if any.
	Profile string `json:"profile,omitempty"`
	// Probes lists the single reads tried and their answers.
	Probes []Probe `json:"probes,omitempty"`
	// SameAs is the first unit that answered exactly alike, or 0. When
	// every unit answers alike, the device ignores the unit id.
	SameAs byte `json:"same_as,omitempty"`
}

// signature is what a unit answered, to spot a device that ignores the
// unit id and answers every one alike.
func (u UnitReport) signature() string {
	var b strings.Builder
	if u.Identity != nil {
		b.WriteString(u.Identity.String())
	}
	for _, p := range u.Probes {
		ref := p.Ref[strings.IndexByte(p.Ref, '/'):] // without the unit
		fmt.Fprintf(&b, "|%s", ref)
		if p.Value != nil {
			fmt.Fprintf(&b, "=%d", *p.Value)
		} else {
			fmt.Fprintf(&b, "!%d", p.Exception)
		}
	}
	return b.String()
}

// IgnoresUnitID reports whether at least three units answered and all
// alike: the device answers whatever unit id it is asked for.
func IgnoresUnitID(reports []UnitReport) bool {
	present, alike := 0, 0
	for _, r := range reports {
		if r.Present {
			present++
			if r.SameAs != 0 {
				alike++
			}
		}
	}
	return present >= 3 && alike == present-1
}

// Probe is one single-register or single-bit read.
type Probe struct {
	// Ref is the canonical ref read.
	Ref string `json:"ref"`
	// Value is the raw value, when the read worked.
	Value *uint16 `json:"value,omitempty"`
	// Exception is the Modbus exception code answered instead, or 0.
	Exception byte `json:"exception,omitempty"`
}

// probeTables are the single reads a scan tries on a present unit.
var probeTables = []table{holding, input, coils, discrete}

// Scan probes unit ids on one address, reading only: Read Device
// Identification (43/14), then one register or bit of each table at
// address 0. Everything goes through the read-only guard, one request at a
// time, at most opts.Rate per second. A unit that stays silent (or that a
// gateway reports unreachable) is absent; the scan goes on.
func Scan(ctx context.Context, opts ScanOptions) ([]UnitReport, error) {
	if len(opts.Units) == 0 {
		return nil, errors.New("scanning: no unit ids to probe")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	if opts.Rate <= 0 {
		opts.Rate = 20
	}
	tr, err := NewTransport(TransportOptions{Address: opts.Address, LocalAddr: opts.LocalAddr, RequestTimeout: opts.Timeout})
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	if err := tr.Connect(ctx); err != nil {
		return nil, fmt.Errorf("scanning %s: %w", opts.Address, err)
	}
	g := NewGuard(opts.Logger)
	gap := time.Duration(float64(time.Second) / opts.Rate)
	var last time.Time
	// pace waits until the next request may go.
	pace := func() error {
		if wait := time.Until(last.Add(gap)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		last = time.Now()
		return nil
	}
	var reports []UnitReport
	for i, unit := range opts.Units {
		rep := UnitReport{Unit: unit}
		if err := pace(); err != nil {
			return reports, fmt.Errorf("scanning: %w", err)
		}
		id, err := g.ReadDeviceID(ctx, tr, unit)
		switch {
		case ctx.Err() != nil:
			return reports, fmt.Errorf("scanning: %w", ctx.Err())
		case errors.Is(err, driver.ErrRefused):
			return reports, err
		case err == nil:
			rep.Present, rep.Identity = true, &id
			if p := MatchProfile(id); p != nil {
				rep.Profile = p.Name
			}
		case absent(err):
		default:
			// An exception (most devices lack 43/14) still proves the
			// unit is there.
			var mbErr *gmodbus.ModbusError
			rep.Present = errors.As(err, &mbErr)
		}
		if rep.Present {
			for _, t := range probeTables {
				if err := pace(); err != nil {
					return reports, fmt.Errorf("scanning: %w", err)
				}
				pr, err := probe(ctx, g, tr, unit, t)
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, driver.ErrRefused) {
						return reports, fmt.Errorf("scanning: %w", err)
					}
					break // the unit went silent: keep what it said
				}
				rep.Probes = append(rep.Probes, pr)
			}
		}
		if rep.Present {
			for _, prev := range reports {
				if prev.Present && prev.SameAs == 0 && prev.signature() == rep.signature() {
					rep.SameAs = prev.Unit
					break
				}
			}
		}
		reports = append(reports, rep)
		if opts.Progress != nil {
			opts.Progress(i+1, len(opts.Units), rep)
		}
	}
	return reports, nil
}

// absent reports whether err means nothing answers at a unit id.
func absent(err error) bool {
	var mbErr *gmodbus.ModbusError
	if errors.As(err, &mbErr) {
		return mbErr.ExceptionCode == gmodbus.ExceptionCodeGatewayPathUnavailable ||
			mbErr.ExceptionCode == gmodbus.ExceptionCodeGatewayTargetDeviceFailedToRespond
	}
	return errors.Is(err, errTimeout) || errors.Is(err, driver.ErrConnLost)
}

// probe reads address 0 of one table of a unit.
func probe(ctx context.Context, g *Guard, tr *Transport, unit byte, t table) (Probe, error) {
	s := spec{unit: unit, table: t, typ: valueType{kind: kindUint16}}
	if t.bits() {
		s.typ = valueType{kind: kindBool}
	}
	pr := Probe{Ref: s.ref()}
	c := g.Client(ctx, tr, unit)
	var data []byte
	var err error
	switch t {
	case holding:
		data, err = c.ReadHoldingRegisters(0, 1)
	case input:
		data, err = c.ReadInputRegisters(0, 1)
	case coils:
		data, err = c.ReadCoils(0, 1)
	case discrete:
		data, err = c.ReadDiscreteInputs(0, 1)
	}
	var mbErr *gmodbus.ModbusError
	switch {
	case errors.As(err, &mbErr):
		pr.Exception = mbErr.ExceptionCode
		return pr, nil
	case err != nil:
		return pr, err
	case len(data) < 1 || !t.bits() && len(data) != 2:
		return pr, fmt.Errorf("probing %s: answer of %d bytes", pr.Ref, len(data))
	}
	v := uint16(data[0] & 1)
	if !t.bits() {
		v = uint16(data[0])<<8 | uint16(data[1])
	}
	pr.Value = &v
	return pr, nil
}

// ParseUnits parses a list of unit ids such as "1-247" or "1,3,10-12".
func ParseUnits(s string) ([]byte, error) {
	var out []byte
	seen := map[int]bool{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b > 255 || a > b {
			return nil, fmt.Errorf("unit ids %q: want numbers 0 to 255 and ranges such as 1-247, separated by commas", s)
		}
		for u := a; u <= b; u++ {
			if !seen[u] {
				seen[u] = true
				out = append(out, byte(u))
			}
		}
	}
	return out, nil
}

// StarterConfig returns the devices section of an agent configuration for
// the units a scan found: a profile when one matched, else the probes that
// read a value, for the installer to replace with the register map.
func StarterConfig(address, namePrefix string, reports []UnitReport) string {
	var b strings.Builder
	b.WriteString("# Written by `sightglass-agent discover modbus`: check every device before use.\ndevices:\n")
	ignores := IgnoresUnitID(reports)
	if ignores {
		b.WriteString("  # Every unit id answered alike: the device ignores the unit id, so it is listed once.\n")
	}
	for _, r := range reports {
		if !r.Present || ignores && r.SameAs != 0 {
			continue
		}
		if r.SameAs != 0 {
			fmt.Fprintf(&b, "  # unit %d answered exactly like unit %d: the same model, or the same device twice?\n", r.Unit, r.SameAs)
		}
		name := fmt.Sprintf("%s-u%d", namePrefix, r.Unit)
		if r.Identity != nil {
			fmt.Fprintf(&b, "  # unit %d identifies as %q\n", r.Unit, r.Identity.String())
		}
		if r.Profile != "" {
			fmt.Fprintf(&b, "  - name: %s\n    driver: modbus\n    interval: 1m\n    discover: true   # every point of the profile\n    settings: {host: %q, unit: %d, profile: %s}\n",
				name, address, r.Unit, r.Profile)
			continue
		}
		var refs []string
		for _, p := range r.Probes {
			if p.Value != nil {
				refs = append(refs, p.Ref)
			}
		}
		if len(refs) == 0 {
			fmt.Fprintf(&b, "  # unit %d answered, but not at address 0 of any table: list its points from its register map\n"+
				"  # - name: %s\n  #   driver: modbus\n  #   settings: {host: %q, unit: %d}\n  #   points: []\n", r.Unit, name, address, r.Unit)
			continue
		}
		fmt.Fprintf(&b, "  - name: %s\n    driver: modbus\n    interval: 1m\n    settings: {host: %q, unit: %d}\n    points:   # what answered the probe: replace with the device's register map\n",
			name, address, r.Unit)
		for _, ref := range refs {
			fmt.Fprintf(&b, "      - {ref: %s}\n", ref)
		}
	}
	return b.String()
}
