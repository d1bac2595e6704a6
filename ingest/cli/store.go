package cli

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/ingest/config"
)

// startupPingTimeout bounds the check serve makes of an Azure archive at
// start: long enough for a first token from Entra ID, short enough that a
// store outage does not hold the start-up (the ingest starts anyway and
// /readyz reports 503 until the store answers).
const startupPingTimeout = 15 * time.Second

// openStore builds the archive store the configuration names, and a name
// for it in logs.
func openStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (blob.Store, string, error) {
	if cfg.Store.Kind != config.StoreKindAzure {
		d, err := blob.OpenDir(cfg.Store.Dir)
		if err != nil {
			return nil, "", err
		}
		return d, d.Root(), nil
	}
	a := cfg.Store.Azure
	o := azure.Options{
		AccountURL: a.AccountURL,
		Container:  a.Container,
		Retry:      policy.RetryOptions{TryTimeout: a.TryTimeout},
		Logger:     log,
	}
	if a.Auth == azure.AuthSharedKeyEmulator {
		o.SharedKey = azure.EmulatorSharedKey()
	} else {
		cred, err := azure.Credential(azure.CredentialConfig{
			Mode: a.Auth, TenantID: a.TenantID, ClientID: a.ClientID,
			CertificateFile: a.CertificateFile, CertificatePasswordFile: a.CertificatePasswordFile,
			TokenFile: a.TokenFile,
		})
		if err != nil {
			return nil, "", fmt.Errorf("store.azure: %w", err)
		}
		o.Credential = cred
	}
	st, err := azure.New(o)
	if err != nil {
		return nil, "", fmt.Errorf("store.azure: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, startupPingTimeout)
	defer cancel()
	if a.Auth == azure.AuthSharedKeyEmulator {
		// An emulator starts empty; a real account's container is made
		// by its operator, with the role granted on it.
		if err := st.CreateContainer(pctx); err != nil {
			return nil, "", fmt.Errorf("store.azure: is the emulator running? %w", err)
		}
	} else if err := st.Ping(pctx); err != nil {
		log.Warn("the Azure archive does not answer yet: starting anyway, /readyz reports 503 and batches get 503 until it does", "err", err)
	}
	return st, st.String(), nil
}
