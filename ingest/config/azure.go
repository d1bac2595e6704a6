package config

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
)

// Bounds on store.azure.try_timeout: shorter than a second fails healthy
// uploads, longer than ten minutes holds agents' requests past any sane
// load balancer timeout.
const (
	minTryTimeout = time.Second
	maxTryTimeout = 10 * time.Minute
)

// azureFields says which optional fields each auth mode takes: anything
// else set is a mistake worth naming (a certificate_file under
// managed-identity means the operator thinks the certificate is used).
var azureFields = map[string][]string{
	azure.AuthClientCertificate: {"tenant_id", "client_id", "certificate_file", "certificate_password_file"},
	azure.AuthManagedIdentity:   {"client_id"},
	azure.AuthWorkloadIdentity:  {"tenant_id", "client_id", "token_file"},
	azure.AuthSharedKeyEmulator: {},
}

// validateAzure checks store.azure for kind azure. A missing field's
// error points at the closest line there is (store.azure, else store).
func (c *Config) validateAzure() []error {
	a := c.Store.Azure
	var errs []error
	bad := func(field, format string, args ...any) {
		path := "store.azure." + field
		line := c.lines[path]
		for _, parent := range []string{"store.azure", "store"} {
			if line == 0 {
				line = c.lines[parent]
			}
		}
		errs = append(errs, &FieldError{Source: c.source, Line: line, Field: path, Problem: fmt.Sprintf(format, args...)})
	}
	allowed, modeOK := azureFields[a.Auth]
	switch {
	case a.Auth == "":
		bad("auth", "is empty: set it to one of %s (see ingest/blob/azure/README.md)", strings.Join(azure.AuthModes, ", "))
	case !modeOK:
		bad("auth", "%q is not an auth mode: want one of %s", a.Auth, strings.Join(azure.AuthModes, ", "))
	}
	emulator := a.Auth == azure.AuthSharedKeyEmulator

	u, err := url.Parse(a.AccountURL)
	switch {
	case a.AccountURL == "":
		bad("account_url", "is empty: set it to the account's blob endpoint, such as https://myaccount.blob.core.windows.net")
	case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		bad("account_url", "%q is not an http(s) URL: want one such as https://myaccount.blob.core.windows.net", a.AccountURL)
	case u.RawQuery != "" || u.Fragment != "":
		bad("account_url", "holds a query or fragment (a SAS token?): remove it; a SAS token in a file is a key at rest, use a token auth mode")
	case u.User != nil:
		bad("account_url", "holds user information: remove it")
	case emulator && !azure.IsLoopbackHost(u.Hostname()):
		bad("account_url", "host %s is not a loopback address: shared-key-emulator is for a local emulator only; for a real account use client-certificate, managed-identity or workload-identity", u.Hostname())
	case emulator && strings.Trim(u.Path, "/") != azure.EmulatorAccount:
		bad("account_url", "path %q is not the emulator's account: want %s://%s/%s", u.Path, u.Scheme, u.Host, azure.EmulatorAccount)
	case !emulator && modeOK && u.Scheme != "https":
		bad("account_url", "is not https: a token must never travel in clear text; use https://")
	case !emulator && modeOK && strings.Trim(u.Path, "/") != "" && !azure.IsLoopbackHost(u.Hostname()):
		bad("account_url", "has a path %q: give the account endpoint only and the container in container", u.Path)
	}
	if a.Container == "" {
		bad("container", "is empty: set it to the container that holds the archive (it must exist)")
	} else if err := azure.CheckContainerName(a.Container); err != nil {
		bad("container", "%v", err)
	}

	if modeOK {
		set := map[string]string{
			"tenant_id": a.TenantID, "client_id": a.ClientID, "certificate_file": a.CertificateFile,
			"certificate_password_file": a.CertificatePasswordFile, "token_file": a.TokenFile,
		}
		for _, field := range []string{"tenant_id", "client_id", "certificate_file", "certificate_password_file", "token_file"} {
			if set[field] != "" && !slices.Contains(allowed, field) {
				bad(field, "does not apply to auth %s: remove it", a.Auth)
			}
		}
	}
	if a.Auth == azure.AuthClientCertificate {
		if a.TenantID == "" {
			bad("tenant_id", "is empty: auth client-certificate needs the Entra ID tenant (directory) id")
		}
		if a.ClientID == "" {
			bad("client_id", "is empty: auth client-certificate needs the app registration's client (application) id")
		}
		if a.CertificateFile == "" {
			bad("certificate_file", "is empty: auth client-certificate needs the PEM or PKCS#12 file with the certificate and its RSA key")
		}
	}
	if a.TryTimeout != 0 && (a.TryTimeout < minTryTimeout || a.TryTimeout > maxTryTimeout) {
		bad("try_timeout", "%v is out of range: want %v to %v, or leave it out for the default", a.TryTimeout, minTryTimeout, maxTryTimeout)
	}
	return errs
}
