package opcua

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// Settings are an OPC UA device's settings. Zero values mean the default
// given on each field; see README.md.
type Settings struct {
	// Endpoint is the server's URL, opc.tcp://host:port[/path]. Required.
	Endpoint string `yaml:"endpoint"`
	// LocalAddress is the control NIC's IP address to dial from, so the
	// connection can never leave by the uplink. Empty lets the kernel
	// choose by its routes.
	LocalAddress string `yaml:"local_address"`
	// SecurityPolicy is Basic256Sha256, Aes128_Sha256_RsaOaep,
	// Aes256_Sha256_RsaPss or None. Default Basic256Sha256.
	SecurityPolicy string `yaml:"security_policy"`
	// SecurityMode is SignAndEncrypt, Sign or None. Default SignAndEncrypt;
	// None only with security_policy None, and both must be said.
	SecurityMode string `yaml:"security_mode"`
	// PKIDir holds the agent's application-instance certificate and key
	// (generated on first use) and the pinned server certificates. Default
	// <data_dir>/opcua.
	PKIDir string `yaml:"pki_dir"`
	// ServerCertificate is a DER or PEM file with the server's certificate,
	// given by the installer. Without it the first certificate seen is
	// pinned; either way a different one stops the connection.
	ServerCertificate string `yaml:"server_certificate"`
	// Auth is how the agent's user signs in. Default anonymous.
	Auth Auth `yaml:"auth"`
	// MaxNodesPerRead caps the nodes in one Read. Default: the server's
	// OperationLimits.MaxNodesPerRead, or 1000 when it sets none; a
	// configured value above the server's is lowered to it.
	MaxNodesPerRead int `yaml:"max_nodes_per_read"`
	// RequestTimeout bounds one request. Default 10s.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// SessionTimeout is the session lifetime the agent asks for. Default 10m.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// ReconnectMin and ReconnectMax bound the wait between connection
	// attempts, which doubles per failure with jitter. Defaults 1s and 2m.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// PublishingInterval is the subscription's publishing interval, for
	// points read by subscription. Default 1s.
	PublishingInterval time.Duration `yaml:"publishing_interval"`
	// BackfillMax is how far back history is read: the window read on the
	// driver's first session for points with history: true, and the
	// longest gap filled after an outage. Default 1h.
	BackfillMax time.Duration `yaml:"backfill_max"`
	// BrowseStart, BrowseDepth and BrowseMax bound what a device with
	// discover: true browses: the start node (default Objects, i=85), the
	// levels below it (default 6) and the variables at most (default 5000).
	BrowseStart string `yaml:"browse_start"`
	BrowseDepth int    `yaml:"browse_depth"`
	BrowseMax   int    `yaml:"browse_max"`
}

// Auth is the user identity of the session.
type Auth struct {
	// Type is anonymous, username or certificate. Default anonymous.
	Type string `yaml:"type"`
	// Username and Password (or PasswordFile, a file holding it) for username.
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// Certificate and PrivateKey are PEM or DER files of the user
	// certificate, for certificate.
	Certificate string `yaml:"certificate"`
	PrivateKey  string `yaml:"private_key"`
}

// PointSettings are the OPC UA keys of a point. The point's ref is its
// node id, e.g. ns=2;s=AHU1.SupplyAirTemp.
type PointSettings struct {
	// Mode is poll (a Read each interval) or subscribe (a monitored item
	// whose latest value each Read returns). Default poll.
	Mode string `yaml:"mode"`
	// SamplingInterval is the monitored item's sampling interval. Default:
	// the point's interval.
	SamplingInterval time.Duration `yaml:"sampling_interval"`
	// Deadband filters changes smaller than this; DeadbandType is absolute
	// (in the value's unit) or percent (of the EURange). Default none.
	Deadband     float64 `yaml:"deadband"`
	DeadbandType string  `yaml:"deadband_type"`
	// QueueSize is the monitored item's queue. Default 1.
	QueueSize uint32 `yaml:"queue_size"`
	// History asks for the server's history of this point: the last
	// backfill_max when the driver starts, and the gap after an outage. A
	// subscribed point's gap after a reconnect is read whenever the server
	// historizes the node, without it.
	History bool `yaml:"history"`
}

// Defaults of the settings.
const (
	DefaultRequestTimeout     = 10 * time.Second
	DefaultSessionTimeout     = 10 * time.Minute
	DefaultReconnectMin       = time.Second
	DefaultReconnectMax       = 2 * time.Minute
	DefaultPublishingInterval = time.Second
	DefaultBackfillMax        = time.Hour
	// DefaultMaxNodesPerRead is used when the server states no limit.
	DefaultMaxNodesPerRead = 1000
)

// policies maps the policy names the settings accept to their URIs.
var policies = map[string]string{
	"None":                  ua.SecurityPolicyURINone,
	"Basic256Sha256":        ua.SecurityPolicyURIBasic256Sha256,
	"Aes128_Sha256_RsaOaep": ua.SecurityPolicyURIAes128Sha256RsaOaep,
	"Aes256_Sha256_RsaPss":  ua.SecurityPolicyURIAes256Sha256RsaPss,
}

var modes = map[string]ua.MessageSecurityMode{
	"None":           ua.MessageSecurityModeNone,
	"Sign":           ua.MessageSecurityModeSign,
	"SignAndEncrypt": ua.MessageSecurityModeSignAndEncrypt,
}

// config is the validated form of Settings.
type config struct {
	endpoint       string
	localAddr      net.IP // nil: the kernel chooses
	policyName     string
	policyURI      string
	mode           ua.MessageSecurityMode
	pkiDir         string
	serverCertFile string
	auth           Auth
	authType       ua.UserTokenType
	password       string
	maxNodes       int
	requestTimeout time.Duration
	sessionTimeout time.Duration
	reconnectMin   time.Duration
	reconnectMax   time.Duration
	publishing     time.Duration
	backfillMax    time.Duration
	browse         BrowseLimits
}

// secure reports whether the channel signs (and maybe encrypts).
func (c config) secure() bool { return c.mode != ua.MessageSecurityModeNone }

// parseSettings decodes and validates a device's settings, reporting every
// problem at once. It does no I/O.
func parseSettings(s driver.Settings, dataDir string) (config, error) {
	var raw Settings
	if s == nil {
		return config{}, errors.New("settings: missing: opcua needs at least settings.endpoint")
	}
	if err := s.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return config{}, fmt.Errorf("decoding opcua settings: %w", err)
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	c := config{
		endpoint:       strings.TrimSpace(raw.Endpoint),
		pkiDir:         raw.PKIDir,
		serverCertFile: raw.ServerCertificate,
		auth:           raw.Auth,
		maxNodes:       raw.MaxNodesPerRead,
		requestTimeout: orDefault(raw.RequestTimeout, DefaultRequestTimeout),
		sessionTimeout: orDefault(raw.SessionTimeout, DefaultSessionTimeout),
		reconnectMin:   orDefault(raw.ReconnectMin, DefaultReconnectMin),
		reconnectMax:   orDefault(raw.ReconnectMax, DefaultReconnectMax),
		publishing:     orDefault(raw.PublishingInterval, DefaultPublishingInterval),
		backfillMax:    orDefault(raw.BackfillMax, DefaultBackfillMax),
		browse:         BrowseLimits{Start: raw.BrowseStart, Depth: raw.BrowseDepth, Max: raw.BrowseMax},
	}
	if a := strings.TrimSpace(raw.LocalAddress); a != "" {
		if c.localAddr = net.ParseIP(a); c.localAddr == nil {
			bad("settings.local_address: %q is not an IP address: give the control NIC's address, without a port", a)
		}
	}
	if c.endpoint == "" {
		bad("settings.endpoint: required: the server's opc.tcp://host:port URL")
	} else if u, err := url.Parse(c.endpoint); err != nil || u.Scheme != "opc.tcp" || u.Host == "" {
		bad("settings.endpoint: %q is not an opc.tcp://host:port URL", c.endpoint)
	}
	c.policyName = raw.SecurityPolicy
	if c.policyName == "" {
		c.policyName = "Basic256Sha256"
	}
	uri, ok := policies[c.policyName]
	if !ok {
		bad("settings.security_policy: %q: want Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss or None", c.policyName)
	}
	c.policyURI = uri
	modeName := raw.SecurityMode
	if modeName == "" {
		modeName = "SignAndEncrypt"
		if raw.SecurityPolicy == "None" {
			// None must be chosen twice, so a typo cannot turn security off.
			bad("settings.security_mode: security_policy None needs security_mode: None too, said explicitly")
		}
	}
	mode, ok := modes[modeName]
	if !ok {
		bad("settings.security_mode: %q: want SignAndEncrypt, Sign or None", modeName)
	}
	c.mode = mode
	if ok && uri != "" && (mode == ua.MessageSecurityModeNone) != (uri == ua.SecurityPolicyURINone) {
		bad("settings.security_mode: %s with security_policy %s: None goes with None only", modeName, c.policyName)
	}
	if c.pkiDir == "" && dataDir != "" {
		c.pkiDir = filepath.Join(dataDir, "opcua")
	}
	if c.pkiDir == "" {
		bad("settings.pki_dir: required when the agent's data_dir is not known: where the agent keeps its OPC UA certificate")
	}
	switch c.auth.Type {
	case "", "anonymous":
		c.authType = ua.UserTokenTypeAnonymous
		if c.auth.Username != "" || c.auth.Password != "" || c.auth.PasswordFile != "" || c.auth.Certificate != "" || c.auth.PrivateKey != "" {
			bad("settings.auth: credentials given but auth.type is anonymous: set auth.type to username or certificate")
		}
	case "username":
		c.authType = ua.UserTokenTypeUserName
		if c.auth.Username == "" {
			bad("settings.auth.username: required for auth.type username")
		}
		switch {
		case c.auth.Password != "" && c.auth.PasswordFile != "":
			bad("settings.auth: give password or password_file, not both")
		case c.auth.PasswordFile != "":
			// Read at connect: the file lives on the box the agent runs
			// on, not where the config is validated.
		default:
			c.password = c.auth.Password
		}
		if c.mode == ua.MessageSecurityModeNone {
			bad("settings.auth: a password over security_mode None would cross the network in clear: use Sign or SignAndEncrypt")
		}
	case "certificate":
		c.authType = ua.UserTokenTypeCertificate
		if c.auth.Certificate == "" || c.auth.PrivateKey == "" {
			bad("settings.auth: certificate and private_key are required for auth.type certificate")
		}
	default:
		bad("settings.auth.type: %q: want anonymous, username or certificate", c.auth.Type)
	}
	if c.maxNodes < 0 {
		bad("settings.max_nodes_per_read: %d is negative", c.maxNodes)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"request_timeout", c.requestTimeout}, {"session_timeout", c.sessionTimeout}, {"reconnect_min", c.reconnectMin}, {"reconnect_max", c.reconnectMax}, {"publishing_interval", c.publishing}, {"backfill_max", c.backfillMax}} {
		if d.v < 0 {
			bad("settings.%s: %s is negative", d.name, d.v)
		}
	}
	if raw.BrowseStart != "" {
		if _, err := ua.ParseNodeID(raw.BrowseStart); err != nil || !strings.Contains(raw.BrowseStart, "=") {
			bad("settings.browse_start: %q is not a node id (want e.g. ns=2;s=Building or i=85)", raw.BrowseStart)
		}
	}
	if raw.BrowseDepth < 0 || raw.BrowseMax < 0 {
		bad("settings.browse_depth and browse_max: must not be negative")
	}
	if c.reconnectMax < c.reconnectMin {
		bad("settings.reconnect_max: %s is below reconnect_min %s", c.reconnectMax, c.reconnectMin)
	}
	return c, errors.Join(errs...)
}

func orDefault(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// pointConfig is a point's validated form.
type pointConfig struct {
	node      *ua.NodeID
	subscribe bool
	sampling  time.Duration
	deadband  float64
	dbType    ua.DeadbandType
	queue     uint32
	history   bool
}

// parsePoint validates a point: its ref must be a node id.
func parsePoint(p driver.Point) (pointConfig, error) {
	id, err := ua.ParseNodeID(p.Ref)
	if err == nil && !strings.Contains(p.Ref, "=") {
		// gopcua reads a bare name as a string id in namespace 0, which
		// is never what an installer meant.
		err = errors.New("no identifier type (i=, s=, g=, b=)")
	}
	if err != nil {
		return pointConfig{}, fmt.Errorf("point %q: ref is not an OPC UA node id (want e.g. ns=2;s=AHU1.SAT or i=2258): %w", p.Ref, err)
	}
	pc := pointConfig{node: id, queue: 1, sampling: p.Interval}
	if p.Settings == nil {
		return pc, nil
	}
	var raw PointSettings
	if err := p.Settings.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return pointConfig{}, fmt.Errorf("point %q: %w", p.Ref, err)
	}
	var errs []error
	switch raw.Mode {
	case "", "poll":
	case "subscribe":
		pc.subscribe = true
	default:
		errs = append(errs, fmt.Errorf("point %q: mode: %q: want poll or subscribe", p.Ref, raw.Mode))
	}
	if raw.SamplingInterval < 0 {
		errs = append(errs, fmt.Errorf("point %q: sampling_interval: %s is negative", p.Ref, raw.SamplingInterval))
	}
	if raw.SamplingInterval > 0 {
		pc.sampling = raw.SamplingInterval
	}
	if raw.Deadband < 0 || math.IsNaN(raw.Deadband) || math.IsInf(raw.Deadband, 0) {
		errs = append(errs, fmt.Errorf("point %q: deadband: want a finite number ≥ 0", p.Ref))
	}
	pc.deadband = raw.Deadband
	switch raw.DeadbandType {
	case "":
		if raw.Deadband > 0 {
			pc.dbType = ua.DeadbandTypeAbsolute
		}
	case "absolute":
		pc.dbType = ua.DeadbandTypeAbsolute
	case "percent":
		pc.dbType = ua.DeadbandTypePercent
		if raw.Deadband > 100 {
			errs = append(errs, fmt.Errorf("point %q: deadband: %g%% is above 100", p.Ref, raw.Deadband))
		}
	default:
		errs = append(errs, fmt.Errorf("point %q: deadband_type: %q: want absolute or percent", p.Ref, raw.DeadbandType))
	}
	if raw.QueueSize > 0 {
		pc.queue = raw.QueueSize
	}
	if !pc.subscribe && (raw.SamplingInterval != 0 || raw.Deadband != 0 || raw.QueueSize != 0) {
		errs = append(errs, fmt.Errorf("point %q: sampling_interval, deadband and queue_size need mode: subscribe", p.Ref))
	}
	pc.history = raw.History
	return pc, errors.Join(errs...)
}
