package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"go.yaml.in/yaml/v4"
)

// Network names the box's two NICs: the control side, where the
// controllers are, and the uplink side, which reaches the ingest. The two
// are never bridged: every control-side socket binds to Control.Address,
// the uplink dials from the uplink side, and the agent refuses to start if
// the kernel forwards packets between them (see AllowForwarding).
//
// The section is optional so a laptop demo runs without it; `sightglass-agent
// check` says no-go on a box that leaves it out.
type Network struct {
	Control ControlNIC `yaml:"control"`
	Uplink  UplinkNIC  `yaml:"uplink"`
	// AllowForwarding lets the agent start although IP forwarding is on
	// for one of the two interfaces (a box that is also a router by
	// design). Default false: forwarding would bridge the control subnet
	// to the internet, which the agent exists to prevent.
	AllowForwarding bool `yaml:"allow_forwarding"`

	// Line is where the section starts in the file; 0 when absent.
	Line int `yaml:"-"`
}

// ControlNIC is the interface facing the controllers.
type ControlNIC struct {
	// Interface is the kernel's name of the NIC, e.g. eth0. Required.
	Interface string `yaml:"interface"`
	// Address is the NIC's IP address. Every device's local_address must
	// be on it. Required.
	Address string `yaml:"address"`

	// Line is where the section starts in the file.
	Line int `yaml:"-"`
}

// UplinkNIC is the interface facing the internet.
type UplinkNIC struct {
	// Interface is the kernel's name of the NIC, e.g. eth1. Required.
	Interface string `yaml:"interface"`

	// Line is where the section starts in the file.
	Line int `yaml:"-"`
}

// Configured reports whether the config names the two interfaces.
func (n Network) Configured() bool { return n.Line != 0 }

// UnmarshalYAML records the lines of the section and its two parts, for
// validation messages.
func (n *Network) UnmarshalYAML(node *yaml.Node) error {
	type plain Network
	var v plain
	if err := node.Load(&v, yaml.WithKnownFields()); err != nil {
		return err
	}
	*n = Network(v)
	n.Line = node.Line
	if _, c := settingsKey(node, "control"); c != nil {
		n.Control.Line = c.Line
	}
	if _, u := settingsKey(node, "uplink"); u != nil {
		n.Uplink.Line = u.Line
	}
	return nil
}

// validIfname mirrors the kernel's rule for interface names: 1 to 15
// bytes, no '/', no whitespace, not "." or "..".
func validIfname(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n")
}

// validateNetwork checks the network section and that every device's
// local_address is on the control NIC. It does no I/O: whether the
// interfaces exist is `sightglass-agent check`'s business.
func (c *Config) validateNetwork() []error {
	n := c.Network
	if !n.Configured() {
		return nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	where := fmt.Sprintf("network (line %d)", n.Line)
	cl, ul := n.Control.Line, n.Uplink.Line
	if cl == 0 {
		cl = n.Line
	}
	if ul == 0 {
		ul = n.Line
	}
	if !validIfname(n.Control.Interface) {
		bad("%s: control.interface (line %d): %q is not an interface name: want the control NIC's name as `ip link` shows it, e.g. eth0", where, cl, n.Control.Interface)
	}
	if !validIfname(n.Uplink.Interface) {
		bad("%s: uplink.interface (line %d): %q is not an interface name: want the uplink NIC's name as `ip link` shows it, e.g. eth1", where, ul, n.Uplink.Interface)
	}
	if n.Control.Interface != "" && n.Control.Interface == n.Uplink.Interface {
		bad("%s: control.interface and uplink.interface (line %d) are both %q: the control subnet and the uplink must be two NICs", where, ul, n.Control.Interface)
	}
	control, err := netip.ParseAddr(n.Control.Address)
	switch {
	case n.Control.Address == "":
		bad("%s: control.address (line %d): required: the control NIC's IP address, e.g. 192.168.10.5", where, cl)
	case err != nil:
		bad("%s: control.address (line %d): %q is not an IP address (no port, no prefix length)", where, cl, n.Control.Address)
	case control.IsUnspecified():
		bad("%s: control.address (line %d): %s binds every NIC, the uplink included: give the control NIC's own address", where, cl, control)
	}
	if err != nil || control.IsUnspecified() {
		return errs
	}
	if up := c.Uplink.LocalAddress; up != "" {
		if a, err := netip.ParseAddr(hostOf(up)); err == nil && a.Unmap() == control.Unmap() {
			bad("uplink.local_address: %s is the control NIC's address: the uplink must dial from the uplink side", up)
		}
	}
	for _, d := range c.Devices {
		v := localAddressNode(&d.Settings)
		if v == nil || v.Kind != yaml.ScalarNode {
			continue
		}
		a, err := netip.ParseAddr(hostOf(v.Value))
		if err != nil {
			// The driver reports a malformed address itself, with its line.
			continue
		}
		if a.Unmap() != control.Unmap() {
			bad("device %q (line %d): settings.local_address (line %d): %s is not the control NIC's address %s (network.control.address, line %d): control-side sockets bind only there", d.Name, d.Line, v.Line, v.Value, control, cl)
		}
	}
	return errs
}

// bacnetShared is what the BACnet devices on one local_address share: one
// socket, so one broadcast address, BBMD registration and per-network
// limit. Read generically here (config imports no driver); the driver
// decodes its settings strictly itself.
type bacnetShared struct {
	LocalAddress  string `yaml:"local_address"`
	Broadcast     string `yaml:"broadcast"`
	BBMD          string `yaml:"bbmd"`
	MaxPerNetwork int    `yaml:"max_per_network"`
}

// validateBACnetShared refuses two BACnet devices on one local_address
// whose shared settings differ: at run time the second to connect would
// fail every attempt (they cannot share the socket and cannot each have
// one on the same address and port).
func (c *Config) validateBACnetShared() []error {
	type first struct {
		d *Device
		s bacnetShared
	}
	var errs []error
	seen := map[string]first{}
	for i := range c.Devices {
		d := &c.Devices[i]
		if d.Driver != "bacnet" || d.Settings.Kind != yaml.MappingNode {
			continue
		}
		var s bacnetShared
		if err := d.Settings.Load(&s); err != nil {
			continue // the driver reports malformed settings with their lines
		}
		if ap, err := netip.ParseAddrPort(s.LocalAddress); s.LocalAddress == "" || err == nil && ap.Port() == 0 {
			continue // an ephemeral port is the device's own socket
		}
		f, ok := seen[s.LocalAddress]
		if !ok {
			seen[s.LocalAddress] = first{d, s}
			continue
		}
		var diffs []string
		for _, x := range []struct {
			key       string
			was, this any
		}{
			{"broadcast", f.s.Broadcast, s.Broadcast},
			{"bbmd", f.s.BBMD, s.BBMD},
			{"max_per_network", f.s.MaxPerNetwork, s.MaxPerNetwork},
		} {
			if x.was != x.this {
				diffs = append(diffs, fmt.Sprintf("%s %s%v here, %v there", x.key, settingLine(d, x.key), orUnset(x.this), orUnset(x.was)))
			}
		}
		if len(diffs) > 0 {
			errs = append(errs, fmt.Errorf("device %q (line %d) and device %q (line %d) share settings.local_address %s but differ: %s: devices on one local address share one BACnet socket: give them the same broadcast, bbmd and max_per_network, or this one another local_address",
				d.Name, d.Line, f.d.Name, f.d.Line, s.LocalAddress, strings.Join(diffs, "; ")))
		}
	}
	return errs
}

// settingLine is "(line N) " for key in d's settings, "" when absent.
func settingLine(d *Device, key string) string {
	if k, _ := settingsKey(&d.Settings, key); k != nil {
		return fmt.Sprintf("(line %d) ", k.Line)
	}
	return ""
}

func orUnset(v any) any {
	if v == "" || v == 0 {
		return "unset"
	}
	return v
}

// BACnetPort is the standard BACnet/IP UDP port (0xBAC0), which a BACnet
// device's local_address gets when it is filled from the control address.
const BACnetPort = 47808

// controlSide names the drivers whose sockets are on the control side and
// how each spells the control NIC's address as its local_address. Names,
// not imports: config depends on no driver and does no I/O.
var controlSide = map[string]func(netip.Addr) string{
	"modbus": netip.Addr.String,
	"opcua":  netip.Addr.String,
	"bacnet": func(a netip.Addr) string { return netip.AddrPortFrom(a, BACnetPort).String() },
}

// fillLocalAddresses gives every control-side device without a
// local_address the control NIC's address, so its driver binds its socket
// there and to the control NIC (SO_BINDTODEVICE, pkg/nicbind) instead of
// letting the routing table pick a NIC. Without a network section, or with
// a control address that is no usable IP (validateNetwork says so), nothing
// is filled.
//
// Settings may share nodes through anchors and merge keys, so filling one
// device's mapping can change what another merges: which devices to fill
// is decided for all of them first, from the file as written, and each
// gets the value as a key of its own, which beats a merged one.
func (c *Config) fillLocalAddresses() {
	n := c.Network
	if !n.Configured() {
		return
	}
	control, err := netip.ParseAddr(n.Control.Address)
	if err != nil || control.IsUnspecified() {
		return
	}
	line := n.Control.Line
	if line == 0 {
		line = n.Line
	}
	var fill []*Device
	for i := range c.Devices {
		d := &c.Devices[i]
		if _, ok := controlSide[d.Driver]; !ok {
			continue
		}
		s := &d.Settings
		target := s // what the settings are, through an alias
		if s.Kind == yaml.AliasNode && s.Alias != nil {
			target = s.Alias
		}
		switch {
		case s.Kind == 0:
			*s = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: d.Line, Column: 1}
		case target.Kind == yaml.ScalarNode && target.ShortTag() == "!!null":
			// `settings:` or `settings: ~` (or an alias of one) decodes as
			// no settings at all, so it is filled like absent ones; left
			// as it is, the device would bind wherever the kernel chose.
			*s = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: s.Line, Column: s.Column}
		case s.Kind == yaml.AliasNode && target.Kind == yaml.MappingNode:
			// settings: *common. Made a mapping that merges the alias, so
			// the device can have a key of its own. Only for a mapping: a
			// merge of anything else fails with yaml's "map merge requires
			// map", hiding the driver's own message about the settings.
			alias := *s
			*s = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: s.Line, Column: s.Column, Content: []*yaml.Node{
				{Kind: yaml.ScalarNode, Tag: "!!merge", Value: "<<", Line: s.Line, Column: s.Column}, &alias}}
		case s.Kind == yaml.MappingNode:
		default:
			// Not a mapping (a scalar or a sequence, written or aliased):
			// the driver reports it when it decodes its settings.
			continue
		}
		// An explicit empty local_address means "the kernel's choice",
		// which a box with a network section does not have: it is filled
		// like a missing one. Any other value is the file's.
		if v := localAddressNode(s); v == nil || v.Kind == yaml.ScalarNode && blankScalar(v) {
			fill = append(fill, d)
		}
	}
	for _, d := range fill {
		value := controlSide[d.Driver](control)
		d.LocalAddressFilled = true
		s := &d.Settings
		if _, v := settingsKey(s, "local_address"); v != nil {
			v.Value, v.Tag, v.Style = value, "!!str", 0
			continue
		}
		// The lines are the control address's, so a message about the
		// filled value points at where it came from.
		s.Content = append(s.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "local_address", Line: line, Column: 1},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, Line: line, Column: 1})
	}
}

// LocalAddress returns the device's settings.local_address as its driver
// will see it (filled from network.control.address when the file does not
// set it), or "" when it has none.
func (d *Device) LocalAddress() string {
	if v := localAddressNode(&d.Settings); v != nil && v.Kind == yaml.ScalarNode && !blankScalar(v) {
		return strings.TrimSpace(v.Value)
	}
	return ""
}

// localAddressNode returns the value of local_address in a device's
// settings as its driver, decoding them, will see it: written in the
// mapping or brought in by a merge key (`<<: *common`), a key written
// directly winning as YAML has it. It decodes rather than scans the
// mapping's keys, which would miss a merged one. The node is a copy when
// the key is merged; nil when the key is absent.
func localAddressNode(s *yaml.Node) *yaml.Node {
	if s == nil || s.Kind != yaml.MappingNode {
		return nil
	}
	var v struct {
		LocalAddress yaml.Node `yaml:"local_address"`
	}
	if err := s.Load(&v); err != nil {
		// Settings the driver will refuse (a merge of a scalar, say): only
		// a key written directly can count.
		_, n := settingsKey(s, "local_address")
		return n
	}
	if v.LocalAddress.Kind == 0 {
		return nil
	}
	return &v.LocalAddress
}

// blankScalar reports whether a scalar node decodes as an empty string:
// blank, or null (`local_address: ~`).
func blankScalar(v *yaml.Node) bool {
	return v.ShortTag() == "!!null" || strings.TrimSpace(v.Value) == ""
}

// settingsKey finds key in a mapping node, such as a device's settings.
func settingsKey(n *yaml.Node, key string) (k, v *yaml.Node) {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i], n.Content[i+1]
		}
	}
	return nil, nil
}

// hostOf strips a port from "IP:port" or "[IPv6]:port" and leaves a bare
// IP as it is.
func hostOf(s string) string {
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return strings.Trim(s, "[]")
}
