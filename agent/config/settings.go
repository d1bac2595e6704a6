package config

import (
	"fmt"

	"go.yaml.in/yaml/v4"
)

// Settings adapts a YAML node to driver.Settings: drivers decode their own
// part of the configuration strictly, and errors keep the file's lines.
type Settings struct {
	node *yaml.Node
	what string
}

// DeviceSettings returns the settings of device d for its driver.
func (d *Device) DeviceSettings() Settings {
	return Settings{node: &d.Settings, what: fmt.Sprintf("device %q: settings", d.Name)}
}

// PointSettings returns the driver-specific keys of point p.
func (p *Point) PointSettings(device string) Settings {
	return Settings{node: p.Settings, what: fmt.Sprintf("device %q: point %q", device, p.Ref)}
}

// Decode decodes the settings into v, refusing unknown keys. Absent
// settings leave v unchanged.
func (s Settings) Decode(v any) error {
	if s.node == nil || s.node.Kind == 0 || (s.node.Kind == yaml.MappingNode && len(s.node.Content) == 0) {
		return nil
	}
	if err := s.node.Load(v, yaml.WithKnownFields()); err != nil {
		return fmt.Errorf("%s: %w", s.what, err)
	}
	return nil
}
