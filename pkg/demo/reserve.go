package demo

import (
	"errors"
	"fmt"
	"syscall"
)

// A reservation holds a loopback TCP port with a socket bound to it that
// does not listen: a connection to it is refused, as one to a server that
// is down, and the kernel gives the port to no other socket. The stack
// holds the ingest's ports so while the ingest is not running: its
// configuration names them, and it must find them free when it starts.
type reservation struct{ fd int }

// reserve binds a socket to 127.0.0.1:port; port 0 picks a free port. It
// returns the port held. The socket is bound without SO_REUSEADDR, so no
// other socket can bind the port at all; where that fails because
// connections of an ingest just stopped linger in TIME_WAIT on the port,
// it is bound with SO_REUSEADDR, which still keeps the port from every
// socket the kernel picks a port for (binds to port 0, outgoing
// connections), the sockets other tests make, though not from one that
// names the port with SO_REUSEADDR set, as the ingest does.
func reserve(port int) (*reservation, int, error) {
	r, got, err := bindLoopback(port, false)
	if errors.Is(err, syscall.EADDRINUSE) && port != 0 {
		r, got, err = bindLoopback(port, true)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("reserving loopback port %d: %w", port, err)
	}
	return r, got, nil
}

func bindLoopback(port int, reuse bool) (*reservation, int, error) {
	// Close-on-exec, set under the fork lock as package net does: a child
	// started meanwhile (the ingest) must not inherit the port.
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, 0, err
	}
	if reuse {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
			syscall.Close(fd)
			return nil, 0, err
		}
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return nil, 0, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, 0, err
	}
	return &reservation{fd: fd}, sa.(*syscall.SockaddrInet4).Port, nil
}

// release frees the port.
func (r *reservation) release() { syscall.Close(r.fd) }
