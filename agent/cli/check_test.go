package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/sightglass-bms/sightglass/agent/config"
	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/pkg/nicbind"
)

// checkConfig is an agent config with both NICs named; extra is appended
// to the devices list.
func checkConfig(t *testing.T, url, devices string) *config.Config {
	return checkConfigAt(t, url, "10.20.0.5", "192.0.2.10", devices)
}

// checkConfigAt is checkConfig with the control and uplink addresses given.
func checkConfigAt(t *testing.T, url, control, uplink, devices string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	yml := fmt.Sprintf(`data_dir: %s
network:
  control: {interface: ctl0, address: %s}
  uplink: {interface: up0}
uplink:
  url: %s
  local_address: %s
buffer:
  max_bytes: 64MiB
devices:
%s`, dir, control, url, uplink, devices)
	path := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const oneModbus = `  - name: meter
    driver: modbus
    settings: {host: 10.20.0.40, local_address: 10.20.0.5}
    points: [{ref: hr/0}]
`

// goodFacts is a box where everything is right.
func goodFacts() checkFacts {
	return checkFacts{
		interfaces: func() ([]nic, error) {
			return []nic{
				{Name: "lo", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}},
				{Name: "ctl0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.20.0.5/24")}},
				{Name: "up0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24"), netip.MustParsePrefix("fe80::1/64")}},
			}, nil
		},
		procSys: fstest.MapFS{
			"net/ipv4/ip_forward":           {Data: []byte("0\n")},
			"net/ipv4/conf/ctl0/forwarding": {Data: []byte("0\n")},
			"net/ipv4/conf/up0/forwarding":  {Data: []byte("0\n")},
			"net/ipv6/conf/ctl0/forwarding": {Data: []byte("0\n")},
			"net/ipv6/conf/up0/forwarding":  {Data: []byte("0\n")},
		},
		procNet: fstest.MapFS{
			"route": {Data: []byte("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
				"up0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" +
				"ctl0\t0000140A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")},
		},
		timeSync: func() (bool, string, error) { return true, "fake", nil },
		resolve: func(_ context.Context, ifname, _, host string) ([]string, error) {
			if ifname != "up0" {
				return nil, fmt.Errorf("resolving %s through %q, not the uplink NIC up0", host, ifname)
			}
			return []string{"198.51.100.7"}, nil
		},
		dialUplink: func(context.Context, string, string, string) (net.Conn, error) {
			return nil, errors.New("no dial in this test")
		},
		dial: func(ctx context.Context, local, remote string) (net.Conn, error) {
			return nil, errors.New("no dial in this test")
		},
		diskFree: func(string) (uint64, error) { return 10 << 30, nil },
		now:      time.Now,
		getenv:   func(string) string { return "" },
		bacnetProbe: func(context.Context, string, string, string, uint32, time.Duration) (string, error) {
			return "", errors.New("no bacnet in this test")
		},
		bindNIC:  func(string) error { return nil },
		kernel:   func() string { return "6.1.0-13-amd64" },
		unit:     func() (agentUnit, error) { return agentUnit{}, nil },
		canWrite: func(string, string, bool) error { return nil },
	}
}

// lineOf returns the report's line for check, failing if absent.
func lineOf(t *testing.T, rep CheckReport, check string) CheckLine {
	t.Helper()
	for _, l := range rep.Lines {
		if l.Check == check {
			return l
		}
	}
	t.Fatalf("no %q line in %+v", check, rep.Lines)
	return CheckLine{}
}

func TestCheckSystemFacts(t *testing.T) {
	tests := []struct {
		name   string
		change func(*checkFacts)
		check  string
		result string
		detail string // fragment of the detail
	}{
		{"good control", nil, "control interface", checkOK, "ctl0 up with 10.20.0.5/24"},
		{"good uplink", nil, "uplink interface", checkOK, "up0 up"},
		{"control missing", func(f *checkFacts) {
			f.interfaces = func() ([]nic, error) { return []nic{{Name: "up0", Up: true}}, nil }
		}, "control interface", checkFail, "ctl0 does not exist"},
		{"control down", func(f *checkFacts) {
			f.interfaces = func() ([]nic, error) {
				return []nic{{Name: "ctl0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.20.0.5/24")}}}, nil
			}
		}, "control interface", checkFail, "ctl0 is down"},
		{"control lacks its address", func(f *checkFacts) {
			f.interfaces = func() ([]nic, error) {
				return []nic{{Name: "ctl0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.20.0.6/24")}}}, nil
			}
		}, "control interface", checkFail, "does not have 10.20.0.5"},
		{"uplink only link-local", func(f *checkFacts) {
			f.interfaces = func() ([]nic, error) {
				return []nic{{Name: "up0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("fe80::1/64")}}}, nil
			}
		}, "uplink interface", checkFail, "no address"},
		{"uplink local_address elsewhere", func(f *checkFacts) {
			f.interfaces = func() ([]nic, error) {
				return []nic{{Name: "up0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("192.0.2.11/24")}}}, nil
			}
		}, "uplink interface", checkFail, "192.0.2.10 is not on up0"},
		{"forwarding off", nil, "forwarding", checkOK, "off"},
		{"forwarding on", func(f *checkFacts) {
			f.procSys.(fstest.MapFS)["net/ipv4/conf/up0/forwarding"] = &fstest.MapFile{Data: []byte("1\n")}
		}, "forwarding", checkFail, "conf/up0/forwarding is on"},
		{"default route via uplink", nil, "control default route", checkOK, "default via up0"},
		{"default route via control", func(f *checkFacts) {
			f.procNet = fstest.MapFS{"route": {Data: []byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n" +
				"ctl0\t00000000\t0100140A\t0003\t0\t0\t0\t00000000\n")}}
		}, "control default route", checkFail, "ctl0 has a default route (IPv4 via 10.20.0.1)"},
		{"ipv6 default route via control", func(f *checkFacts) {
			f.procNet.(fstest.MapFS)["ipv6_route"] = &fstest.MapFile{Data: []byte(strings.Repeat("0", 32) + " 00 " + strings.Repeat("0", 32) + " 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ctl0\n")}
		}, "control default route", checkFail, "IPv6"},
		{"no default route at all", func(f *checkFacts) {
			f.procNet = fstest.MapFS{"route": {Data: []byte("Iface\tDestination\n")}}
		}, "control default route", checkWarn, "up0 has none either"},
		{"nic binding", nil, "nic binding", checkOK, "ctl0 and up0"},
		{"nic binding refused", func(f *checkFacts) {
			f.bindNIC = func(name string) error {
				if name == "up0" {
					return errors.New("binding a socket to interface up0: operation not permitted")
				}
				return nil
			}
		}, "nic binding", checkFail, "up0: operation not permitted: upgrade to Linux 5.7 or later, or give the agent CAP_NET_RAW (CapabilityBoundingSet=CAP_NET_RAW and AmbientCapabilities=CAP_NET_RAW"},
		{"nic binding on an old kernel, check run as root", func(f *checkFacts) {
			f.kernel = func() string { return "5.4.0-150-generic" }
		}, "nic binding", checkFail, "kernel 5.4.0-150-generic: the agent runs unprivileged"},
		{"time synchronised", nil, "time sync", checkOK, "fake"},
		{"time not synchronised", func(f *checkFacts) {
			f.timeSync = func() (bool, string, error) { return false, "adjtimex", nil }
		}, "time sync", checkFail, "not synchronised"},
		{"time unknown", func(f *checkFacts) {
			f.timeSync = func() (bool, string, error) { return false, "", errors.New("no adjtimex") }
		}, "time sync", checkWarn, "cannot tell"},
		{"dns", nil, "dns", checkOK, "ingest.example.com (the ingest) is 198.51.100.7"},
		{"dns through the uplink NIC", nil, "dns", checkOK, "asked through up0"},
		{"dns fails", func(f *checkFacts) {
			f.resolve = func(context.Context, string, string, string) ([]string, error) {
				return nil, errors.New("no such host")
			}
		}, "dns", checkFail, "no such host"},
		{"dns of the proxy", func(f *checkFacts) {
			f.getenv = func(k string) string {
				if k == "HTTPS_PROXY" {
					return "http://proxy.example.net:3128"
				}
				return ""
			}
		}, "dns", checkOK, "proxy.example.net (the proxy)"},
		{"disk space", nil, "disk space", checkOK, "10.0GiB free"},
		{"disk too small", func(f *checkFacts) {
			f.diskFree = func(string) (uint64, error) { return 10 << 20, nil }
		}, "disk space", checkFail, "the buffer may grow by 64.0MiB"},
		{"modbus unreachable", nil, "device meter", checkFail, "modbus 10.20.0.40:502 unreachable from 10.20.0.5"},
		{"modbus on a network routed via the control NIC", func(f *checkFacts) {
			f.procNet = fstest.MapFS{"route": {Data: []byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n" +
				"up0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n" +
				"ctl0\t0000000A\t0100010A\t0003\t0\t0\t0\t000000FF\n")}}
		}, "device meter", checkFail, "modbus 10.20.0.40:502 unreachable from 10.20.0.5"},
		{"modbus routed out of the uplink", func(f *checkFacts) {
			f.procNet = fstest.MapFS{"route": {Data: []byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n" +
				"up0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n" +
				"ctl0\t0001140A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")}}
			f.dial = func(_ context.Context, _, remote string) (net.Conn, error) {
				if strings.HasPrefix(remote, "10.20.0.40") {
					panic("a device routed out of the uplink must not be probed")
				}
				return nil, errors.New("no dial in this test")
			}
		}, "device meter", checkFail, "routed out of up0 (the default route via 192.0.2.1), not the control NIC ctl0"},
		{"no certificate", nil, "certificate", checkFail, "enroll first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := goodFacts()
			if tt.change != nil {
				tt.change(&f)
			}
			cfg := checkConfig(t, "https://ingest.example.com:8443", oneModbus)
			rep := runChecks(t.Context(), cfg, f, time.Second)
			l := lineOf(t, rep, tt.check)
			if l.Result != tt.result || !strings.Contains(l.Detail, tt.detail) {
				t.Errorf("%s = %s %q, want %s containing %q", tt.check, l.Result, l.Detail, tt.result, tt.detail)
			}
			if l.Result == checkFail && rep.Go {
				t.Error("a failed line left the report go")
			}
		})
	}
}

// TestCheckProbesFromEffectiveLocalAddress: a Modbus or OPC UA device
// without settings.local_address is probed from the control address,
// which is what its driver dials from (config fills it in), and with its
// own from that one.
func TestCheckProbesFromEffectiveLocalAddress(t *testing.T) {
	tests := []struct {
		name, device, want string
	}{
		{"modbus without", "{host: 10.20.0.40}", "10.20.0.5"},
		{"opcua without", "{endpoint: \"opc.tcp://10.20.0.41:4840\"}", "10.20.0.5"},
		{"modbus with", "{host: 10.20.0.40, local_address: 10.20.0.5}", "10.20.0.5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := goodFacts()
			from := "not dialled"
			f.dial = func(_ context.Context, local, remote string) (net.Conn, error) {
				from = local
				c1, c2 := net.Pipe()
				c2.Close()
				return c1, nil
			}
			drv := strings.Fields(tt.name)[0]
			cfg := checkConfig(t, "https://ingest.example.com:8443", "  - name: meter\n    driver: "+drv+"\n    settings: "+tt.device+"\n    points: [{ref: hr/0}]\n")
			rep := runChecks(t.Context(), cfg, f, time.Second)
			l := lineOf(t, rep, "device meter")
			if l.Result != checkOK || from != tt.want {
				t.Errorf("device meter = %s %q, probed from %q; want ok, probed from %s", l.Result, l.Detail, from, tt.want)
			}
		})
	}
}

func TestCheckWithoutNetworkSection(t *testing.T) {
	cfg := checkConfig(t, "https://ingest.example.com:8443", oneModbus)
	cfg.Network = config.Network{}
	rep := runChecks(t.Context(), cfg, goodFacts(), time.Second)
	if l := lineOf(t, rep, "network"); l.Result != checkFail || !strings.Contains(l.Detail, "no network section") {
		t.Errorf("network = %+v", l)
	}
	if l := lineOf(t, rep, "forwarding"); l.Result != checkSkip {
		t.Errorf("forwarding = %+v, want skipped", l)
	}
	if rep.Go {
		t.Error("go without a network section")
	}
}

func TestCheckCertificateValidity(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{ServerNames: []string{"127.0.0.1"}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		validity time.Duration
		at       time.Time
		result   string
		detail   string
	}{
		{"valid", 30 * 24 * time.Hour, now.Add(time.Hour), checkOK, "(29 days)"},
		{"expiring", 30 * 24 * time.Hour, now.Add(29*24*time.Hour + time.Hour), checkWarn, "expires in"},
		{"expired", 24 * time.Hour, now.Add(48 * time.Hour), checkFail, "expired"},
		{"not yet valid", 24 * time.Hour, now.Add(-48 * time.Hour), checkFail, "not valid before"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ca.NewAgentBundle("acme", "site-1", tt.validity)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "cert")
			if err := b.WriteDir(dir); err != nil {
				t.Fatal(err)
			}
			cert, _, id, err := pki.LoadAgentBundle(dir)
			if err != nil {
				t.Fatal(err)
			}
			f := goodFacts()
			f.now = func() time.Time { return tt.at }
			c := &checker{cfg: checkConfig(t, "https://127.0.0.1:1", oneModbus), f: f}
			c.checkCertificate(cert, id)
			l := lineOf(t, c.rep, "certificate")
			if l.Result != tt.result || !strings.Contains(l.Detail, tt.detail) {
				t.Errorf("certificate = %s %q, want %s containing %q", l.Result, l.Detail, tt.result, tt.detail)
			}
		})
	}
}

func TestCheckBACnetProbe(t *testing.T) {
	devices := `  - name: ahu1
    driver: bacnet
    settings: {device_instance: 1001, address: "10.20.0.41", local_address: "10.20.0.5:47808"}
    points: [{ref: analog-input:1}]
`
	tests := []struct {
		name   string
		probe  func(context.Context, string, string, string, uint32, time.Duration) (string, error)
		result string
		detail string
	}{
		{"answers", func(_ context.Context, local, _, addr string, inst uint32, _ time.Duration) (string, error) {
			if local != "10.20.0.5:47808" || addr != "10.20.0.41" || inst != 1001 {
				return "", fmt.Errorf("probe called with %s %s %d", local, addr, inst)
			}
			return "AHU-1", nil
		}, checkOK, `object-name: "AHU-1"`},
		{"silent", func(context.Context, string, string, string, uint32, time.Duration) (string, error) {
			return "", errors.New("bacnet device did not answer")
		}, checkFail, "did not answer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := goodFacts()
			f.bacnetProbe = tt.probe
			rep := runChecks(t.Context(), checkConfig(t, "https://ingest.example.com:8443", devices), f, time.Second)
			l := lineOf(t, rep, "device ahu1")
			if l.Result != tt.result || !strings.Contains(l.Detail, tt.detail) {
				t.Errorf("device ahu1 = %s %q, want %s containing %q", l.Result, l.Detail, tt.result, tt.detail)
			}
		})
	}
}

// TestCheckIngestIntegration runs the whole preflight against a local
// ingest on loopback: an mTLS listener with a CA from ingest/pki and an
// agent certificate it issued, a Modbus device that only accepts, and the
// system facts faked so the box looks right.
func TestCheckIngestIntegration(t *testing.T) {
	// ingest.test is the name the proxy part of the test uses: Go never
	// proxies loopback addresses, so there the ingest is named, and only
	// the test proxy knows it is 127.0.0.1.
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{ServerNames: []string{"127.0.0.1", "ingest.test"}})
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int32
	var revoked atomic.Bool
	// status is what the ingest's registry says of the certificate; ""
	// stands for an ingest without a registry, which has no such path.
	var status atomic.Value
	status.Store("good")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if len(r.TLS.PeerCertificates) == 0 {
			t.Error("the ingest saw no client certificate")
			return
		}
		if revoked.Load() {
			http.Error(w, `{"code":"revoked"}`, http.StatusForbidden)
			return
		}
		// As ingest/server answers GET /v1/certs/{serial}: the status of
		// the caller's own certificate, "unknown" for any other.
		serial, ok := strings.CutPrefix(r.URL.Path, "/v1/certs/")
		st := status.Load().(string)
		if !ok || st == "" || r.Method != http.MethodGet {
			http.Error(w, `{"code":"not_found"}`, http.StatusNotFound)
			return
		}
		if serial != pki.SerialHex(r.TLS.PeerCertificates[0]) {
			st = "unknown"
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"serial": serial, "status": st, "not_after": r.TLS.PeerCertificates[0].NotAfter})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	// The preflight's TCP probe connects and closes without a handshake.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()

	device, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer device.Close()
	got := make(chan int, 1)
	go func() {
		c, err := device.Accept()
		if err != nil {
			return
		}
		// A read-only probe sends nothing: the device reads EOF at once.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := c.Read(make([]byte, 16))
		got <- n
		c.Close()
	}()

	devices := fmt.Sprintf(`  - name: meter
    driver: modbus
    settings: {host: %q, local_address: 127.0.0.2}
    points: [{ref: hr/0}]
`, device.Addr().String())
	// Loopback stands in for both NICs: 127.0.0.2 the control side,
	// 127.0.0.1 the uplink.
	cfg := checkConfigAt(t, srv.URL, "127.0.0.2", "127.0.0.1", devices)
	b, err := ca.NewAgentBundle("acme", "site-1", 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteDir(cfg.Uplink.CertDir); err != nil {
		t.Fatal(err)
	}
	f := goodFacts()
	f.interfaces = func() ([]nic, error) {
		return []nic{
			{Name: "ctl0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/8")}},
			{Name: "up0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}},
		}, nil
	}
	// Loopback is the "control subnet" here, routed out of ctl0.
	f.procNet = fstest.MapFS{"route": {Data: []byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n" +
		"up0\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\n" +
		"ctl0\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\n")}}
	probes := newDeviceDialers()
	f.dial = func(ctx context.Context, local, remote string) (net.Conn, error) {
		if h, _, _ := net.SplitHostPort(remote); h != "127.0.0.1" {
			return nil, fmt.Errorf("test dial to %s refused: loopback only", remote)
		}
		return probes.dial(ctx, local, remote)
	}
	// The uplink's probes go through the uplink NIC (here: its address,
	// on lo), like the agent's uplink.
	f.dialUplink = func(ctx context.Context, ifname, local, remote string) (net.Conn, error) {
		if h, _, _ := net.SplitHostPort(remote); h != "127.0.0.1" {
			return nil, fmt.Errorf("test dial to %s refused: loopback only", remote)
		}
		if ifname != "up0" || local != "127.0.0.1" {
			return nil, fmt.Errorf("the uplink probe dials through %q from %q, want up0 from 127.0.0.1", ifname, local)
		}
		return probes.dial(ctx, local, remote)
	}

	rep := runChecks(t.Context(), cfg, f, 5*time.Second)
	for _, l := range rep.Lines {
		t.Logf("%-4s %-22s %s", l.Result, l.Check, l.Detail)
	}
	for check, want := range map[string]string{
		"outbound https": "connected to 127.0.0.1",
		"mtls handshake": "accepted agent " + b.Identity.Agent + " of site site-1: certificate ",
		"clock skew":     "within",
		"certificate":    "site site-1: valid until",
		"device meter":   "answers a TCP connect from 127.0.0.2",
		"dns":            "not needed",
	} {
		l := lineOf(t, rep, check)
		if (l.Result != checkOK && l.Result != checkSkip) || !strings.Contains(l.Detail, want) {
			t.Errorf("%s = %s %q, want it fine and containing %q", check, l.Result, l.Detail, want)
		}
	}
	if !rep.Go {
		t.Errorf("no-go on a good box: %v", errNoGo(rep))
	}
	if n := served.Load(); n != 1 {
		t.Errorf("the ingest answered %d requests, want 1", n)
	}
	if l := lineOf(t, rep, "mtls handshake"); !strings.Contains(l.Detail, "is good (TLS 1.3") {
		t.Errorf("mtls handshake = %q, want it to say the certificate is good over TLS 1.3", l.Detail)
	}
	select {
	case n := <-got:
		if n != 0 {
			t.Errorf("the Modbus probe sent %d bytes; a probe must send nothing", n)
		}
	case <-time.After(5 * time.Second):
		t.Error("the Modbus device was never probed")
	}

	// The same run through the command, as JSON: parsable and go.
	var out strings.Builder
	if err := writeReport(&out, rep, true); err != nil {
		t.Fatal(err)
	}
	var back CheckReport
	if err := json.Unmarshal([]byte(out.String()), &back); err != nil || !back.Go || len(back.Lines) != len(rep.Lines) {
		t.Errorf("JSON report does not round-trip: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := writeReport(&out, rep, false); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(lastLine(out.String()), "GO: ") {
		t.Errorf("human report does not end with the verdict:\n%s", out.String())
	}

	// A revoked agent completes the handshake and is refused by the ingest.
	revoked.Store(true)
	rep = runChecks(t.Context(), cfg, f, 5*time.Second)
	revoked.Store(false)
	if l := lineOf(t, rep, "mtls handshake"); l.Result != checkFail || !strings.Contains(l.Detail, "403") || !strings.Contains(l.Detail, "revoked") {
		t.Errorf("a refused agent: mtls handshake = %+v, want fail naming 403 and the reason", l)
	}
	// What the registry says of the certificate decides: only good is go,
	// and an ingest without the status query (a 404) is no proof.
	for _, tt := range []struct{ status, want string }{
		{"revoked", "is revoked"},
		{"expired", "expired"},
		{"unknown", "does not know certificate"},
		{"", "404 Not Found"},
	} {
		status.Store(tt.status)
		rep = runChecks(t.Context(), cfg, f, 5*time.Second)
		if l := lineOf(t, rep, "mtls handshake"); l.Result != checkFail || !strings.Contains(l.Detail, tt.want) {
			t.Errorf("certificate status %q: mtls handshake = %+v, want fail saying %q", tt.status, l, tt.want)
		}
		if rep.Go {
			t.Errorf("certificate status %q: go", tt.status)
		}
	}
	status.Store("good")

	// Through an HTTPS proxy: the probes and the handshake go through
	// CONNECT, and the report says so.
	proxy := connectProxy(t)
	f.getenv = func(k string) string {
		if k == "HTTPS_PROXY" {
			return "http://" + proxy.addr
		}
		return ""
	}
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	viaProxy := checkConfigAt(t, "https://ingest.test:"+port, "127.0.0.2", "127.0.0.1", devices)
	if err := b.WriteDir(viaProxy.Uplink.CertDir); err != nil {
		t.Fatal(err)
	}
	rep = runChecks(t.Context(), viaProxy, f, 5*time.Second)
	for check, want := range map[string]string{
		"outbound https": "via proxy " + proxy.addr,
		"mtls handshake": "accepted agent " + b.Identity.Agent,
	} {
		if l := lineOf(t, rep, check); l.Result != checkOK || !strings.Contains(l.Detail, want) {
			t.Errorf("through the proxy: %s = %s %q, want ok containing %q", check, l.Result, l.Detail, want)
		}
	}
	if n := proxy.connects(); n != 1 {
		t.Errorf("the proxy saw %d CONNECTs, want 1 (the handshake)", n)
	}
	f.getenv = func(string) string { return "" }

	// A certificate the ingest does not trust fails the handshake.
	other, err := pki.Init(t.TempDir(), pki.InitOptions{ServerNames: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := other.NewAgentBundle("acme", "site-1", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Uplink.CertDir = filepath.Join(t.TempDir(), "other")
	ob.CAPEM = ca.CertPEM() // trusts the server, is not trusted by it
	if err := ob.WriteDir(cfg.Uplink.CertDir); err != nil {
		t.Fatal(err)
	}
	rep = runChecks(t.Context(), cfg, f, 5*time.Second)
	if l := lineOf(t, rep, "mtls handshake"); l.Result != checkFail {
		t.Errorf("an untrusted client certificate: mtls handshake = %+v, want fail", l)
	}
	if rep.Go {
		t.Error("go with a failed handshake")
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func TestCheckCommandNoGoExitsNonZero(t *testing.T) {
	// The command reads this machine's real facts, so everything it might
	// dial is loopback, and binding the configured addresses (not on this
	// machine) fails before any packet leaves.
	cfg := checkConfig(t, "https://127.0.0.1:1", `  - name: meter
    driver: modbus
    settings: {host: "127.0.0.1:1", local_address: 10.20.0.5}
    points: [{ref: hr/0}]
`)
	stdout, _, err := run(t, t.Context(), "check", "--config", cfg.Path(), "--json", "--timeout", "200ms")
	if err == nil || !strings.Contains(err.Error(), "no-go") {
		t.Fatalf("check on a box without these NICs: err %v, want no-go", err)
	}
	var rep CheckReport
	if jerr := json.Unmarshal([]byte(stdout), &rep); jerr != nil || rep.Go || len(rep.Lines) == 0 {
		t.Errorf("--json output %q: %v", stdout, jerr)
	}
}

// testProxy is an HTTP CONNECT proxy on loopback that counts tunnels.
type testProxy struct {
	addr string
	mu   sync.Mutex
	n    int
}

func (p *testProxy) connects() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

func connectProxy(t *testing.T) *testProxy {
	t.Helper()
	p := &testProxy{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		h, port, _ := net.SplitHostPort(r.Host)
		if h != "ingest.test" {
			http.Error(w, "only ingest.test, which is loopback", http.StatusForbidden)
			return
		}
		up, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		p.mu.Lock()
		p.n++
		p.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		go func() { io.Copy(up, buf); up.Close() }()
		io.Copy(conn, up)
		conn.Close()
	}))
	t.Cleanup(srv.Close)
	p.addr = srv.Listener.Addr().String()
	return p
}

// FuzzRouteTable feeds arbitrary /proc/net/route and ipv6_route contents to
// the parsers check reads them with: they must never panic, and a route
// they return must name an interface that appears in the input.
func FuzzRouteTable(f *testing.F) {
	f.Add([]byte("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\nup0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\nctl0\t0000140A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"), []byte(strings.Repeat("0", 32)+" 00 "+strings.Repeat("0", 32)+" 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ctl0\n"))
	f.Add([]byte("Iface\tDestination\nx\tzz\tyy\t0\t0\t0\tNaN\tFFFFFFFF\n"), []byte(""))
	f.Fuzz(func(t *testing.T, route, route6 []byte) {
		fsys := fstest.MapFS{"route": {Data: route}, "ipv6_route": {Data: route6}}
		routes, err := defaultRoutes(fsys)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if !bytes.Contains(route, []byte(r.iface)) && !bytes.Contains(route6, []byte(r.iface)) {
				t.Errorf("route via %q, which the input does not name", r.iface)
			}
		}
		iface, _, err := egress(fsys, netip.MustParseAddr("10.20.0.40"))
		if err != nil {
			t.Fatal(err)
		}
		if iface != "" && !bytes.Contains(route, []byte(iface)) {
			t.Errorf("egress via %q, which the input does not name", iface)
		}
	})
}

// TestCheckTrendFolder: a csvtrend device is go only when the agent, as
// its unit runs it, may move files out of the folder into processed_dir
// and failed_dir; otherwise the line names the path and the drop-in.
func TestCheckTrendFolder(t *testing.T) {
	// In /tmp itself, not t.TempDir(): the cases assume a folder PrivateTmp
	// hides and ProtectHome does not, which $TMPDIR (under /home, say)
	// need not be.
	dir, err := os.MkdirTemp("/tmp", "sightglass-trends-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	strict := agentUnit{Files: []string{"/lib/systemd/system/" + agentUnitName}, User: "sightglass", ProtectSystem: "strict", ProtectHome: "yes",
		WritePaths: []string{"/var/lib/sightglass", "/etc/sightglass/cert"}}
	withDropIn := strict
	withDropIn.WritePaths = append(slices.Clone(strict.WritePaths), dir)
	privateTmp := withDropIn
	privateTmp.PrivateTmp = true
	tests := []struct {
		name     string
		settings string
		unit     agentUnit
		canWrite func(dir, user string, moveOut bool) error
		result   string
		want     []string
	}{
		{"no unit installed", "{path: " + dir + "}", agentUnit{}, nil, checkOK, []string{"writable by this user", dir + "/processed"}},
		{"outside ReadWritePaths", "{path: " + dir + "}", strict, nil, checkFail,
			[]string{"folder " + dir + " is read-only", "ProtectSystem=strict", "ReadWritePaths=" + dir, "systemctl edit " + agentUnitName, "packaging/README.md"}},
		{"with the drop-in", "{path: " + dir + "}", withDropIn, nil, checkOK, []string{"writable by user sightglass under " + agentUnitName}},
		{"processed_dir elsewhere", "{path: " + dir + ", processed_dir: /srv/done}", withDropIn, nil, checkFail,
			[]string{"processed_dir /srv/done is read-only", "ReadWritePaths=/srv/done"}},
		{"relative processed_dir", "{path: " + dir + ", processed_dir: done}", withDropIn, nil, checkOK, []string{"processed_dir " + dir + "/done"}},
		{"not the agent's permission", "{path: " + dir + "}", withDropIn, func(d, user string, _ bool) error {
			if strings.HasSuffix(d, "/failed") {
				return fmt.Errorf("not writable by user %s", user)
			}
			return nil
		}, checkFail, []string{"failed_dir " + dir + "/failed: not writable by user sightglass"}},
		{"files moved out of the folder only", "{path: " + dir + "}", withDropIn, func(d, user string, moveOut bool) error {
			if moveOut {
				if d != dir {
					return fmt.Errorf("moveOut asked for %s", d)
				}
				return errors.New("sticky")
			}
			return nil
		}, checkFail, []string{"folder " + dir + ": sticky"}},
		{"private tmp", "{path: " + dir + "}", privateTmp, nil, checkFail, []string{"PrivateTmp"}},
		{"under home", "{path: " + dir + ", processed_dir: /home/bob/done}", withDropIn, nil, checkFail, []string{"/home/bob/done is hidden", "ProtectHome=yes"}},
		{"missing folder", "{path: " + dir + "/nope}", strict, nil, checkFail, []string{dir + "/nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := goodFacts()
			f.unit = func() (agentUnit, error) { return tt.unit, nil }
			if tt.canWrite != nil {
				f.canWrite = tt.canWrite
			}
			cfg := checkConfig(t, "https://ingest.example.com:8443", "  - name: trends\n    driver: csvtrend\n    settings: "+tt.settings+"\n    points: [{ref: SAT}]\n")
			l := lineOf(t, runChecks(t.Context(), cfg, f, time.Second), "device trends")
			if l.Result != tt.result {
				t.Errorf("device trends = %s %q, want %s", l.Result, l.Detail, tt.result)
			}
			for _, w := range tt.want {
				if !strings.Contains(l.Detail, w) {
					t.Errorf("device trends = %q, want it to contain %q", l.Detail, w)
				}
			}
		})
	}
}

// TestReadAgentUnit reads the packaged unit as the .deb installs it, with
// drop-ins the way systemd combines them.
func TestReadAgentUnit(t *testing.T) {
	unit, err := os.ReadFile(filepath.Join("..", "..", "packaging", "systemd", agentUnitName))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		files fstest.MapFS
		want  agentUnit
	}{
		{"not installed", fstest.MapFS{}, agentUnit{}},
		{"packaged", fstest.MapFS{"lib/systemd/system/" + agentUnitName: {Data: unit}},
			agentUnit{Files: []string{"/lib/systemd/system/" + agentUnitName}, User: "sightglass", ProtectSystem: "strict", ProtectHome: "yes", PrivateTmp: true,
				WritePaths: []string{"/var/lib/sightglass", "/var/lib/sightglass", "/etc/sightglass/cert"}}},
		{"drop-ins", fstest.MapFS{
			"lib/systemd/system/" + agentUnitName:                       {Data: unit},
			"lib/systemd/system/" + agentUnitName + ".d/10-trends.conf": {Data: []byte("[Service]\nReadWritePaths=/srv/old\n")},
			"etc/systemd/system/" + agentUnitName + ".d/10-trends.conf": {Data: []byte("[Service]\nReadWritePaths=-/srv/trends\n")},
			"etc/systemd/system/" + agentUnitName + ".d/20-user.conf":   {Data: []byte("# a comment\n[Unit]\nUser=ignored\n[Service]\nUser=bms\n")},
			"run/systemd/system/" + agentUnitName + ".d/30-reset.conf":  {Data: []byte("[Service]\nReadWritePaths=\nReadWritePaths=/var/lib/sightglass /srv/trends\n")},
			"etc/systemd/system/" + agentUnitName + ".d/not-a-conf.txt": {Data: []byte("[Service]\nUser=nobody\n")},
		}, agentUnit{
			Files: []string{"/lib/systemd/system/" + agentUnitName, "/etc/systemd/system/" + agentUnitName + ".d/10-trends.conf",
				"/etc/systemd/system/" + agentUnitName + ".d/20-user.conf", "/run/systemd/system/" + agentUnitName + ".d/30-reset.conf"},
			User: "bms", ProtectSystem: "strict", ProtectHome: "yes", PrivateTmp: true,
			WritePaths: []string{"/var/lib/sightglass", "/srv/trends"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAgentUnit(tt.files)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tt.want) {
				t.Errorf("readAgentUnit =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// TestWritableBy judges real folders for a user other than the one
// running the test (as root) or for the test's own user: the folder's own
// mode, the search permission of every folder above it, symbolic links
// followed to where the folder really is, and the sticky bit of a folder
// files are moved out of.
func TestWritableBy(t *testing.T) {
	if err := writableBy(filepath.Join(t.TempDir(), "processed", "deeper"), "", false); err != nil {
		t.Errorf("a folder to be made in a writable one: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("judging another user's permissions needs root; the rest ran")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody here")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	// Under /tmp, which everyone may search, not $TMPDIR, which may lie
	// in a folder nobody cannot reach; the base is opened to all.
	base, err := os.MkdirTemp("/tmp", "sightglass-writable-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		parentMode os.FileMode // of base/NAME, the folder holding the one judged
		mode       os.FileMode // of base/NAME/trends
		ownedBy    int         // -1: root
		link       bool        // judge a link to the folder from base, not the folder
		sub        string      // judge a folder to be made below it
		moveOut    bool
		want       string // "" for writable
	}{
		{name: "own mode too narrow", parentMode: 0o755, mode: 0o755, ownedBy: -1, want: "not writable by user nobody"},
		{name: "open to all", parentMode: 0o755, mode: 0o777, ownedBy: -1},
		{name: "writable and searchable, not readable", parentMode: 0o755, mode: 0o773, ownedBy: -1},
		{name: "parent closed", parentMode: 0o700, mode: 0o777, ownedBy: -1, want: "no search (x) permission"},
		{name: "parent readable, not searchable", parentMode: 0o744, mode: 0o777, ownedBy: -1, want: "no search (x) permission"},
		{name: "link into a closed parent", parentMode: 0o700, mode: 0o777, ownedBy: -1, link: true, want: "no search (x) permission"},
		{name: "to be made in a closed parent", parentMode: 0o700, mode: 0o777, ownedBy: -1, sub: "processed", want: "no search (x) permission"},
		{name: "sticky, files moved out", parentMode: 0o755, mode: 0o777 | os.ModeSticky, ownedBy: -1, moveOut: true, want: "only the files it owns"},
		{name: "sticky, files moved in", parentMode: 0o755, mode: 0o777 | os.ModeSticky, ownedBy: -1},
		{name: "sticky, owned by the agent", parentMode: 0o755, mode: 0o700 | os.ModeSticky, ownedBy: uid, moveOut: true},
		{name: "owner denied though others may", parentMode: 0o755, mode: 0o577, ownedBy: uid, want: "not writable by user nobody"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := filepath.Join(base, strconv.Itoa(i))
			dir := filepath.Join(parent, "trends")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if tt.ownedBy >= 0 {
				if err := os.Chown(dir, tt.ownedBy, -1); err != nil {
					t.Fatal(err)
				}
			}
			// Chmod after Chown, which clears no bits on a folder but
			// would on some file systems.
			if err := os.Chmod(dir, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(parent, tt.parentMode); err != nil {
				t.Fatal(err)
			}
			judged := dir
			if tt.link {
				judged = filepath.Join(base, strconv.Itoa(i)+"-link")
				if err := os.Symlink(dir, judged); err != nil {
					t.Fatal(err)
				}
			}
			if tt.sub != "" {
				judged = filepath.Join(judged, tt.sub)
			}
			err := writableBy(judged, "nobody", tt.moveOut)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("writableBy(%s, nobody) = %v, want writable", judged, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("writableBy(%s, nobody) = %v, want an error containing %q", judged, err, tt.want)
			case err != nil && !strings.Contains(err.Error(), "nobody"):
				t.Errorf("the error does not name the user: %v", err)
			}
		})
	}
}

// TestCheckIngestNeverAsksForCertificate: the certificate status query
// answers without a client certificate, so a "good" from a listener that
// never asked for one (not the agent listener, or a proxy terminating TLS)
// proves nothing and is no-go.
func TestCheckIngestNeverAsksForCertificate(t *testing.T) {
	ca, err := pki.Init(t.TempDir(), pki.InitOptions{ServerNames: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.ServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		auth   tls.ClientAuthType
		result string
		want   string
	}{
		{"asks", tls.VerifyClientCertIfGiven, checkOK, "is good"},
		{"never asks", tls.NoClientCert, checkFail, "never asked this agent for it"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				serial, _ := strings.CutPrefix(r.URL.Path, "/v1/certs/")
				json.NewEncoder(w).Encode(map[string]string{"serial": serial, "status": "good"})
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.Pool(), ClientAuth: tt.auth, MinVersion: tls.VersionTLS13}
			srv.StartTLS()
			defer srv.Close()
			cfg := checkConfig(t, srv.URL, oneModbus)
			b, err := ca.NewAgentBundle("acme", "site-1", 30*24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.WriteDir(cfg.Uplink.CertDir); err != nil {
				t.Fatal(err)
			}
			f := goodFacts()
			probes := newDeviceDialers()
			f.dialUplink = func(ctx context.Context, _, _, remote string) (net.Conn, error) {
				if h, _, _ := net.SplitHostPort(remote); h != "127.0.0.1" {
					return nil, fmt.Errorf("test dial to %s refused: loopback only", remote)
				}
				return probes.dial(ctx, "", remote)
			}
			l := lineOf(t, runChecks(t.Context(), cfg, f, 5*time.Second), "mtls handshake")
			if l.Result != tt.result || !strings.Contains(l.Detail, tt.want) {
				t.Errorf("mtls handshake = %s %q, want %s containing %q", l.Result, l.Detail, tt.result, tt.want)
			}
		})
	}
}

// TestCheckDialersBindLikeTheAgent: check's uplink probes and device probes
// dial from the configured address, bound to the named interface or, when
// none is named, to the one holding the address (the uplink's dial used to
// bind to none then, unlike enroll's); a device probe's dialer is made once
// per address, not at every probe.
func TestCheckDialersBindLikeTheAgent(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
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
	probes := newDeviceDialers()
	tests := []struct {
		name     string
		dial     func(ctx context.Context) (net.Conn, error)
		dev      string
		from     string
		wantFail string
	}{
		{"uplink, interface named", func(ctx context.Context) (net.Conn, error) {
			return dialUplink(ctx, "lo", "127.0.0.2", ln.Addr().String())
		}, "lo", "127.0.0.2", ""},
		{"uplink, interface from the address", func(ctx context.Context) (net.Conn, error) {
			return dialUplink(ctx, "", "127.0.0.2", ln.Addr().String())
		}, "lo", "127.0.0.2", ""},
		{"uplink, no address", func(ctx context.Context) (net.Conn, error) {
			return dialUplink(ctx, "", "", ln.Addr().String())
		}, "", "", ""},
		{"uplink, address with a port", func(ctx context.Context) (net.Conn, error) {
			return dialUplink(ctx, "", "127.0.0.2:80", ln.Addr().String())
		}, "", "", "uplink.local_address"},
		{"device", func(ctx context.Context) (net.Conn, error) {
			return probes.dial(ctx, "127.0.0.2", ln.Addr().String())
		}, "lo", "127.0.0.2", ""},
		{"device, address on no interface", func(ctx context.Context) (net.Conn, error) {
			return probes.dial(ctx, "192.0.2.77", ln.Addr().String())
		}, "", "", "no interface of this machine has that address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := tt.dial(t.Context())
			if tt.wantFail != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantFail) {
					t.Errorf("dial = %v, want an error saying %q", err, tt.wantFail)
				}
				if conn != nil {
					conn.Close()
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			dev, err := nicbind.Device(conn.(syscall.Conn))
			if err != nil || dev != tt.dev {
				t.Errorf("bound to %q (%v), want %q", dev, err, tt.dev)
			}
			if from := conn.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String(); tt.from != "" && from != tt.from {
				t.Errorf("dialled from %s, want %s", from, tt.from)
			}
		})
	}
	a, err := probes.dialer("127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := probes.dialer("127.0.0.2"); a != b {
		t.Error("a second probe from one address made a dialer again (and looked its interface up again)")
	}
}
