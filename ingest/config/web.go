package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
)

// TOTPKeyFileName is the TOTP key file's name in ca_dir when
// web_totp_key_file is empty.
const TOTPKeyFileName = "totp.key"

// TOTPKeyFile is the path of the key file sealing the TOTP secrets:
// web_totp_key_file, else totp.key in ca_dir.
func (c *Config) TOTPKeyFile() string {
	if c.WebTOTPKeyFile != "" {
		return c.WebTOTPKeyFile
	}
	return filepath.Join(c.CADir, TOTPKeyFileName)
}

// validateWeb checks the dashboard's settings.
func (c *Config) validateWeb() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Source: c.source, Line: c.lines[field], Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	taken := map[string]string{c.Listen: "listen"}
	if c.InternalListen != "" {
		taken[c.InternalListen] = "internal_listen"
	}
	for _, f := range []struct{ name, addr string }{{"web_listen", c.WebListen}, {"web_http_listen", c.WebHTTPListen}} {
		if f.addr == "" {
			continue
		}
		if err := checkHostPort(f.addr); err != nil {
			bad(f.name, "%v: want host:port, such as 127.0.0.1:8444, or leave it empty to disable it", err)
			continue
		}
		if other, ok := taken[f.addr]; ok && !hasPortZero(f.addr) {
			bad(f.name, "is the same address as %s (%s): give it its own port", other, f.addr)
		}
		taken[f.addr] = f.name
	}
	if c.WebHTTPListen != "" && c.WebListen == "" {
		bad("web_http_listen", "redirects to the dashboard, but web_listen is empty: set web_listen too, or remove web_http_listen")
	}
	if (c.WebCertFile == "") != (c.WebKeyFile == "") {
		field := "web_key_file"
		if c.WebCertFile == "" {
			field = "web_cert_file"
		}
		bad(field, "is empty but its pair is set: give both web_cert_file and web_key_file, or neither to use the CA's server certificate")
	}
	if _, err := c.TrustedProxies(); err != nil {
		bad("web_trusted_proxies", "%v: want addresses or prefixes such as 10.0.0.0/8", err)
	}
	return errs
}

// TrustedProxies parses web_trusted_proxies; a bare address is a prefix
// of its full length.
func (c *Config) TrustedProxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range c.WebTrustedProxies {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return nil, fmt.Errorf("%q is neither an address nor a prefix", v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
