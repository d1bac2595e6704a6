package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestNftablesRuleset(t *testing.T) {
	nft := need(t, "nft", "nftables")
	needRoot(t, "nft -c talks to the kernel's netfilter, which needs CAP_NET_ADMIN")
	// -c checks the whole transaction in the kernel and commits nothing.
	out, err := exec.CommandContext(t.Context(), nft, "-c", "-f", filepath.Join("nftables", "sightglass.nft")).CombinedOutput()
	if err != nil {
		t.Fatalf("nft -c -f sightglass.nft: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join("nftables", "sightglass.nft"))
	if err != nil {
		t.Fatal(err)
	}
	rules := string(b)
	for _, want := range []string{
		"iifname $uplink_if ct state established,related accept",
		"iifname $uplink_if counter drop",
		"iifname $control_if fib daddr . iif type != { local, broadcast, multicast } counter drop",
		"iifname $control_if oifname $uplink_if counter drop",
		"iifname $uplink_if oifname $control_if counter drop",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("ruleset lacks %q", want)
		}
	}
}

// ciDebianRoot is where .ci/run leaves the minimal Debian root it makes
// with debootstrap: the download is an install step, like apt-get, so the
// test itself sends nothing off the machine.
const ciDebianRoot = "/var/cache/sightglass-ci/debian-bookworm"

// debianSource is the pristine Debian root the install test copies:
// SIGHTGLASS_DEBIAN_ROOT when set, else the one .ci/run made. ok is false
// when there is neither.
func debianSource() (dir string, ok bool) {
	if src := os.Getenv("SIGHTGLASS_DEBIAN_ROOT"); src != "" {
		return src, true
	}
	if _, err := os.Stat(filepath.Join(ciDebianRoot, "usr", "bin", "dpkg")); err == nil {
		return ciDebianRoot, true
	}
	return "", false
}

// debianRoot returns a fresh copy of the Debian root src to install into.
func debianRoot(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "root")
	run(t, "", nil, "cp", "-a", src, dst)
	return dst
}

func chroot(t *testing.T, root string, args ...string) string {
	t.Helper()
	// No /proc in the root: a maintainer script that touched sysctls would
	// fail there instead of changing the host's.
	return run(t, "", []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive"}, "chroot", append([]string{root}, args...)...)
}

func exists(root, p string) bool {
	_, err := os.Lstat(filepath.Join(root, p))
	return err == nil
}

// TestDebootstrapInstallIntegration installs each package into a minimal
// Debian root, checks what postinst made, removes it (state kept), then
// purges it (state and user gone). The root is a copy of one made by
// debootstrap beforehand (see debianSource): in CI, where .ci/run makes
// it, a missing root fails the test; elsewhere it is skipped.
func TestDebootstrapInstallIntegration(t *testing.T) {
	src, ok := debianSource()
	switch {
	case !ok && os.Getenv("CI") != "":
		t.Fatalf("no Debian root to install into: .ci/run makes one at %s with debootstrap; run it, or set SIGHTGLASS_DEBIAN_ROOT=DIR (made by debootstrap --variant=minbase bookworm DIR)", ciDebianRoot)
	case !ok:
		t.Skipf("opt-in: set SIGHTGLASS_DEBIAN_ROOT=DIR, a root made by debootstrap --variant=minbase bookworm DIR (.ci/run makes one at %s)", ciDebianRoot)
	}
	needRoot(t, "debootstrap and chroot need root")
	need(t, "chroot", "coreutils")
	pkgs := debs(t)
	tests := []struct {
		name, user, data string
		files            []string // installed files to find
		state            string   // a directory postinst makes and purge removes
	}{
		{"agent", "sightglass", "/var/lib/sightglass",
			[]string{"/usr/bin/sightglass-agent", "/lib/systemd/system/sightglass-agent.service", "/etc/sightglass/agent.yaml", "/etc/sightglass/sightglass.nft", "/usr/lib/sysctl.d/60-sightglass-agent.conf"},
			"/etc/sightglass/cert"},
		{"ingest", "sightglass-ingest", "/var/lib/sightglass-ingest",
			[]string{"/usr/bin/sightglass-ingest", "/lib/systemd/system/sightglass-ingest.service", "/etc/sightglass-ingest/ingest.yaml"},
			"/var/lib/sightglass-ingest"},
	}
	root := debianRoot(t, src)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkg := "sightglass-" + tt.name
			deb, err := os.ReadFile(pkgs[tt.name])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, "tmp", pkg+".deb"), deb, 0o644); err != nil {
				t.Fatal(err)
			}
			chroot(t, root, "dpkg", "-i", "/tmp/"+pkg+".deb")
			for _, f := range tt.files {
				if !exists(root, f) {
					t.Errorf("after install, %s is missing", f)
				}
			}
			pw := chroot(t, root, "getent", "passwd", tt.user)
			f := strings.Split(strings.TrimSpace(pw), ":")
			if len(f) != 7 || f[5] != tt.data || f[6] != "/usr/sbin/nologin" {
				t.Errorf("user %s = %q: want home %s and shell /usr/sbin/nologin", tt.user, pw, tt.data)
			}
			if uid := f[2]; uid == "0" {
				t.Errorf("user %s has uid 0", tt.user)
			}
			owner := strings.TrimSpace(chroot(t, root, "stat", "-c", "%U:%G %a", tt.data, tt.state))
			for _, l := range strings.Split(owner, "\n") {
				if !strings.HasPrefix(l, tt.user+":"+tt.user+" ") || strings.HasSuffix(l, "7") || strings.HasSuffix(l, "5") {
					t.Errorf("state directory: %q: want owned by %s and closed to others", l, tt.user)
				}
			}
			// The binary runs in a plain Debian: a static build, no surprises.
			chroot(t, root, "/usr/bin/"+pkg, "--help")

			chroot(t, root, "dpkg", "-r", pkg)
			if exists(root, "/usr/bin/"+pkg) {
				t.Error("after remove, the binary is still there")
			}
			if !exists(root, tt.data) {
				t.Error("remove deleted the state: only purge may")
			}
			chroot(t, root, "getent", "passwd", tt.user) // still there: fails the test if not

			chroot(t, root, "dpkg", "-P", pkg)
			for _, p := range append(tt.files, tt.data, tt.state) {
				if exists(root, p) {
					t.Errorf("after purge, %s is still there", p)
				}
			}
			if out, err := exec.CommandContext(t.Context(), "chroot", root, "getent", "passwd", tt.user).CombinedOutput(); err == nil {
				t.Errorf("after purge, user %s is still there: %s", tt.user, out)
			}
			// dpkg forgets a purged package entirely: the query finds nothing.
			if out, err := exec.CommandContext(t.Context(), "chroot", root, "dpkg-query", "-W", "-f=${db:Status-Status}", pkg).CombinedOutput(); err == nil && strings.TrimSpace(string(out)) != "not-installed" {
				t.Errorf("after purge, dpkg still knows %s: %q", pkg, out)
			}
		})
	}
}
