package cli

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure/azuritetest"
	"github.com/sightglass-bms/sightglass/ingest/config"
)

// The emulator mode builds a working store from the configuration alone,
// creates its container and warns that it is insecure.
func TestOpenStoreEmulatorIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("Azurite integration test: skipped with -short")
	}
	srv := azuritetest.Start(t, azuritetest.Options{})
	cfg := &config.Config{Store: config.Store{Kind: config.StoreKindAzure, Azure: config.Azure{
		AccountURL: srv.AccountURL, Container: "serve-archive", Auth: azure.AuthSharedKeyEmulator,
	}}}
	var logs bytes.Buffer
	st, name, err := openStore(t.Context(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if name != srv.AccountURL+"/serve-archive" {
		t.Errorf("store name %q", name)
	}
	if !strings.Contains(logs.String(), "INSECURE") {
		t.Errorf("no insecure-mode warning logged: %q", logs.String())
	}
	if created, err := st.Put(t.Context(), "t/s/x.sgb", []byte("x")); err != nil || !created {
		t.Fatalf("Put = %v, %v", created, err)
	}
	// A second start finds the container already there.
	if _, _, err := openStore(t.Context(), cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("second openStore: %v", err)
	}
}

func TestOpenStoreErrors(t *testing.T) {
	tests := []struct {
		name string
		a    config.Azure
		want string
	}{
		{"missing certificate", config.Azure{AccountURL: "https://acct.blob.core.windows.net", Container: "archive",
			Auth: azure.AuthClientCertificate, TenantID: "t", ClientID: "c", CertificateFile: "/nonexistent/sp.pem"},
			"store.azure: reading the service principal's certificate"},
		{"emulator not running", config.Azure{AccountURL: "http://127.0.0.1:1/devstoreaccount1", Container: "archive",
			Auth: azure.AuthSharedKeyEmulator}, "is the emulator running?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &config.Config{Store: config.Store{Kind: config.StoreKindAzure, Azure: tt.a}}
			_, _, err := openStore(t.Context(), cfg, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("openStore: err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}
