package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"
)

// dashboardClient is a browser of the demo's dashboard that trusts only
// the demo CA in caFile.
type dashboardClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newDashboardClient(t *testing.T, base, caFile string) *dashboardClient {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("the demo CA file holds no certificate")
	}
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	t.Cleanup(tr.CloseIdleConnections)
	return &dashboardClient{t: t, base: strings.TrimSuffix(base, "/"), c: &http.Client{Transport: tr, Jar: jar, Timeout: 30 * time.Second}}
}

func (d *dashboardClient) get(path string) string {
	d.t.Helper()
	resp, err := d.c.Get(d.base + path)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// login signs in and returns the page it lands on.
func (d *dashboardClient) login(user, password string) string {
	d.t.Helper()
	tok := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(d.get("/login"))
	if tok == nil {
		d.t.Fatal("no login form")
	}
	resp, err := d.c.PostForm(d.base+"/login", url.Values{"csrf": {tok[1]}, "name": {user}, "password": {password}})
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// TestWebDashboardIntegration signs in to the demo's dashboard with the
// printed login, trusting only the demo CA, and finds the demo building.
func TestWebDashboardIntegration(t *testing.T) {
	s, _ := newStack(t)
	if s.DashboardURL == "" || len(s.DashboardPassword) < 20 {
		t.Fatalf("no dashboard login: %q %q", s.DashboardURL, s.DashboardPassword)
	}
	d := newDashboardClient(t, s.DashboardURL, s.CACertFile())
	if body := d.login(DemoUser, s.DashboardPassword); !strings.Contains(body, "Demo Building") {
		t.Errorf("after signing in as %s:\n%s", DemoUser, body)
	}
}

// syncBuffer is a bytes.Buffer safe to read while the demo writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// pointRowRE is a row of the building page's point table: its class
// (warn when stale), status and age.
var pointRowRE = regexp.MustCompile(`(?s)<tr class="([^"]*)">\s*<td><input type="checkbox".*?<td class="status-([a-z-]+)">[^<]*</td>\s*<td>([^<]*)</td>\s*</tr>`)

// TestWebDemoLiveDataIntegration runs `make demo`'s whole demo (trend
// exports, the Modbus gateway, the BACnet controller and its routed
// devices, the OPC UA server) and reads the building page the way an
// engineer would: every device of the demo's agent configuration, of
// every protocol, must show a point that is ok and seconds old.
func TestWebDemoLiveDataIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	dir := filepath.Join(t.TempDir(), "demo")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		// Until ctx ends (the test's stop), not for a fixed time: a demo
		// that ended on its own while the test still polled would fail
		// with "connection refused" instead of naming the stale devices.
		done <- Run(ctx, Options{Bin: binDir, Dir: dir, Data: "../../testdata/bms", Out: &out, Logs: &testLog{t: t}})
	}()
	stop := func() error { cancel(); return <-done }
	// The demo prints the dashboard's URL, login and CA once it runs.
	loginRE := regexp.MustCompile(`dashboard\s+(\S+)\s+sign in as (\S+) / (\S+)\s+\(the certificate is the demo CA's, (\S+):`)
	var m []string
	for m == nil {
		select {
		case err := <-done:
			t.Fatalf("the demo ended before it printed the dashboard: %v\n%s", err, out.String())
		case <-time.After(200 * time.Millisecond):
		}
		m = loginRE.FindStringSubmatch(out.String())
	}
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("demo: %v", err)
		}
	}()
	// The devices, by protocol, from the agent configuration the demo wrote.
	raw, err := os.ReadFile((&Stack{Dir: dir}).AgentConfig())
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Devices []struct{ Name, Driver string } `yaml:"devices"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	byDriver := map[string][]string{}
	for _, dev := range cfg.Devices {
		byDriver[dev.Driver] = append(byDriver[dev.Driver], dev.Name)
	}
	for _, drv := range []string{"modbus", "bacnet", "opcua", "csvtrend"} {
		if len(byDriver[drv]) == 0 {
			t.Fatalf("the demo has no %s device: %v", drv, byDriver)
		}
	}
	t.Logf("demo devices by driver: %v", byDriver)
	d := newDashboardClient(t, m[1], m[4])
	if body := d.login(m[2], m[3]); !strings.Contains(body, "Demo Building") {
		t.Fatalf("after signing in as %s:\n%s", m[2], body)
	}
	building := regexp.MustCompile(`href="(/b/[^"/]+/[^"/]+)"`).FindStringSubmatch(d.get("/"))
	if building == nil {
		t.Fatal("the portfolio links no building")
	}
	// freshOK reports whether the device's points include one that is
	// ok, not stale and under a minute old.
	freshOK := func(device string) (bool, string) {
		page := d.get(building[1] + "?" + url.Values{"tag": {"device:" + device}}.Encode())
		rows := pointRowRE.FindAllStringSubmatch(page, -1)
		var seen []string
		for _, r := range rows {
			seen = append(seen, r[2]+" "+r[3])
			if r[1] == "" && r[2] == "ok" && strings.HasSuffix(r[3], " s") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d points: %v", len(rows), seen)
	}
	pending := map[string]string{}
	for _, dev := range cfg.Devices {
		pending[dev.Name] = dev.Driver
	}
	why := map[string]string{}
	// Devices come up at their own pace (discovery, the first batch):
	// look again every two seconds, for two minutes at most.
	for try := 0; try < 60 && len(pending) > 0; try++ {
		for name := range pending {
			if ok, w := freshOK(name); ok {
				delete(pending, name)
			} else {
				why[name] = w
			}
		}
		if len(pending) > 0 {
			time.Sleep(2 * time.Second)
		}
	}
	var missing []string
	for name, drv := range pending {
		missing = append(missing, fmt.Sprintf("%s (%s): %s", name, drv, why[name]))
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("devices with no fresh ok point on the building page:\n%s", strings.Join(missing, "\n"))
	}
	// The devices table lists every device too.
	page := d.get(building[1])
	for _, dev := range cfg.Devices {
		if !strings.Contains(page, ">"+dev.Name+"</a></td><td class=\"num\">") {
			t.Errorf("the building page's device table lacks %s", dev.Name)
		}
	}
}
