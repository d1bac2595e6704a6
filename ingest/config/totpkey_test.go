package config

import "testing"

func TestTOTPKeyFile(t *testing.T) {
	base := "ca_dir: ca\nstore: {kind: dir, dir: /a}\ndatabase: /db\n"
	tests := []struct {
		name, yaml, want string
	}{
		{"default: in ca_dir", "", "/etc/sg/ca/totp.key"},
		{"relative to the file", "web_totp_key_file: keys/totp.key\n", "/etc/sg/keys/totp.key"},
		{"absolute", "web_totp_key_file: /run/secrets/totp.key\n", "/run/secrets/totp.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(base+tt.yaml), "t.yaml", "/etc/sg")
			if err != nil {
				t.Fatal(err)
			}
			if got := c.TOTPKeyFile(); got != tt.want {
				t.Errorf("TOTPKeyFile() = %q, want %q", got, tt.want)
			}
		})
	}
	if _, err := Parse([]byte(base+"web_totp_keyfile: x\n"), "t.yaml", "/etc/sg"); err == nil {
		t.Error("a misspelt key file field was accepted")
	}
}
