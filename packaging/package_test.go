package packaging

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/repotest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// names are the packages `make package` builds.
var names = []string{"agent", "ingest"}

// need skips the test when tool is missing, unless CI is set: CI must
// never skip silently.
func need(t *testing.T, tool, install string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing in CI: .ci/run should install %s", tool, install)
	}
	t.Skipf("%s is not installed (apt-get install %s)", tool, install)
	return ""
}

func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI runs as root, but this test is not root: %s", why)
	}
	t.Skipf("not root: %s", why)
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var (
	buildOnce sync.Once
	built     map[string]string // package name -> .deb path
	buildErr  string
)

// debs builds the packages for this machine's architecture once per test
// binary with `make package`, the same command a release uses.
func debs(t *testing.T) map[string]string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binaries and the packages: not under -short")
	}
	need(t, "dpkg-deb", "dpkg")
	buildOnce.Do(func() {
		root := repotest.Root(t)
		out := filepath.Join(os.TempDir(), fmt.Sprintf("sightglass-pkg-%d", os.Getpid()))
		os.RemoveAll(out)
		cmd := exec.Command("make", "-s", "package", "PKG_ARCHES="+runtime.GOARCH, "PKG_DIR="+out, "PKG_VERSION=0.0.0~test")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Sprintf("make package: %v\n%s", err, b)
			return
		}
		built = map[string]string{}
		for _, n := range names {
			built[n] = filepath.Join(out, fmt.Sprintf("sightglass-%s_0.0.0~test_%s.deb", n, runtime.GOARCH))
		}
	})
	if buildErr != "" {
		t.Fatal(buildErr)
	}
	return built
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built != nil {
		for _, p := range built {
			os.RemoveAll(filepath.Dir(p))
			break
		}
	}
	os.Exit(code)
}

// contentsLine matches one line of `dpkg-deb -c`: mode, owner/group, size,
// date, time, path.
var contentsLine = regexp.MustCompile(`^(\S+)\s+(\S+)\s+\d+\s+\S+\s+\S+\s+(.+)$`)

// contents is `dpkg-deb -c` without sizes and dates, which change with
// every build: what a reviewer checks is which files, with which mode and
// owner.
func contents(t *testing.T, deb string) string {
	t.Helper()
	out := run(t, "", nil, "dpkg-deb", "-c", deb)
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := contentsLine.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("unexpected dpkg-deb -c line %q", sc.Text())
		}
		fmt.Fprintf(&b, "%s %s %s\n", m[1], m[2], m[3])
	}
	return b.String()
}

func TestDebContentsIntegration(t *testing.T) {
	for name, deb := range debs(t) {
		t.Run(name, func(t *testing.T) {
			got := contents(t, deb)
			golden := filepath.Join("testdata", "sightglass-"+name+".contents")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./packaging -run Contents -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("dpkg-deb -c %s differs from %s (run with -update if the change is meant):\ngot:\n%s\nwant:\n%s", filepath.Base(deb), golden, got, want)
			}
			st, err := os.Stat(deb)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d bytes (%.1f MiB)", filepath.Base(deb), st.Size(), float64(st.Size())/(1<<20))

			fields := map[string]string{
				"Package":      "sightglass-" + name,
				"Architecture": runtime.GOARCH,
				"Depends":      "passwd",
			}
			for f, want := range fields {
				if got := strings.TrimSpace(run(t, "", nil, "dpkg-deb", "-f", deb, f)); got != want {
					t.Errorf("control field %s = %q, want %q", f, got, want)
				}
			}
			conffiles := run(t, "", nil, "dpkg-deb", "-I", deb, "conffiles")
			wantConf := map[string][]string{
				"agent":  {"/etc/sightglass/agent.yaml", "/etc/sightglass/sightglass.nft"},
				"ingest": {"/etc/sightglass-ingest/ingest.yaml"},
			}[name]
			if got := strings.Fields(conffiles); !slices.Equal(got, wantConf) {
				t.Errorf("conffiles = %v, want %v: an upgrade must not overwrite the installer's edits", got, wantConf)
			}
		})
	}
}

// hardening is what the issue requires of both units, directive by
// directive, so a later edit cannot drop one unnoticed.
var hardening = []string{
	"NoNewPrivileges=yes",
	"ProtectSystem=strict",
	"ProtectHome=yes",
	"PrivateTmp=yes",
	"CapabilityBoundingSet=",
	"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
	"SystemCallFilter=@system-service",
	"PrivateDevices=yes",
	"ProtectKernelTunables=yes",
	"ProtectKernelModules=yes",
	"ProtectControlGroups=yes",
	"MemoryDenyWriteExecute=yes",
	"RestrictNamespaces=yes",
	"LockPersonality=yes",
	"SystemCallArchitectures=native",
}

// unitLines returns the directives of a unit file, without comments.
func unitLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.Lines(string(b)) {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

func TestUnits(t *testing.T) {
	tests := []struct {
		unit, user string
		// writable is exactly ReadWritePaths: the buffer and the keys.
		writable string
	}{
		{"sightglass-agent.service", "sightglass", "/var/lib/sightglass /etc/sightglass/cert"},
		{"sightglass-ingest.service", "sightglass-ingest", "/var/lib/sightglass-ingest"},
	}
	for _, tt := range tests {
		t.Run(tt.unit, func(t *testing.T) {
			lines := unitLines(t, filepath.Join("systemd", tt.unit))
			for _, want := range append(hardening, "User="+tt.user, "Group="+tt.user, "ReadWritePaths="+tt.writable) {
				if !slices.Contains(lines, want) {
					t.Errorf("%s lacks %q", tt.unit, want)
				}
			}
			for _, l := range lines {
				if strings.HasPrefix(l, "ReadWritePaths=") && l != "ReadWritePaths="+tt.writable {
					t.Errorf("%s: extra %q: only the buffer and the keys may be writable", tt.unit, l)
				}
				if strings.HasPrefix(l, "AmbientCapabilities=") && l != "AmbientCapabilities=" {
					t.Errorf("%s: %q grants a capability", tt.unit, l)
				}
				if l == "User=root" || strings.HasPrefix(l, "PermissionsStartOnly") {
					t.Errorf("%s: %q runs something as root", tt.unit, l)
				}
			}
		})
	}
}

// maxExposure is the worst `systemd-analyze security` score a unit may
// have; ours score 1.1 with systemd 252. The rest is PrivateNetwork (the
// agent's whole job is the network), the address families it needs, and no
// IP allow list (the ingest's and the devices' addresses are the site's).
const maxExposure = 1.5

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

func TestSystemdAnalyzeSecurity(t *testing.T) {
	analyze := need(t, "systemd-analyze", "systemd")
	for _, unit := range []string{"sightglass-agent.service", "sightglass-ingest.service"} {
		t.Run(unit, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), analyze, "security", "--offline=yes", "--no-pager", filepath.Join("systemd", unit))
			out, _ := cmd.CombinedOutput() // exits non-zero above its threshold; the score decides
			m := exposureRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no exposure score in systemd-analyze's output:\n%s", out)
			}
			score, err := strconv.ParseFloat(string(m[1]), 64)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("systemd-analyze security %s: exposure %.1f", unit, score)
			if score > maxExposure {
				t.Errorf("exposure %.1f is above %.1f: a hardening directive was lost\n%s", score, maxExposure, out)
			}
			if bytes.Contains(out, []byte("Unknown key")) || bytes.Contains(out, []byte("Unknown lvalue")) {
				t.Errorf("systemd does not understand a directive:\n%s", out)
			}
		})
	}
}

func TestPostinstRefusesUnknownPackage(t *testing.T) {
	sh := need(t, "sh", "dash")
	cmd := exec.CommandContext(t.Context(), sh, filepath.Join("scripts", "postinst.sh"), "configure")
	cmd.Env = append(os.Environ(), "DPKG_MAINTSCRIPT_PACKAGE=something-else")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unknown package") {
		t.Fatalf("postinst for another package: err %v, output %q: want a refusal", err, out)
	}
}

// TestAgentSyscallsAllowed expands the agent unit's SystemCallFilter with
// systemd's own group lists and checks that it allows what the agent needs
// beyond ordinary I/O: starting and reaping its OPC UA driver host
// (clone/clone3, execve, prctl for the parent-death signal, wait4/waitid,
// kill), the pipes to it (pipe2, dup3), and binding sockets to their NIC
// (setsockopt with SO_BINDTODEVICE). A tightened filter would otherwise
// only show on a real box, as EPERM.
func TestAgentSyscallsAllowed(t *testing.T) {
	analyze := need(t, "systemd-analyze", "systemd")
	var allow, deny []string
	for _, l := range unitLines(t, filepath.Join("systemd", "sightglass-agent.service")) {
		v, ok := strings.CutPrefix(l, "SystemCallFilter=")
		if !ok {
			continue
		}
		if rest, neg := strings.CutPrefix(v, "~"); neg {
			deny = append(deny, strings.Fields(rest)...)
		} else {
			allow = append(allow, strings.Fields(v)...)
		}
	}
	if len(allow) == 0 {
		t.Fatal("the agent unit has no SystemCallFilter allow list")
	}
	var expand func(names []string) map[string]bool
	expand = func(names []string) map[string]bool {
		set := map[string]bool{}
		for _, n := range names {
			if !strings.HasPrefix(n, "@") {
				set[n] = true
				continue
			}
			out, err := exec.CommandContext(t.Context(), analyze, "syscall-filter", "--no-pager", n).Output()
			if err != nil {
				t.Fatalf("systemd-analyze syscall-filter %s: %v", n, err)
			}
			for l := range strings.Lines(string(out)) {
				l = strings.TrimSpace(l)
				if l == "" || strings.HasPrefix(l, "#") || l == n {
					continue
				}
				// Nested groups are listed by name and expanded too.
				if strings.HasPrefix(l, "@") {
					maps.Copy(set, expand([]string{l}))
					continue
				}
				set[l] = true
			}
		}
		return set
	}
	allowed, denied := expand(allow), expand(deny)
	for _, sc := range []string{"execve", "clone", "clone3", "prctl", "wait4", "waitid", "kill", "pipe2", "dup3", "setsockopt", "getsockopt", "socket", "bind", "connect"} {
		if !allowed[sc] || denied[sc] {
			t.Errorf("the agent unit's SystemCallFilter does not allow %s (allowed by %v: %v, denied by %v: %v)", sc, allow, allowed[sc], deny, denied[sc])
		}
	}
}
