package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"strings"

	"github.com/sightglass-bms/sightglass/agent/config"
)

// ErrForwarding is returned when the kernel forwards packets between the
// control and uplink interfaces, which would bridge the controllers to the
// internet.
var ErrForwarding = errors.New("IP forwarding is enabled between the control and uplink interfaces")

// ForwardingFact is one forwarding switch the check read.
type ForwardingFact struct {
	// File is relative to /proc/sys, e.g. net/ipv4/conf/eth0/forwarding.
	File string `json:"file"`
	// On is whether the switch is set.
	On bool `json:"on"`
}

// CheckForwarding reads the forwarding switches that matter for the two
// interfaces from procSys (/proc/sys): the global net/ipv4/ip_forward and
// each interface's IPv4 and IPv6 forwarding. Linux forwards a packet that
// arrives on an interface whose forwarding is on, so either interface with
// forwarding on bridges the two directions it receives. It returns every
// switch it read and an error wrapping ErrForwarding naming those that are
// on. An interface file that is missing is an error too: the interface is
// not there, and the agent should not guess.
func CheckForwarding(procSys fs.FS, control, uplink string) ([]ForwardingFact, error) {
	files := []string{"net/ipv4/ip_forward"}
	for _, ifname := range []string{control, uplink} {
		files = append(files, path.Join("net/ipv4/conf", ifname, "forwarding"))
	}
	var facts []ForwardingFact
	var on []string
	for _, f := range files {
		v, err := fs.ReadFile(procSys, f)
		if err != nil {
			return facts, fmt.Errorf("reading /proc/sys/%s: %w (is the interface up and named as in network: of the config?)", f, err)
		}
		set := strings.TrimSpace(string(v)) != "0"
		facts = append(facts, ForwardingFact{File: f, On: set})
		if set {
			on = append(on, "/proc/sys/"+f)
		}
	}
	// IPv6 forwarding is per interface only; a kernel without IPv6 has no
	// such files, which is fine.
	for _, ifname := range []string{control, uplink} {
		f := path.Join("net/ipv6/conf", ifname, "forwarding")
		v, err := fs.ReadFile(procSys, f)
		if err != nil {
			continue
		}
		set := strings.TrimSpace(string(v)) != "0"
		facts = append(facts, ForwardingFact{File: f, On: set})
		if set {
			on = append(on, "/proc/sys/"+f)
		}
	}
	if len(on) > 0 {
		return facts, fmt.Errorf("%w: %s is on: turn it off (sysctl -w net.ipv4.ip_forward=0 and in /etc/sysctl.d), or set network.allow_forwarding: true if this box must route", ErrForwarding, strings.Join(on, ", "))
	}
	return facts, nil
}

// refuseForwarding is the start-up gate: with a network section configured
// the agent does not start while the kernel forwards between the two
// interfaces, unless the config allows it.
func refuseForwarding(procSys fs.FS, n config.Network, log *slog.Logger) error {
	if !n.Configured() {
		log.Warn("no network section in the config: the agent cannot check that the control and uplink NICs are kept apart; name them under network:")
		return nil
	}
	_, err := CheckForwarding(procSys, n.Control.Interface, n.Uplink.Interface)
	if err != nil && n.AllowForwarding && errors.Is(err, ErrForwarding) {
		log.Warn("IP forwarding is on between the control and uplink interfaces, allowed by network.allow_forwarding", "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	return nil
}
