package modbus

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Settings are a modbus device's settings. Zero values mean the default
// given on each field.
type Settings struct {
	// Host is the device's or gateway's address, host or host:port. Required.
	Host string `yaml:"host"`
	// Port is the TCP port when Host has none. Default 502.
	Port int `yaml:"port"`
	// Unit is the unit id (slave id) of refs that name none. Default 1.
	Unit *int `yaml:"unit"`
	// LocalAddress is the local IP to dial from: the control NIC. Empty
	// lets the kernel choose.
	LocalAddress string `yaml:"local_address"`
	// Profile names a register map: a built-in profile or a .yaml path.
	// With discover: true, the device polls all of its points.
	Profile string `yaml:"profile"`
	// Order is the byte order of multi-register values: ABCD (default),
	// CDAB, BADC or DCBA. Points may override it; when set, it also
	// overrides the profile's.
	Order string `yaml:"order"`
	// Addressing is 0 (default) when table/N refs give zero-based protocol
	// addresses, 1 when they give one-based register numbers as many
	// manuals do. 4xxxx refs are always one-based.
	Addressing int `yaml:"addressing"`
	// RequestTimeout bounds each request within the read's timeout.
	// Default 3s.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// Pause is the least time between requests, for devices that drop
	// requests sent back to back. Default 0.
	Pause time.Duration `yaml:"pause"`
	// MaxRegisters caps the registers of one read. Default (and at most) 125.
	MaxRegisters int `yaml:"max_registers"`
	// MaxBits caps the coils or inputs of one read. Default (and at most) 2000.
	MaxBits int `yaml:"max_bits"`
	// MaxGap is how many unused registers one read may bridge instead of
	// becoming two reads (bits: 16 times as many). Default 16; 0 reads only
	// contiguous registers together. A device refusing a bridged read is
	// learned from (see README.md).
	MaxGap *int `yaml:"max_gap"`
}

// Defaults of Settings.
const (
	DefaultPort           = 502
	DefaultRequestTimeout = 3 * time.Second
	DefaultMaxGap         = 16
)

// pointSettings are a point's own keys besides ref, name, unit and interval.
type pointSettings struct {
	// Order overrides the device's byte order.
	Order string `yaml:"order,omitempty"`
	// Scale multiplies the raw value. Default 1.
	Scale *float64 `yaml:"scale,omitempty"`
	// Offset is added after scaling. Default 0.
	Offset float64 `yaml:"offset,omitempty"`
}

// config is the validated form of Settings.
type config struct {
	address  string
	local    string
	unit     byte
	profile  *Profile
	order    byteOrder
	orderSet bool // order was given: it overrides the profile's
	oneBased bool
	timeout  time.Duration
	pause    time.Duration
	plan     planOptions
}

func parseSettings(s driver.Settings) (config, error) {
	if s == nil {
		return config{}, errors.New("settings: missing: modbus needs at least settings.host")
	}
	var raw Settings
	if err := s.Decode(&raw); err != nil {
		return config{}, fmt.Errorf("decoding modbus settings: %w", err)
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	c := config{unit: 1, timeout: DefaultRequestTimeout, local: raw.LocalAddress,
		plan: planOptions{maxRegisters: maxReadRegisters, maxBits: maxReadBits, maxGap: DefaultMaxGap}}
	port := raw.Port
	if port == 0 {
		port = DefaultPort
	}
	if port < 1 || port > 65535 {
		bad("settings.port: %d out of range 1 to 65535", raw.Port)
	}
	host := strings.TrimSpace(raw.Host)
	switch {
	case host == "":
		bad("settings.host: required: the device's or gateway's IP address or name")
	default:
		if h, p, err := net.SplitHostPort(host); err == nil {
			if raw.Port != 0 {
				bad("settings.host %q names a port and settings.port is set too: give one", raw.Host)
			}
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				bad("settings.host %q: port %q out of range 1 to 65535", raw.Host, p)
			}
			c.address = net.JoinHostPort(h, p)
		} else {
			c.address = net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(port))
		}
	}
	if raw.LocalAddress != "" && net.ParseIP(raw.LocalAddress) == nil {
		bad("settings.local_address: %q is not an IP address: give the control NIC's address", raw.LocalAddress)
	}
	if raw.Unit != nil {
		if *raw.Unit < 0 || *raw.Unit > 255 {
			bad("settings.unit: %d out of range 0 to 255", *raw.Unit)
		} else {
			c.unit = byte(*raw.Unit)
		}
	}
	if raw.Order != "" {
		o, err := parseOrder(raw.Order)
		if err != nil {
			bad("settings.order: %v", err)
		}
		c.order, c.orderSet = o, true
	}
	switch raw.Addressing {
	case 0:
	case 1:
		c.oneBased = true
	default:
		bad("settings.addressing: %d: want 0 (zero-based addresses) or 1 (one-based register numbers)", raw.Addressing)
	}
	if raw.RequestTimeout < 0 {
		bad("settings.request_timeout: %s is negative", raw.RequestTimeout)
	} else if raw.RequestTimeout > 0 {
		c.timeout = raw.RequestTimeout
	}
	if raw.Pause < 0 || raw.Pause > 10*time.Second {
		bad("settings.pause: %s out of range 0 to 10s", raw.Pause)
	} else {
		c.pause = raw.Pause
	}
	if raw.MaxRegisters < 0 || raw.MaxRegisters > maxReadRegisters {
		bad("settings.max_registers: %d out of range 1 to %d", raw.MaxRegisters, maxReadRegisters)
	} else if raw.MaxRegisters > 0 {
		c.plan.maxRegisters = raw.MaxRegisters
	}
	if raw.MaxBits < 0 || raw.MaxBits > maxReadBits {
		bad("settings.max_bits: %d out of range 1 to %d", raw.MaxBits, maxReadBits)
	} else if raw.MaxBits > 0 {
		c.plan.maxBits = raw.MaxBits
	}
	if raw.MaxGap != nil {
		if *raw.MaxGap < 0 || *raw.MaxGap > maxReadRegisters {
			bad("settings.max_gap: %d out of range 0 to %d", *raw.MaxGap, maxReadRegisters)
		} else {
			c.plan.maxGap = *raw.MaxGap
		}
	}
	if raw.Profile != "" {
		p, err := LoadProfile(raw.Profile)
		if err != nil {
			bad("settings.profile: %v", err)
		}
		c.profile = p
	}
	return c, errors.Join(errs...)
}

// resolvePoint parses ref and applies a point's settings over the given
// defaults.
func resolvePoint(ref string, ps pointSettings, def refDefaults, order byteOrder) (spec, error) {
	s, err := parseRef(ref, def)
	if err != nil {
		return spec{}, err
	}
	s.order = order
	return applySettings(s, ps)
}

// applySettings applies a point's order, scale and offset to s.
func applySettings(s spec, ps pointSettings) (spec, error) {
	if s.table.bits() && (ps.Order != "" || ps.Scale != nil || ps.Offset != 0) {
		return spec{}, fmt.Errorf("order, scale and offset do not apply to a %s: it is a single bit", s.table)
	}
	if ps.Order != "" {
		o, err := parseOrder(ps.Order)
		if err != nil {
			return spec{}, fmt.Errorf("order: %w", err)
		}
		s.order = o
	}
	if ps.Scale != nil {
		if *ps.Scale == 0 || math.IsNaN(*ps.Scale) || math.IsInf(*ps.Scale, 0) {
			return spec{}, errors.New("scale: must be a finite, non-zero number")
		}
		s.scale = *ps.Scale
	}
	if math.IsNaN(ps.Offset) || math.IsInf(ps.Offset, 0) {
		return spec{}, errors.New("offset: must be a finite number")
	}
	if ps.Offset != 0 {
		s.offset = ps.Offset
	}
	return s, nil
}

// settingsOf returns the point settings that give s its order, scale and
// offset, for points handed out by Discover.
func settingsOf(s spec) driver.Settings {
	var ps pointSettings
	if !s.table.bits() {
		ps.Order = s.order.String()
		if s.scale != 1 {
			sc := s.scale
			ps.Scale = &sc
		}
		ps.Offset = s.offset
	}
	return fixedSettings{ps}
}

// fixedSettings are point settings given in code rather than YAML.
type fixedSettings struct{ v pointSettings }

// Decode decodes the fixed settings into v, strictly, as YAML would.
func (f fixedSettings) Decode(v any) error {
	var n yaml.Node
	if err := n.Encode(f.v); err != nil {
		return err
	}
	return n.Load(v, yaml.WithKnownFields())
}

// decodePointSettings decodes a point's settings strictly, returning the
// line of the point when the settings carry one.
func decodePointSettings(s driver.Settings) (pointSettings, int, error) {
	var ps pointSettings
	if s == nil {
		return ps, 0, nil
	}
	var node yaml.Node
	if err := s.Decode(&node); err != nil {
		return ps, 0, err
	}
	if node.Kind == 0 {
		return ps, 0, nil
	}
	if err := node.Load(&ps, yaml.WithKnownFields()); err != nil {
		return ps, node.Line, fmt.Errorf("line %d: %w (point keys: ref, name, unit, interval, tags, order, scale, offset)", node.Line, err)
	}
	return ps, node.Line, nil
}
