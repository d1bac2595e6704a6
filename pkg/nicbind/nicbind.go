// Package nicbind ties a socket to one network interface (SO_BINDTODEVICE),
// so the kernel sends and accepts its packets on that NIC only.
//
// Binding a socket to an address is not enough on a two-NIC box: Linux
// follows the weak host model, so a datagram for the control address that
// arrives on the uplink NIC is still delivered to a socket bound to that
// address, and a connection dialled from the control address leaves by
// whatever route the table picks — the uplink, if a route is wrong. A socket
// bound to the control NIC does neither: control-side traffic stays on the
// control side even when the routing table or a packet says otherwise.
// Unprivileged processes may bind a socket to a device since Linux 5.7.
package nicbind

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Owner returns the name of the interface that holds ip, or "" when ip is
// unspecified (0.0.0.0, ::), which is every interface's.
func Owner(ip netip.Addr) (string, error) {
	if !ip.IsValid() || ip.IsUnspecified() {
		return "", nil
	}
	ip = ip.Unmap()
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("finding the interface of %s: listing interfaces: %w", ip, err)
	}
	loopback := ""
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue // an interface that went away meanwhile
		}
		for _, a := range addrs {
			p, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			got, ok := netip.AddrFromSlice(p.IP)
			if !ok {
				continue
			}
			if got.Unmap() == ip {
				return ifc.Name, nil
			}
			// Every address of 127.0.0.0/8 is the loopback interface's,
			// though only 127.0.0.1/8 is listed on it.
			ones, _ := p.Mask.Size()
			if ifc.Flags&net.FlagLoopback != 0 && ip.IsLoopback() && netip.PrefixFrom(got.Unmap(), ones).Contains(ip) {
				loopback = ifc.Name
			}
		}
	}
	if loopback != "" {
		return loopback, nil
	}
	return "", fmt.Errorf("finding the interface of %s: no interface of this machine has that address (check the local address in the config against `ip -brief addr`)", ip)
}

// Control returns a net.Dialer or net.ListenConfig Control function that
// binds the socket to the interface ifname and then runs next (if not nil).
// An empty ifname binds nothing.
func Control(ifname string, next func(network, address string, rc syscall.RawConn) error) func(network, address string, rc syscall.RawConn) error {
	return func(network, address string, rc syscall.RawConn) error {
		if ifname != "" {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), ifname) }); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("binding the socket for %s to interface %s (SO_BINDTODEVICE; Linux 5.7 or later, or CAP_NET_RAW): %w", address, ifname, serr)
			}
		}
		if next != nil {
			return next(network, address, rc)
		}
		return nil
	}
}

// ForAddress is Control for the interface that holds ip: a socket with
// that local address is bound to its NIC. An unspecified ip binds nothing.
func ForAddress(ip netip.Addr, next func(network, address string, rc syscall.RawConn) error) (func(network, address string, rc syscall.RawConn) error, error) {
	ifname, err := Owner(ip)
	if err != nil {
		return nil, err
	}
	return Control(ifname, next), nil
}

// Probe reports whether a socket can be bound to the interface ifname here:
// it makes an unbound, unconnected UDP socket, binds it to the device and
// closes it, so nothing listens even for a moment. It fails on kernels
// before 5.7 without CAP_NET_RAW, and for an interface that does not exist.
func Probe(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("binding a socket to interface %s: making the socket: %w", ifname, err)
	}
	defer unix.Close(fd)
	if err := unix.BindToDevice(fd, ifname); err != nil {
		return fmt.Errorf("binding a socket to interface %s (SO_BINDTODEVICE; Linux 5.7 or later, or CAP_NET_RAW): %w", ifname, err)
	}
	return nil
}

// Device returns the interface conn's socket is bound to, "" if none.
func Device(conn syscall.Conn) (string, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return "", err
	}
	var name string
	var gerr error
	if err := rc.Control(func(fd uintptr) { name, gerr = unix.GetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE) }); err != nil {
		return "", err
	}
	if errors.Is(gerr, unix.ENOPROTOOPT) {
		return "", nil
	}
	return name, gerr
}

// Dialer returns a dialer whose sockets are bound to the interface ifname
// (SO_BINDTODEVICE; "" binds none) and, when local is valid, to that
// address, and whose Resolver sends its DNS queries through the same
// binding (the pure-Go resolver, so no libc lookup escapes it). Without
// the resolver a name would be looked up by the routing table's choice of
// NIC: on a two-NIC box a DNS server on the control subnet would be asked
// through the control NIC for the ingest's or the proxy's name.
//
// One exception: a DNS server on a loopback address (systemd-resolved's
// 127.0.0.53, a local dnsmasq) is asked without the NIC binding when
// ifname is not the loopback interface, since a socket bound to a NIC
// cannot reach loopback at all and the query never leaves the box; which
// NIC that local resolver forwards on is its own configuration.
//
// Set Timeout, KeepAlive and the like on the result before using it; the
// resolver's dials take them from it.
func Dialer(ifname string, local netip.Addr) *net.Dialer {
	d := &net.Dialer{Control: Control(ifname, nil)}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice(), Zone: local.Zone()}
	}
	d.Resolver = &net.Resolver{PreferGo: true, Dial: resolverDial(d, ifname, local)}
	return d
}

// DialerFrom is Dialer for the addresses and interface names a config
// spells as strings (uplink.local_address and uplink.interface, a device's
// local_address): the one place that turns them into a bound dialer, so
// enroll, check, discover and the uplink all dial the same way.
//
// local is an IP address without a port, or "" for the kernel's choice.
// ifname is the interface to bind to; when it is "" and local is set, the
// dialer binds to the interface that holds local (Owner), because an
// address alone does not keep a connection on its NIC: Linux's weak host
// model sends it by whatever route the table picks, so naming the address
// without the NIC would otherwise be a promise the kernel does not keep.
// A named ifname is used as it is, even if local is not among its
// addresses (the bind then fails at dial time, saying so). It fails when
// local is no IP address, or no interface holds it.
func DialerFrom(ifname, local string) (*net.Dialer, error) {
	var ip netip.Addr
	if local != "" {
		a, err := netip.ParseAddr(local)
		if err != nil {
			return nil, fmt.Errorf("local address %q is not an IP address: give the NIC's address, without a port", local)
		}
		ip = a.Unmap()
	}
	if ifname == "" && ip.IsValid() {
		owner, err := Owner(ip)
		if err != nil {
			return nil, fmt.Errorf("dialing from %s: %w", ip, err)
		}
		ifname = owner
	}
	return Dialer(ifname, ip), nil
}

// resolverDial is the resolver's Dial: the bound dialer, with the local
// address in the form the network needs (a UDP dial refuses a TCP local
// address), and without a resolver of its own (the DNS server's address
// is an IP already).
func resolverDial(bound *net.Dialer, ifname string, local netip.Addr) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		d := net.Dialer{Timeout: bound.Timeout, Deadline: bound.Deadline, KeepAlive: bound.KeepAlive, Control: bound.Control}
		if loopbackServer(address) && !loopbackInterface(ifname) {
			d.Control = nil
			return d.DialContext(ctx, network, address)
		}
		if local.IsValid() {
			ip := local.AsSlice()
			if strings.HasPrefix(network, "udp") {
				d.LocalAddr = &net.UDPAddr{IP: ip, Zone: local.Zone()}
			} else {
				d.LocalAddr = &net.TCPAddr{IP: ip, Zone: local.Zone()}
			}
		}
		conn, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, fmt.Errorf("asking the DNS server %s through interface %s: %w (a DNS server must be reachable on the uplink side)", address, orNone(ifname), err)
		}
		return conn, nil
	}
}

func orNone(ifname string) string {
	if ifname == "" {
		return "(any)"
	}
	return ifname
}

// loopbackServer reports whether address ("IP:port") is on loopback.
func loopbackServer(address string) bool {
	ap, err := netip.ParseAddrPort(address)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// loopbackInterface reports whether ifname is the loopback interface; ""
// counts as loopback (nothing is bound, nothing to exempt).
func loopbackInterface(ifname string) bool {
	if ifname == "" {
		return true
	}
	ifc, err := net.InterfaceByName(ifname)
	return err == nil && ifc.Flags&net.FlagLoopback != 0
}
