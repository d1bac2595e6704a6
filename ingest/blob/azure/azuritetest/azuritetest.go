// Package azuritetest runs Azurite, the Azure Storage emulator installed
// from npm in testdata/peers, for tests: on 127.0.0.1 with a free port and
// a temporary location, over plain HTTP with the emulator's shared key or
// over HTTPS with a certificate made at run time and OAuth tokens minted by
// TokenCredential. It can kill Azurite and start it again on the same port
// and location, as an outage does.
package azuritetest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/pkg/repotest"
)

// Options choose how Azurite runs.
type Options struct {
	// TLS serves HTTPS with a certificate for 127.0.0.1 made by Start.
	TLS bool
	// OAuth turns on Azurite's `--oauth basic`: bearer tokens are accepted
	// (issuer, audience and lifetime checked, signatures not). Needs TLS.
	OAuth bool
}

// Server is a running (or killed) Azurite blob service.
type Server struct {
	// AccountURL is the emulator account's endpoint, such as
	// http://127.0.0.1:41779/devstoreaccount1.
	AccountURL string
	// Port is the port Azurite listens on; Restart reuses it.
	Port int
	// Location is Azurite's workspace; Restart reuses it, so blobs
	// survive a kill.
	Location string
	// LogFile receives Azurite's output.
	LogFile string

	opts    Options
	bin     string
	certDir string
	roots   *x509.CertPool
	proc    *os.Process
	done    chan struct{}
}

// missing skips the test when a peer is absent, unless CI is set: CI must
// never skip silently.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...) + " (run `npm ci --prefix testdata/peers`)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Start starts Azurite and stops it (SIGKILL) when the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	if o.OAuth && !o.TLS {
		t.Fatal("azuritetest: Azurite accepts OAuth only over HTTPS: set TLS too")
	}
	bin := filepath.Join(repotest.Peers(t), "node_modules", ".bin", "azurite-blob")
	if _, err := os.Stat(bin); err != nil {
		missing(t, "Azurite is not installed at %s", bin)
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing(t, "node is not on PATH, and Azurite needs it")
	}
	tmp := t.TempDir()
	s := &Server{
		Location: filepath.Join(tmp, "location"),
		LogFile:  filepath.Join(tmp, "azurite.log"),
		opts:     o,
		bin:      bin,
	}
	if err := os.Mkdir(s.Location, 0o700); err != nil {
		t.Fatal(err)
	}
	if o.TLS {
		s.certDir = filepath.Join(tmp, "tls")
		var err error
		if s.roots, err = writeCertificate(s.certDir); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

var listening = regexp.MustCompile(`successfully listens on (https?)://127\.0\.0\.1:(\d+)`)

// start runs Azurite on s.Port (0 the first time: Azurite picks a free
// port and prints it) and waits until it listens.
func (s *Server) start() error {
	args := []string{
		"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(s.Port),
		"--location", s.Location,
		// azblob sends a newer API version than Azurite knows.
		"--skipApiVersionCheck",
		"--disableTelemetry",
		"--silent",
	}
	if s.opts.TLS {
		args = append(args, "--cert", filepath.Join(s.certDir, "cert.pem"), "--key", filepath.Join(s.certDir, "key.pem"))
	}
	if s.opts.OAuth {
		args = append(args, "--oauth", "basic")
	}
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting Azurite: %w", err)
	}
	s.proc = cmd.Process
	s.done = make(chan struct{})
	found := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- [2]string{m[1], m[2]}:
				default:
				}
			}
		}
		_, _ = io.Copy(logf, out)
		_ = cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	select {
	case m := <-found:
		port, _ := strconv.Atoi(m[1])
		s.Port = port
		s.AccountURL = fmt.Sprintf("%s://127.0.0.1:%d/%s", m[0], port, azure.EmulatorAccount)
		return nil
	case <-s.done:
		return fmt.Errorf("azurite exited at start-up; its log %s:\n%s", s.LogFile, readLog(s.LogFile))
	case <-time.After(60 * time.Second):
		s.Kill()
		return fmt.Errorf("azurite did not listen within 60s; its log %s:\n%s", s.LogFile, readLog(s.LogFile))
	}
}

func readLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// Azurite's metadata databases (LokiJS) in its location: blobs, and the
// extents their bytes live in.
const (
	blobDB   = "__azurite_db_blob__.json"
	extentDB = "__azurite_db_blob_extent__.json"
)

// WaitDurable waits until Azurite's metadata on disk holds every named blob
// of container and every extent holding their bytes, so a Kill loses none
// of them. Azurite acknowledges a write while its metadata is in memory
// only and saves it every 5s (later on a loaded machine: the save is a
// timer and an asynchronous write); real Azure acknowledges a write only
// once it is durable. Tests that kill Azurite and then count blobs wait
// for this, not for a time. It fails the test after 60s.
func (s *Server) WaitDurable(t testing.TB, container string, names ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		missing, err := s.notDurable(container, names)
		if err == nil && len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("azuritetest: after 60s Azurite's saved metadata still lacks %d of %d blobs (%v) of container %s: %v",
				len(missing), len(names), missing[:min(len(missing), 5)], container, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lokiDB is the part of a saved LokiJS database WaitDurable reads.
type lokiDB struct {
	Collections []struct {
		Name string            `json:"name"`
		Data []json.RawMessage `json:"data"`
	} `json:"collections"`
}

// savedBlob is the part of a saved blob document WaitDurable reads: its
// bytes are in one extent (a blob put whole) or in one per committed block.
type savedBlob struct {
	ContainerName string `json:"containerName"`
	Name          string `json:"name"`
	Persistency   *struct {
		ID string `json:"id"`
	} `json:"persistency"`
	CommittedBlocksInOrder []struct {
		Persistency *struct {
			ID string `json:"id"`
		} `json:"persistency"`
	} `json:"committedBlocksInOrder"`
}

// notDurable returns the names whose blob document, or an extent it needs,
// is not yet in the metadata Azurite saved. LokiJS saves by writing a
// temporary file and renaming it, so each read sees one whole save.
func (s *Server) notDurable(container string, names []string) ([]string, error) {
	read := func(file, collection string) ([]json.RawMessage, error) {
		b, err := os.ReadFile(filepath.Join(s.Location, file))
		if err != nil {
			return nil, err
		}
		var db lokiDB
		if err := json.Unmarshal(b, &db); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", file, err)
		}
		for _, c := range db.Collections {
			if c.Name == collection {
				return c.Data, nil
			}
		}
		return nil, fmt.Errorf("%s has no collection %s", file, collection)
	}
	blobs, err := read(blobDB, "$BLOBS_COLLECTION$")
	if err != nil {
		return names, err
	}
	extentDocs, err := read(extentDB, "$EXTENTS_COLLECTION$")
	if err != nil {
		return names, err
	}
	extents := map[string]bool{}
	for _, raw := range extentDocs {
		var e struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return names, fmt.Errorf("decoding an extent of %s: %w", extentDB, err)
		}
		extents[e.ID] = true
	}
	saved := map[string]bool{}
	for _, raw := range blobs {
		var b savedBlob
		if err := json.Unmarshal(raw, &b); err != nil {
			return names, fmt.Errorf("decoding a blob of %s: %w", blobDB, err)
		}
		if b.ContainerName != container {
			continue
		}
		whole := b.Persistency == nil || extents[b.Persistency.ID]
		for _, blk := range b.CommittedBlocksInOrder {
			whole = whole && (blk.Persistency == nil || extents[blk.Persistency.ID])
		}
		saved[b.Name] = whole
	}
	var missing []string
	for _, n := range names {
		if !saved[n] {
			missing = append(missing, n)
		}
	}
	return missing, nil
}

// Kill stops Azurite with SIGKILL, as a crash would, and waits for it.
func (s *Server) Kill() {
	if s.proc == nil {
		return
	}
	// Azurite runs in its own process group: kill the group, so nothing
	// it started outlives it.
	_ = syscall.Kill(-s.proc.Pid, syscall.SIGKILL)
	<-s.done
	s.proc = nil
}

// Restart starts Azurite again on the same port and location after Kill.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.proc != nil {
		t.Fatal("azuritetest: Restart while Azurite runs: Kill it first")
	}
	// A port just freed by a killed listener can be taken by another
	// process in the meantime; retrying briefly covers the race with
	// our own connections' teardown.
	var err error
	for range 20 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("restarting Azurite on port %d: %v", s.Port, err)
}

// Transport is what a client must use to reach the server: nil for HTTP
// (azcore's default), else an HTTP client trusting the test certificate.
func (s *Server) Transport() policy.Transporter {
	if !s.opts.TLS {
		return nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: s.roots, MinVersion: tls.VersionTLS12}
	tr.Proxy = nil // loopback only, whatever HTTPS_PROXY says
	return &http.Client{Transport: tr}
}

// CACertFile is the PEM certificate the TLS server presents (it is its own
// CA); empty without TLS.
func (s *Server) CACertFile() string {
	if !s.opts.TLS {
		return ""
	}
	return filepath.Join(s.certDir, "cert.pem")
}

// NewStore returns a store on a new, empty container of its own: with a
// TokenCredential under OAuth, else the emulator's shared key. edit, when
// not nil, adjusts the options first.
func (s *Server) NewStore(t testing.TB, edit func(*azure.Options)) *azure.Store {
	t.Helper()
	o := azure.Options{
		AccountURL: s.AccountURL,
		Container:  "t-" + randomHex(t, 8),
		Transport:  s.Transport(),
	}
	if s.opts.OAuth {
		o.Credential = &TokenCredential{}
	} else {
		o.SharedKey = azure.EmulatorSharedKey()
	}
	if edit != nil {
		edit(&o)
	}
	st, err := azure.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := st.CreateContainer(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// writeCertificate makes a self-signed ECDSA certificate for 127.0.0.1 and
// writes cert.pem and key.pem into dir.
func writeCertificate(dir string) (*x509.CertPool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "azurite test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, nil
}

// StorageScope is the scope azblob asks a credential for.
const StorageScope = "https://storage.azure.com/.default"

// TokenCredential is an azcore.TokenCredential that mints the tokens
// Azurite's `--oauth basic` accepts: a JWT with issuer
// https://sts.windows.net/{tenant}/, the storage audience and a valid
// lifetime, signed with a key of its own (Azurite checks no signature). It
// stands where azidentity's credentials stand in production, so the store
// runs the same bearer-token path.
type TokenCredential struct {
	// Tenant is the tenant id in the issuer; empty is a fixed test GUID.
	Tenant string
	// Lifetime of each token; zero is an hour.
	Lifetime time.Duration
	// Fail, when set, is returned instead of a token.
	Fail error

	calls atomic.Int64
}

var _ azcore.TokenCredential = (*TokenCredential)(nil)

// Calls counts GetToken calls.
func (c *TokenCredential) Calls() int64 { return c.calls.Load() }

// GetToken returns a token for the storage scope and refuses any other.
func (c *TokenCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.calls.Add(1)
	if err := ctx.Err(); err != nil {
		return azcore.AccessToken{}, err
	}
	if c.Fail != nil {
		return azcore.AccessToken{}, c.Fail
	}
	if !slices.Equal(opts.Scopes, []string{StorageScope}) {
		return azcore.AccessToken{}, fmt.Errorf("test credential: asked for scopes %v, want [%s]", opts.Scopes, StorageScope)
	}
	tenant := c.Tenant
	if tenant == "" {
		tenant = "72f988bf-0000-4000-8000-000000000001"
	}
	life := c.Lifetime
	if life == 0 {
		life = time.Hour
	}
	now := time.Now()
	exp := now.Add(life)
	claims := map[string]any{
		"aud": strings.TrimSuffix(StorageScope, "/.default"),
		"iss": "https://sts.windows.net/" + tenant + "/",
		"iat": now.Unix(),
		"nbf": now.Add(-time.Minute).Unix(),
		"exp": exp.Unix(),
		"tid": tenant,
		"oid": "00000000-0000-4000-8000-00000000000a",
		"sub": "sightglass-ingest-test",
		"ver": "1.0",
	}
	tok, err := signJWT(claims)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, nil
}

// signJWT encodes claims as an HS256 JWT with a random key: well-formed,
// verifiable by nobody, which is all Azurite's basic mode needs.
func signJWT(claims map[string]any) (string, error) {
	enc := base64.RawURLEncoding
	header, err := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT"})
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	signed := enc.EncodeToString(header) + "." + enc.EncodeToString(body)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(signed))
	return signed + "." + enc.EncodeToString(mac.Sum(nil)), nil
}
