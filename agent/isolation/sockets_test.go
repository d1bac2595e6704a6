package isolation

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// socket is one socket a process holds.
type socket struct {
	FD     int
	Family string // inet, inet6, unix, netlink, packet, or the number
	Type   string // stream, dgram, raw, seqpacket
	Listen bool
	State  string // TCP state from TCP_INFO; "" for others
	Local  netip.AddrPort
	Remote netip.AddrPort
	Path   string // unix: the bound path, if any
	Device string // the interface the socket is bound to (SO_BINDTODEVICE), if any
}

func (s socket) String() string {
	switch s.Family {
	case "unix":
		l := ""
		if s.Listen {
			l = " LISTEN"
		}
		return fmt.Sprintf("fd %d unix %s %q%s", s.FD, s.Type, s.Path, l)
	case "inet", "inet6":
		dev := ""
		if s.Device != "" {
			dev = " %" + s.Device
		}
		return fmt.Sprintf("fd %d %s %s %s%s -> %s %s", s.FD, s.Family, s.Type, s.Local, dev, s.Remote, s.State)
	}
	return fmt.Sprintf("fd %d %s %s", s.FD, s.Family, s.Type)
}

var tcpStates = []string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"}

// processSockets lists every socket pid holds. /proc/<pid>/fd names them;
// each is then borrowed with pidfd_getfd and asked for its family, type,
// addresses and TCP state, so a socket in no /proc/net table (a TCP socket
// that was never bound or whose connection ended) is described too.
func processSockets(pid int) ([]socket, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", fdDir, err)
	}
	var socks []socket
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "socket:[") {
			continue // gone meanwhile, or not a socket
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue // closed between the listing and now
		}
		s, err := describe(fd)
		unix.Close(fd)
		if err != nil {
			return nil, fmt.Errorf("fd %d of %d: %w", n, pid, err)
		}
		s.FD = n
		socks = append(socks, s)
	}
	return socks, nil
}

func describe(fd int) (socket, error) {
	var s socket
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return s, err
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return s, err
	}
	acc, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	s.Listen = acc != 0
	s.Family = map[int]string{unix.AF_INET: "inet", unix.AF_INET6: "inet6", unix.AF_UNIX: "unix", unix.AF_NETLINK: "netlink", unix.AF_PACKET: "packet"}[dom]
	if s.Family == "" {
		s.Family = strconv.Itoa(dom)
	}
	s.Type = map[int]string{unix.SOCK_STREAM: "stream", unix.SOCK_DGRAM: "dgram", unix.SOCK_RAW: "raw", unix.SOCK_SEQPACKET: "seqpacket"}[typ]
	if sa, err := unix.Getsockname(fd); err == nil {
		s.Local, s.Path = sockaddr(sa)
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		s.Remote, _ = sockaddr(sa)
	}
	if dom == unix.AF_INET || dom == unix.AF_INET6 {
		s.Device, _ = unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
	}
	if (dom == unix.AF_INET || dom == unix.AF_INET6) && typ == unix.SOCK_STREAM {
		if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && int(info.State) < len(tcpStates) {
			s.State = tcpStates[info.State]
		}
	}
	return s, nil
}

func sockaddr(sa unix.Sockaddr) (netip.AddrPort, string) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), ""
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), ""
	case *unix.SockaddrUnix:
		return netip.AddrPort{}, a.Name
	}
	return netip.AddrPort{}, ""
}
