package cli

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

func newEnrollCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Make one-time enrollment tokens for new agents",
		Example: `  sightglass-ingest enroll create --tenant acme --new-site
  sightglass-ingest enroll create --tenant acme --site s-7f3a2kqm
  sightglass-ingest enroll create --config /etc/sightglass-ingest/ingest.yaml --tenant acme --site s-7f3a2kqm --ttl 2h --json`,
	}
	cmd.AddCommand(newEnrollCreateCmd())
	return cmd
}

// tokenReport is what enroll create prints with --json.
type tokenReport struct {
	Token         string    `json:"token"`
	Tenant        string    `json:"tenant"`
	Site          string    `json:"site"`
	SiteGenerated bool      `json:"site_generated"` // the site id was made by this command
	ExpiresAt     time.Time `json:"expires_at"`
	CAFingerprint string    `json:"ca_fingerprint"`
}

func newEnrollCreateCmd() *cobra.Command {
	var (
		rf           registryFlags
		tenant, site string
		newSite      bool
		ttl          time.Duration
		asJSON       bool
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a single-use enrollment token for one agent of a site",
		Long: `create makes a token that lets one agent enroll for --tenant and --site, once,
within --ttl (at most 24h). Name the building one of two ways, never neither:
--site with the id of a building the ingest knows (one made with --new-site,
named with 'sightglass-ingest sites name', or with an agent enrolled: another
box, or a box replaced, whose agent then keeps the site's point ids and
history), or --new-site for a new building, for which an opaque id (s- and 8
random characters) is made, recorded and printed. A --site the ingest does
not know is refused, so a mistyped id cannot start a new building. The site id is part of every archive path,
so it must never name the building or its address; give the building its
human name with 'sightglass-ingest sites name'. The ingest stores only the
token's hash. The token
also carries the fingerprint of this ingest's CA, so the agent can check it is
talking to the right ingest before it trusts it. Give the token to the
installer, who runs on the box:

  sightglass-agent enroll --token TOKEN --ingest https://ingest.example.com:8443

The token is printed on standard output and nowhere else: treat it like a
password until it is used or has expired.`,
		Example: `  sightglass-ingest enroll create --tenant acme --new-site
  sightglass-ingest enroll create --tenant acme --site s-7f3a2kqm
  sightglass-ingest enroll create --config /etc/sightglass-ingest/ingest.yaml --tenant acme --site s-7f3a2kqm --ttl 2h --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl <= 0 || ttl > pki.MaxTokenValidity {
				return fmt.Errorf("--ttl %v: want more than 0 and at most %v", ttl, pki.MaxTokenValidity)
			}
			// Making an id is never the default: an operator replacing a
			// box who forgot --site would get a new building, and its
			// agent new point ids and a history that starts again.
			switch {
			case site == "" && !newSite:
				return errors.New("enroll create needs the building: --site ID for a building the ingest knows (see 'sightglass-ingest sites list'), or --new-site to make an opaque id for a new building")
			case site != "" && newSite:
				return fmt.Errorf("--site %s and --new-site: give one, --site for a building already enrolled or --new-site for a new one", site)
			}
			generated := newSite
			if generated {
				var err error
				if site, err = newSiteID(); err != nil {
					return err
				}
			}
			id := pki.Identity{Tenant: tenant, Site: site, Agent: "ag-check"}
			if err := id.Validate(); err != nil {
				return fmt.Errorf("--tenant/--site: %w", err)
			}
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			ref := store.SiteRef{Tenant: tenant, Site: site}
			if !generated {
				if err := knownSite(cmd.Context(), db, ref); err != nil {
					return err
				}
			}
			ca, err := pki.Load(rf.caDir)
			if err != nil {
				return err
			}
			fp := pki.FingerprintOf(ca.Certificate())
			tok, err := pki.NewEnrollToken(fp)
			if err != nil {
				return err
			}
			if generated {
				// Recorded before the token, so a second box for the same
				// new building (or a token made again after this one
				// expired) can name it with --site.
				if err := db.PutSite(cmd.Context(), ref, ""); err != nil {
					return fmt.Errorf("recording the new building %s: %w", ref, err)
				}
				if _, err := db.Audit(cmd.Context(), "cli", "site_create", ref.String(), "enroll create --new-site"); err != nil {
					return err
				}
			}
			exp := time.Now().Add(ttl).UTC().Truncate(time.Second)
			if err := db.CreateToken(cmd.Context(), store.Token{Hash: tok.Hash(), Tenant: tenant, Site: site, ExpiresAt: exp, CreatedBy: "cli"}); err != nil {
				return err
			}
			if _, err := db.Audit(cmd.Context(), "cli", "token_create", fmt.Sprintf("token:%x", tok.Hash()[:6]), fmt.Sprintf("tenant=%s site=%s expires=%s", tenant, site, exp.Format(time.RFC3339))); err != nil {
				return err
			}
			// The token (or the JSON) comes first, then the notes: a script
			// reading the combined output takes its first line.
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), tokenReport{Token: tok.String(), Tenant: tenant, Site: site, SiteGenerated: generated, ExpiresAt: exp, CAFingerprint: fp.String()}); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), tok.String())
				fmt.Fprintf(cmd.ErrOrStderr(), "enrollment token for tenant %s site %s, single use, valid until %s\non the box: sightglass-agent enroll --token TOKEN --ingest https://HOST:PORT\n",
					tenant, site, exp.Format(time.RFC3339))
			}
			if generated {
				fmt.Fprintf(cmd.ErrOrStderr(), "made the opaque site id %s for a new building; name it for the dashboard with:\n  sightglass-ingest sites name %s/%s \"BUILDING NAME\"\n", site, tenant, site)
			} else if !opaqueSiteID.MatchString(site) {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: the site id %q is part of every archive path (%s/%s/...): it must not name the building or its address. For a new building use --new-site to have an opaque id made, and give the human name with `sightglass-ingest sites name %s/ID \"NAME\"`\n", site, tenant, site, tenant)
			}
			return nil
		},
	}
	rf.add(cmd, true)
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "tenant id (required)")
	f.StringVar(&site, "site", "", "opaque site id of a building the ingest knows (this or --new-site is required)")
	f.BoolVar(&newSite, "new-site", false, "make an opaque site id for a new building (this or --site is required)")
	f.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token can be used (at most 24h)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	_ = cmd.MarkFlagRequired("tenant")
	return cmd
}

// knownSite returns nil when the ingest knows ref: the building is in the
// registry's sites (made by --new-site, named with 'sites name', or
// holding data) or an agent, revoked or not, was enrolled for it. An
// unknown one is refused: a mistyped --site would otherwise give a token
// for a building that does not exist, whose agent starts a new history.
func knownSite(ctx context.Context, db *store.DB, ref store.SiteRef) error {
	sites, err := db.Sites(ctx)
	if err != nil {
		return fmt.Errorf("checking that --site %s is a known building: %w", ref.Site, err)
	}
	var tenants []string // other tenants with a building of this id
	for _, s := range sites {
		switch {
		case s.SiteRef == ref:
			return nil
		case s.Site == ref.Site:
			tenants = append(tenants, s.Tenant)
		}
	}
	agents, err := db.Agents(ctx)
	if err != nil {
		return fmt.Errorf("checking that --site %s is a known building: %w", ref.Site, err)
	}
	for _, a := range agents {
		switch {
		case a.Tenant == ref.Tenant && a.Site == ref.Site:
			return nil
		case a.Site == ref.Site && !slices.Contains(tenants, a.Tenant):
			tenants = append(tenants, a.Tenant)
		}
	}
	if len(tenants) > 0 {
		return fmt.Errorf("--site %s: tenant %s has no such building (tenant %s has): check --tenant, or use --new-site for a new building",
			ref.Site, ref.Tenant, strings.Join(tenants, ", "))
	}
	return fmt.Errorf("--site %s: tenant %s has no such building (see 'sightglass-ingest sites list'): check the id, or use --new-site to make one for a new building",
		ref.Site, ref.Tenant)
}

// opaqueSiteID is the form newSiteID makes; a given id of another form
// draws the warning that it must not name the building.
var opaqueSiteID = regexp.MustCompile(`^s-[a-z2-7]{8}$`)

// newSiteID makes an opaque site id: "s-" and 8 random base32 characters
// (40 bits), which says nothing about the building.
func newSiteID() (string, error) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making a site id: %w", err)
	}
	return "s-" + strings.ToLower(base32.StdEncoding.EncodeToString(b[:])), nil
}
