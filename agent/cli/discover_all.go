package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v4"
	"golang.org/x/sync/errgroup"

	"github.com/sightglass-bms/sightglass/agent/config"
	bacnetdrv "github.com/sightglass-bms/sightglass/agent/driver/bacnet"
	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// maxSweepHosts bounds the subnet sweep: a /22. A larger control subnet is
// swept in parts with --subnet.
const maxSweepHosts = 1022

// allOptions are the inputs of `discover all`.
type allOptions struct {
	control    netip.Addr
	controlIf  string
	uplinkIf   string
	subnet     netip.Prefix
	broadcast  string
	bacnetPort int
	modbusPort int
	opcuaPort  int
	units      []byte
	timeout    time.Duration
	wait       time.Duration
	rate       float64
	dataDir    string
	skip       map[string]bool
	log        *slog.Logger
	progress   io.Writer
	// nicOf finds the interface that holds an address (nicbind.Owner): the
	// sweep's probes are bound to the control NIC. It lists the machine's
	// interfaces, so a sweep asks it once, not once per probe.
	nicOf func(netip.Addr) (string, error)
}

// AllReport is what `discover all` found, per protocol.
type AllReport struct {
	Control string                         `json:"control_address"`
	Subnet  string                         `json:"subnet"`
	Modbus  map[string][]modbus.UnitReport `json:"modbus"`
	BACnet  []bacnetdrv.DeviceReport       `json:"bacnet"`
	OPCUA   map[string]*opcua.Report       `json:"opcua"`
	// Errors are the per-host or per-protocol failures; the rest of the
	// report stands.
	Errors []string `json:"errors,omitempty"`
}

func newDiscoverAllCmd() *cobra.Command {
	var path, control, subnet, broadcast, units, out, skip string
	var bacnetPort, modbusPort, opcuaPort int
	var timeout, wait time.Duration
	var rate float64
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "all",
		Short: "Find Modbus TCP, BACnet/IP and OPC UA devices on the control subnet at once (read-only) and write one config",
		Long: `all sweeps the control subnet from the control NIC's address: a TCP connect to
every host's Modbus (502) and OPC UA (4840) port, which sends no request at all,
then, for each host that accepted, the protocol's own read-only discovery (the
Modbus unit probe and identification, the OPC UA endpoints and browse), and a
BACnet Who-Is on the subnet's broadcast address followed by reading each
device's objects. Every request goes through the drivers' read-only guards and
is rate limited. The result is one file with the network section and every
device found, for the installer to edit and paste into the agent config.

The control address and subnet come from --config (network.control) or from
--control-address and --subnet.`,
		Example: `  sightglass-agent discover all --config /etc/sightglass/agent.yaml --out discovered.yaml
  sightglass-agent discover all --control-address 192.168.10.5 --subnet 192.168.10.0/24 --units 1-4 --out discovered.yaml
  sightglass-agent discover all --config /etc/sightglass/agent.yaml --skip opcua --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := allOptions{bacnetPort: bacnetPort, modbusPort: modbusPort, opcuaPort: opcuaPort, timeout: timeout, wait: wait, rate: rate, broadcast: broadcast, skip: map[string]bool{}, dataDir: "/var/lib/sightglass", nicOf: nicbind.Owner}
			for _, s := range strings.Split(skip, ",") {
				switch s = strings.TrimSpace(s); s {
				case "":
				case "modbus", "bacnet", "opcua":
					o.skip[s] = true
				default:
					return fmt.Errorf("--skip %q: want modbus, bacnet or opcua", s)
				}
			}
			if path != "" {
				cfg, err := config.Load(path)
				if err != nil {
					return err
				}
				if !cfg.Network.Configured() && control == "" {
					return fmt.Errorf("%s has no network section: name the control NIC there, or give --control-address and --subnet", path)
				}
				o.controlIf, o.uplinkIf, o.dataDir = cfg.Network.Control.Interface, cfg.Network.Uplink.Interface, cfg.DataDir
				if control == "" {
					control = cfg.Network.Control.Address
				}
			}
			var err error
			if o.control, err = netip.ParseAddr(control); err != nil || !o.control.Is4() || o.control.IsUnspecified() {
				return fmt.Errorf("--control-address %q: want the control NIC's IPv4 address (from --config or the flag)", control)
			}
			if subnet == "" {
				o.subnet, err = subnetOf(o.control, systemInterfaces)
				if err != nil {
					return fmt.Errorf("%w: give --subnet", err)
				}
			} else if o.subnet, err = netip.ParsePrefix(subnet); err != nil || !o.subnet.Contains(o.control) {
				return fmt.Errorf("--subnet %q: want the control subnet in CIDR form, containing %s", subnet, o.control)
			}
			o.subnet = o.subnet.Masked()
			if o.units, err = modbus.ParseUnits(units); err != nil {
				return fmt.Errorf("--units: %w", err)
			}
			if rate <= 0 || rate > 1000 {
				return fmt.Errorf("--rate %v: want requests per second, above 0 and at most 1000", rate)
			}
			o.progress = cmd.ErrOrStderr()
			o.log = slog.New(slog.NewTextHandler(o.progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
			rep, doc, err := discoverAll(cmd.Context(), o)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printAllSummary(w, rep)
			}
			if out == "" {
				if !asJSON {
					_, err = io.WriteString(w, doc)
				}
				return err
			}
			if err := os.WriteFile(out, []byte(doc), 0o644); err != nil {
				return fmt.Errorf("writing the discovered config: %w", err)
			}
			fmt.Fprintf(o.progress, "wrote %s: check every device, then paste network and devices into the agent config\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "config", "c", "", "the agent's configuration file, for network.control (and its data_dir)")
	f.StringVar(&control, "control-address", "", "the control NIC's IPv4 address (default network.control.address of --config)")
	f.StringVar(&subnet, "subnet", "", "the subnet to sweep, CIDR (default: the control NIC's own prefix; at most a /22)")
	f.StringVar(&broadcast, "broadcast", "", "where BACnet's Who-Is goes, IP:port (default the subnet's broadcast address)")
	f.IntVar(&bacnetPort, "bacnet-port", 47808, "BACnet/IP UDP port, bound on the control address and asked on the subnet")
	f.IntVar(&modbusPort, "modbus-port", modbus.DefaultPort, "Modbus TCP port to sweep")
	f.IntVar(&opcuaPort, "opcua-port", 4840, "OPC UA port to sweep")
	f.StringVar(&units, "units", "1-16", "Modbus unit ids to probe on each host that accepts")
	f.DurationVar(&timeout, "timeout", 500*time.Millisecond, "how long to wait for each connect or answer")
	f.DurationVar(&wait, "wait", 3*time.Second, "how long to collect BACnet I-Am answers")
	f.Float64Var(&rate, "rate", 20, "at most this many requests per second per protocol")
	f.StringVar(&out, "out", "", "write the config to this file (default: print it)")
	f.StringVar(&skip, "skip", "", "protocols to leave out, comma separated: modbus, bacnet, opcua")
	f.BoolVar(&asJSON, "json", false, "print what was found as JSON")
	return cmd
}

// subnetOf finds the prefix of the interface that holds addr.
func subnetOf(addr netip.Addr, interfaces func() ([]nic, error)) (netip.Prefix, error) {
	nics, err := interfaces()
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, n := range nics {
		for _, p := range n.Addrs {
			if p.Addr() == addr {
				return p.Masked(), nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("no interface of this machine has %s", addr)
}

// sweepHosts lists the subnet's host addresses (not the network and
// broadcast addresses of a /30 or larger), the control address excluded.
func sweepHosts(p netip.Prefix, self netip.Addr) ([]netip.Addr, error) {
	if !p.Addr().Is4() {
		return nil, errors.New("only IPv4 subnets are swept")
	}
	if size := 1 << (32 - p.Bits()); size-2 > maxSweepHosts {
		return nil, fmt.Errorf("subnet %s has %d hosts: sweep at most a /22 at a time with --subnet", p, size-2)
	}
	var hosts []netip.Addr
	first, last := p.Addr(), broadcastOf(p)
	for a := first; p.Contains(a); a = a.Next() {
		if p.Bits() <= 30 && (a == first || a == last) {
			continue
		}
		if a != self {
			hosts = append(hosts, a)
		}
		if a == last {
			break
		}
	}
	return hosts, nil
}

func broadcastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// probeDialer dials the sweep's probes from the control address with the
// socket bound to the control NIC, as the drivers' sockets are. The NIC is
// worked out once, when the dialer is made, and the dialer is handed to
// every probe of the sweep.
type probeDialer struct {
	d *net.Dialer
}

// newProbeDialer finds the interface holding control with nicOf and
// returns a dialer bound to both (nicbind.DialerFrom, as check's device
// probes are).
func newProbeDialer(control netip.Addr, nicOf func(netip.Addr) (string, error)) (*probeDialer, error) {
	ifname, err := nicOf(control)
	if err != nil {
		return nil, err
	}
	d, err := nicbind.DialerFrom(ifname, control.String())
	if err != nil {
		return nil, err
	}
	return &probeDialer{d: d}, nil
}

// dial opens a TCP connection to remote (IP:port).
func (p *probeDialer) dial(ctx context.Context, remote string) (net.Conn, error) {
	return p.d.DialContext(ctx, "tcp", remote)
}

// sweep connects to port on every host, at most rate connects per second
// and a few at once, and returns those that accepted. A connect sends no
// application byte: the device sees a connection opened and closed.
func sweep(ctx context.Context, o allOptions, dial *probeDialer, hosts []netip.Addr, port int) []netip.AddrPort {
	var mu sync.Mutex
	var open []netip.AddrPort
	tick := time.NewTicker(time.Duration(float64(time.Second) / o.rate))
	defer tick.Stop()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, h := range hosts {
		select {
		case <-gctx.Done():
		case <-tick.C:
		}
		if gctx.Err() != nil {
			break
		}
		target := netip.AddrPortFrom(h, uint16(port))
		g.Go(func() error {
			dctx, cancel := context.WithTimeout(gctx, o.timeout)
			defer cancel()
			c, err := dial.dial(dctx, target.String())
			if err == nil {
				c.Close()
				mu.Lock()
				open = append(open, target)
				mu.Unlock()
			}
			return nil
		})
		if (i+1)%64 == 0 || i == len(hosts)-1 {
			fmt.Fprintf(o.progress, "port %d: swept %d/%d hosts\n", port, i+1, len(hosts))
		}
	}
	g.Wait()
	return open
}

// discoverAll runs the three discoveries and renders one config.
func discoverAll(ctx context.Context, o allOptions) (*AllReport, string, error) {
	hosts, err := sweepHosts(o.subnet, o.control)
	if err != nil {
		return nil, "", err
	}
	rep := &AllReport{Control: o.control.String(), Subnet: o.subnet.String(), Modbus: map[string][]modbus.UnitReport{}, OPCUA: map[string]*opcua.Report{}}
	var devices []*yaml.Node
	addStarter := func(what, starter string) {
		nodes, err := starterDevices(starter, o.control.String())
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: rendering its config: %v", what, err))
			return
		}
		devices = append(devices, nodes...)
	}

	var dial *probeDialer
	if !o.skip["modbus"] || !o.skip["opcua"] {
		if dial, err = newProbeDialer(o.control, o.nicOf); err != nil {
			// Every probe would fail to bind: say why once instead of
			// reporting an empty subnet.
			rep.Errors = append(rep.Errors, fmt.Sprintf("modbus and opcua sweep: binding the probes to the control NIC: %v", err))
		}
	}
	if !o.skip["modbus"] && dial != nil {
		for _, ap := range sweep(ctx, o, dial, hosts, o.modbusPort) {
			addr := ap.String()
			fmt.Fprintf(o.progress, "modbus: %s accepts; probing unit ids %d..%d\n", addr, o.units[0], o.units[len(o.units)-1])
			reports, err := modbus.Scan(ctx, modbus.ScanOptions{Address: addr, LocalAddr: o.control.String(), Units: o.units, Timeout: o.timeout, Rate: o.rate, Logger: o.log})
			if err != nil {
				rep.Errors = append(rep.Errors, fmt.Sprintf("modbus %s: %v", addr, err))
				continue
			}
			rep.Modbus[addr] = reports
			addStarter("modbus "+addr, modbus.StarterConfig(addr, "modbus-"+strings.ReplaceAll(ap.Addr().String(), ".", "-"), reports))
		}
	}
	if !o.skip["opcua"] && dial != nil {
		for _, ap := range sweep(ctx, o, dial, hosts, o.opcuaPort) {
			endpoint := "opc.tcp://" + ap.String()
			fmt.Fprintf(o.progress, "opcua: %s accepts; asking for endpoints and browsing\n", endpoint)
			s := opcua.Settings{Endpoint: endpoint, SecurityPolicy: "Basic256Sha256", SecurityMode: "SignAndEncrypt"}
			r, err := opcua.Explore(ctx, opcua.ExploreOptions{Settings: s, DataDir: o.dataDir, Limits: opcua.BrowseLimits{Depth: 6, Max: 2000}, Logger: o.log})
			if err != nil {
				// The server may first need to trust the agent's certificate:
				// say so and keep going.
				rep.Errors = append(rep.Errors, fmt.Sprintf("opcua %s: %v (trust the agent's certificate on the server, then run discover opcua --endpoint %s)", endpoint, err, endpoint))
				if r != nil {
					rep.OPCUA[endpoint] = r
				}
				continue
			}
			rep.OPCUA[endpoint] = r
			addStarter("opcua "+endpoint, opcua.StarterConfig(deviceName(endpoint), s, r))
		}
	}
	if !o.skip["bacnet"] {
		local := netip.AddrPortFrom(o.control, uint16(o.bacnetPort)).String()
		bcast := o.broadcast
		if bcast == "" {
			bcast = netip.AddrPortFrom(broadcastOf(o.subnet), uint16(o.bacnetPort)).String()
		}
		fmt.Fprintf(o.progress, "bacnet: Who-Is from %s to %s, answers collected for %s\n", local, bcast, o.wait)
		reports, err := bacnetdrv.Scan(ctx, bacnetdrv.ScanOptions{
			Client:  bacnet.Config{Local: local, Broadcast: bcast, Timeout: o.timeout},
			Network: bacnet.GlobalNetwork, Low: -1, High: -1, Wait: o.wait, Rate: o.rate, PerDevice: 2 * time.Minute, Logger: o.log,
		})
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("bacnet: %v", err))
		} else {
			rep.BACnet = reports
			if len(reports) > 0 {
				starter, err := bacnetdrv.StarterConfig(reports, local, bcast)
				if err != nil {
					rep.Errors = append(rep.Errors, fmt.Sprintf("bacnet: rendering its config: %v", err))
				} else {
					addStarter("bacnet", starter)
				}
			}
		}
	}
	doc, err := renderAll(o, rep, devices)
	return rep, doc, err
}

// starterDevices takes the devices of one protocol's starter config and
// binds every Modbus device to the control address: the per-protocol
// starters leave local_address to the installer, the combined config knows
// it.
func starterDevices(starter, control string) ([]*yaml.Node, error) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(starter), &root); err != nil {
		return nil, err
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 {
		return nil, errors.New("the starter config is not one YAML document")
	}
	_, list := mappingValue(root.Content[0], "devices")
	if list == nil || list.Kind != yaml.SequenceNode {
		return nil, errors.New("the starter config has no devices list")
	}
	for _, d := range list.Content {
		_, drv := mappingValue(d, "driver")
		_, settings := mappingValue(d, "settings")
		if drv == nil || drv.Value != "modbus" || settings == nil || settings.Kind != yaml.MappingNode {
			continue
		}
		if _, la := mappingValue(settings, "local_address"); la == nil {
			settings.Content = append(settings.Content,
				&yaml.Node{Kind: yaml.ScalarNode, Value: "local_address"},
				&yaml.Node{Kind: yaml.ScalarNode, Value: control})
		}
	}
	return list.Content, nil
}

func mappingValue(n *yaml.Node, key string) (k, v *yaml.Node) {
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

// renderAll writes the network section (as far as it is known) and every
// device found as one YAML document.
func renderAll(o allOptions, rep *AllReport, devices []*yaml.Node) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by `sightglass-agent discover all` on %s from %s: check every device\n# before use, then paste network and devices into the agent config.\n", rep.Subnet, rep.Control)
	for _, e := range rep.Errors {
		fmt.Fprintf(&b, "# not included: %s\n", strings.ReplaceAll(e, "\n", " "))
	}
	if o.controlIf != "" && o.uplinkIf != "" {
		fmt.Fprintf(&b, "network:\n  control: {interface: %s, address: %s}\n  uplink: {interface: %s}\n", o.controlIf, o.control, o.uplinkIf)
	} else {
		fmt.Fprintf(&b, "# network:\n#   control: {interface: CONTROL-NIC, address: %s}\n#   uplink: {interface: UPLINK-NIC}\n", o.control)
	}
	if len(devices) == 0 {
		b.WriteString("# no device answered\ndevices: []\n")
		return b.String(), nil
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode, Content: devices}
	root := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: "devices"}, seq}}
	out, err := yaml.Marshal(root)
	if err != nil {
		return "", err
	}
	b.Write(out)
	return b.String(), nil
}

func printAllSummary(w io.Writer, rep *AllReport) {
	units := 0
	for _, rs := range rep.Modbus {
		for _, r := range rs {
			if r.Present {
				units++
			}
		}
	}
	fmt.Fprintf(w, "swept %s from %s\n", rep.Subnet, rep.Control)
	fmt.Fprintf(w, "modbus: %d hosts, %d unit ids answered\n", len(rep.Modbus), units)
	vars := 0
	for _, r := range rep.OPCUA {
		if r != nil {
			vars += len(r.Nodes)
		}
	}
	fmt.Fprintf(w, "opcua:  %d servers, %d variables\n", len(rep.OPCUA), vars)
	objs := 0
	for _, d := range rep.BACnet {
		objs += len(d.Objects)
	}
	fmt.Fprintf(w, "bacnet: %d devices, %d objects\n", len(rep.BACnet), objs)
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "not included: %s\n", e)
	}
}
