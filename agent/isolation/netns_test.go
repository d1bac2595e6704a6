package isolation

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Test addresses. They exist only on the veth ends inside the namespaces a
// test makes; nothing routes them anywhere else.
const (
	deviceAddr  = "10.200.1.2" // control: the controllers
	controlAddr = "10.200.1.1" // edge: the agent's control NIC, ctl0
	uplinkAddr  = "10.200.2.1" // edge: the agent's uplink NIC, up0
	ingestAddr  = "10.200.2.2" // cloud: the ingest
	controlIf   = "ctl0"
	uplinkIf    = "up0"
)

// lab is three network namespaces wired control <-> edge <-> cloud. Every
// name carries a random suffix so parallel runs and leftovers of a killed
// run never collide; the namespaces (and with them the veth pairs, which
// live only inside them) are deleted when the test ends, failed or not.
type lab struct {
	t                    *testing.T
	control, edge, cloud string
	logDir               string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	sfx := hex.EncodeToString(b[:])
	l := &lab{t: t, control: "sg-control-" + sfx, edge: "sg-edge-" + sfx, cloud: "sg-cloud-" + sfx, logDir: t.TempDir()}
	for _, ns := range []string{l.control, l.edge, l.cloud} {
		l.ip("netns", "add", ns)
		t.Cleanup(func() {
			// Deleting a namespace whose processes still run leaves it
			// alive until they exit: the procs' cleanups run first (LIFO).
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("deleting namespace %s: %v: %s", ns, err, out)
			}
		})
		l.ip("-n", ns, "link", "set", "lo", "up")
	}
	// Each veth pair is made inside edge and its peer sent straight into
	// the other namespace: the host's own namespace never sees either end.
	l.ip("-n", l.edge, "link", "add", controlIf, "type", "veth", "peer", "name", "dev0", "netns", l.control)
	l.ip("-n", l.edge, "link", "add", uplinkIf, "type", "veth", "peer", "name", "wan0", "netns", l.cloud)
	for _, a := range []struct{ ns, dev, addr string }{
		{l.control, "dev0", deviceAddr},
		{l.edge, controlIf, controlAddr},
		{l.edge, uplinkIf, uplinkAddr},
		{l.cloud, "wan0", ingestAddr},
	} {
		l.ip("-n", a.ns, "addr", "add", a.addr+"/24", "dev", a.dev)
		l.ip("-n", a.ns, "link", "set", a.dev, "up")
	}
	return l
}

// ip runs iproute2 and fails the test on error.
func (l *lab) ip(args ...string) string {
	l.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// exec runs a command inside ns and returns its combined output.
func (l *lab) exec(ctx context.Context, ns string, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
	return string(out), err
}

// in runs fn on an OS thread that has joined ns. Sockets belong to the
// namespace of the thread that creates them, so a listener or a dial made
// inside fn lives in ns even after fn returns, while the rest of the test
// process stays in the host's namespace.
func (l *lab) in(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("joining %s: %w", ns, err)
			return
		}
		err = fn()
		// A thread that cannot go back stays locked and dies with this
		// goroutine, so no other goroutine ever runs in ns by accident.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// dial tries a TCP connection from ns and reports whether it was made.
func (l *lab) dial(ns, addr string, timeout time.Duration) (bool, error) {
	var ok bool
	var derr error
	err := l.in(ns, func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err == nil {
			ok = true
			c.Close()
		}
		derr = err
		return nil
	})
	if err != nil {
		l.t.Fatal(err)
	}
	return ok, derr
}

// proc is a child process running in a namespace, its output in a file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
	// stdin is held open while the process should run.
	stdin io.Closer
}

// start runs name inside ns; stdout is also scanned for a line starting
// with ready (when not empty), which start waits for.
func (l *lab) start(ctx context.Context, ns, label, ready string, name string, args ...string) *proc {
	l.t.Helper()
	logPath := filepath.Join(l.logDir, label+".log")
	f, err := os.Create(logPath)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	// The peers stop when their stdin closes, so a killed test leaves
	// nothing behind.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout = io.MultiWriter(f, pw)
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("starting %s in %s: %v", label, ns, err)
	}
	p := &proc{name: label, cmd: cmd, log: logPath, done: make(chan struct{}), stdin: stdin}
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		f.Close()
		close(p.done)
	}()
	l.t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		if l.t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			l.t.Logf("--- %s (%s) log tail:\n%s", label, ns, b)
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sent := ready == ""
		for sc.Scan() {
			if !sent && strings.HasPrefix(sc.Text(), ready) {
				lines <- sc.Text()
				sent = true
			}
		}
		io.Copy(io.Discard, pr)
	}()
	if ready != "" {
		select {
		case <-lines:
		case <-p.done:
			l.t.Fatalf("%s exited before it was ready: %v (log %s)", label, p.err, logPath)
		case <-ctx.Done():
			l.t.Fatalf("%s never printed %q: %v", label, ready, ctx.Err())
		}
	}
	return p
}

// stop signals the process and waits (bounded) for it to exit.
func (p *proc) stop(sig syscall.Signal) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 15s of %v; killed", p.name, sig)
	}
	if sig == syscall.SIGKILL {
		return nil
	}
	return p.err
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logText is the process's output so far.
func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// sysctl reads a sysctl inside ns.
func (l *lab) sysctl(ns, key string) string {
	l.t.Helper()
	out, err := l.exec(l.t.Context(), ns, "sysctl", "-n", key)
	if err != nil {
		l.t.Fatalf("sysctl %s in %s: %v: %s", key, ns, err, out)
	}
	return strings.TrimSpace(out)
}

func (l *lab) setSysctl(ns, key, value string) {
	l.t.Helper()
	if out, err := l.exec(l.t.Context(), ns, "sysctl", "-qw", key+"="+value); err != nil {
		l.t.Fatalf("sysctl -w %s=%s in %s: %v: %s", key, value, ns, err, out)
	}
}

// isRefusedOrUnreachable tells a clean "no" (nothing listens, no route)
// from a broken test.
func isRefusedOrUnreachable(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EHOSTUNREACH) || (errors.As(err, &ne) && ne.Timeout())
}

// relay listens on addr inside ns and copies every connection to target,
// dialled inside ns too; Close stops it and drops its connections.
func (l *lab) relay(addr, target, ns string) io.Closer {
	l.t.Helper()
	var ln net.Listener
	if err := l.in(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		l.t.Fatalf("relay on %s in %s: %v", addr, ns, err)
	}
	r := &relay{ln: ln, conns: map[net.Conn]bool{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var up net.Conn
			if err := l.in(ns, func() (err error) {
				up, err = net.DialTimeout("tcp", target, time.Second)
				return err
			}); err != nil {
				c.Close()
				continue
			}
			if !r.track(c, up) {
				return
			}
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return r
}

type relay struct {
	ln     net.Listener
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]bool
}

func (r *relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		r.conns[c] = true
	}
	return true
}

func (r *relay) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	return r.ln.Close()
}
