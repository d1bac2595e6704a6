package modbus

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"go.yaml.in/yaml/v4"

	profiles "github.com/sightglass-bms/sightglass/configs/profiles/modbus"
)

// Profile is a device model's register map, written once and named by
// every device of that model.
type Profile struct {
	// Name is the profile's name: the file name without .yaml.
	Name string
	// Vendor and Model describe the device.
	Vendor, Model string
	// Source names the public register map the profile was written from.
	Source string
	// Match, when set, lets discovery pick the profile from the device's
	// identification (function 43/14): each non-empty field must occur,
	// ignoring case, in the identification's vendor name and product code
	// or name.
	Match struct{ Vendor, Product string }
	// Points are the map's points, in file order.
	Points []ProfilePoint
}

// ProfilePoint is one point of a profile, resolved.
type ProfilePoint struct {
	// Ref is the canonical reference without a unit: hr/2999/float32.
	Ref  string
	Name string
	Unit string
	// Table is coil, di, hr or ir; Address is zero-based.
	Table   string
	Address uint16
	// Type is the canonical type (float32, bit3, string16, bool...).
	Type string
	// Registers is how many registers (or bits) the point spans.
	Registers int
	// Order is the byte order (ABCD, CDAB, BADC, DCBA).
	Order string
	// Scale and Offset make the engineering value: raw*Scale + Offset.
	Scale, Offset float64

	spec spec
}

// profileFile is a profile as written.
type profileFile struct {
	Vendor     string `yaml:"vendor"`
	Model      string `yaml:"model"`
	Source     string `yaml:"source"`
	Addressing int    `yaml:"addressing"`
	Order      string `yaml:"order"`
	Match      struct {
		Vendor  string `yaml:"vendor"`
		Product string `yaml:"product"`
	} `yaml:"match"`
	Points []profilePointFile `yaml:"points"`
}

type profilePointFile struct {
	pointSettings `yaml:",inline"`
	Ref           string `yaml:"ref"`
	Name          string `yaml:"name"`
	Unit          string `yaml:"unit"`
	line          int
}

// UnmarshalYAML decodes a profile point strictly, keeping its line.
func (p *profilePointFile) UnmarshalYAML(n *yaml.Node) error {
	type plain profilePointFile
	var v plain
	if err := n.Load(&v, yaml.WithKnownFields()); err != nil {
		return err
	}
	*p = profilePointFile(v)
	p.line = n.Line
	return nil
}

// BuiltinProfiles lists the names of the profiles that ship with the agent.
func BuiltinProfiles() []string {
	entries, _ := fs.ReadDir(profiles.FS, ".")
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".yaml"); ok {
			names = append(names, n)
		}
	}
	return names
}

// LoadProfile loads a profile: a built-in one by name (see
// BuiltinProfiles), or a file when name is a path ending in .yaml.
func LoadProfile(name string) (*Profile, error) {
	var data []byte
	var err error
	base := name
	if strings.HasSuffix(name, ".yaml") || strings.ContainsRune(name, os.PathSeparator) {
		data, err = os.ReadFile(name)
		base = strings.TrimSuffix(path.Base(name), ".yaml")
	} else {
		data, err = fs.ReadFile(profiles.FS, name+".yaml")
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("modbus profile %q: no such built-in profile (built in: %s; or give a path to a .yaml file)", name, strings.Join(BuiltinProfiles(), ", "))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("reading modbus profile %q: %w", name, err)
	}
	p, err := ParseProfile(base, data)
	if err != nil {
		return nil, fmt.Errorf("modbus profile %q: %w", name, err)
	}
	return p, nil
}

// ParseProfile parses a profile's YAML strictly, reporting every problem
// with its line.
func ParseProfile(name string, data []byte) (*Profile, error) {
	var f profileFile
	if err := yaml.Load(data, &f, yaml.WithKnownFields()); err != nil {
		return nil, err
	}
	var errs []error
	if f.Source == "" {
		errs = append(errs, errors.New("source: required: name the public register map this profile was written from"))
	}
	if f.Addressing != 0 && f.Addressing != 1 {
		errs = append(errs, fmt.Errorf("addressing: %d: want 0 (zero-based addresses) or 1 (one-based register numbers)", f.Addressing))
	}
	order := orderABCD
	if f.Order != "" {
		o, err := parseOrder(f.Order)
		if err != nil {
			errs = append(errs, fmt.Errorf("order: %w", err))
		}
		order = o
	}
	if len(f.Points) == 0 {
		errs = append(errs, errors.New("points: none listed"))
	}
	p := &Profile{Name: name, Vendor: f.Vendor, Model: f.Model, Source: f.Source}
	p.Match.Vendor, p.Match.Product = f.Match.Vendor, f.Match.Product
	seen := map[string]int{}
	for _, pf := range f.Points {
		where := fmt.Sprintf("point %q (line %d)", pf.Ref, pf.line)
		if strings.HasPrefix(strings.ToLower(pf.Ref), "u") {
			errs = append(errs, fmt.Errorf("%s: a profile's refs name no unit: the device's settings give it", where))
			continue
		}
		s, err := resolvePoint(pf.Ref, pf.pointSettings, refDefaults{oneBased: f.Addressing == 1}, order)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		ref := strings.TrimPrefix(s.ref(), "u0/")
		if prev, dup := seen[ref]; dup {
			errs = append(errs, fmt.Errorf("%s: the same register and type as the point at line %d", where, prev))
			continue
		}
		seen[ref] = pf.line
		name := pf.Name
		if name == "" {
			name = ref
		}
		p.Points = append(p.Points, ProfilePoint{
			Ref: ref, Name: name, Unit: pf.Unit, Table: s.table.String(), Address: s.addr,
			Type: s.typ.String(), Registers: s.size(), Order: s.order.String(), Scale: s.scale, Offset: s.offset, spec: s,
		})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// matches reports whether the profile's Match fits a device's identification.
func (p *Profile) matches(id DeviceID) bool {
	if p.Match.Vendor == "" && p.Match.Product == "" {
		return false
	}
	has := func(s, sub string) bool {
		return sub == "" || strings.Contains(strings.ToLower(s), strings.ToLower(sub))
	}
	return has(id.Vendor, p.Match.Vendor) && (has(id.ProductCode, p.Match.Product) || has(id.ProductName, p.Match.Product) || has(id.Model, p.Match.Product))
}

// MatchProfile returns the built-in profile matching a device's
// identification, or nil.
func MatchProfile(id DeviceID) *Profile {
	for _, name := range BuiltinProfiles() {
		p, err := LoadProfile(name)
		if err == nil && p.matches(id) {
			return p
		}
	}
	return nil
}

// forUnit returns the profile's points as specs for one unit, in file
// order; order, when set, overrides the profile's byte order of
// multi-register values (a device whose firmware swaps words).
func (p *Profile) forUnit(unit byte, order *byteOrder) []spec {
	out := make([]spec, 0, len(p.Points))
	for _, pp := range p.Points {
		s := pp.spec
		s.unit = unit
		if order != nil && !s.table.bits() {
			s.order = *order
		}
		out = append(out, s)
	}
	return out
}

// byRef keys specs by canonical ref.
func byRef(specs []spec) map[string]spec {
	m := make(map[string]spec, len(specs))
	for _, s := range specs {
		m[s.ref()] = s
	}
	return m
}
