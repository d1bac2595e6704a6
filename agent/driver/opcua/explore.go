package opcua

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// ExploreOptions configure Explore.
type ExploreOptions struct {
	// Settings are the device settings to connect with, as a device
	// would have them (endpoint, security, auth, pki_dir).
	Settings Settings
	// DataDir is the agent's data directory, for the default pki_dir.
	DataDir string
	// Limits bound the browse.
	Limits BrowseLimits
	// Logger receives warnings; nil discards them.
	Logger *slog.Logger
	// Progress, if set, is told how many variables were found so far.
	Progress func(found int)
}

// Endpoint is one endpoint a server offers.
type Endpoint struct {
	URL            string   `json:"url"`
	SecurityPolicy string   `json:"security_policy"`
	SecurityMode   string   `json:"security_mode"`
	SecurityLevel  uint8    `json:"security_level"`
	UserTokens     []string `json:"user_tokens"`
}

// Report is what Explore found.
type Report struct {
	Endpoint  string     `json:"endpoint"`
	Endpoints []Endpoint `json:"endpoints"`
	Nodes     []Node     `json:"nodes"`
	// Truncated says the browse stopped at Limits.Max.
	Truncated bool `json:"truncated"`
}

// settingsValue hands already-decoded Settings to parseSettings.
type settingsValue Settings

func (s settingsValue) Decode(v any) error {
	p, ok := v.(*Settings)
	if !ok {
		return fmt.Errorf("opcua settings: cannot decode into %T", v)
	}
	*p = Settings(s)
	return nil
}

// Explore lists the endpoints and security policies a server offers, then
// opens a session with the given settings and browses from Limits.Start.
// Every request goes through the read-only guard.
func Explore(ctx context.Context, o ExploreOptions) (*Report, error) {
	d, err := newDriver(driver.Device{Name: "discover", Settings: settingsValue(o.Settings), DataDir: o.DataDir, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	defer d.Close()
	eps, err := getEndpoints(ctx, d.g, d.cfg.endpoint, d.cfg.localAddr, d.cfg.requestTimeout)
	if err != nil {
		return nil, err
	}
	r := &Report{Endpoint: d.cfg.endpoint}
	for _, ep := range eps {
		e := Endpoint{URL: ep.EndpointURL, SecurityPolicy: policyName(ep.SecurityPolicyURI), SecurityMode: strings.TrimPrefix(ep.SecurityMode.String(), "MessageSecurityMode"), SecurityLevel: ep.SecurityLevel}
		for _, t := range ep.UserIdentityTokens {
			e.UserTokens = append(e.UserTokens, strings.TrimPrefix(t.TokenType.String(), "UserTokenType"))
		}
		r.Endpoints = append(r.Endpoints, e)
	}
	sort.SliceStable(r.Endpoints, func(i, j int) bool { return r.Endpoints[i].SecurityLevel > r.Endpoints[j].SecurityLevel })
	if err := d.ensure(ctx); err != nil {
		return r, fmt.Errorf("opening a session to browse (the endpoints are listed above): %w", err)
	}
	lim := o.Limits
	if lim.Batch == 0 {
		d.mu.Lock()
		lim.Batch = d.maxNodes
		d.mu.Unlock()
	}
	r.Nodes, r.Truncated, err = browse(ctx, d.g, lim, o.Progress)
	if err != nil {
		return r, err
	}
	return r, nil
}

// StarterConfig writes a devices section for the agent config from a
// report: one device with the settings used and a point per numeric
// variable, its node id, display path and unit, the data type in a comment.
func StarterConfig(name string, s Settings, r *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Found by sightglass-agent discover opcua at %s.\n", r.Endpoint)
	b.WriteString("# Check the points, delete the ones you do not need, then paste the device\n# into the agent config's devices section.\n")
	b.WriteString("devices:\n")
	fmt.Fprintf(&b, "  - name: %s\n    driver: opcua\n    interval: 10s\n    settings:\n", yamlString(name))
	fmt.Fprintf(&b, "      endpoint: %s\n", yamlString(s.Endpoint))
	if s.SecurityPolicy != "" {
		fmt.Fprintf(&b, "      security_policy: %s\n", s.SecurityPolicy)
	}
	if s.SecurityMode != "" {
		fmt.Fprintf(&b, "      security_mode: %s\n", s.SecurityMode)
	}
	if s.PKIDir != "" {
		fmt.Fprintf(&b, "      pki_dir: %s\n", yamlString(s.PKIDir))
	}
	switch s.Auth.Type {
	case "username":
		fmt.Fprintf(&b, "      auth:\n        type: username\n        username: %s\n        password_file: /etc/sightglass/opcua.pass   # put the password here, mode 0600\n", yamlString(s.Auth.Username))
	case "certificate":
		fmt.Fprintf(&b, "      auth:\n        type: certificate\n        certificate: %s\n        private_key: %s\n", yamlString(s.Auth.Certificate), yamlString(s.Auth.PrivateKey))
	}
	b.WriteString("    points:\n")
	n := 0
	for _, node := range r.Nodes {
		if !numericType(node.DataType) {
			continue
		}
		n++
		fmt.Fprintf(&b, "      - {ref: %s, name: %s", yamlString(node.NodeID), yamlString(node.Path))
		if node.Unit != "" {
			fmt.Fprintf(&b, ", unit: %s", yamlString(node.Unit))
		}
		fmt.Fprintf(&b, "}   # %s\n", node.DataType)
	}
	if n == 0 {
		b.WriteString("      []   # no numeric variables found: browse from another --start node\n")
	}
	return b.String()
}

// yamlString quotes s for YAML when it needs it (node ids hold ; and =).
func yamlString(s string) string {
	if s != "" && !strings.ContainsAny(s, ":;={}[],#&*!|>'\"%@`") && strings.TrimSpace(s) == s {
		return s
	}
	return fmt.Sprintf("%q", s)
}
