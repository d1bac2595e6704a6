package opcua

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// peerNS is the namespace index of the peer's building: node-opcua puts
// its own namespace at 1 and ours next.
const peerNS = 2

func peerRef(id string) string { return fmt.Sprintf("ns=%d;s=%s", peerNS, id) }

// peerPoints are ten readable points of the peer.
func peerPoints() []driver.Point {
	ids := []string{"AHU1.SupplyAirTemp", "AHU1.ReturnAirTemp", "AHU1.FanSpeed", "AHU1.FanStatus",
		"Plant.ChilledWaterSupplyTemp", "Plant.ChillerPower",
		"Zones.Zone1.Temp", "Zones.Zone2.Temp", "Zones.Zone3.Temp", "Zones.Zone4.Temp"}
	points := make([]driver.Point, len(ids))
	for i, id := range ids {
		points[i] = driver.Point{ID: uint64(100 + i), Ref: peerRef(id), Name: id}
	}
	return points
}

// userCert writes a user certificate and its key (0600) for certificate
// authentication.
func userCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "sightglass-reader"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "user.der"), filepath.Join(dir, "user.key")
	if err := os.WriteFile(certFile, der, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestNodeOPCUAIntegration reads the node-opcua peer under every security
// policy and mode the driver offers and each kind of user, and checks the
// peer's log: only reads arrived, reads were batched to the peer's
// MaxNodesPerRead (5), and a node that does not exist marked only its own
// point faulty.
func TestNodeOPCUAIntegration(t *testing.T) {
	p := shared(t)
	certFile, keyFile := userCert(t)
	passFile := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(passFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, policy, mode, auth string
	}{
		{"None", "None", "None", ""},
		{"Basic256Sha256-Sign", "Basic256Sha256", "Sign", ""},
		{"Basic256Sha256-SignAndEncrypt", "Basic256Sha256", "SignAndEncrypt", ""},
		{"Aes128_Sha256_RsaOaep-SignAndEncrypt", "Aes128_Sha256_RsaOaep", "SignAndEncrypt", ""},
		{"Aes128_Sha256_RsaOaep-Sign", "Aes128_Sha256_RsaOaep", "Sign", ""},
		{"Aes256_Sha256_RsaPss-SignAndEncrypt", "Aes256_Sha256_RsaPss", "SignAndEncrypt", ""},
		{"Aes256_Sha256_RsaPss-Sign", "Aes256_Sha256_RsaPss", "Sign", ""},
		{"username", "Basic256Sha256", "SignAndEncrypt", "auth: {type: username, username: reader, password: secret}"},
		{"username-password-file", "Aes256_Sha256_RsaPss", "SignAndEncrypt", "auth: {type: username, username: reader, password_file: " + passFile + "}"},
		{"certificate", "Aes128_Sha256_RsaOaep", "SignAndEncrypt", fmt.Sprintf("auth: {type: certificate, certificate: %s, private_key: %s}", certFile, keyFile)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := len(p.Services())
			pki := t.TempDir()
			settings := fmt.Sprintf("endpoint: %s\nsecurity_policy: %s\nsecurity_mode: %s\npki_dir: %s\n%s\n", p.URL, tt.policy, tt.mode, pki, tt.auth)
			points := append(peerPoints(), driver.Point{ID: 999, Ref: peerRef("Gone.Away"), Name: "gone"})
			var logs logBuffer
			d, err := newDriver(driver.Device{Name: "peer", Settings: yamlSettings(settings), Points: points, Logger: logs.Logger()})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := d.Connect(t.Context()); err != nil {
				t.Fatalf("Connect: %v\n%s", err, logs.String())
			}
			samples, err := d.Read(t.Context(), points)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			checkPeerSamples(t, samples, points, 999)
			if tt.mode != "None" {
				if _, err := os.Stat(pinFile(pki, p.URL)); err != nil {
					t.Errorf("server certificate not pinned on first use: %v", err)
				}
			} else if !strings.Contains(logs.String(), "security is off") {
				t.Error("security None did not warn")
			}
			// A deliberate write on the live session is refused before
			// it is sent.
			n, _ := ua.ParseNodeID(points[0].Ref)
			err = d.g.Send(t.Context(), &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{NodeID: n, AttributeID: ua.AttributeIDValue, Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(1.0)}}}}, func(ua.Response) error { return nil })
			if !errors.Is(err, driver.ErrRefused) {
				t.Errorf("Write = %v, want ErrRefused", err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			// The peer's log arrives through a pipe: wait for the session's
			// end before looking at it.
			waitFor(t.Context(), 60*time.Second, func() bool { return countOf(p.Services()[base:], "CloseSession") > 0 })
			got := p.Services()[base:]
			// One Read of MaxNodesPerRead at connect, then 11 points in
			// batches of 5.
			if n := countOf(got, "Read"); n != 1+3 {
				t.Errorf("the session sent %d ReadRequests, want 1 (limits) + 3 (11 points, 5 per read)", n)
			}
			if bad := notReads(got); len(bad) > 0 {
				t.Errorf("the peer received %q: only reads may reach a controller (all: %q)", bad, got)
			}
			for _, want := range []string{"GetEndpoints", "CreateSession", "ActivateSession", "Read", "CloseSession"} {
				if !slices.Contains(got, want) {
					t.Errorf("the peer never saw %s: %q", want, got)
				}
			}
		})
	}
}

// checkPeerSamples expects a good sample for every point but gone, and a
// fault for gone.
func checkPeerSamples(t *testing.T, samples []telemetry.Sample, points []driver.Point, gone uint64) {
	t.Helper()
	got := map[uint64]telemetry.Sample{}
	for _, s := range samples {
		got[s.PointID] = s
	}
	for _, pt := range points {
		s, ok := got[pt.ID]
		switch {
		case !ok:
			t.Errorf("no sample for %s", pt.Ref)
		case pt.ID == gone && s.Status != telemetry.StatusFault:
			t.Errorf("%s (does not exist) has status %v, want fault", pt.Ref, s.Status)
		case pt.ID != gone && s.Status != telemetry.StatusOK:
			t.Errorf("%s has status %v, want ok", pt.Ref, s.Status)
		case pt.ID != gone && time.Since(time.UnixMilli(s.Time)) > time.Minute:
			t.Errorf("%s has time %v, want now", pt.Ref, time.UnixMilli(s.Time))
		}
	}
}

func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// TestNodeOPCUADiscoverIntegration browses the peer: the variables come
// with their browse path, data type and unit, through reads only.
func TestNodeOPCUADiscoverIntegration(t *testing.T) {
	p := shared(t)
	base := len(p.Services())
	d, err := newDriver(driver.Device{Name: "peer", Settings: noneSettings(t, p.URL)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	found, err := d.Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	byRef := map[string]driver.Point{}
	for _, f := range found {
		byRef[f.Ref] = f
	}
	want := map[string][2]string{
		peerRef("AHU1.SupplyAirTemp"):           {"Building/AHU1/SupplyAirTemp", "°C"},
		peerRef("AHU1.FanSpeed"):                {"Building/AHU1/FanSpeed", "%"},
		peerRef("AHU1.FanStatus"):               {"Building/AHU1/FanStatus", ""},
		peerRef("Plant.ChilledWaterSupplyTemp"): {"Building/Plant/ChilledWaterSupplyTemp", "°C"},
		peerRef("Zones.Zone3.Temp"):             {"Building/Zones/Zone3/Temp", "°C"},
	}
	for ref, w := range want {
		f, ok := byRef[ref]
		if !ok {
			t.Errorf("Discover did not find %s (found %d points)", ref, len(found))
			continue
		}
		if f.Name != w[0] || f.Unit != w[1] {
			t.Errorf("%s: name %q unit %q, want %q %q", ref, f.Name, f.Unit, w[0], w[1])
		}
	}
	d.Close()
	if bad := notReads(p.Services()[base:]); len(bad) > 0 {
		t.Errorf("discovery sent %q", bad)
	}
}

// TestNodeOPCUASubscribeIntegration checks the monitored-item parameters
// against node-opcua: a queue delivers every sampled value between Reads,
// an absolute or percent deadband wider than the value's swing lets only
// the first value through.
func TestNodeOPCUASubscribeIntegration(t *testing.T) {
	p := shared(t)
	base := len(p.Services())
	points := []driver.Point{
		{ID: 1, Ref: peerRef("AHU1.FanSpeed"), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\nqueue_size: 20")},
		{ID: 3, Ref: peerRef("AHU1.SupplyAirTemp"), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\ndeadband: 50")},
		// EURange is -100..1000: 10% is 110, far more than the swing.
		{ID: 4, Ref: peerRef("AHU1.ReturnAirTemp"), Settings: yamlSettings("mode: subscribe\nsampling_interval: 100ms\ndeadband: 10\ndeadband_type: percent")},
	}
	d, err := newDriver(driver.Device{Name: "peer", Settings: noneSettings(t, p.URL, "publishing_interval: 1s"), Points: points})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Sampled every 100 ms, published every second with a queue of 20:
	// about 10 values a publish, where without the queue a publish
	// carries the newest only. Reads every 500 ms see one publish each,
	// or two when one was late: a Read with 3 or more values is a queue.
	// Read until one came and 15 values in all (3.5 s on an idle machine;
	// the deadline only bounds a hang), so a slow machine is not taken
	// for a missing queue.
	counts := map[uint64]int{}
	most := 0
	deadline := time.Now().Add(60 * time.Second)
	for (most < 3 || counts[1] < 15 || counts[3] == 0 || counts[4] == 0) && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		samples, err := d.Read(t.Context(), points)
		if err != nil {
			t.Fatal(err)
		}
		fan := 0
		for _, s := range samples {
			if s.Status == telemetry.StatusOK {
				counts[s.PointID]++
				if s.PointID == 1 {
					fan++
				}
			}
		}
		most = max(most, fan)
	}
	if most < 3 || counts[1] < 15 {
		t.Errorf("FanSpeed with queue_size 20 delivered %d values, at most %d in one Read, in 60 s; want the queued samples", counts[1], most)
	}
	if counts[3] != 1 || counts[4] != 1 {
		t.Errorf("deadbands wider than the swing delivered %d (absolute) and %d (percent) values, want the first only", counts[3], counts[4])
	}
	d.Close()
	if bad := notReads(p.Services()[base:]); len(bad) > 0 {
		t.Errorf("sent %q", bad)
	}
}
