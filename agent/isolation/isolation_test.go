package isolation

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/daemon"
	"github.com/sightglass-bms/sightglass/agent/driver/modbus"
	"github.com/sightglass-bms/sightglass/pkg/demo"
	"github.com/sightglass-bms/sightglass/pkg/repotest"
	modbussim "github.com/sightglass-bms/sightglass/pkg/sim/modbus"
)

// binDir holds sightglass-agent and sightglass-ingest, built once.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() || os.Geteuid() != 0 {
			return m.Run()
		}
		dir, err := demo.BuildBinaries("sightglass-isolation-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

// requireLab skips without root or iproute2 when CI is unset and fails
// when it is set: CI runs as root and must never skip this proof.
func requireLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("network namespaces, built binaries and a minute of polling: not under -short")
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces)")
	}
	for _, tool := range []string{"ip", "sysctl", "nft", "/usr/bin/python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing = append(missing, "node")
	} else if _, err := os.Stat(filepath.Join(repotest.Root(t), "testdata", "peers", "node_modules", "@bacnet-js", "client")); err != nil {
		missing = append(missing, "@bacnet-js/client (npm ci --prefix testdata/peers)")
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import pymodbus").CombinedOutput(); err != nil {
		missing = append(missing, "python3-pymodbus ("+strings.TrimSpace(string(out))+")")
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("the isolation proof cannot run in CI: missing %s (.ci/run installs iproute2, nftables and python3-pymodbus; CI runs as root)", strings.Join(missing, ", "))
	}
	t.Skipf("needs %s", strings.Join(missing, ", "))
}

// eventually polls cond every 100ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (%s)", what, d, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const (
	simPort      = 1502
	pymodbusPort = 1503
	bacnetPort   = 47808
	opcuaPort    = 4840
	ingestPort   = 8443
)

// TestIsolationIntegration is the dual-NIC proof; see the package doc.
func TestIsolationIntegration(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	l := newLab(t)
	dir := t.TempDir()
	agentBin := filepath.Join(binDir, "sightglass-agent")
	ingestBin := filepath.Join(binDir, "sightglass-ingest")

	// The lab itself: no default route on the control side, no route
	// between the two subnets, no forwarding in the agent's namespace.
	for _, ns := range []string{l.control, l.cloud, l.edge} {
		if r := strings.TrimSpace(l.ip("-n", ns, "route", "show", "default")); r != "" {
			t.Fatalf("namespace %s has a default route %q: the lab is wrong", ns, r)
		}
	}
	if v := l.sysctl(l.edge, "net.ipv4.ip_forward"); v != "0" {
		t.Fatalf("a new namespace forwards (ip_forward=%s): the lab is wrong", v)
	}

	// control: our simulator (in this process, its listener made inside
	// the namespace) and the independent pymodbus server.
	profile, err := modbus.LoadProfile("schneider-pm5300")
	if err != nil {
		t.Fatal(err)
	}
	var sim *modbussim.Server
	if err := l.in(l.control, func() (err error) {
		sim, err = modbussim.Start(modbussim.Options{Addr: "127.0.0.1:0"}, map[byte]*modbussim.Unit{1: modbussim.FromProfile(profile)})
		return err
	}); err != nil {
		t.Fatalf("starting the Modbus simulator in %s: %v", l.control, err)
	}
	t.Cleanup(func() { sim.Close() })
	// The simulator listens on loopback only (its own guard), which is the
	// control namespace's loopback: a relay there puts it on the subnet.
	relay := l.relay(fmt.Sprintf("%s:%d", deviceAddr, simPort), sim.Addr(), l.control)
	t.Cleanup(func() { relay.Close() })
	peers := filepath.Join(repotest.Root(t), "testdata", "peers")
	pymodbus := l.start(ctx, l.control, "pymodbus", "LISTENING", "/usr/bin/python3", filepath.Join("testdata", "pymodbus_at.py"), deviceAddr, fmt.Sprint(pymodbusPort), peers)
	// The independent OPC UA server (node-opcua) on the control subnet.
	// The agent reads it through a driver-host child, whose connection
	// must leave by ctl0 too.
	opcuaPeer := l.start(ctx, l.control, "opcua-peer", "READY", "node", filepath.Join(peers, "opcua_server.js"),
		"--host", deviceAddr, "--port", fmt.Sprint(opcuaPort), "--pki", filepath.Join(dir, "opcua-peer-pki"), "--exit-with-stdin")
	// The independent BACnet device (node, @bacnet-js/client). It answers
	// Who-Is with an I-Am to the limited broadcast 255.255.255.255, as the
	// library does by default and many devices do, which stays inside the
	// control namespace's link: discovery and the agent must hear it on
	// the control NIC (the agent's receive-only socket there).
	bacnetPeer := l.start(ctx, l.control, "bacnet-peer", `{"event":"listening"`, "node", filepath.Join(peers, "bacnet_device.js"), "--interface", deviceAddr, "--port", fmt.Sprint(bacnetPort), "--device", "4242",
		"--iam", "broadcast", "--broadcast-address", fmt.Sprintf("255.255.255.255:%d", bacnetPort))

	// cloud: the ingest with its own CA; the agent enrolls over the uplink.
	ingestDir := filepath.Join(dir, "ingest")
	caDir, db, archive := filepath.Join(ingestDir, "ca"), filepath.Join(ingestDir, "ingest.db"), filepath.Join(ingestDir, "archive")
	if out, err := exec.CommandContext(ctx, ingestBin, "ca", "init", "--dir", caDir, "--server-name", ingestAddr).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, ingestBin, "enroll", "create", "--ca-dir", caDir, "--db", db, "--tenant", "lab", "--new-site", "--ttl", "1h").Output()
	if err != nil {
		t.Fatalf("enroll create: %v", err)
	}
	token := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	ingestCfg := filepath.Join(ingestDir, "ingest.yaml")
	writeFile(t, ingestCfg, fmt.Sprintf("listen: %s:%d\nca_dir: %s\ndatabase: %s\nstore:\n  kind: dir\n  dir: %s\nlog_level: info\n", ingestAddr, ingestPort, caDir, db, archive))
	l.start(ctx, l.cloud, "ingest", "", ingestBin, "serve", "--config", ingestCfg)
	eventually(t, 20*time.Second, "the ingest answers from the edge namespace", func() (bool, string) {
		ok, err := l.dial(l.edge, fmt.Sprintf("%s:%d", ingestAddr, ingestPort), time.Second)
		return ok, fmt.Sprint(err)
	})

	// edge: the agent, both NICs named, every control socket bound to ctl0.
	// The meter names its local_address; peer, vav and scada leave it out,
	// so the agent takes network.control.address for them (their sockets
	// are audited below like the meter's: from the control address, bound
	// to ctl0).
	agentDir := filepath.Join(dir, "agent")
	agentCfg := filepath.Join(agentDir, "agent.yaml")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, agentCfg, fmt.Sprintf(`data_dir: %s
network:
  control: {interface: %s, address: %s}
  uplink: {interface: %s}
uplink:
  url: https://%s:%d
  local_address: %s
  batch_interval: 1s
  timeout: 3s
poll:
  backoff_max: 2s
devices:
  - name: meter
    driver: modbus
    interval: 1s
    discover: true
    settings: {host: "%s:%d", unit: 1, profile: schneider-pm5300, local_address: %s}
  - name: peer
    driver: modbus
    interval: 1s
    settings: {host: "%s:%d", unit: 1}
    points:
      - {ref: hr/0/float32}
      - {ref: ir/10}
  - name: vav
    driver: bacnet
    interval: 1s
    settings: {device_instance: 4242, address: "%s:%d"}
    points:
      - {ref: analog-input:0}
      - {ref: binary-input:0}
  - name: scada
    driver: opcua
    interval: 1s
    settings: {endpoint: "opc.tcp://%s:%d", security_policy: Basic256Sha256, security_mode: SignAndEncrypt}
    points:
      - {ref: "ns=2;s=AHU1.FanSpeed"}
      - {ref: "ns=2;s=AHU1.SupplyAirTemp"}
`, agentDir, controlIf, controlAddr, uplinkIf, ingestAddr, ingestPort, uplinkAddr,
		deviceAddr, simPort, controlAddr, deviceAddr, pymodbusPort,
		deviceAddr, bacnetPort,
		deviceAddr, opcuaPort))

	t.Run("refuses to start while forwarding", func(t *testing.T) {
		for _, key := range []string{"net.ipv4.conf." + controlIf + ".forwarding", "net.ipv4.ip_forward"} {
			l.setSysctl(l.edge, key, "1")
			out, err := l.exec(ctx, l.edge, agentBin, "run", "--config", agentCfg)
			l.setSysctl(l.edge, key, "0")
			if key == "net.ipv4.ip_forward" {
				// Setting ip_forward sets every interface's switch too.
				l.setSysctl(l.edge, "net.ipv4.conf.all.forwarding", "0")
				l.setSysctl(l.edge, "net.ipv4.conf."+controlIf+".forwarding", "0")
				l.setSysctl(l.edge, "net.ipv4.conf."+uplinkIf+".forwarding", "0")
			}
			if err == nil || !strings.Contains(out, "refusing to start") || !strings.Contains(out, "forwarding") {
				t.Errorf("with %s=1 the agent: err %v, output:\n%s\nwant a refusal naming forwarding", key, err, out)
			}
		}
	})

	t.Run("discover all finds the control subnet's devices, reading only", func(t *testing.T) {
		// Before the agent runs, so BACnet's port on the control address
		// is free. The node peer binds its unicast address, which hears no
		// broadcast: Who-Is goes to it directly.
		out := filepath.Join(dir, "discovered.yaml")
		stdout, err := l.exec(ctx, l.edge, agentBin, "discover", "all", "--config", agentCfg, "--modbus-port", fmt.Sprint(pymodbusPort),
			"--opcua-port", "4840", "--units", "1-2", "--broadcast", fmt.Sprintf("%s:%d", deviceAddr, bacnetPort),
			"--timeout", "300ms", "--wait", "1s", "--rate", "1000", "--out", out)
		if err != nil {
			t.Fatalf("discover all: %v\n%s", err, stdout)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"control: {interface: " + controlIf + ", address: " + controlAddr + "}",
			fmt.Sprintf("host: \"%s:%d\"", deviceAddr, pymodbusPort),
			"local_address: " + controlAddr,
			"device_instance: 4242",
			fmt.Sprintf("opc.tcp://%s:%d", deviceAddr, opcuaPort),
		} {
			if !strings.Contains(string(b), want) {
				t.Errorf("the discovered config lacks %q:\n%s\n%s", want, b, stdout)
			}
		}
		var n int
		for _, line := range strings.Split(pymodbus.logText(), "\n") {
			var req struct{ FC int }
			if json.Unmarshal([]byte(line), &req) != nil {
				continue
			}
			n++
			if !slices.Contains([]int{1, 2, 3, 4, 43}, req.FC) {
				t.Errorf("pymodbus received function %d: not a read", req.FC)
			}
		}
		if n == 0 {
			t.Error("pymodbus received no request: the sweep did not find it")
		}
	})

	if out, err := l.exec(ctx, l.edge, agentBin, "enroll", "--config", agentCfg, "--token", token); err != nil {
		t.Fatalf("enrolling the agent over the uplink: %v\n%s", err, out)
	}
	agent := l.start(ctx, l.edge, "agent", "", agentBin, "run", "--config", agentCfg)
	statusSock := filepath.Join(agentDir, "agent.sock")
	status := func() (daemon.Status, error) {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return daemon.FetchStatus(sctx, statusSock)
	}

	t.Run("data flows end to end", func(t *testing.T) {
		eventually(t, 60*time.Second, "both devices read and samples archived", func() (bool, string) {
			if agent.exited() {
				t.Fatalf("the agent exited: %v\n%s", agent.err, agent.logText())
			}
			st, err := status()
			if err != nil {
				return false, err.Error()
			}
			for _, d := range st.Devices {
				if d.Reads == 0 {
					return false, fmt.Sprintf("device %s not read yet (%s)", d.Name, d.LastError)
				}
			}
			samples, _, err := demo.ReadArchive(ctx, archive)
			if err != nil || len(samples) == 0 {
				return false, fmt.Sprintf("archive: %d samples, %v; uplink %+v", len(samples), err, st.Uplink)
			}
			return true, ""
		})
	})

	t.Run("agent sockets are exactly the expected ones", func(t *testing.T) {
		checkAgentSockets(t, agent.cmd.Process.Pid, statusSock)
	})

	t.Run("check says go on every line the lab controls", func(t *testing.T) {
		rep := runCheck(t, l, agentBin, agentCfg)
		for _, check := range []string{"control interface", "uplink interface", "nic binding", "forwarding", "outbound https", "mtls handshake", "clock skew", "certificate", "disk space", "device meter", "device peer", "device vav", "device scada"} {
			if r := rep[check]; r.Result != "ok" {
				t.Errorf("check %s = %s %q, want ok", check, r.Result, r.Detail)
			}
		}
		// The lab's edge has no default route at all; a default route on
		// the control NIC must turn the line into a failure.
		if r := rep["control default route"]; r.Result == "fail" {
			t.Errorf("control default route = %+v before adding one", r)
		}
		l.ip("-n", l.edge, "route", "add", "default", "via", deviceAddr, "dev", controlIf)
		rep = runCheck(t, l, agentBin, agentCfg)
		l.ip("-n", l.edge, "route", "del", "default", "via", deviceAddr, "dev", controlIf)
		if r := rep["control default route"]; r.Result != "fail" || !strings.Contains(r.Detail, controlIf) {
			t.Errorf("with a default route via %s: control default route = %+v, want fail", controlIf, r)
		}
	})

	t.Run("no path from control to cloud or to the agent's uplink", func(t *testing.T) {
		targets := []string{
			fmt.Sprintf("%s:%d", ingestAddr, ingestPort),
			fmt.Sprintf("%s:%d", uplinkAddr, ingestPort),
			fmt.Sprintf("%s:22", uplinkAddr),
		}
		for _, port := range agentPorts(t, agent.cmd.Process.Pid) {
			targets = append(targets, fmt.Sprintf("%s:%d", uplinkAddr, port))
		}
		noConnection(t, l, l.control, targets, "no route")
		// An attacker on the control subnet points a route at the box.
		l.ip("-n", l.control, "route", "add", "10.200.2.0/24", "via", controlAddr)
		defer l.ip("-n", l.control, "route", "del", "10.200.2.0/24", "via", controlAddr)
		noConnection(t, l, l.control, targets, "a route via the agent's control address")
	})

	t.Run("no connection from cloud to the agent on any port", func(t *testing.T) {
		// Every TCP port of both agent addresses, and the controllers,
		// once the cloud side routes the control subnet at the box.
		l.ip("-n", l.cloud, "route", "add", "10.200.1.0/24", "via", uplinkAddr)
		defer l.ip("-n", l.cloud, "route", "del", "10.200.1.0/24", "via", uplinkAddr)
		scanAllPorts(t, l, l.cloud, uplinkAddr)
		scanAllPorts(t, l, l.cloud, controlAddr)
		noConnection(t, l, l.cloud, []string{
			fmt.Sprintf("%s:%d", deviceAddr, simPort),
			fmt.Sprintf("%s:%d", deviceAddr, pymodbusPort),
		}, "a route to the control subnet via the agent's uplink address")
	})

	t.Run("the BACnet socket hears nothing that arrives on the uplink, without the firewall", func(t *testing.T) {
		// Linux would deliver a datagram for the control address that
		// arrives on the uplink NIC to a socket bound only to that address
		// (the firewall test below shows it for a stray socket). The
		// agent's BACnet socket is bound to ctl0 as well, so the kernel
		// finds no socket for it and answers port unreachable, which a
		// connected UDP socket reads as "connection refused"; a socket that
		// took the datagram would leave the read to time out.
		l.ip("-n", l.cloud, "route", "add", "10.200.1.0/24", "via", uplinkAddr)
		defer l.ip("-n", l.cloud, "route", "del", "10.200.1.0/24", "via", uplinkAddr)
		err := l.in(l.cloud, func() error {
			c, err := net.Dial("udp4", net.JoinHostPort(controlAddr, strconv.Itoa(bacnetPort)))
			if err != nil {
				return err
			}
			defer c.Close()
			whoIs := []byte{0x81, 0x0a, 0x00, 0x08, 0x01, 0x00, 0x10, 0x08} // BVLC unicast, NPDU, unconfirmed Who-Is
			buf := make([]byte, 64)
			for range 3 { // the first ICMP answer may be rate-limited
				if _, err := c.Write(whoIs); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
					return err
				}
				c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				_, err := c.Read(buf)
				if errors.Is(err, syscall.ECONNREFUSED) {
					return nil
				}
			}
			return errors.New("no port unreachable: a socket on the edge took a datagram for the control address that came in on the uplink")
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the packaged firewall holds a service left open on the box", func(t *testing.T) {
		checkFirewall(t, l, func() int {
			samples, _, _ := demo.ReadArchive(ctx, archive)
			return len(samples)
		})
	})

	t.Run("a cut uplink loses nothing", func(t *testing.T) {
		l.ip("-n", l.edge, "link", "set", uplinkIf, "down")
		cutAt := time.Now()
		eventually(t, 30*time.Second, "the agent buffers while the uplink is down", func() (bool, string) {
			st, err := status()
			if err != nil {
				return false, err.Error()
			}
			return st.Buffer.SealedBatches >= 3 && st.Uplink.LastError != "", fmt.Sprintf("%+v", st.Buffer)
		})
		// Down a while longer, so several retries meet the dead link.
		time.Sleep(3 * time.Second)
		st, _ := status()
		t.Logf("uplink down for %s: %d batches (%d samples) buffered; last uplink error: %s",
			time.Since(cutAt).Round(time.Second), st.Buffer.SealedBatches, st.Buffer.SealedSamples, st.Uplink.LastError)
		l.ip("-n", l.edge, "link", "set", uplinkIf, "up")

		// The devices go away, so the count of samples read stops moving.
		relay.Close()
		sim.Close()
		pymodbus.stop(syscall.SIGTERM)
		bacnetPeer.stop(syscall.SIGTERM)
		opcuaPeer.stop(syscall.SIGTERM)
		var final daemon.Status
		stableSince, last := time.Time{}, uint64(0)
		eventually(t, 90*time.Second, "reads stopped and the buffer drained", func() (bool, string) {
			st, err := status()
			if err != nil {
				return false, err.Error()
			}
			var n uint64
			for _, d := range st.Devices {
				n += d.Samples
			}
			if n != last || stableSince.IsZero() {
				last, stableSince = n, time.Now()
			}
			final = st
			drained := st.Buffer.PendingSamples == 0 && st.Buffer.SealedBatches == 0
			return drained && time.Since(stableSince) > 3*time.Second, fmt.Sprintf("buffer %+v uplink error %q", st.Buffer, st.Uplink.LastError)
		})
		samples, _, err := demo.ReadArchive(ctx, archive)
		if err != nil {
			t.Fatal(err)
		}
		type key struct {
			id uint64
			ts int64
		}
		seen := map[key]int{}
		for _, s := range samples {
			seen[key{s.PointID, s.Time}]++
		}
		var dups int
		for _, n := range seen {
			if n > 1 {
				dups++
			}
		}
		var read, dropped uint64
		for _, d := range final.Devices {
			read += d.Samples
			dropped += d.DroppedSamples
		}
		t.Logf("the agent read %d samples; the archive holds %d (%d distinct), %d duplicated, %d dropped by the buffer", read, len(samples), len(seen), dups, final.Buffer.DroppedSamples+dropped)
		if uint64(len(samples)) != read || dups != 0 || final.Buffer.DroppedSamples+dropped != 0 {
			t.Errorf("every sample read must arrive exactly once: read %d, archived %d, %d duplicated, %d dropped", read, len(samples), dups, final.Buffer.DroppedSamples+dropped)
		}
	})

	t.Run("check fails the handshake of a revoked agent", func(t *testing.T) {
		st, err := status()
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.CommandContext(ctx, ingestBin, "agents", "revoke", st.Agent, "--reason", "isolation test", "--config", ingestCfg).CombinedOutput(); err != nil {
			t.Fatalf("revoking %s: %v\n%s", st.Agent, err, out)
		}
		rep := runCheck(t, l, agentBin, agentCfg)
		if r := rep["mtls handshake"]; r.Result != "fail" {
			t.Errorf("after revoking the agent, mtls handshake = %+v, want fail", r)
		}
		if r := rep["outbound https"]; r.Result != "ok" {
			t.Errorf("after revoking the agent, outbound https = %+v: the network is still fine", r)
		}
	})

	if err := agent.stop(syscall.SIGTERM); err != nil {
		t.Errorf("the agent did not stop cleanly: %v", err)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// agentPorts lists the local ports of the agent's TCP and UDP sockets.
func agentPorts(t *testing.T, pid int) []uint16 {
	t.Helper()
	socks, err := processSockets(pid)
	if err != nil {
		t.Fatal(err)
	}
	var ports []uint16
	for _, s := range socks {
		if s.Local.IsValid() && s.Local.Port() != 0 {
			ports = append(ports, s.Local.Port())
		}
	}
	return ports
}

// checkAgentSockets holds the agent's sockets to the design: inet only TCP
// streams, established, from the control address to a controller or from
// the uplink address to the ingest, none listening; BACnet's UDP socket on
// the control address and its receive-only one on the limited broadcast
// address (nothing else on UDP); every inet socket bound to its NIC
// (SO_BINDTODEVICE), so the weak host model delivers nothing across; unix sockets only the status socket
// and its connections. It also reads the
// edge namespace's own tables in /proc/<pid>/net, where only the agent
// runs: no TCP socket listens and the only UDP socket is BACnet's.
func checkAgentSockets(t *testing.T, pid int, statusSock string) {
	t.Helper()
	socks, err := processSockets(pid)
	if err != nil {
		t.Fatal(err)
	}
	device := netip.MustParseAddr(deviceAddr)
	var toDevice, toIngest, bacnetSockets, limitedSockets int
	for _, s := range socks {
		switch s.Family {
		case "inet", "inet6":
			switch {
			case s.Type == "dgram" && s.Local == netip.AddrPortFrom(netip.MustParseAddr(controlAddr), bacnetPort) && !s.Remote.IsValid():
				bacnetSockets++
				if s.Device != controlIf {
					t.Errorf("the BACnet socket is not bound to the control NIC %s (SO_BINDTODEVICE): %s", controlIf, s)
				}
			case s.Type == "dgram" && s.Local == netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), bacnetPort) && !s.Remote.IsValid():
				// BACnet's receive-only socket for I-Ams sent to the
				// limited broadcast: it hears the control NIC only.
				limitedSockets++
				if s.Device != controlIf {
					t.Errorf("the BACnet broadcast socket is not bound to the control NIC %s (SO_BINDTODEVICE): it would hear broadcasts on the uplink: %s", controlIf, s)
				}
			case s.Type != "stream":
				t.Errorf("unexpected %s socket: %s (the only UDP socket is BACnet's, on %s:%d)", s.Type, s, controlAddr, bacnetPort)
			case s.Listen:
				t.Errorf("the agent listens: %s", s)
			case s.State != "ESTABLISHED":
				t.Errorf("a TCP socket the agent holds is not connected: %s (a leaked descriptor?)", s)
			case s.Local.Addr().String() == controlAddr && s.Remote.Addr() == device && slices.Contains([]uint16{simPort, pymodbusPort}, s.Remote.Port()):
				toDevice++
				if s.Device != controlIf {
					t.Errorf("a device connection is not bound to the control NIC %s (SO_BINDTODEVICE): %s", controlIf, s)
				}
			case s.Local.Addr().String() == uplinkAddr && s.Remote.Addr().String() == ingestAddr && s.Remote.Port() == ingestPort:
				toIngest++
				if s.Device != uplinkIf {
					t.Errorf("an ingest connection is not bound to the uplink NIC %s (SO_BINDTODEVICE): %s", uplinkIf, s)
				}
			default:
				t.Errorf("unexpected TCP socket: %s", s)
			}
		case "unix":
			// The status socket's listener and the connections it
			// accepted (this test's status queries) carry its path.
			if s.Path != statusSock {
				t.Errorf("unexpected unix socket: %s", s)
			}
		case "netlink":
			// Go's net package asks the kernel for interfaces over netlink.
		default:
			t.Errorf("unexpected socket: %s", s)
		}
	}
	if toDevice != 2 || toIngest < 1 || bacnetSockets != 1 || limitedSockets != 1 {
		t.Errorf("want one connection to each of the 2 Modbus devices from %s, one or more to the ingest from %s, one BACnet socket on %s:%d and one receive-only on 255.255.255.255:%d; have %d, %d, %d and %d: %v", controlAddr, uplinkAddr, controlAddr, bacnetPort, bacnetPort, toDevice, toIngest, bacnetSockets, limitedSockets, socks)
	}
	checkChildSockets(t, pid)
	// /proc/net/udp writes the address as the kernel's little-endian word.
	ip := netip.MustParseAddr(controlAddr).As4()
	bacnetHex := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], bacnetPort)
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			f := strings.Fields(line)
			if i == 0 || len(f) < 4 {
				continue
			}
			switch {
			case table == "udp" && (f[1] == bacnetHex || f[1] == fmt.Sprintf("FFFFFFFF:%04X", bacnetPort)):
				// BACnet's socket, on the control address, and its
				// receive-only one on the limited broadcast address.
			case strings.HasPrefix(table, "udp") || f[3] == "0A":
				t.Errorf("/proc/%d/net/%s: %s socket at %s in the agent's namespace", pid, table, map[bool]string{true: "a UDP", false: "a listening"}[strings.HasPrefix(table, "udp")], f[1])
			}
		}
	}
	t.Logf("agent sockets: %v", socks)
}

// checkChildSockets holds the agent's children — the OPC UA driver host —
// to the same rule: their only inet sockets are connections from the
// control address, bound to ctl0, to the OPC UA server.
func checkChildSockets(t *testing.T, pid int) {
	t.Helper()
	children, err := childPIDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	toServer := 0
	for _, c := range children {
		socks, err := processSockets(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range socks {
			switch s.Family {
			case "inet", "inet6":
				switch {
				case s.Type == "stream" && !s.Listen && s.State == "ESTABLISHED" && s.Local.Addr().String() == controlAddr &&
					s.Remote == netip.AddrPortFrom(netip.MustParseAddr(deviceAddr), opcuaPort):
					toServer++
					if s.Device != controlIf {
						t.Errorf("the driver host's connection is not bound to the control NIC %s (SO_BINDTODEVICE): %s", controlIf, s)
					}
				default:
					t.Errorf("unexpected socket in the agent's child %d: %s", c, s)
				}
			case "netlink":
			default:
				t.Errorf("unexpected socket in the agent's child %d: %s", c, s)
			}
		}
		t.Logf("driver host %d sockets: %v", c, socks)
	}
	if toServer != 1 {
		t.Errorf("want one connection from a driver host child to the OPC UA server at %s:%d from %s; have %d (children %v)", deviceAddr, opcuaPort, controlAddr, toServer, children)
	}
}

// childPIDs lists the processes pid started that still run.
func childPIDs(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue // the thread ended meanwhile
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out, nil
}

// noConnection dials each target from ns and fails on any success.
func noConnection(t *testing.T, l *lab, ns string, targets []string, how string) {
	t.Helper()
	for _, target := range targets {
		ok, err := l.dial(ns, target, 500*time.Millisecond)
		if ok {
			t.Errorf("from %s with %s, a connection to %s succeeded", ns, how, target)
			continue
		}
		if !isRefusedOrUnreachable(err) {
			t.Errorf("from %s to %s: %v: not a refusal, an unreachable network or a timeout", ns, target, err)
		}
	}
}

// scanAllPorts connects to every TCP port of addr from ns. A closed port
// answers with a reset at once, so the scan takes seconds; a port that
// drops is given 50ms, and the whole scan is bounded.
func scanAllPorts(t *testing.T, l *lab, ns, addr string) {
	t.Helper()
	var open []int
	var timeouts int
	deadline := time.Now().Add(60 * time.Second)
	err := l.in(ns, func() error {
		for port := 1; port <= 65535; port++ {
			if time.Now().After(deadline) {
				return fmt.Errorf("scan of %s stopped at port %d after 60s (%d timeouts)", addr, port, timeouts)
			}
			c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", addr, port), 50*time.Millisecond)
			if err == nil {
				c.Close()
				open = append(open, port)
				continue
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				timeouts++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(open) > 0 {
		t.Errorf("from %s, TCP ports %v of %s accept connections", ns, open, addr)
	}
	t.Logf("from %s: all 65535 TCP ports of %s closed (%d timed out)", ns, addr, timeouts)
}

// checkFirewall leaves a TCP service open on every address of the edge
// namespace and a UDP one on the control address (as an installer's stray
// tool might), shows that cloud and, through a route at the box, control
// reach them (Linux accepts a packet for any local address on any NIC),
// loads the packaged nftables ruleset with the lab's interface names, and
// shows that neither side reaches them any more while the agent's own
// uplink traffic still flows.
func checkFirewall(t *testing.T, l *lab, archived func() int) {
	t.Helper()
	var ln net.Listener
	if err := l.in(l.edge, func() (err error) {
		ln, err = net.Listen("tcp", "0.0.0.0:9999")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A stray UDP service on the control address: BACnet's socket is
	// bound the same way, and Linux delivers a packet for any local
	// address whatever NIC it arrived on.
	var udp net.PacketConn
	if err := l.in(l.edge, func() (err error) {
		udp, err = net.ListenPacket("udp", controlAddr+":9998")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	l.ip("-n", l.control, "route", "add", "10.200.2.0/24", "via", controlAddr)
	defer l.ip("-n", l.control, "route", "del", "10.200.2.0/24", "via", controlAddr)
	l.ip("-n", l.cloud, "route", "add", "10.200.1.0/24", "via", uplinkAddr)
	defer l.ip("-n", l.cloud, "route", "del", "10.200.1.0/24", "via", uplinkAddr)
	stray := uplinkAddr + ":9999"
	strayOnControl := controlAddr + ":9999"
	for _, p := range []struct{ ns, addr string }{{l.cloud, stray}, {l.control, stray}, {l.cloud, strayOnControl}} {
		if ok, err := l.dial(p.ns, p.addr, time.Second); !ok {
			t.Fatalf("without the firewall, %s should reach the stray service at %s (the check could not fail otherwise): %v", p.ns, p.addr, err)
		}
	}
	if !udpArrives(t, l, udp) {
		t.Fatal("without the firewall, a datagram from cloud to the control address should arrive (the check could not fail otherwise)")
	}

	rules, err := os.ReadFile(filepath.Join(repotest.Root(t), "packaging", "nftables", "sightglass.nft"))
	if err != nil {
		t.Fatal(err)
	}
	r := strings.Replace(string(rules), `define control_if = "eth0"`, `define control_if = "`+controlIf+`"`, 1)
	r = strings.Replace(r, `define uplink_if = "eth1"`, `define uplink_if = "`+uplinkIf+`"`, 1)
	if r == string(rules) || !strings.Contains(r, uplinkIf) || !strings.Contains(r, controlIf) {
		t.Fatal("the ruleset's interface defines changed: update this test's substitution")
	}
	path := filepath.Join(t.TempDir(), "sightglass.nft")
	writeFile(t, path, r)
	// Loaded twice: the file replaces its own table instead of doubling it.
	for range 2 {
		if out, err := l.exec(t.Context(), l.edge, "nft", "-f", path); err != nil {
			t.Fatalf("loading the ruleset in %s: %v\n%s", l.edge, err, out)
		}
	}
	before := archived()
	for _, p := range []struct{ ns, addr string }{{l.cloud, stray}, {l.control, stray}, {l.cloud, strayOnControl}} {
		if ok, _ := l.dial(p.ns, p.addr, time.Second); ok {
			t.Errorf("with the firewall loaded, %s still reaches the stray service at %s", p.ns, p.addr)
		}
	}
	if udpArrives(t, l, udp) {
		t.Error("with the firewall loaded, a datagram from cloud still reaches the control address")
	}
	if ok, err := l.dial(l.edge, "127.0.0.1:9999", time.Second); !ok {
		t.Errorf("the firewall should not cut the box off from itself: %v", err)
	}
	eventually(t, 20*time.Second, "the agent's uplink still flows through the firewall (replies are let in)", func() (bool, string) {
		n := archived()
		return n > before, fmt.Sprintf("%d samples archived, %d before", n, before)
	})
	out, _ := l.exec(t.Context(), l.edge, "nft", "list", "table", "inet", "sightglass")
	t.Logf("ruleset in %s after the probes:\n%s", l.edge, out)
}

// checkLine is one line of `sightglass-agent check --json`.
type checkLine struct {
	Check, Result, Detail string
}

// runCheck runs the built agent's preflight inside the edge namespace and
// returns its lines by name. Its exit status is not asserted: whether the
// lab's clock counts as synchronised depends on the machine.
func runCheck(t *testing.T, l *lab, agentBin, cfg string) map[string]checkLine {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "ip", "netns", "exec", l.edge, agentBin, "check", "--config", cfg, "--json", "--timeout", "3s")
	out, _ := cmd.Output()
	var rep struct {
		Checks []checkLine `json:"checks"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	lines := map[string]checkLine{}
	for _, c := range rep.Checks {
		lines[c.Check] = c
		t.Logf("check: %-4s %-22s %s", c.Result, c.Check, c.Detail)
	}
	return lines
}

// udpArrives sends a datagram from cloud to the stray UDP socket on the
// control address and reports whether it was received within a second.
func udpArrives(t *testing.T, l *lab, udp net.PacketConn) bool {
	t.Helper()
	if err := l.in(l.cloud, func() error {
		c, err := net.Dial("udp", udp.LocalAddr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("who-is, from the internet side"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	udp.SetReadDeadline(time.Now().Add(time.Second))
	_, _, err := udp.ReadFrom(make([]byte, 64))
	return err == nil
}
