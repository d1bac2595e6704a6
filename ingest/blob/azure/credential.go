package azure

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// Auth modes: how the ingest proves its identity to the storage account.
const (
	// AuthClientCertificate is a service principal (an app registration)
	// that signs in with an X.509 certificate and its RSA key, read from
	// a PEM or PKCS#12 file. Works anywhere, also outside Azure.
	AuthClientCertificate = "client-certificate"
	// AuthManagedIdentity is the identity Azure attaches to the VM, App
	// Service or container the ingest runs on: no secret at all.
	AuthManagedIdentity = "managed-identity"
	// AuthWorkloadIdentity is a Kubernetes service account federated
	// with an Entra ID app (AKS workload identity): the token file the
	// cluster projects into the pod is exchanged for a storage token.
	AuthWorkloadIdentity = "workload-identity"
	// AuthSharedKeyEmulator is the emulator's well-known account key, on
	// a loopback address only. Insecure by design: never for a real
	// account, whose shared-key access should be disabled.
	AuthSharedKeyEmulator = "shared-key-emulator"
)

// AuthModes lists the modes, for help texts and validation.
var AuthModes = []string{AuthClientCertificate, AuthManagedIdentity, AuthWorkloadIdentity, AuthSharedKeyEmulator}

// Emulator account: Azurite's (and the legacy storage emulator's) built-in
// account and key. Both are published in Microsoft's documentation; the
// key protects nothing.
const (
	EmulatorAccount = "devstoreaccount1"
	EmulatorKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// EmulatorSharedKey returns the shared key credential of the emulator's
// built-in account.
func EmulatorSharedKey() *container.SharedKeyCredential {
	cred, err := container.NewSharedKeyCredential(EmulatorAccount, EmulatorKey)
	if err != nil {
		panic("azure: the emulator's well-known key does not decode: " + err.Error())
	}
	return cred
}

// CredentialConfig says which token credential to build and with what.
type CredentialConfig struct {
	// Mode is AuthClientCertificate, AuthManagedIdentity or
	// AuthWorkloadIdentity.
	Mode string
	// TenantID is the Entra ID tenant (directory) id. Required for
	// client-certificate; for workload-identity empty means the
	// AZURE_TENANT_ID the cluster sets.
	TenantID string
	// ClientID is the app's (or a user-assigned managed identity's)
	// client id. Required for client-certificate; for managed-identity
	// empty means the system-assigned identity; for workload-identity
	// empty means AZURE_CLIENT_ID.
	ClientID string
	// CertificateFile is a PEM file (certificate and unencrypted RSA
	// key) or a PKCS#12 (.pfx) file, for client-certificate.
	CertificateFile string
	// CertificatePasswordFile, when set, holds the PKCS#12 file's
	// password (one line).
	CertificatePasswordFile string
	// TokenFile is the projected service account token, for
	// workload-identity; empty means AZURE_FEDERATED_TOKEN_FILE.
	TokenFile string
}

// Credential builds the token credential c describes. It reads the
// certificate for client-certificate but asks Entra ID for nothing yet:
// the first token is fetched by the first request.
func Credential(c CredentialConfig) (azcore.TokenCredential, error) {
	switch c.Mode {
	case AuthClientCertificate:
		return certificateCredential(c)
	case AuthManagedIdentity:
		var opts azidentity.ManagedIdentityCredentialOptions
		if c.ClientID != "" {
			opts.ID = azidentity.ClientID(c.ClientID)
		}
		cred, err := azidentity.NewManagedIdentityCredential(&opts)
		if err != nil {
			return nil, fmt.Errorf("making the managed identity credential: %w", err)
		}
		return cred, nil
	case AuthWorkloadIdentity:
		cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			TenantID: c.TenantID, ClientID: c.ClientID, TokenFilePath: c.TokenFile,
		})
		if err != nil {
			return nil, fmt.Errorf("making the workload identity credential: %w: set tenant_id, client_id and token_file, or run in a pod with workload identity enabled (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)", err)
		}
		return cred, nil
	case AuthSharedKeyEmulator:
		return nil, errors.New("shared-key-emulator is not a token credential: use EmulatorSharedKey")
	default:
		return nil, fmt.Errorf("unknown auth mode %q: want one of %s", c.Mode, strings.Join(AuthModes, ", "))
	}
}

func certificateCredential(c CredentialConfig) (azcore.TokenCredential, error) {
	data, err := os.ReadFile(c.CertificateFile)
	if err != nil {
		return nil, fmt.Errorf("reading the service principal's certificate: %w", err)
	}
	var password []byte
	if c.CertificatePasswordFile != "" {
		p, err := os.ReadFile(c.CertificatePasswordFile)
		if err != nil {
			return nil, fmt.Errorf("reading the certificate's password: %w", err)
		}
		password = []byte(strings.TrimRight(string(p), "\r\n"))
	}
	certs, key, err := azidentity.ParseCertificates(data, password)
	if err != nil {
		return nil, fmt.Errorf("parsing the service principal's certificate %s: %w: want PEM with the certificate and an unencrypted key, or PKCS#12 with certificate_password_file", c.CertificateFile, err)
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return nil, fmt.Errorf("the service principal's key in %s is %T, not RSA: Entra ID client certificates need an RSA key; make one with `openssl req -x509 -newkey rsa:3072 ...`", c.CertificateFile, key)
	}
	cred, err := azidentity.NewClientCertificateCredential(c.TenantID, c.ClientID, certs, key, nil)
	if err != nil {
		return nil, fmt.Errorf("making the client certificate credential: %w", err)
	}
	return cred, nil
}

// credentialHint explains a failure to get a token, or returns "" when err
// is not one.
func credentialHint(err error) string {
	var afe *azidentity.AuthenticationFailedError
	switch {
	case errors.As(err, &afe):
		return "Microsoft Entra ID refused to issue a token: check tenant_id, client_id and that the certificate (or federated credential) is registered on the app"
	case strings.Contains(err.Error(), "ManagedIdentityCredential"):
		return "no managed identity answered: run the ingest on an Azure resource with a managed identity assigned (and client_id set for a user-assigned one)"
	case strings.Contains(err.Error(), "WorkloadIdentityCredential"):
		return "the workload identity token could not be exchanged: check the pod's service account federation and token_file"
	}
	return ""
}
