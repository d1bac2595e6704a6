// Package config loads the ingest service's configuration: strict YAML
// (unknown and duplicate keys are errors that name the line), defaults for
// what is left out, and a validation that does no I/O and reports every
// problem at once, each naming its field and line.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.yaml.in/yaml/v4"
)

// Defaults for the fields a file may leave out.
const (
	DefaultListen        = "127.0.0.1:8443"
	DefaultMaxBatchBytes = 8 << 20
	DefaultMaxSkew       = 15 * time.Minute
	DefaultMaxAge        = 10 * 365 * 24 * time.Hour
	DefaultLogLevel      = "info"
	DefaultAgentValidity = 7 * 24 * time.Hour
	DefaultCatalogPolicy = "full"
)

// Bounds on agent_validity: renewal runs at two thirds of it, so an hour is
// the least that leaves room for retries; past 90 days a lost box keeps
// working too long.
const (
	minAgentValidity = time.Hour
	// MaxAgentValidity is the longest life of an agent certificate, from
	// the config's agent_validity or `agents issue --validity`.
	MaxAgentValidity = 90 * 24 * time.Hour
)

// Store kinds: a local directory (the embedded default) or an Azure Blob
// Storage container.
const (
	StoreKindDir   = "dir"
	StoreKindAzure = "azure"
)

// Bounds on max_batch_bytes: below the lower one no real batch fits, above
// the upper one a few concurrent uploads could exhaust the ingest's memory,
// since a batch is held whole while it is validated.
const (
	minBatchBytes = 1 << 10
	maxBatchBytes = 256 << 20
)

//go:embed default.yaml
var defaultYAML []byte

// Config is the ingest service's configuration.
type Config struct {
	// Listen is the host:port agents connect to (TLS with client
	// certificates). Port 0 picks a free port.
	Listen string `yaml:"listen"`
	// InternalListen is the host:port of the plain-HTTP health endpoints;
	// empty disables them.
	InternalListen string `yaml:"internal_listen"`
	// CADir is the directory made by `sightglass-ingest ca init`.
	CADir string `yaml:"ca_dir"`
	// Store is where accepted batches are archived.
	Store Store `yaml:"store"`
	// MaxBatchBytes caps a batch body; larger bodies are refused with 413.
	MaxBatchBytes int64 `yaml:"max_batch_bytes"`
	// MaxSkew is how far after the ingest's clock a sample time may be.
	MaxSkew time.Duration `yaml:"max_skew"`
	// MaxAge is how far before the ingest's clock a sample time may be.
	MaxAge time.Duration `yaml:"max_age"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// Database is the relational store (SQLite file): the agent registry,
	// enrollment tokens, revocations, the catalogue and the audit log.
	Database string `yaml:"database"`
	// AgentValidity is the lifetime of agent certificates issued at
	// enrollment and renewal. Agents renew at about two thirds of it.
	AgentValidity time.Duration `yaml:"agent_validity"`
	// CatalogPolicy caps the point metadata kept: full, tags-only or none.
	CatalogPolicy string `yaml:"catalog_policy"`
	// WebListen is the host:port of the dashboard (HTTPS only); empty
	// disables it.
	WebListen string `yaml:"web_listen"`
	// WebHTTPListen, when set, answers plain HTTP there with a permanent
	// redirect to the dashboard, and nothing else.
	WebHTTPListen string `yaml:"web_http_listen"`
	// WebCertFile and WebKeyFile are the dashboard's certificate chain and
	// key (PEM). Empty: the server certificate in ca_dir, which browsers
	// trust only once the CA is installed; use a public one in production.
	WebCertFile string `yaml:"web_cert_file"`
	WebKeyFile  string `yaml:"web_key_file"`
	// WebTrustedProxies are the load balancers (addresses or CIDR
	// prefixes) whose X-Forwarded-For the dashboard believes.
	WebTrustedProxies []string `yaml:"web_trusted_proxies"`
	// WebTOTPKeyFile is the key file (32 random bytes, mode 0600) that
	// seals the dashboard users' TOTP secrets in the database; made on
	// first start when missing. Empty: totp.key in ca_dir. Keep it out of
	// the database's backups and back it up on its own.
	WebTOTPKeyFile string `yaml:"web_totp_key_file"`

	// source names the file in errors; lines maps a field path such as
	// "store.dir" to the line it was set on, so validation can point at it.
	source string
	lines  map[string]int
}

// Store selects and configures the blob store.
type Store struct {
	// Kind is "dir" or "azure".
	Kind string `yaml:"kind"`
	// Dir is the archive's root directory, for kind dir.
	Dir string `yaml:"dir"`
	// Azure configures kind azure.
	Azure Azure `yaml:"azure"`
}

// Azure configures an archive in an Azure Blob Storage container. Auth
// chooses how the ingest signs in; each mode takes only its own fields
// (see ingest/blob/azure/README.md).
type Azure struct {
	// AccountURL is the account's blob endpoint, such as
	// https://myaccount.blob.core.windows.net (no SAS token).
	AccountURL string `yaml:"account_url"`
	// Container holds the archive; it must exist.
	Container string `yaml:"container"`
	// Auth is client-certificate, managed-identity, workload-identity or
	// shared-key-emulator (a local emulator on loopback only).
	Auth string `yaml:"auth"`
	// TenantID is the Entra ID tenant: required for client-certificate,
	// optional for workload-identity (default AZURE_TENANT_ID).
	TenantID string `yaml:"tenant_id"`
	// ClientID is the app's client id: required for client-certificate;
	// for managed-identity a user-assigned identity (empty: the system-
	// assigned one); for workload-identity optional (AZURE_CLIENT_ID).
	ClientID string `yaml:"client_id"`
	// CertificateFile is the service principal's certificate with its RSA
	// key (PEM, or PKCS#12), for client-certificate.
	CertificateFile string `yaml:"certificate_file"`
	// CertificatePasswordFile holds the PKCS#12 file's password, if any.
	CertificatePasswordFile string `yaml:"certificate_password_file"`
	// TokenFile is the projected service account token, for
	// workload-identity (default AZURE_FEDERATED_TOKEN_FILE).
	TokenFile string `yaml:"token_file"`
	// TryTimeout bounds one HTTP try to the service; zero is the store's
	// default (15s), enough for the default 8 MiB batches.
	TryTimeout time.Duration `yaml:"try_timeout"`
}

// FieldError is one validation problem; Validate joins them with errors.Join.
type FieldError struct {
	Source  string // the file, when known
	Line    int    // 0 when the field was not in the file
	Field   string // the field's path, such as "store.dir"
	Problem string // what is wrong and what to do
}

func (e *FieldError) Error() string {
	var where string
	switch {
	case e.Source != "" && e.Line > 0:
		where = fmt.Sprintf("%s:%d: ", e.Source, e.Line)
	case e.Source != "":
		where = e.Source + ": "
	case e.Line > 0:
		where = fmt.Sprintf("line %d: ", e.Line)
	}
	return where + e.Field + ": " + e.Problem
}

// Defaults returns a Config holding every default. Paths (ca_dir,
// store.dir) have no default outside the built-in configuration.
func Defaults() Config {
	return Config{
		Listen:        DefaultListen,
		Store:         Store{Kind: StoreKindDir},
		MaxBatchBytes: DefaultMaxBatchBytes,
		MaxSkew:       DefaultMaxSkew,
		MaxAge:        DefaultMaxAge,
		LogLevel:      DefaultLogLevel,
		AgentValidity: DefaultAgentValidity,
		CatalogPolicy: DefaultCatalogPolicy,
	}
}

// DefaultYAML returns the built-in configuration file, for users to copy.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Default returns the built-in configuration with its relative paths
// resolved against dataDir.
func Default(dataDir string) (*Config, error) {
	return Parse(defaultYAML, "built-in config", dataDir)
}

// LoadFile reads and validates the configuration file at path. Relative
// paths in it are resolved against the file's directory, so the service
// finds its data whatever directory it is started from.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(data, path, filepath.Dir(path))
}

// Parse decodes data strictly over the defaults, resolves relative paths
// against baseDir (when not empty) and validates the result. source names
// the data in errors. An empty document is all defaults.
func Parse(data []byte, source, baseDir string) (*Config, error) {
	c := Defaults()
	c.source = source
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parsing config %s: %w", source, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parsing config %s: it holds more than one YAML document: keep only one", source)
	}
	c.lines = fieldLines(data)
	if baseDir != "" {
		c.CADir = resolve(baseDir, c.CADir)
		c.Store.Dir = resolve(baseDir, c.Store.Dir)
		c.Store.Azure.CertificateFile = resolve(baseDir, c.Store.Azure.CertificateFile)
		c.Store.Azure.CertificatePasswordFile = resolve(baseDir, c.Store.Azure.CertificatePasswordFile)
		c.Store.Azure.TokenFile = resolve(baseDir, c.Store.Azure.TokenFile)
		c.Database = resolve(baseDir, c.Database)
		c.WebCertFile = resolve(baseDir, c.WebCertFile)
		c.WebKeyFile = resolve(baseDir, c.WebKeyFile)
		c.WebTOTPKeyFile = resolve(baseDir, c.WebTOTPKeyFile)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func resolve(base, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

// fieldLines maps "key" and "key.subkey" to their lines. The data already
// decoded without error, so a failure here only costs the line numbers.
func fieldLines(data []byte) map[string]int {
	lines := map[string]int{}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return lines
	}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := prefix + n.Content[i].Value
			lines[key] = n.Content[i].Line
			walk(n.Content[i+1], key+".")
		}
	}
	walk(doc.Content[0], "")
	return lines
}

// Validate checks c without any I/O and returns every problem found,
// joined with errors.Join; each is a *FieldError.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{
			Source: c.source, Line: c.lines[field], Field: field,
			Problem: fmt.Sprintf(format, args...),
		})
	}
	if err := checkHostPort(c.Listen); err != nil {
		bad("listen", "%v: want host:port, such as %s", err, DefaultListen)
	}
	if c.InternalListen != "" {
		if err := checkHostPort(c.InternalListen); err != nil {
			bad("internal_listen", "%v: want host:port, such as 127.0.0.1:9090, or leave it empty to disable it", err)
		} else if c.InternalListen == c.Listen && !hasPortZero(c.Listen) {
			bad("internal_listen", "is the same address as listen (%s): give it its own port", c.Listen)
		}
	}
	if c.CADir == "" {
		bad("ca_dir", "is empty: set it to the directory made by `sightglass-ingest ca init`")
	}
	switch c.Store.Kind {
	case StoreKindDir:
		if c.Store.Dir == "" {
			bad("store.dir", "is empty: set it to the directory that holds the archive")
		}
		if c.Store.Azure != (Azure{}) {
			bad("store.azure", "is set but store.kind is %q: set store.kind to %q or remove store.azure", StoreKindDir, StoreKindAzure)
		}
	case StoreKindAzure:
		if c.Store.Dir != "" {
			bad("store.dir", "is set but store.kind is %q: remove it (the archive is the container)", StoreKindAzure)
		}
		errs = append(errs, c.validateAzure()...)
	case "":
		bad("store.kind", "is empty: set it to %q or %q", StoreKindDir, StoreKindAzure)
	default:
		bad("store.kind", "%q is not a store kind: want %q or %q", c.Store.Kind, StoreKindDir, StoreKindAzure)
	}
	if c.MaxBatchBytes < minBatchBytes || c.MaxBatchBytes > maxBatchBytes {
		bad("max_batch_bytes", "%d is out of range: want %d to %d (default %d)",
			c.MaxBatchBytes, minBatchBytes, maxBatchBytes, DefaultMaxBatchBytes)
	}
	if c.MaxSkew <= 0 {
		bad("max_skew", "%v must be positive: no two clocks agree exactly; want a duration such as 15m", c.MaxSkew)
	}
	if c.MaxAge <= 0 {
		bad("max_age", "%v must be positive: want a duration such as 87600h (10 years)", c.MaxAge)
	}
	if c.Database == "" {
		bad("database", "is empty: set it to the SQLite file that holds the agent registry and audit log, such as /var/lib/sightglass-ingest/ingest.db")
	}
	if c.AgentValidity < minAgentValidity || c.AgentValidity > MaxAgentValidity {
		bad("agent_validity", "%v is out of range: want %v to %v (default %v)", c.AgentValidity, minAgentValidity, MaxAgentValidity, DefaultAgentValidity)
	}
	errs = append(errs, c.validateWeb()...)
	switch c.CatalogPolicy {
	case "full", "tags-only", "none":
	default:
		bad("catalog_policy", "%q is not a policy: want full, tags-only or none", c.CatalogPolicy)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad("log_level", "%q is not a level: want debug, info, warn or error", c.LogLevel)
	}
	return errors.Join(errs...)
}

// Level returns the log level; call it on a validated Config (an invalid
// level reads as info).
func (c *Config) Level() slog.Level {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return slog.LevelInfo
	}
	return lvl
}

func checkHostPort(addr string) error {
	if addr == "" {
		return errors.New("is empty")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("%q has no valid port number", addr)
	}
	return nil
}

func hasPortZero(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}
