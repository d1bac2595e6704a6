package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// azureYAML is a config with store.azure holding body (indented already).
func azureYAML(body string) string {
	return "ca_dir: ca\ndatabase: x.db\nstore:\n  kind: azure\n  azure:\n" + body
}

func TestParseAzureGood(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Azure
	}{
		{
			"client certificate",
			"    account_url: https://acct.blob.core.windows.net\n    container: sightglass-archive\n    auth: client-certificate\n" +
				"    tenant_id: 72f988bf-86f1-41af-91ab-2d7cd011db47\n    client_id: 0c1f5a3e-aaaa-4bbb-8ccc-123456789abc\n" +
				"    certificate_file: azure-sp.pem\n    certificate_password_file: /etc/sg/pfx.pass\n    try_timeout: 1m\n",
			Azure{
				AccountURL: "https://acct.blob.core.windows.net", Container: "sightglass-archive", Auth: "client-certificate",
				TenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47", ClientID: "0c1f5a3e-aaaa-4bbb-8ccc-123456789abc",
				CertificateFile: filepath.Join("/srv/sg", "azure-sp.pem"), CertificatePasswordFile: "/etc/sg/pfx.pass", TryTimeout: time.Minute,
			},
		},
		{
			"system-assigned managed identity",
			"    account_url: https://acct.blob.core.windows.net/\n    container: archive\n    auth: managed-identity\n",
			Azure{AccountURL: "https://acct.blob.core.windows.net/", Container: "archive", Auth: "managed-identity"},
		},
		{
			"user-assigned managed identity",
			"    account_url: https://acct.blob.core.windows.net\n    container: archive\n    auth: managed-identity\n    client_id: abc\n",
			Azure{AccountURL: "https://acct.blob.core.windows.net", Container: "archive", Auth: "managed-identity", ClientID: "abc"},
		},
		{
			"workload identity from the environment",
			"    account_url: https://acct.blob.core.windows.net\n    container: archive\n    auth: workload-identity\n",
			Azure{AccountURL: "https://acct.blob.core.windows.net", Container: "archive", Auth: "workload-identity"},
		},
		{
			"workload identity explicit",
			"    account_url: https://acct.blob.core.windows.net\n    container: archive\n    auth: workload-identity\n    tenant_id: t\n    client_id: c\n    token_file: /var/run/secrets/azure/tokens/azure-identity-token\n",
			Azure{AccountURL: "https://acct.blob.core.windows.net", Container: "archive", Auth: "workload-identity", TenantID: "t", ClientID: "c", TokenFile: "/var/run/secrets/azure/tokens/azure-identity-token"},
		},
		{
			"emulator",
			"    account_url: http://127.0.0.1:10000/devstoreaccount1\n    container: archive\n    auth: shared-key-emulator\n",
			Azure{AccountURL: "http://127.0.0.1:10000/devstoreaccount1", Container: "archive", Auth: "shared-key-emulator"},
		},
		{
			"emulator over https on localhost",
			"    account_url: https://localhost:10000/devstoreaccount1/\n    container: archive\n    auth: shared-key-emulator\n",
			Azure{AccountURL: "https://localhost:10000/devstoreaccount1/", Container: "archive", Auth: "shared-key-emulator"},
		},
		{
			"token to a local emulator over https",
			"    account_url: https://127.0.0.1:10000/devstoreaccount1\n    container: archive\n    auth: managed-identity\n",
			Azure{AccountURL: "https://127.0.0.1:10000/devstoreaccount1", Container: "archive", Auth: "managed-identity"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(azureYAML(tt.body)), "ingest.yaml", "/srv/sg")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if c.Store.Kind != StoreKindAzure || c.Store.Dir != "" || c.Store.Azure != tt.want {
				t.Errorf("store = %+v\nwant azure %+v", c.Store, tt.want)
			}
		})
	}
}

func TestParseAzureBad(t *testing.T) {
	const (
		url  = "    account_url: https://acct.blob.core.windows.net\n"
		cont = "    container: archive\n"
		mi   = "    auth: managed-identity\n"
		emu  = "    auth: shared-key-emulator\n"
	)
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown key", azureYAML(url + cont + mi + "    account_key: abc\n"), []string{"line 9", "account_key"}},
		{"bad mode", azureYAML(url + cont + "    auth: password\n"), []string{"bad.yaml:8: store.azure.auth:", `"password"`, "client-certificate, managed-identity"}},
		{"no mode", azureYAML(url + cont), []string{"bad.yaml:5: store.azure.auth: is empty"}},
		{"no url", azureYAML(cont + mi), []string{"bad.yaml:5: store.azure.account_url: is empty"}},
		{"not a url", azureYAML("    account_url: acct.blob.core.windows.net\n" + cont + mi), []string{"bad.yaml:6: store.azure.account_url:", "not an http(s) URL"}},
		{"sas token", azureYAML("    account_url: https://acct.blob.core.windows.net/?sv=2024&sig=abc\n" + cont + mi), []string{"bad.yaml:6:", "SAS token"}},
		{"user info", azureYAML("    account_url: https://me:pw@acct.blob.core.windows.net\n" + cont + mi), []string{"bad.yaml:6:", "user information"}},
		{"token over http", azureYAML("    account_url: http://acct.blob.core.windows.net\n" + cont + mi), []string{"bad.yaml:6: store.azure.account_url: is not https"}},
		{"container in url", azureYAML("    account_url: https://acct.blob.core.windows.net/archive\n" + cont + mi), []string{"bad.yaml:6:", "has a path"}},
		{"emulator on a real account", azureYAML("    account_url: https://acct.blob.core.windows.net/devstoreaccount1\n" + cont + emu), []string{"bad.yaml:6:", "not a loopback address", "local emulator only"}},
		{"emulator on the LAN", azureYAML("    account_url: http://192.168.1.20:10000/devstoreaccount1\n" + cont + emu), []string{"not a loopback address"}},
		{"emulator other account", azureYAML("    account_url: http://127.0.0.1:10000/myaccount\n" + cont + emu), []string{"bad.yaml:6:", "not the emulator's account"}},
		{"no container", azureYAML(url + mi), []string{"bad.yaml:5: store.azure.container: is empty"}},
		{"bad container", azureYAML(url + "    container: My_Archive\n" + mi), []string{"bad.yaml:7: store.azure.container:", "lower-case"}},
		{"short container", azureYAML(url + "    container: ab\n" + mi), []string{"bad.yaml:7:", "3 to 63"}},
		{
			"client certificate without its fields",
			azureYAML(url + cont + "    auth: client-certificate\n"),
			[]string{"bad.yaml:5: store.azure.tenant_id: is empty", "bad.yaml:5: store.azure.client_id: is empty", "bad.yaml:5: store.azure.certificate_file: is empty"},
		},
		{"certificate under managed identity", azureYAML(url + cont + mi + "    certificate_file: sp.pem\n"), []string{"bad.yaml:9: store.azure.certificate_file: does not apply to auth managed-identity"}},
		{"token file under client certificate", azureYAML(url + cont + "    auth: client-certificate\n    tenant_id: t\n    client_id: c\n    certificate_file: sp.pem\n    token_file: tok\n"), []string{"bad.yaml:12: store.azure.token_file: does not apply"}},
		{"tenant under emulator", azureYAML("    account_url: http://127.0.0.1:10000/devstoreaccount1\n" + cont + emu + "    tenant_id: t\n"), []string{"bad.yaml:9: store.azure.tenant_id: does not apply to auth shared-key-emulator"}},
		{"short try timeout", azureYAML(url + cont + mi + "    try_timeout: 10ms\n"), []string{"bad.yaml:9: store.azure.try_timeout:", "out of range"}},
		{"long try timeout", azureYAML(url + cont + mi + "    try_timeout: 1h\n"), []string{"bad.yaml:9: store.azure.try_timeout:", "out of range"}},
		{"dir with azure kind", "ca_dir: ca\ndatabase: x.db\nstore:\n  kind: azure\n  dir: archive\n  azure:\n" + url + cont + mi, []string{"bad.yaml:5: store.dir: is set but store.kind is \"azure\""}},
		{"azure with dir kind", "ca_dir: ca\ndatabase: x.db\nstore:\n  kind: dir\n  dir: archive\n  azure:\n" + url, []string{"bad.yaml:6: store.azure: is set but store.kind is \"dir\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), "bad.yaml", "")
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", c.Store)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			var fe *FieldError
			if !strings.Contains(tt.name, "unknown") && !errors.As(err, &fe) {
				t.Errorf("error %v is not a *FieldError", err)
			}
		})
	}
}

// The Azure example commented into the built-in config must stay valid.
func TestCommentedAzureExampleIsValid(t *testing.T) {
	var block []string
	in := false
	for line := range strings.SplitSeq(string(DefaultYAML()), "\n") {
		switch {
		case strings.HasPrefix(line, "#   kind: azure"):
			in = true
		case in && (line == "#" || !strings.HasPrefix(line, "#")):
			in = false
		}
		if in {
			block = append(block, "  "+strings.TrimPrefix(line, "#   "))
		}
	}
	if len(block) < 5 {
		t.Fatalf("no Azure example found in default.yaml (%d lines)", len(block))
	}
	doc := "ca_dir: ca\ndatabase: x.db\nstore:\n" + strings.Join(block, "\n") + "\n"
	c, err := Parse([]byte(doc), "example", "/srv/sg")
	if err != nil {
		t.Fatalf("the commented example does not parse:\n%s\n%v", doc, err)
	}
	if c.Store.Kind != StoreKindAzure || c.Store.Azure.Auth != "client-certificate" {
		t.Errorf("example parsed as %+v", c.Store)
	}
}
