package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/net/http/httpproxy"
	"golang.org/x/sys/unix"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/agent/driver/csvtrend"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/bacnet"
	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// Result levels of one preflight line. Only "fail" makes the box no-go.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
	checkSkip = "skip"
)

// CheckLine is one line of `sightglass-agent check`: what was checked, how
// it went and why.
type CheckLine struct {
	Check  string `json:"check"`
	Result string `json:"result"`
	Detail string `json:"detail"`
}

// CheckReport is the whole preflight; Go is false when any line failed.
type CheckReport struct {
	Go    bool        `json:"go"`
	Lines []CheckLine `json:"checks"`
}

// nic is what check needs to know of a network interface.
type nic struct {
	Name  string
	Up    bool
	Addrs []netip.Prefix
}

// checkFacts are the system facts check reads. Tests pass fakes; realFacts
// reads the machine. Nothing here is global.
type checkFacts struct {
	interfaces func() ([]nic, error)
	procSys    fs.FS // /proc/sys
	procNet    fs.FS // /proc/net (route, ipv6_route)
	// timeSync reports whether the clock is synchronised and by what.
	timeSync func() (synced bool, how string, err error)
	// resolve looks host up the way the uplink does: through a resolver
	// bound to the uplink NIC ifname and address local ("" for none).
	resolve func(ctx context.Context, ifname, local, host string) ([]string, error)
	// dialUplink connects to remote (host:port) the way the uplink does:
	// bound to the NIC ifname and address local, names resolved through it.
	dialUplink func(ctx context.Context, ifname, local, remote string) (net.Conn, error)
	// dial connects to a device from local (an IP, or "" for the kernel's
	// choice), bound to the NIC holding local.
	dial     func(ctx context.Context, local, remote string) (net.Conn, error)
	diskFree func(path string) (uint64, error)
	now      func() time.Time
	getenv   func(string) string
	// bacnetProbe asks one BACnet device for its object name, read-only.
	bacnetProbe func(ctx context.Context, local, broadcast, address string, instance uint32, timeout time.Duration) (string, error)
	// bindNIC reports whether a socket can be bound to an interface.
	bindNIC func(ifname string) error
	// kernel is the running kernel's release, as uname -r prints it.
	kernel func() string
	// unit reads the agent's installed systemd unit and its drop-ins.
	unit func() (agentUnit, error)
	// canWrite reports whether user may create entries in dir and, with
	// moveOut, move others' files out of it (writableBy); "" is whoever
	// runs check.
	canWrite func(dir, user string, moveOut bool) error
}

func realFacts() checkFacts {
	return checkFacts{
		interfaces: systemInterfaces,
		procSys:    os.DirFS("/proc/sys"),
		procNet:    os.DirFS("/proc/net"),
		timeSync:   systemTimeSync,
		resolve:    resolveUplink,
		dialUplink: dialUplink,
		dial:       newDeviceDialers().dial,
		diskFree: func(path string) (uint64, error) {
			var st unix.Statfs_t
			if err := unix.Statfs(path, &st); err != nil {
				return 0, err
			}
			return st.Bavail * uint64(st.Bsize), nil
		},
		now:         time.Now,
		getenv:      os.Getenv,
		bacnetProbe: probeBACnet,
		bindNIC:     nicbind.Probe,
		kernel:      kernelRelease,
		unit:        func() (agentUnit, error) { return readAgentUnit(os.DirFS("/")) },
		canWrite:    writableBy,
	}
}

// uplinkDialer is the uplink's own dialer (nicbind.DialerFrom, as enroll
// makes it): bound to the uplink NIC, or to the one holding
// uplink.local_address when no NIC is named, DNS included.
func uplinkDialer(ifname, local string) (*net.Dialer, error) {
	d, err := nicbind.DialerFrom(ifname, local)
	if err != nil {
		return nil, fmt.Errorf("uplink.local_address: %w", err)
	}
	return d, nil
}

func resolveUplink(ctx context.Context, ifname, local, host string) ([]string, error) {
	d, err := uplinkDialer(ifname, local)
	if err != nil {
		return nil, err
	}
	return d.Resolver.LookupHost(ctx, host)
}

func dialUplink(ctx context.Context, ifname, local, remote string) (net.Conn, error) {
	d, err := uplinkDialer(ifname, local)
	if err != nil {
		return nil, err
	}
	return d.DialContext(ctx, "tcp", remote)
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func newCheckCmd() *cobra.Command {
	var path string
	var timeout time.Duration
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Preflight the box: NICs, forwarding, routes, DNS, time, ingest, certificate, disk, devices",
		Long: `check says whether this box is ready to run the agent (go) or not (no-go),
with a reason on every line: both interfaces present with their addresses,
sockets bindable to each of them (SO_BINDTODEVICE), no IP forwarding between
them, no default route on the control side, DNS and time sync on the uplink
side, the clock against the ingest's, outbound HTTPS and the mTLS handshake to
the ingest (through HTTPS_PROXY when set) ending in the ingest's status of this
agent's certificate, which must be good, the certificate's validity and days to
expiry, disk space for the buffer, every configured device reachable on the
control side, and every csvtrend folder writable by the agent under its unit.
DNS and the ingest are probed through the uplink NIC, as the agent's uplink
connects; each device from the address its driver dials from. Device probes
only read: a TCP connect for Modbus and OPC UA, a ReadProperty of the device's
name for BACnet.

It exits 1 on no-go, so a script can gate on it.`,
		Example: `  sightglass-agent check --config /etc/sightglass/agent.yaml
  sightglass-agent check --config /etc/sightglass/agent.yaml --json | jq '.checks[] | select(.result=="fail")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			rep := runChecks(cmd.Context(), cfg, realFacts(), timeout)
			if err := writeReport(cmd.OutOrStdout(), rep, asJSON); err != nil {
				return err
			}
			if !rep.Go {
				return errNoGo(rep)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "/etc/sightglass/agent.yaml", "the agent's configuration file")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long each network probe may take")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func errNoGo(rep CheckReport) error {
	var failed []string
	for _, l := range rep.Lines {
		if l.Result == checkFail {
			failed = append(failed, l.Check)
		}
	}
	return fmt.Errorf("no-go: %d check(s) failed: %s", len(failed), strings.Join(failed, ", "))
}

func writeReport(w io.Writer, rep CheckReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	counts := map[string]int{}
	for _, l := range rep.Lines {
		counts[l.Result]++
		fmt.Fprintf(tw, "%s\t%s\t%s\n", map[string]string{checkOK: "ok", checkWarn: "WARN", checkFail: "FAIL", checkSkip: "skip"}[l.Result], l.Check, l.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "GO"
	if !rep.Go {
		verdict = "NO-GO"
	}
	_, err := fmt.Fprintf(w, "%s: %d ok, %d warnings, %d failed, %d skipped\n", verdict, counts[checkOK], counts[checkWarn], counts[checkFail], counts[checkSkip])
	return err
}

// checker accumulates the report.
type checker struct {
	cfg     *config.Config
	f       checkFacts
	timeout time.Duration
	rep     CheckReport
}

func (c *checker) add(check, result, format string, args ...any) {
	c.rep.Lines = append(c.rep.Lines, CheckLine{Check: check, Result: result, Detail: fmt.Sprintf(format, args...)})
}

// runChecks runs every check in order; a check whose input is missing is
// skipped with the reason, so the report always says everything it can.
func runChecks(ctx context.Context, cfg *config.Config, f checkFacts, timeout time.Duration) CheckReport {
	c := &checker{cfg: cfg, f: f, timeout: timeout}
	c.checkNetwork()
	c.checkForwarding()
	c.checkControlRoute()
	c.checkDNS(ctx)
	c.checkTime()
	c.checkIngest(ctx)
	c.checkDisk()
	c.checkDevices(ctx)
	c.rep.Go = true
	for _, l := range c.rep.Lines {
		if l.Result == checkFail {
			c.rep.Go = false
		}
	}
	return c.rep
}

func (c *checker) checkNetwork() {
	n := c.cfg.Network
	if !n.Configured() {
		c.add("network", checkFail, "no network section in %s: name the control and uplink interfaces (network: {control: {interface, address}, uplink: {interface}})", c.cfg.Path())
		return
	}
	nics, err := c.f.interfaces()
	if err != nil {
		c.add("interfaces", checkFail, "listing the network interfaces: %v", err)
		return
	}
	find := func(name string) (nic, bool) {
		for _, x := range nics {
			if x.Name == name {
				return x, true
			}
		}
		return nic{}, false
	}
	control := netip.MustParseAddr(n.Control.Address) // validated by config
	ctl, ok := find(n.Control.Interface)
	switch {
	case !ok:
		c.add("control interface", checkFail, "%s does not exist (interfaces: %s)", n.Control.Interface, nicNames(nics))
	case !ctl.Up:
		c.add("control interface", checkFail, "%s is down: ip link set %s up", ctl.Name, ctl.Name)
	case !hasAddr(ctl, control):
		c.add("control interface", checkFail, "%s does not have %s (network.control.address); it has %s", ctl.Name, control, prefixes(ctl))
	default:
		c.add("control interface", checkOK, "%s up with %s", ctl.Name, prefixes(ctl))
	}
	up, ok := find(n.Uplink.Interface)
	switch {
	case !ok:
		c.add("uplink interface", checkFail, "%s does not exist (interfaces: %s)", n.Uplink.Interface, nicNames(nics))
	case !up.Up:
		c.add("uplink interface", checkFail, "%s is down: ip link set %s up", up.Name, up.Name)
	case len(globalAddrs(up)) == 0:
		c.add("uplink interface", checkFail, "%s has no address: check DHCP or its static address", up.Name)
	default:
		if la := c.cfg.Uplink.LocalAddress; la != "" {
			if a, err := netip.ParseAddr(la); err == nil && !hasAddr(up, a) {
				c.add("uplink interface", checkFail, "uplink.local_address %s is not on %s (it has %s)", la, up.Name, prefixes(up))
				return
			}
		}
		c.add("uplink interface", checkOK, "%s up with %s", up.Name, prefixes(up))
	}
	c.checkBinding(nics, n.Control.Interface, n.Uplink.Interface)
}

// checkBinding says whether the agent can bind its sockets to each NIC
// (every control-side socket to the control NIC, the uplink to the uplink
// NIC): without it the agent's connections fail. Interfaces missing are
// reported by their own lines. check often runs as root, which may bind
// on any kernel; the agent runs unprivileged, which needs Linux 5.7.
func (c *checker) checkBinding(nics []nic, ifnames ...string) {
	const fix = "upgrade to Linux 5.7 or later, or give the agent CAP_NET_RAW (CapabilityBoundingSet=CAP_NET_RAW and AmbientCapabilities=CAP_NET_RAW in its unit)"
	var present []string
	for _, name := range ifnames {
		if slices.ContainsFunc(nics, func(x nic) bool { return x.Name == name }) {
			present = append(present, name)
		}
	}
	if len(present) == 0 {
		return
	}
	for _, name := range present {
		if err := c.f.bindNIC(name); err != nil {
			c.add("nic binding", checkFail, "%v: %s", err, fix)
			return
		}
	}
	if rel := c.f.kernel(); !kernelAtLeast(rel, 5, 7) {
		c.add("nic binding", checkFail, "kernel %s: the agent runs unprivileged, and binding a socket to a NIC (SO_BINDTODEVICE) needs Linux 5.7 then: %s", rel, fix)
		return
	}
	c.add("nic binding", checkOK, "sockets can be bound to %s (SO_BINDTODEVICE), so neither side's traffic can use the other's NIC", strings.Join(present, " and "))
}

// kernelAtLeast reports whether the release rel ("6.1.0-13-amd64") is at
// least major.minor; an unreadable release counts as new enough, the probe
// having worked.
func kernelAtLeast(rel string, major, minor int) bool {
	var ma, mi int
	if n, _ := fmt.Sscanf(rel, "%d.%d", &ma, &mi); n < 2 {
		return true
	}
	return ma > major || ma == major && mi >= minor
}

func (c *checker) checkForwarding() {
	n := c.cfg.Network
	if !n.Configured() {
		c.add("forwarding", checkSkip, "no network section: the interfaces are unknown")
		return
	}
	facts, err := daemon.CheckForwarding(c.f.procSys, n.Control.Interface, n.Uplink.Interface)
	switch {
	case errors.Is(err, daemon.ErrForwarding) && n.AllowForwarding:
		c.add("forwarding", checkWarn, "%v (allowed by network.allow_forwarding)", err)
	case err != nil:
		c.add("forwarding", checkFail, "%v", err)
	default:
		c.add("forwarding", checkOK, "off: %d switches read for %s and %s", len(facts), n.Control.Interface, n.Uplink.Interface)
	}
}

// checkControlRoute fails when a default route leaves through the control
// NIC: traffic for the internet could then go out on the control subnet.
func (c *checker) checkControlRoute() {
	n := c.cfg.Network
	if !n.Configured() {
		c.add("control default route", checkSkip, "no network section: the interfaces are unknown")
		return
	}
	routes, err := defaultRoutes(c.f.procNet)
	if err != nil {
		c.add("control default route", checkFail, "reading the routing table: %v", err)
		return
	}
	var viaControl, viaUplink []string
	for _, r := range routes {
		switch r.iface {
		case n.Control.Interface:
			viaControl = append(viaControl, r.desc)
		case n.Uplink.Interface:
			viaUplink = append(viaUplink, r.desc)
		}
	}
	switch {
	case len(viaControl) > 0:
		c.add("control default route", checkFail, "%s has a default route (%s): remove it (no gateway on the control NIC) so nothing leaves for the internet on the control subnet", n.Control.Interface, strings.Join(viaControl, ", "))
	case len(viaUplink) == 0 && c.f.getenv("HTTPS_PROXY") == "" && c.f.getenv("https_proxy") == "":
		c.add("control default route", checkWarn, "none on %s, good; but %s has none either: the ingest must be on a directly connected subnet", n.Control.Interface, n.Uplink.Interface)
	default:
		c.add("control default route", checkOK, "none on %s; default via %s", n.Control.Interface, n.Uplink.Interface)
	}
}

type route struct{ iface, desc string }

// defaultRoutes reads the IPv4 and IPv6 default routes from /proc/net.
func defaultRoutes(procNet fs.FS) ([]route, error) {
	var out []route
	b, err := fs.ReadFile(procNet, "route")
	if err != nil {
		return nil, err
	}
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		if i == 0 || len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
			continue
		}
		out = append(out, route{iface: f[0], desc: "IPv4 via " + hexIPv4(f[2])})
	}
	// IPv6 is optional: a kernel without it has no ipv6_route.
	if b, err := fs.ReadFile(procNet, "ipv6_route"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			// dest plen src splen nexthop metric refcnt use flags iface
			if len(f) < 10 || f[0] != strings.Repeat("0", 32) || f[1] != "00" || f[9] == "lo" {
				continue
			}
			out = append(out, route{iface: f[9], desc: "IPv6"})
		}
	}
	return out, nil
}

// hexIPv4 decodes /proc/net/route's little-endian hex address for display,
// giving the field as it is when it is none.
func hexIPv4(h string) string {
	a, ok := routeIPv4(h)
	if !ok {
		return h
	}
	return a.String()
}

// routeIPv4 parses an address field of /proc/net/route: eight hex digits,
// the address's bytes little-endian. Anything else is no IPv4 address
// (a damaged or foreign line, which egress skips).
func routeIPv4(h string) (netip.Addr, bool) {
	if len(h) != 8 {
		return netip.Addr{}, false
	}
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}), true
}

// ingestTarget is where the uplink connects first: the proxy when one
// applies, else the ingest.
func (c *checker) ingestTarget() (ingest *url.URL, hop string, proxy *url.URL, err error) {
	ingest, err = url.Parse(c.cfg.Uplink.URL)
	if err != nil {
		return nil, "", nil, err
	}
	proxy, err = c.proxyFor(ingest)
	if err != nil {
		return nil, "", nil, fmt.Errorf("HTTPS_PROXY: %w", err)
	}
	hop = hostPort(ingest)
	if proxy != nil {
		hop = hostPort(proxy)
	}
	return ingest, hop, proxy, nil
}

func (c *checker) proxyFor(u *url.URL) (*url.URL, error) {
	env := func(a, b string) string {
		if v := c.f.getenv(a); v != "" {
			return v
		}
		return c.f.getenv(b)
	}
	pc := httpproxy.Config{HTTPSProxy: env("HTTPS_PROXY", "https_proxy"), NoProxy: env("NO_PROXY", "no_proxy")}
	return pc.ProxyFunc()(u)
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "443"
	if u.Scheme == "http" {
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

func (c *checker) checkDNS(ctx context.Context) {
	_, hop, proxy, err := c.ingestTarget()
	if err != nil {
		c.add("dns", checkFail, "%v", err)
		return
	}
	host, _, _ := net.SplitHostPort(hop)
	if _, err := netip.ParseAddr(host); err == nil {
		c.add("dns", checkSkip, "not needed: %s is an IP address", host)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	addrs, err := c.f.resolve(rctx, c.cfg.Network.Uplink.Interface, c.cfg.Uplink.LocalAddress, host)
	what := "the ingest"
	if proxy != nil {
		what = "the proxy"
	}
	if err != nil || len(addrs) == 0 {
		c.add("dns", checkFail, "resolving %s (%s)%s: %v: check /etc/resolv.conf: the agent asks its DNS servers through the uplink NIC only, so one must be reachable there", host, what, c.viaUplink(), err)
		return
	}
	c.add("dns", checkOK, "%s (%s) is %s, asked%s", host, what, strings.Join(addrs, ", "), c.viaUplink())
}

func (c *checker) checkTime() {
	synced, how, err := c.f.timeSync()
	switch {
	case err != nil:
		c.add("time sync", checkWarn, "cannot tell whether the clock is synchronised: %v", err)
	case !synced:
		c.add("time sync", checkFail, "the clock is not synchronised (%s): enable systemd-timesyncd or chrony on the uplink; samples carry this clock's time", how)
	default:
		c.add("time sync", checkOK, "synchronised (%s)", how)
	}
}

// maxSkew is the clock difference to the ingest above which check fails;
// the ingest rejects batches far from its clock.
const maxSkew = 2 * time.Minute

func (c *checker) checkIngest(ctx context.Context) {
	ingest, hop, proxy, err := c.ingestTarget()
	if err != nil {
		c.add("outbound https", checkFail, "%v", err)
		return
	}
	via := ""
	if proxy != nil {
		via = " via proxy " + proxy.Host
	}
	dctx, cancel := context.WithTimeout(ctx, c.timeout)
	start := c.f.now()
	ifname, upLocal := c.cfg.Network.Uplink.Interface, c.cfg.Uplink.LocalAddress
	conn, err := c.f.dialUplink(dctx, ifname, upLocal, hop)
	cancel()
	if err != nil {
		c.add("outbound https", checkFail, "connecting to %s%s: %v: check the uplink's route and firewall", hop, via, err)
	} else {
		conn.Close()
		c.add("outbound https", checkOK, "connected to %s%s from %s%s in %s", hop, via, localOf(conn), c.viaUplink(), c.f.now().Sub(start).Round(10*time.Microsecond))
	}

	cert, roots, id, err := pki.LoadAgentBundle(c.cfg.Uplink.CertDir)
	if err != nil {
		c.add("certificate", checkFail, "%v (enroll first: sightglass-agent enroll --config %s --token TOKEN)", err, c.cfg.Path())
		c.add("mtls handshake", checkSkip, "no certificate")
		c.add("clock skew", checkSkip, "no answer from the ingest")
		return
	}
	c.checkCertificate(cert, id)

	var asked atomic.Bool
	tr := &http.Transport{
		Proxy: func(*http.Request) (*url.URL, error) { return proxy, nil },
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return c.f.dialUplink(ctx, ifname, upLocal, addr)
		},
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots,
			// Called only when the ingest asks for a client certificate:
			// the status query answers without one, so an answer proves
			// the certificate was accepted only if it was asked for (and
			// then verified, revocation included, in the handshake).
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked.Store(true)
				return &cert, nil
			},
		},
		ForceAttemptHTTP2: true,
	}
	defer tr.CloseIdleConnections()
	hctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	// The ingest's status query for this very certificate: it answers only
	// over a verified client certificate, with the registry's word on it,
	// so a 200 with "good" proves the handshake and the identity both.
	serial := ""
	if leaf := leafOf(cert); leaf != nil {
		serial = pki.SerialHex(leaf)
	}
	req, err := http.NewRequestWithContext(hctx, http.MethodGet, ingest.JoinPath("/v1/certs", serial).String(), nil)
	if err != nil || serial == "" {
		c.add("mtls handshake", checkFail, "building the certificate status query: %v", errOr(err, "the certificate has no serial"))
		return
	}
	sent := c.f.now()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		c.add("mtls handshake", checkFail, "%s%s: %v: an unknown or revoked certificate shows as a TLS alert; a proxy that inspects TLS breaks mTLS", ingest.Host, via, err)
		c.add("clock skew", checkSkip, "no answer from the ingest")
		return
	}
	received := c.f.now()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	c.judgeCertStatus(ingest.Host, id, serial, resp, body, asked.Load())

	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		c.add("clock skew", checkWarn, "the ingest's answer has no usable Date header: %v", err)
		return
	}
	// The Date header has whole seconds: compare with the middle of the
	// round trip and allow the second it was truncated to.
	local := sent.Add(received.Sub(sent) / 2)
	skew := local.Sub(date)
	if skew > 0 && skew < time.Second {
		skew = 0
	}
	switch abs := max(skew, -skew); {
	case abs > maxSkew:
		c.add("clock skew", checkFail, "this clock is %s %s the ingest's: fix time sync; batches this far off are rejected", abs.Round(time.Second), aheadBehind(skew))
	case abs > 10*time.Second:
		c.add("clock skew", checkWarn, "this clock is %s %s the ingest's", abs.Round(time.Second), aheadBehind(skew))
	default:
		c.add("clock skew", checkOK, "within %s of the ingest's clock", max(abs, time.Second).Round(time.Second))
	}
}

// certStatusReply is the ingest's answer to GET /v1/certs/{serial}
// (ingest/server's CertStatusReply).
type certStatusReply struct {
	Serial   string    `json:"serial"`
	Status   string    `json:"status"`
	NotAfter time.Time `json:"not_after"`
	Error    string    `json:"error"`
	Code     string    `json:"code"`
}

// judgeCertStatus turns the ingest's answer about the agent's certificate
// into the mtls handshake line: only a 200 saying "good" is a go.
func (c *checker) judgeCertStatus(host string, id pki.Identity, serial string, resp *http.Response, body []byte, certAsked bool) {
	var r certStatusReply
	jerr := json.Unmarshal(body, &r)
	how := fmt.Sprintf("%s over %s", tlsVersion(resp.TLS), resp.Proto)
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		// The handshake held but the ingest refuses this identity (revoked,
		// or unknown to its registry).
		c.add("mtls handshake", checkFail, "%s refused agent %s: %s %s", host, id.Agent, resp.Status, strings.TrimSpace(string(body)))
	case resp.StatusCode == http.StatusNotFound:
		c.add("mtls handshake", checkFail, "%s answers %s to the certificate status query /v1/certs/%s: it has no agent registry (enrollment off) or is no Sightglass ingest of this version, so whether it accepts agent %s is unknown: check uplink.url", host, resp.Status, serial, id.Agent)
	case resp.StatusCode != http.StatusOK:
		c.add("mtls handshake", checkFail, "%s answered %s to the certificate status query: %s", host, resp.Status, strings.TrimSpace(string(body)))
	case jerr != nil:
		c.add("mtls handshake", checkFail, "%s answered the certificate status query with something that is not its JSON: %v", host, jerr)
	case r.Status == "good" && !certAsked:
		c.add("mtls handshake", checkFail, "%s says certificate %s is good but never asked this agent for it in the TLS handshake, so it cannot have accepted agent %s: is uplink.url the ingest's agent listener, and no TLS-terminating proxy in between?", host, serial, id.Agent)
	case r.Status == "good":
		c.add("mtls handshake", checkOK, "%s accepted agent %s of site %s: certificate %s is good (%s)", host, id.Agent, id.Site, serial, how)
	case r.Status == "revoked":
		c.add("mtls handshake", checkFail, "%s says certificate %s of agent %s is revoked: this agent may no longer upload; enroll it anew with a token from the ingest's operator", host, serial, id.Agent)
	case r.Status == "expired":
		c.add("mtls handshake", checkFail, "%s says certificate %s of agent %s expired %s: enroll again with a new token", host, serial, id.Agent, r.NotAfter.UTC().Format(time.RFC3339))
	case r.Status == "unknown":
		c.add("mtls handshake", checkFail, "%s does not know certificate %s as agent %s's (issued by another ingest, or the agent re-enrolled since): enroll with this ingest", host, serial, id.Agent)
	default:
		c.add("mtls handshake", checkFail, "%s says certificate %s is %q, not good", host, serial, r.Status)
	}
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

// viaUplink says which NIC the uplink's sockets are bound to.
func (c *checker) viaUplink() string {
	if ifname := c.cfg.Network.Uplink.Interface; ifname != "" {
		return " through " + ifname
	}
	return ""
}

func aheadBehind(d time.Duration) string {
	if d > 0 {
		return "ahead of"
	}
	return "behind"
}

func tlsVersion(cs *tls.ConnectionState) string {
	if cs == nil {
		return "no TLS"
	}
	return tls.VersionName(cs.Version)
}

func localOf(c net.Conn) string {
	if a := c.LocalAddr(); a != nil {
		return a.String()
	}
	return "?"
}

// leafOf is the certificate's parsed leaf, nil if it has none.
func leafOf(cert tls.Certificate) *x509.Certificate {
	leaf := cert.Leaf
	if leaf == nil && len(cert.Certificate) > 0 {
		leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	}
	return leaf
}

func (c *checker) checkCertificate(cert tls.Certificate, id pki.Identity) {
	leaf := leafOf(cert)
	if leaf == nil {
		c.add("certificate", checkFail, "%s holds no parsable certificate", c.cfg.Uplink.CertDir)
		return
	}
	now := c.f.now()
	left := leaf.NotAfter.Sub(now)
	days := int(left.Hours() / 24)
	switch {
	case now.Before(leaf.NotBefore):
		c.add("certificate", checkFail, "agent %s: not valid before %s: is this clock behind?", id.Agent, leaf.NotBefore.UTC().Format(time.RFC3339))
	case left <= 0:
		c.add("certificate", checkFail, "agent %s: expired %s: enroll again with a new token", id.Agent, leaf.NotAfter.UTC().Format(time.RFC3339))
	case left < 48*time.Hour:
		c.add("certificate", checkWarn, "agent %s: expires in %s (%s); the running agent renews it, check that it can reach the ingest", id.Agent, left.Round(time.Minute), leaf.NotAfter.UTC().Format(time.RFC3339))
	default:
		c.add("certificate", checkOK, "agent %s, site %s: valid until %s (%d days)", id.Agent, id.Site, leaf.NotAfter.UTC().Format(time.RFC3339), days)
	}
}

func (c *checker) checkDisk() {
	dir := filepath.Dir(c.cfg.Buffer.Path)
	// Before the first start the directory may not exist yet: measure the
	// file system it will be made on.
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
	}
	free, err := c.f.diskFree(dir)
	if err != nil {
		c.add("disk space", checkFail, "measuring free space at %s: %v", dir, err)
		return
	}
	var used int64
	if st, err := os.Stat(c.cfg.Buffer.Path); err == nil {
		used = st.Size()
	}
	need := uint64(max(int64(c.cfg.Buffer.MaxBytes)-used, 0))
	switch {
	case free < need:
		c.add("disk space", checkFail, "%s free at %s, the buffer may grow by %s (buffer.max_bytes %s): free space or lower buffer.max_bytes", human(free), dir, human(need), human(uint64(c.cfg.Buffer.MaxBytes)))
	case free < 2*need:
		c.add("disk space", checkWarn, "%s free at %s; a full buffer (%s) would leave little", human(free), dir, human(uint64(c.cfg.Buffer.MaxBytes)))
	default:
		c.add("disk space", checkOK, "%s free at %s for a buffer of at most %s", human(free), dir, human(uint64(c.cfg.Buffer.MaxBytes)))
	}
}

func human(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// deviceSettings is the part of every driver's settings a probe needs;
// unknown keys are ignored here because each driver checks its own.
type deviceSettings struct {
	Host           string  `yaml:"host"`
	Port           int     `yaml:"port"`
	LocalAddress   string  `yaml:"local_address"`
	Endpoint       string  `yaml:"endpoint"`
	Address        string  `yaml:"address"`
	Broadcast      string  `yaml:"broadcast"`
	DeviceInstance *uint32 `yaml:"device_instance"`
	Path           string  `yaml:"path"`
	ProcessedDir   string  `yaml:"processed_dir"`
	FailedDir      string  `yaml:"failed_dir"`
}

func (c *checker) checkDevices(ctx context.Context) {
	for i := range c.cfg.Devices {
		d := &c.cfg.Devices[i]
		name := "device " + d.Name
		var s deviceSettings
		if d.Settings.Kind != 0 {
			if err := d.Settings.Load(&s); err != nil {
				c.add(name, checkFail, "settings (line %d): %v", d.Line, err)
				continue
			}
		}
		// The probes start from the address the driver dials from: its
		// settings.local_address, which config fills from
		// network.control.address when the device does not set it.
		switch d.Driver {
		case "modbus":
			c.probeTCP(ctx, name, "modbus", modbusTarget(s), s.LocalAddress)
		case "opcua":
			u, err := url.Parse(s.Endpoint)
			if err != nil || u.Host == "" {
				c.add(name, checkFail, "opcua endpoint %q is not opc.tcp://host:port", s.Endpoint)
				continue
			}
			target := u.Host
			if u.Port() == "" {
				target = net.JoinHostPort(u.Hostname(), "4840")
			}
			c.probeTCP(ctx, name, "opcua", target, s.LocalAddress)
		case "bacnet":
			c.probeBACnet(ctx, name, s)
		case "csvtrend":
			c.checkTrendFolder(name, s)
		default:
			c.add(name, checkSkip, "no probe for driver %q", d.Driver)
		}
	}
}

// checkTrendFolder checks that the agent, as its unit runs it, may move
// files out of a csvtrend folder into processed_dir and failed_dir: the
// unit's ProtectSystem=strict leaves only ReadWritePaths writable, so a
// trend folder elsewhere reads fine and then never empties.
func (c *checker) checkTrendFolder(name string, s deviceSettings) {
	st, err := os.Stat(s.Path)
	if err != nil {
		c.add(name, checkFail, "csvtrend path %s: %v", s.Path, err)
		return
	}
	dir := s.Path
	if !st.IsDir() {
		dir = filepath.Dir(s.Path) // a single file: it moves out of its folder
	}
	paths := []struct{ what, path string }{
		{"folder", dir},
		{"processed_dir", csvtrend.ResolveDir(dir, s.ProcessedDir, csvtrend.DefaultProcessedDir)},
		{"failed_dir", csvtrend.ResolveDir(dir, s.FailedDir, csvtrend.DefaultFailedDir)},
	}
	unit, err := c.f.unit()
	if err != nil {
		c.add(name, checkWarn, "csvtrend folder %s exists, but the agent's unit could not be read to tell whether it may write there: %v", dir, err)
		return
	}
	var problems []string
	for _, p := range paths {
		if why := unit.hides(p.path); why != "" {
			problems = append(problems, fmt.Sprintf("%s %s %s", p.what, p.path, why))
			continue
		}
		if err := c.f.canWrite(p.path, unit.User, p.what == "folder"); err != nil {
			problems = append(problems, fmt.Sprintf("%s %s: %v", p.what, p.path, err))
		}
	}
	if len(problems) > 0 {
		c.add(name, checkFail, "csvtrend files cannot be moved once read, so the folder never empties: %s", strings.Join(problems, "; "))
		return
	}
	who := "this user"
	if unit.found() {
		who = fmt.Sprintf("user %s under %s", unit.User, agentUnitName)
	}
	c.add(name, checkOK, "csvtrend folder %s, processed_dir %s and failed_dir %s writable by %s", dir, paths[1].path, paths[2].path, who)
}

// agentUnitName is the agent's systemd unit, as packaging/ installs it.
const agentUnitName = "sightglass-agent.service"

// agentUnit is what check needs of the agent's installed unit: the user it
// runs as and what its sandbox lets it write.
type agentUnit struct {
	// Files are the unit file and drop-ins read, in the order applied;
	// none when the unit is not installed.
	Files []string
	// User is the unit's User= (the .deb's is sightglass).
	User string
	// ProtectSystem and ProtectHome are the unit's settings of those names.
	ProtectSystem, ProtectHome string
	// PrivateTmp gives the agent a /tmp and /var/tmp of its own.
	PrivateTmp bool
	// WritePaths are ReadWritePaths= and the StateDirectory= folders under
	// /var/lib.
	WritePaths []string
}

func (u agentUnit) found() bool { return len(u.Files) > 0 }

// hides says why the unit's sandbox keeps the agent from writing path, or
// "" when it does not.
func (u agentUnit) hides(path string) string {
	if !u.found() {
		return ""
	}
	under := func(root string) bool {
		rel, err := filepath.Rel(root, path)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	// Hidden folders first: a ReadWritePaths= entry does not bring them
	// back to the host's.
	switch {
	case (u.ProtectHome == "yes" || u.ProtectHome == "true" || u.ProtectHome == "tmpfs") && (under("/home") || under("/root") || under("/run/user")):
		return fmt.Sprintf("is hidden from the agent by its unit's ProtectHome=%s: move the trend folder out of /home, /root and /run/user", u.ProtectHome)
	case u.PrivateTmp && (under("/tmp") || under("/var/tmp")):
		return "is not the agent's: its unit's PrivateTmp=yes gives it a /tmp and /var/tmp of its own: move the trend folder elsewhere"
	}
	for _, w := range u.WritePaths {
		if under(w) {
			return ""
		}
	}
	dropIn := fmt.Sprintf("add a drop-in: systemctl edit %s, then [Service] ReadWritePaths=%s (see packaging/README.md)", agentUnitName, path)
	switch {
	case u.ProtectSystem == "strict":
		return fmt.Sprintf("is read-only for the agent: its unit has ProtectSystem=strict and ReadWritePaths=%s only: %s", strings.Join(u.WritePaths, " "), dropIn)
	case (u.ProtectSystem == "full" || u.ProtectSystem == "yes" || u.ProtectSystem == "true") && (under("/usr") || under("/boot") || under("/efi") || u.ProtectSystem == "full" && under("/etc")):
		return fmt.Sprintf("is read-only for the agent under its unit's ProtectSystem=%s: %s", u.ProtectSystem, dropIn)
	}
	return ""
}

// unitDirs are where systemd looks for system units, most important first.
var unitDirs = []string{"etc/systemd/system", "run/systemd/system", "usr/local/lib/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"}

// readAgentUnit reads the agent's unit and drop-ins from root (the file
// system's root in use) the way systemd combines them: the first unit
// file found, then every NAME.service.d/*.conf in name order, a drop-in in
// a more important folder replacing one of the same name. It reads only
// the settings check needs.
func readAgentUnit(root fs.FS) (agentUnit, error) {
	var u agentUnit
	var files []string
	for _, d := range unitDirs {
		p := d + "/" + agentUnitName
		if _, err := fs.Stat(root, p); err == nil {
			files = append(files, p)
			break
		}
	}
	if len(files) == 0 {
		return u, nil
	}
	dropIns := map[string]string{}
	for i := len(unitDirs) - 1; i >= 0; i-- {
		matches, _ := fs.Glob(root, unitDirs[i]+"/"+agentUnitName+".d/*.conf")
		for _, m := range matches {
			dropIns[filepath.Base(m)] = m
		}
	}
	for _, name := range slices.Sorted(maps.Keys(dropIns)) {
		files = append(files, dropIns[name])
	}
	for _, f := range files {
		b, err := fs.ReadFile(root, f)
		if err != nil {
			return agentUnit{}, fmt.Errorf("reading /%s: %w", f, err)
		}
		u.apply(string(b))
		u.Files = append(u.Files, "/"+f)
	}
	if u.User == "" {
		u.User = "root" // systemd's default; the packaged unit sets sightglass
	}
	return u, nil
}

// apply reads one unit file's [Service] settings over u.
func (u *agentUnit) apply(text string) {
	section := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section != "[Service]" {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "User":
			u.User = v
		case "ProtectSystem":
			u.ProtectSystem = v
		case "ProtectHome":
			u.ProtectHome = v
		case "PrivateTmp":
			u.PrivateTmp = v == "yes" || v == "true" || v == "1" || v == "on"
		case "ReadWritePaths", "StateDirectory":
			if v == "" { // an empty assignment resets the list
				u.WritePaths = nil
				continue
			}
			for _, f := range strings.Fields(v) {
				f = strings.TrimLeft(f, "-+")
				if k == "StateDirectory" {
					f = "/var/lib/" + strings.SplitN(f, ":", 2)[0]
				}
				u.WritePaths = append(u.WritePaths, filepath.Clean(f))
			}
		}
	}
}

// writableBy reports whether user may create entries in dir, or in the
// folder that would hold it when it does not exist yet (the driver makes
// processed_dir and failed_dir), and, with moveOut, move the files others
// put there out of it. Run by root, it judges by owners, groups and mode
// bits for user: write and search permission on the folder, search
// permission on every folder above it (without it the folder cannot be
// reached, whatever its own mode), and no sticky bit on a folder files are
// moved out of unless user owns it (in a sticky folder only a file's
// owner may move it). Run by anyone else, access(2) for that user, which
// walks the parents itself. POSIX ACLs are not read.
func writableBy(dir, username string, moveOut bool) error {
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
		moveOut = false // a folder to be made: nothing is moved out of its parent
	}
	// The parents that matter are those of the folder itself, not of a
	// symbolic link to it.
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	if os.Geteuid() != 0 || username == "" {
		if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("not writable by this user (%w)", err)
		}
		if moveOut {
			return stickyFor(dir, strconv.Itoa(os.Geteuid()), "this user")
		}
		return nil
	}
	if username == "root" {
		return nil
	}
	u, err := user.Lookup(username)
	if err != nil {
		return fmt.Errorf("the agent's user %s: %w (the .deb makes it)", username, err)
	}
	gids, _ := u.GroupIds()
	gids = append(gids, u.Gid)
	// From the top down, so the error names the first folder in the way.
	var above []string
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		above = append(above, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	slices.Reverse(above)
	for _, p := range above {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return err
		}
		if permFor(&st, u.Uid, gids)&0o1 == 0 {
			return fmt.Errorf("user %s cannot reach %s: the folder %s above it (owner %d:%d, mode %o) gives it no search (x) permission: chmod o+x %s, or make the agent's group its group and chmod g+x",
				username, dir, p, st.Uid, st.Gid, st.Mode&0o7777, p)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	if permFor(&st, u.Uid, gids)&0o3 != 0o3 {
		return fmt.Errorf("not writable by user %s (%s, owner %d:%d, mode %o): chown %s or chmod g+w with the agent in its group", username, dir, st.Uid, st.Gid, st.Mode&0o7777, dir)
	}
	if moveOut {
		return stickyFor(dir, u.Uid, "user "+username)
	}
	return nil
}

// permFor returns the rwx bits of st's mode that apply to the user uid in
// the groups gids: the owner's if it owns the file, else the group's if it
// is in the file's group, else the others' (one class only, as the kernel
// does: an owner denied what others may do is denied).
func permFor(st *unix.Stat_t, uid string, gids []string) uint32 {
	switch {
	case strconv.FormatUint(uint64(st.Uid), 10) == uid:
		return st.Mode >> 6 & 0o7
	case slices.Contains(gids, strconv.FormatUint(uint64(st.Gid), 10)):
		return st.Mode >> 3 & 0o7
	default:
		return st.Mode & 0o7
	}
}

// stickyFor refuses a sticky folder (mode +t, as /tmp) that uid does not
// own: there only a file's owner may move it, so the files another user
// (the BMS's export, a file share) puts there would stay for ever.
func stickyFor(dir, uid, who string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_ISVTX == 0 || strconv.FormatUint(uint64(st.Uid), 10) == uid {
		return nil
	}
	return fmt.Errorf("sticky (mode %o, owner %d): %s may move out of it only the files it owns, so files others write there stay: chmod -t %s, give the folder to the agent's user, or have the files written as that user",
		st.Mode&0o7777, st.Uid, who, dir)
}

func modbusTarget(s deviceSettings) string {
	if _, _, err := net.SplitHostPort(s.Host); err == nil {
		return s.Host
	}
	port := s.Port
	if port == 0 {
		port = 502
	}
	return net.JoinHostPort(strings.Trim(s.Host, "[]"), strconv.Itoa(port))
}

// probeTCP connects and closes at once: the device sees a connection and
// no request at all, which is as read-only as a probe can be.
func (c *checker) probeTCP(ctx context.Context, name, proto, target, local string) {
	if !c.routedViaControl(name, proto, target) {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := c.f.now()
	conn, err := c.f.dial(dctx, local, target)
	if err != nil {
		c.add(name, checkFail, "%s %s unreachable from %s: %v", proto, target, orKernel(local), err)
		return
	}
	conn.Close()
	c.add(name, checkOK, "%s %s answers a TCP connect from %s in %s", proto, target, localOf(conn), c.f.now().Sub(start).Round(10*time.Microsecond))
}

func orKernel(local string) string {
	if local == "" {
		return "the kernel's choice of address"
	}
	return local
}

func (c *checker) probeBACnet(ctx context.Context, name string, s deviceSettings) {
	if s.DeviceInstance == nil {
		c.add(name, checkFail, "bacnet device_instance is not set")
		return
	}
	if s.Address == "" && s.Broadcast == "" {
		c.add(name, checkSkip, "bacnet device %d has neither address nor broadcast: found through a BBMD, not probed here", *s.DeviceInstance)
		return
	}
	for _, a := range []string{s.Address, s.Broadcast} {
		if a != "" && !c.routedViaControl(name, "bacnet", a) {
			return
		}
	}
	pctx, cancel := context.WithTimeout(ctx, c.timeout+time.Second)
	defer cancel()
	objName, err := c.f.bacnetProbe(pctx, s.LocalAddress, s.Broadcast, s.Address, *s.DeviceInstance, c.timeout)
	if err != nil {
		c.add(name, checkFail, "bacnet device %d: %v", *s.DeviceInstance, err)
		return
	}
	c.add(name, checkOK, "bacnet device %d answered ReadProperty object-name: %q", *s.DeviceInstance, objName)
}

// routedViaControl fails the device's line, and returns false, when the
// kernel would send packets for target out of another NIC than the control
// one: a device address off the control subnet goes out by the default
// route, the uplink, with the control address as its source. The probe is
// then not sent at all. Host names and boxes without a network section are
// not judged.
func (c *checker) routedViaControl(name, proto, target string) bool {
	n := c.cfg.Network
	if !n.Configured() {
		return true
	}
	host := target
	if h, _, err := net.SplitHostPort(target); err == nil {
		host = h
	}
	if i := strings.IndexByte(host, '/'); i >= 0 { // BACnet's IP:port/NET:MAC
		host = host[:i]
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Is4() {
		return true
	}
	iface, via, err := egress(c.f.procNet, ip)
	switch {
	case err != nil:
		c.add(name, checkFail, "%s %s: reading the routing table: %v", proto, target, err)
		return false
	case iface == "":
		c.add(name, checkFail, "%s %s: no route: the control NIC %s's subnet does not hold it", proto, target, n.Control.Interface)
		return false
	case iface != n.Control.Interface:
		c.add(name, checkFail, "%s %s is routed out of %s (%s), not the control NIC %s: put the device on the control subnet or add a route via %s; not probed", proto, target, iface, via, n.Control.Interface, n.Control.Interface)
		return false
	}
	return true
}

// egress finds the IPv4 route the kernel would use for ip in /proc/net/route:
// the longest matching prefix, then the lowest metric.
func egress(procNet fs.FS, ip netip.Addr) (iface, via string, err error) {
	b, err := fs.ReadFile(procNet, "route")
	if err != nil {
		return "", "", err
	}
	best, bestMetric := -1, 0
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		if i == 0 || len(f) < 8 {
			continue
		}
		// Parsed as IPv4 only: a field such as "::" parsed as an address
		// would be IPv6, and As4 below panics on one (found by
		// FuzzRouteTable).
		dst, ok1 := routeIPv4(f[1])
		mask, ok2 := routeIPv4(f[7])
		metric, err := strconv.Atoi(f[6])
		if !ok1 || !ok2 || err != nil {
			continue
		}
		bits := 0
		for _, octet := range mask.As4() {
			for ; octet&0x80 != 0; octet <<= 1 {
				bits++
			}
		}
		p, err := dst.Prefix(bits)
		if err != nil || !p.Contains(ip) {
			continue
		}
		if bits > best || bits == best && metric < bestMetric {
			best, bestMetric = bits, metric
			iface = f[0]
			via = "the default route"
			if bits > 0 {
				via = "route " + p.String()
			}
			if gw := hexIPv4(f[2]); gw != "0.0.0.0" {
				via += " via " + gw
			}
		}
	}
	return iface, via, nil
}

// probeBACnet reads the device object's name through pkg/bacnet's guarded
// client. It binds the configured local address; when the running agent
// holds that port it binds the same IP on a free port, which is enough for
// a unicast ReadProperty (answers come back to the sender).
func probeBACnet(ctx context.Context, local, broadcast, address string, instance uint32, timeout time.Duration) (string, error) {
	cfg := bacnet.Config{Local: local, Broadcast: broadcast, Timeout: timeout, Retries: -1}
	cl, err := bacnet.New(ctx, cfg)
	if err != nil && address != "" {
		if host, _, serr := net.SplitHostPort(local); serr == nil {
			cfg.Local = net.JoinHostPort(host, "0")
			cl, err = bacnet.New(ctx, cfg)
		}
	}
	if err != nil {
		return "", fmt.Errorf("opening a BACnet socket on %s: %w", local, err)
	}
	defer cl.Close()
	var dev bacnet.Device
	if address != "" {
		a, err := bacnet.ParseAddress(address)
		if err != nil {
			return "", err
		}
		dev = bacnet.Device{Instance: instance, Addr: a, MaxAPDU: 480}
	} else {
		found, err := cl.WhoIs(ctx, nil, 0, int(instance), int(instance), timeout)
		if err != nil {
			return "", fmt.Errorf("Who-Is %d on %s: %w", instance, broadcast, err)
		}
		if len(found) == 0 {
			return "", fmt.Errorf("no I-Am from device %d to a Who-Is on %s", instance, broadcast)
		}
		dev = found[0]
	}
	vals, err := cl.ReadProperty(ctx, dev, bacnet.ObjectID{Type: bacnet.ObjectDevice, Instance: instance}, bacnet.Prop(bacnet.PropObjectName))
	if err != nil {
		return "", err
	}
	if len(vals) == 0 {
		return "", errors.New("ReadProperty object-name: empty answer")
	}
	return vals[0].Str, nil
}

// deviceDialers dials the device probes from a device's local_address
// ("" for the kernel's choice), bound to the interface holding it as the
// drivers' sockets are (nicbind.DialerFrom). Each address's interface is
// looked up once per check, at its first probe, not at every probe.
type deviceDialers struct {
	mu      sync.Mutex
	byLocal map[string]*net.Dialer
}

func newDeviceDialers() *deviceDialers {
	return &deviceDialers{byLocal: map[string]*net.Dialer{}}
}

// dial connects to remote (host:port) from local.
func (p *deviceDialers) dial(ctx context.Context, local, remote string) (net.Conn, error) {
	d, err := p.dialer(local)
	if err != nil {
		return nil, err
	}
	return d.DialContext(ctx, "tcp", remote)
}

// dialer returns the dialer for local, made at its first use.
func (p *deviceDialers) dialer(local string) (*net.Dialer, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d, ok := p.byLocal[local]; ok {
		return d, nil
	}
	d, err := nicbind.DialerFrom("", local)
	if err != nil {
		return nil, err
	}
	// A device's host name is looked up by the system's resolver, as the
	// drivers look it up, so the probe answers for what the driver will
	// do.
	d.Resolver = nil
	p.byLocal[local] = d
	return d, nil
}

func systemInterfaces() ([]nic, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []nic
	for _, i := range ifs {
		n := nic{Name: i.Name, Up: i.Flags&net.FlagUp != 0}
		addrs, err := i.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", i.Name, err)
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				n.Addrs = append(n.Addrs, p)
			}
		}
		out = append(out, n)
	}
	return out, nil
}

// systemTimeSync asks systemd-timesyncd first, then the kernel: chrony and
// ntpd clear the kernel's STA_UNSYNC flag once synchronised.
func systemTimeSync() (bool, string, error) {
	if _, err := os.Stat("/run/systemd/timesync/synchronized"); err == nil {
		return true, "systemd-timesyncd", nil
	}
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return false, "", fmt.Errorf("adjtimex: %w", err)
	}
	if state == unix.TIME_ERROR || tx.Status&unix.STA_UNSYNC != 0 {
		return false, "kernel clock reports unsynchronised (adjtimex)", nil
	}
	return true, "kernel clock synchronised (adjtimex)", nil
}

func nicNames(nics []nic) string {
	names := make([]string, 0, len(nics))
	for _, n := range nics {
		names = append(names, n.Name)
	}
	return strings.Join(names, ", ")
}

func hasAddr(n nic, a netip.Addr) bool {
	for _, p := range n.Addrs {
		if p.Addr().Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}

// globalAddrs are the addresses that can reach beyond the link.
func globalAddrs(n nic) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range n.Addrs {
		if !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	return out
}

func prefixes(n nic) string {
	if len(n.Addrs) == 0 {
		return "no address"
	}
	s := make([]string, len(n.Addrs))
	for i, p := range n.Addrs {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
