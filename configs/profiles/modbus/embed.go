// Package profiles holds the Modbus device profiles that ship with
// Sightglass: one YAML register map per device model, written from the
// vendor's public register list (named in each file). The modbus driver
// reads them by name; the simulator serves them.
package profiles

import "embed"

// FS holds the profiles, one <name>.yaml per device model.
//
//go:embed *.yaml
var FS embed.FS
