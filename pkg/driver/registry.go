package driver

import (
	"fmt"
	"sort"
)

// Info describes a driver to the registry.
type Info struct {
	// Name is what a device's `driver:` key names, e.g. "modbus".
	Name string
	// New builds a driver for one device.
	New Factory
}

// Registry maps driver names to factories. The agent builds one explicitly
// at start-up; there is no global registry and no init() side effect.
type Registry struct {
	drivers map[string]Info
}

// NewRegistry returns a registry holding infos, or an error if a name is
// empty or given twice.
func NewRegistry(infos ...Info) (*Registry, error) {
	r := &Registry{drivers: make(map[string]Info, len(infos))}
	for _, info := range infos {
		if err := r.Register(info); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Register adds a driver. It refuses an empty name, a nil factory or a name
// already registered.
func (r *Registry) Register(info Info) error {
	if info.Name == "" {
		return fmt.Errorf("registering driver: empty name")
	}
	if info.New == nil {
		return fmt.Errorf("registering driver %q: nil factory", info.Name)
	}
	if r.drivers == nil {
		r.drivers = make(map[string]Info)
	}
	if _, dup := r.drivers[info.Name]; dup {
		return fmt.Errorf("registering driver %q: name already registered", info.Name)
	}
	r.drivers[info.Name] = info
	return nil
}

// Lookup returns the driver registered under name.
func (r *Registry) Lookup(name string) (Info, bool) {
	info, ok := r.drivers[name]
	return info, ok
}

// Names lists the registered drivers, sorted.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.drivers))
	for n := range r.drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
