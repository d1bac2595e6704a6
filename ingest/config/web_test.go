package config

import (
	"errors"
	"strings"
	"testing"
)

func TestWebSettings(t *testing.T) {
	base := "ca_dir: /ca\nstore: {kind: dir, dir: /a}\ndatabase: /db\nlisten: 127.0.0.1:8443\n"
	tests := []struct {
		name, yaml string
		field      string // the field the error names; empty: valid
		line       int
	}{
		{"off by default", "", "", 0},
		{"dashboard with redirect", "web_listen: 127.0.0.1:8444\nweb_http_listen: 127.0.0.1:8080\n", "", 0},
		{"own certificate", "web_listen: :443\nweb_cert_file: web.pem\nweb_key_file: web.key\n", "", 0},
		{"bad address", "web_listen: nowhere\n", "web_listen", 5},
		{"same as the agent listener", "web_listen: 127.0.0.1:8443\n", "web_listen", 5},
		{"redirect without dashboard", "web_http_listen: 127.0.0.1:8080\n", "web_http_listen", 5},
		{"trusted proxies", "web_listen: 127.0.0.1:8444\nweb_trusted_proxies: [10.0.0.0/8, 192.0.2.1, \"2001:db8::/32\"]\n", "", 0},
		{"bad proxy", "web_listen: 127.0.0.1:8444\nweb_trusted_proxies: [10.0.0.0/33]\n", "web_trusted_proxies", 6},
		{"key without certificate", "web_listen: 127.0.0.1:8444\nweb_key_file: web.key\n", "web_cert_file", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(base+tt.yaml), "t.yaml", "/etc/sg")
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.WebCertFile != "" && !strings.HasPrefix(c.WebCertFile, "/etc/sg/") {
					t.Errorf("cert path not resolved: %s", c.WebCertFile)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || fe.Line != tt.line {
				t.Fatalf("err = %v, want a FieldError on %s line %d", err, tt.field, tt.line)
			}
		})
	}
}
