// Package config loads the agent's YAML configuration: strict decoding
// (unknown and duplicate keys are errors naming the line), defaults, then
// validation without any I/O that reports every problem at once.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"
)

// Config is the whole agent configuration.
type Config struct {
	// Site describes the building for the installer. Nothing in it ever
	// leaves the box: batches carry the opaque site id from the agent's
	// certificate instead.
	Site Site `yaml:"site"`
	// DataDir holds the buffer, the site secret and the status socket.
	// Default /var/lib/sightglass; relative paths are relative to the
	// config file.
	DataDir string `yaml:"data_dir"`
	// StatusSocket is the unix socket `sightglass-agent status` reads.
	// Default DATA_DIR/agent.sock.
	StatusSocket string `yaml:"status_socket"`
	// Network names the control and uplink NICs; see Network.
	Network Network  `yaml:"network"`
	Uplink  Uplink   `yaml:"uplink"`
	Buffer  Buffer   `yaml:"buffer"`
	Poll    Poll     `yaml:"poll"`
	Log     Log      `yaml:"log"`
	Devices []Device `yaml:"devices"`

	// path is where the config was read from, for messages.
	path string
}

// Site is the installer's description of the building.
type Site struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// Catalog is how much point metadata the agent shares with the ingest
	// (never with the archive): full (names, descriptions, units, kinds,
	// tags), tags-only (units, kinds and tags) or none. Default full.
	Catalog string `yaml:"catalog"`
}

// Catalogue policies for Site.Catalog.
const (
	CatalogFull     = "full"
	CatalogTagsOnly = "tags-only"
	CatalogNone     = "none"
)

// Uplink configures the outbound connection to the ingest.
type Uplink struct {
	// URL of the ingest, https only. Required.
	URL string `yaml:"url"`
	// CertDir holds agent.crt, agent.key and ca.crt. Default DATA_DIR/cert.
	CertDir string `yaml:"cert_dir"`
	// LocalAddress is the uplink NIC's address to dial from; empty lets the
	// kernel choose.
	LocalAddress string `yaml:"local_address"`
	// MaxInFlight bounds concurrent batch uploads. Default 4.
	MaxInFlight int `yaml:"max_in_flight"`
	// Timeout per request. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// BatchInterval is how often pending samples are sealed into a batch
	// and sent. Default 1m; a batch is sealed sooner when it reaches
	// BatchMaxSamples.
	BatchInterval time.Duration `yaml:"batch_interval"`
	// BatchMaxSamples caps the samples in one batch. Default 50000.
	BatchMaxSamples int `yaml:"batch_max_samples"`
}

// Buffer configures the on-disk store-and-forward buffer.
type Buffer struct {
	// Path of the bbolt file. Default DATA_DIR/buffer.db.
	Path string `yaml:"path"`
	// MaxBytes caps the buffer; past it the oldest data is dropped and
	// counted. Default 1GiB. Accepts 500MB, 1GiB, or a number of bytes.
	MaxBytes ByteSize `yaml:"max_bytes"`
}

// Poll configures the scheduler.
type Poll struct {
	// Jitter spreads reads by up to this fraction of their interval.
	// Default 0.1; 0 is allowed (jitter: 0).
	Jitter *float64 `yaml:"jitter"`
	// BackoffBase and BackoffMax bound the retry delay of a failing
	// device. Defaults 1s and 5m.
	BackoffBase time.Duration `yaml:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
}

// Device is one device to read.
type Device struct {
	// Name identifies the device in logs and status; it is also part of
	// each point's pseudonym, so renaming a device changes its point ids.
	Name string `yaml:"name"`
	// Driver names a registered driver, e.g. csvtrend.
	Driver string `yaml:"driver"`
	// Interval between reads. Default 1m.
	Interval time.Duration `yaml:"interval"`
	// Timeout of one read. Default: the interval, at most 30s.
	Timeout time.Duration `yaml:"timeout"`
	// Concurrency is how many reads may be in flight. Default 1.
	Concurrency int `yaml:"concurrency"`
	// Discover asks the driver for its points at start-up; points listed
	// below override what discovery found.
	Discover bool `yaml:"discover"`
	// Settings are the driver's own; see the driver's README.
	Settings yaml.Node `yaml:"settings"`
	Points   []Point   `yaml:"points"`

	// Line is where the device starts in the file.
	Line int `yaml:"-"`
	// LocalAddressFilled is true when settings.local_address was not in
	// the file and came from network.control.address.
	LocalAddressFilled bool `yaml:"-"`
}

// Point is one configured point. Keys other than the generic ones below
// are the driver's own point settings.
type Point struct {
	// Ref is the driver's reference of the point (a column, a register).
	Ref  string
	Name string
	Unit string
	// Description is the installer's longer text for the point.
	Description string
	// Kind is what sort of value the point is (analog, binary,
	// multistate, text, or a driver's finer word such as float32); empty
	// leaves it to the driver's discovery.
	Kind     string
	Interval time.Duration
	Tags     []string
	// Settings holds the remaining keys, for the driver.
	Settings *yaml.Node
	// Line is where the point starts in the file.
	Line int
}

var genericPointKeys = map[string]bool{"ref": true, "name": true, "unit": true, "description": true, "kind": true, "interval": true, "tags": true}

// UnmarshalYAML splits a point's generic keys from its driver settings,
// keeping the line numbers of both.
func (p *Point) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a point must be a mapping such as {ref: SAT}", n.Line)
	}
	p.Line = n.Line
	generic := &yaml.Node{Kind: yaml.MappingNode, Line: n.Line, Column: n.Column}
	rest := &yaml.Node{Kind: yaml.MappingNode, Line: n.Line, Column: n.Column, Tag: "!!map"}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if genericPointKeys[k.Value] {
			generic.Content = append(generic.Content, k, v)
		} else {
			rest.Content = append(rest.Content, k, v)
		}
	}
	var g struct {
		Ref         string        `yaml:"ref"`
		Name        string        `yaml:"name"`
		Unit        string        `yaml:"unit"`
		Description string        `yaml:"description"`
		Kind        string        `yaml:"kind"`
		Interval    time.Duration `yaml:"interval"`
		Tags        []string      `yaml:"tags"`
	}
	if err := generic.Load(&g, yaml.WithKnownFields()); err != nil {
		return err
	}
	p.Ref, p.Name, p.Unit, p.Interval, p.Tags = g.Ref, g.Name, g.Unit, g.Interval, g.Tags
	p.Description, p.Kind = g.Description, g.Kind
	p.Settings = rest
	return nil
}

// UnmarshalYAML records the device's line.
func (d *Device) UnmarshalYAML(n *yaml.Node) error {
	type plain Device
	var v plain
	if err := n.Load(&v, yaml.WithKnownFields()); err != nil {
		return err
	}
	*d = Device(v)
	d.Line = n.Line
	return nil
}

// ByteSize is a size in bytes that reads "512MiB", "1GB" or "1048576".
type ByteSize int64

// UnmarshalYAML parses a size with an optional unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

var sizeRE = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*$`)

// ParseByteSize parses "512MiB", "1.5GB", "100KB" or a plain number of bytes.
func ParseByteSize(s string) (ByteSize, error) {
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("size %q: want a number with an optional unit B, KB, MB, GB, TB, KiB, MiB, GiB or TiB", s)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	mult := map[string]float64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m[2]]
	return ByteSize(f * mult), nil
}

// Load reads, decodes, defaults and validates the configuration at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading agent config: %w", err)
	}
	c, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Parse decodes data strictly, applies defaults and validates. path is used
// in messages and to resolve relative paths; it may be empty.
func Parse(data []byte, path string) (*Config, error) {
	name := path
	if name == "" {
		name = "config"
	}
	var c Config
	dec, err := yaml.NewLoader(bytes.NewReader(data), yaml.WithKnownFields())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := dec.Load(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty: see configs/agent.example.yaml", name)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c.path = path
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &c, nil
}

func (c *Config) applyDefaults() {
	base := "."
	if c.path != "" {
		base = filepath.Dir(c.path)
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	if c.Site.Catalog == "" {
		c.Site.Catalog = CatalogFull
	}
	if c.DataDir == "" {
		c.DataDir = "/var/lib/sightglass"
	}
	c.DataDir = abs(c.DataDir)
	if c.StatusSocket == "" {
		c.StatusSocket = filepath.Join(c.DataDir, "agent.sock")
	}
	c.StatusSocket = abs(c.StatusSocket)
	if c.Uplink.CertDir == "" {
		c.Uplink.CertDir = filepath.Join(c.DataDir, "cert")
	}
	c.Uplink.CertDir = abs(c.Uplink.CertDir)
	if c.Uplink.MaxInFlight == 0 {
		c.Uplink.MaxInFlight = 4
	}
	if c.Uplink.Timeout == 0 {
		c.Uplink.Timeout = 30 * time.Second
	}
	if c.Uplink.BatchInterval == 0 {
		c.Uplink.BatchInterval = time.Minute
	}
	if c.Uplink.BatchMaxSamples == 0 {
		c.Uplink.BatchMaxSamples = 50000
	}
	if c.Buffer.Path == "" {
		c.Buffer.Path = filepath.Join(c.DataDir, "buffer.db")
	}
	c.Buffer.Path = abs(c.Buffer.Path)
	if c.Buffer.MaxBytes == 0 {
		c.Buffer.MaxBytes = 1 << 30
	}
	if c.Poll.Jitter == nil {
		j := 0.1
		c.Poll.Jitter = &j
	}
	if c.Poll.BackoffBase == 0 {
		c.Poll.BackoffBase = time.Second
	}
	if c.Poll.BackoffMax == 0 {
		c.Poll.BackoffMax = 5 * time.Minute
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	c.fillLocalAddresses()
	for i := range c.Devices {
		d := &c.Devices[i]
		if d.Interval == 0 {
			d.Interval = time.Minute
		}
		if d.Timeout == 0 {
			d.Timeout = min(d.Interval, 30*time.Second)
		}
		if d.Concurrency == 0 {
			d.Concurrency = 1
		}
		for j := range d.Points {
			if d.Points[j].Name == "" {
				d.Points[j].Name = d.Points[j].Ref
			}
		}
	}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate checks the configuration without I/O and reports every problem,
// each naming its field and, for devices and points, its line.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	switch c.Site.Catalog {
	case CatalogFull, CatalogTagsOnly, CatalogNone:
	default:
		bad("site.catalog: %q is not a policy: want %s, %s or %s", c.Site.Catalog, CatalogFull, CatalogTagsOnly, CatalogNone)
	}
	switch {
	case c.Uplink.URL == "":
		bad("uplink.url: required: the ingest's address, e.g. https://ingest.example.com:8443")
	case !strings.HasPrefix(c.Uplink.URL, "https://"):
		bad("uplink.url: %q must start with https:// (the uplink is always mTLS)", c.Uplink.URL)
	}
	if c.Uplink.MaxInFlight < 1 || c.Uplink.MaxInFlight > 64 {
		bad("uplink.max_in_flight: %d is out of range 1..64", c.Uplink.MaxInFlight)
	}
	if c.Uplink.Timeout < time.Second {
		bad("uplink.timeout: %s is too short (at least 1s)", c.Uplink.Timeout)
	}
	if c.Uplink.BatchInterval < 100*time.Millisecond {
		bad("uplink.batch_interval: %s is too short (at least 100ms)", c.Uplink.BatchInterval)
	}
	if c.Uplink.BatchMaxSamples < 1 || c.Uplink.BatchMaxSamples > 1_000_000 {
		bad("uplink.batch_max_samples: %d is out of range 1..1000000", c.Uplink.BatchMaxSamples)
	}
	if c.Buffer.MaxBytes < 1<<20 {
		bad("buffer.max_bytes: %d bytes is too small (at least 1MiB)", c.Buffer.MaxBytes)
	}
	if j := *c.Poll.Jitter; j < 0 || j > 1 {
		bad("poll.jitter: %g is out of range 0..1 (a fraction of the interval)", j)
	}
	if c.Poll.BackoffBase <= 0 || c.Poll.BackoffMax < c.Poll.BackoffBase {
		bad("poll: backoff_base (%s) must be positive and at most backoff_max (%s)", c.Poll.BackoffBase, c.Poll.BackoffMax)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level: %q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format: %q: want text or json", c.Log.Format)
	}
	if len(c.Devices) == 0 {
		bad("devices: none configured: add at least one device (see configs/agent.example.yaml)")
	}
	seen := map[string]int{}
	for i, d := range c.Devices {
		where := fmt.Sprintf("devices[%d] (line %d)", i, d.Line)
		if d.Name != "" {
			where = fmt.Sprintf("device %q (line %d)", d.Name, d.Line)
		}
		switch {
		case d.Name == "":
			bad("%s: name: required", where)
		case !nameRE.MatchString(d.Name):
			bad("%s: name: use letters, digits, '.', '_' and '-' (at most 64)", where)
		default:
			if prev, dup := seen[d.Name]; dup {
				bad("%s: name: already used by the device at line %d", where, prev)
			}
			seen[d.Name] = d.Line
		}
		if d.Driver == "" {
			bad("%s: driver: required", where)
		}
		if d.Interval < 100*time.Millisecond {
			bad("%s: interval: %s is too short (at least 100ms)", where, d.Interval)
		}
		if d.Timeout <= 0 || d.Timeout > d.Interval {
			bad("%s: timeout: %s must be positive and at most the interval %s", where, d.Timeout, d.Interval)
		}
		if d.Concurrency < 1 || d.Concurrency > 16 {
			bad("%s: concurrency: %d is out of range 1..16", where, d.Concurrency)
		}
		if len(d.Points) == 0 && !d.Discover {
			bad("%s: points: none listed: list points or set discover: true", where)
		}
		refs := map[string]int{}
		for _, p := range d.Points {
			pw := fmt.Sprintf("%s: point %q (line %d)", where, p.Ref, p.Line)
			if p.Ref == "" {
				bad("%s: point at line %d: ref: required", where, p.Line)
				continue
			}
			if prev, dup := refs[p.Ref]; dup {
				bad("%s: ref: already listed at line %d", pw, prev)
			}
			refs[p.Ref] = p.Line
			if p.Interval != 0 && p.Interval < 100*time.Millisecond {
				bad("%s: interval: %s is too short (at least 100ms)", pw, p.Interval)
			}
		}
	}
	errs = append(errs, c.validateNetwork()...)
	errs = append(errs, c.validateBACnetShared()...)
	return errors.Join(errs...)
}

// Path returns the file the config was loaded from.
func (c *Config) Path() string { return c.path }
