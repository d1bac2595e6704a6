package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightglass-bms/sightglass/ingest/config"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/ingest/web"
)

func newUsersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "users",
		Short: "Manage dashboard users: accounts, roles and the buildings they see",
		Long: `users manages the dashboard's accounts. Roles: admin (every building, users,
agents, audit log), engineer (the buildings assigned, with CSV export) and
viewer (the buildings assigned, read only). Passwords are read from standard
input, never from the command line (which other users of the machine can
see), and stored as argon2id hashes. Second-factor (TOTP) secrets are sealed
under a key file kept outside the database (rotate-key). Every change is
written to the audit log.`,
		Example: `  echo 'a long and unusual passphrase' | sightglass-ingest users add ann --role engineer --site acme/s-7f3a --password-stdin
  sightglass-ingest users add ops --role admin --generate
  sightglass-ingest users list --json`,
	}
	cmd.AddCommand(newUsersAddCmd(), newUsersListCmd(), newUsersDisableCmd(true), newUsersDisableCmd(false),
		newUsersPasswdCmd(), newUsersAssignCmd(), newUsersRoleCmd(), newUsersUnlockCmd(), newUsersTOTPResetCmd(), newUsersRotateKeyCmd())
	return cmd
}

// readPassword reads one line from r: the password, without its newline.
func readPassword(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading the password from standard input: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("reading the password from standard input: it is empty: pipe it in, e.g. `echo '…' | sightglass-ingest users …`")
	}
	return pw, nil
}

// generatePassword makes a random password of five groups of five letters
// and digits (about 128 bits), easy to read out and type.
func generatePassword() (string, error) {
	const alphabet = "abcdefghijkmnpqrstuvwxyz23456789" // no l, o, 0, 1: misread
	b := make([]byte, 25)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating a password: %w", err)
	}
	var sb strings.Builder
	for i, c := range b {
		if i > 0 && i%5 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(alphabet[int(c)%len(alphabet)])
	}
	return sb.String(), nil
}

func parseSites(vals []string) ([]store.SiteRef, error) {
	var out []store.SiteRef
	for _, v := range vals {
		t, s, ok := strings.Cut(v, "/")
		if !ok || t == "" || s == "" || strings.Contains(s, "/") {
			return nil, fmt.Errorf("--site %q: want TENANT/SITE, such as acme/s-7f3a", v)
		}
		out = append(out, store.SiteRef{Tenant: t, Site: s})
	}
	return out, nil
}

// newPassword reads (--password-stdin) or generates (--generate) a new
// password and checks it against the policy.
func newPassword(cmd *cobra.Command, name string, fromStdin, generate bool) (pw string, generated bool, err error) {
	switch {
	case fromStdin == generate:
		return "", false, errors.New("give exactly one of --password-stdin and --generate")
	case generate:
		pw, err = generatePassword()
		return pw, true, err
	}
	if pw, err = readPassword(cmd.InOrStdin()); err != nil {
		return "", false, err
	}
	return pw, false, web.CheckPasswordPolicy(name, pw)
}

// userReport is a user as --json prints it.
type userReport struct {
	Name       string    `json:"name"`
	Role       string    `json:"role"`
	Sites      []string  `json:"sites"`
	Disabled   bool      `json:"disabled"`
	TOTP       bool      `json:"totp"`
	CreatedAt  time.Time `json:"created_at"`
	PasswordAt time.Time `json:"password_changed_at"`
	// Password is set only when --generate made one.
	Password string `json:"password,omitempty"`
}

func reportOf(u store.User) userReport {
	r := userReport{Name: u.Name, Role: u.Role, Sites: []string{}, Disabled: u.Disabled(), TOTP: u.HasTOTP(), CreatedAt: u.CreatedAt, PasswordAt: u.PasswordAt}
	for _, s := range u.Sites {
		r.Sites = append(r.Sites, s.String())
	}
	return r
}

func newUsersAddCmd() *cobra.Command {
	var (
		rf                 registryFlags
		role               string
		sites              []string
		fromStdin, gen, js bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a dashboard user",
		Long: `add creates a user with a role and, for engineers and viewers, the buildings
they may see (--site, repeatable; admins see all). The password comes from
standard input (--password-stdin; at least 12 characters, not a common one)
or is generated (--generate) and printed once.`,
		Example: `  echo 'a long and unusual passphrase' | sightglass-ingest users add ann --role engineer --site acme/s-7f3a --password-stdin
  sightglass-ingest users add ops --role admin --generate --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := web.CheckUserName(name); err != nil {
				return fmt.Errorf("user name %q: %w", name, err)
			}
			if !store.ValidRole(role) {
				return fmt.Errorf("--role %q: want admin, engineer or viewer", role)
			}
			refs, err := parseSites(sites)
			if err != nil {
				return err
			}
			pw, generated, err := newPassword(cmd, name, fromStdin, gen)
			if err != nil {
				return err
			}
			hash, err := web.HashPassword(pw, web.DefaultHashParams)
			if err != nil {
				return err
			}
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			ctx := cmd.Context()
			if _, err := db.AddUser(ctx, name, role, hash); err != nil {
				return err
			}
			if err := db.AssignSites(ctx, name, refs); err != nil {
				return err
			}
			if _, err := db.Audit(ctx, "cli", "user_add", name, fmt.Sprintf("role=%s sites=%s", role, strings.Join(sites, ","))); err != nil {
				return err
			}
			u, err := db.User(ctx, name)
			if err != nil {
				return err
			}
			rep := reportOf(u)
			if generated {
				rep.Password = pw
			}
			if js {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s (%s) for %s\n", name, role, sitesText(rep))
			if generated {
				fmt.Fprintf(cmd.OutOrStdout(), "password: %s\n", pw)
				fmt.Fprintln(cmd.ErrOrStderr(), "the password is shown only now: hand it over safely; the user changes it under Account")
			}
			return nil
		},
	}
	rf.add(cmd, false)
	f := cmd.Flags()
	f.StringVar(&role, "role", store.RoleViewer, "admin, engineer or viewer")
	f.StringArrayVar(&sites, "site", nil, "a building the user may see, TENANT/SITE (repeatable)")
	f.BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	f.BoolVar(&gen, "generate", false, "generate a random password and print it")
	f.BoolVar(&js, "json", false, "print the user as JSON")
	return cmd
}

func sitesText(r userReport) string {
	if r.Role == store.RoleAdmin {
		return "every building"
	}
	if len(r.Sites) == 0 {
		return "no building yet (users assign)"
	}
	return strings.Join(r.Sites, ", ")
}

func newUsersListCmd() *cobra.Command {
	var (
		rf registryFlags
		js bool
	)
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List dashboard users",
		Example: "  sightglass-ingest users list\n  sightglass-ingest users list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			users, err := db.Users(cmd.Context())
			if err != nil {
				return err
			}
			reps := []userReport{}
			for _, u := range users {
				reps = append(reps, reportOf(u))
			}
			if js {
				return writeJSON(cmd.OutOrStdout(), reps)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tBUILDINGS\tSTATE\t2FA")
			for _, r := range reps {
				state := "active"
				if r.Disabled {
					state = "disabled"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", r.Name, r.Role, sitesText(r), state, r.TOTP)
			}
			return tw.Flush()
		},
	}
	rf.add(cmd, false)
	cmd.Flags().BoolVar(&js, "json", false, "print the users as JSON")
	return cmd
}

// userChange is the shape of the one-user commands: run fn on the
// database, then audit action with detail.
func userChange(use, short, example string, args cobra.PositionalArgs, fn func(ctx context.Context, cmd *cobra.Command, db *store.DB, args []string) (action, detail string, err error)) *cobra.Command {
	var rf registryFlags
	cmd := &cobra.Command{
		Use: use, Short: short, Example: example, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			action, detail, err := fn(cmd.Context(), cmd, db, args)
			if err != nil {
				return err
			}
			if _, err := db.Audit(cmd.Context(), "cli", action, args[0], detail); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s done\n", args[0], strings.ReplaceAll(action, "_", " "))
			return nil
		},
	}
	rf.add(cmd, false)
	return cmd
}

func newUsersDisableCmd(disable bool) *cobra.Command {
	use, short, action := "disable NAME", "Disable a user: every session ends, sign-in is refused", "user_disable"
	if !disable {
		use, short, action = "enable NAME", "Enable a disabled user again", "user_enable"
	}
	return userChange(use, short, "  sightglass-ingest users "+strings.Fields(use)[0]+" ann", cobra.ExactArgs(1),
		func(ctx context.Context, _ *cobra.Command, db *store.DB, args []string) (string, string, error) {
			return action, "", db.SetDisabled(ctx, args[0], disable)
		})
}

func newUsersPasswdCmd() *cobra.Command {
	var fromStdin, gen bool
	cmd := userChange("passwd NAME", "Set a user's password (ends their sessions)",
		"  echo 'a new and unusual passphrase' | sightglass-ingest users passwd ann --password-stdin\n  sightglass-ingest users passwd ann --generate",
		cobra.ExactArgs(1),
		func(ctx context.Context, cmd *cobra.Command, db *store.DB, args []string) (string, string, error) {
			if _, err := db.User(ctx, args[0]); err != nil {
				return "", "", err
			}
			pw, generated, err := newPassword(cmd, args[0], fromStdin, gen)
			if err != nil {
				return "", "", err
			}
			hash, err := web.HashPassword(pw, web.DefaultHashParams)
			if err != nil {
				return "", "", err
			}
			if err := db.SetPassword(ctx, args[0], hash); err != nil {
				return "", "", err
			}
			if generated {
				fmt.Fprintf(cmd.OutOrStdout(), "password: %s\n", pw)
			}
			return "password_change", "by the cli; sessions ended", nil
		})
	cmd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	cmd.Flags().BoolVar(&gen, "generate", false, "generate a random password and print it")
	return cmd
}

func newUsersAssignCmd() *cobra.Command {
	var sites []string
	cmd := userChange("assign NAME", "Set the buildings a user may see (replaces the list)",
		"  sightglass-ingest users assign ann --site acme/s-7f3a --site acme/s-91bc\n  sightglass-ingest users assign ann   # none",
		cobra.ExactArgs(1),
		func(ctx context.Context, _ *cobra.Command, db *store.DB, args []string) (string, string, error) {
			refs, err := parseSites(sites)
			if err != nil {
				return "", "", err
			}
			return "sites_assign", strings.Join(sites, ","), db.AssignSites(ctx, args[0], refs)
		})
	cmd.Flags().StringArrayVar(&sites, "site", nil, "a building the user may see, TENANT/SITE (repeatable)")
	return cmd
}

func newUsersRoleCmd() *cobra.Command {
	return userChange("role NAME ROLE", "Change a user's role (admin, engineer or viewer)", "  sightglass-ingest users role ann engineer", cobra.ExactArgs(2),
		func(ctx context.Context, _ *cobra.Command, db *store.DB, args []string) (string, string, error) {
			u, err := db.User(ctx, args[0])
			if err != nil {
				return "", "", err
			}
			return "role_change", u.Role + " -> " + args[1], db.SetRole(ctx, args[0], args[1])
		})
}

func newUsersUnlockCmd() *cobra.Command {
	return userChange("unlock NAME", "Forget a user's failed sign-ins, ending a lockout", "  sightglass-ingest users unlock ann", cobra.ExactArgs(1),
		func(ctx context.Context, _ *cobra.Command, db *store.DB, args []string) (string, string, error) {
			if _, err := db.User(ctx, args[0]); err != nil {
				return "", "", err
			}
			return "user_unlock", "", db.ClearLoginFailures(ctx, args[0])
		})
}

func newUsersTOTPResetCmd() *cobra.Command {
	return userChange("totp-reset NAME", "Remove a user's second factor (a lost phone) and end their sessions; they set a new one under Account",
		"  sightglass-ingest users totp-reset ann", cobra.ExactArgs(1),
		func(ctx context.Context, _ *cobra.Command, db *store.DB, args []string) (string, string, error) {
			return "totp_remove", "by the cli", db.SetTOTP(ctx, args[0], nil)
		})
}

func newUsersRotateKeyCmd() *cobra.Command {
	var (
		rf      registryFlags
		keyFile string
		js      bool
	)
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Seal every TOTP secret under a new key file",
		Long: `rotate-key makes a new key for the dashboard's TOTP secrets, puts it in place
of the key file (web_totp_key_file, default totp.key in ca_dir), and seals
every secret under it again. The previous key stays beside it as .old until
every secret is done, so a crash at any moment leaves each secret readable:
run rotate-key again and it finishes. A running serve follows the new key
by itself. Back the new key file up once it is done.`,
		Example: `  sightglass-ingest users rotate-key --config /etc/sightglass/ingest.yaml
  sightglass-ingest users rotate-key --db sightglass-data/ingest.db --key-file sightglass-data/ca/totp.key --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rf.config != "" {
				cfg, err := config.LoadFile(rf.config)
				if err != nil {
					return err
				}
				keyFile = cfg.TOTPKeyFile()
			}
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			rep, err := web.RotateTOTPKey(cmd.Context(), db, keyFile, log)
			if err != nil {
				return err
			}
			if _, err := db.Audit(cmd.Context(), "cli", "totp_key_rotate", keyFile, fmt.Sprintf("key_id=%s resealed=%d upgraded=%d", rep.KeyID, rep.Resealed, rep.Upgraded)); err != nil {
				return err
			}
			if js {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rotated %s: key %s, %d secrets sealed under it; back the new key file up\n", keyFile, rep.KeyID, rep.Sealed)
			return nil
		},
	}
	rf.add(cmd, false)
	cmd.Flags().StringVar(&keyFile, "key-file", filepath.Join(defaultCADir, config.TOTPKeyFileName), "the TOTP key file (--config: its web_totp_key_file)")
	cmd.Flags().BoolVar(&js, "json", false, "print the result as JSON")
	return cmd
}

func newSitesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sites",
		Short: "Name the buildings the dashboard shows",
		Long: `sites gives a building (a tenant's site, known to agents only by its opaque id)
the display name the dashboard shows. The name stays in the ingest's
database; it never reaches an agent or the archive.`,
		Example: "  sightglass-ingest sites name acme/s-7f3a \"Main Library\"\n  sightglass-ingest sites list --json",
	}
	cmd.AddCommand(newSitesNameCmd(), newSitesListCmd())
	return cmd
}

func newSitesNameCmd() *cobra.Command {
	var rf registryFlags
	cmd := &cobra.Command{
		Use:     "name TENANT/SITE NAME",
		Short:   "Set a building's display name",
		Example: "  sightglass-ingest sites name acme/s-7f3a \"Main Library\"",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			refs, err := parseSites(args[:1])
			if err != nil {
				return err
			}
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			if err := db.PutSite(cmd.Context(), refs[0], args[1]); err != nil {
				return err
			}
			_, err = db.Audit(cmd.Context(), "cli", "site_name", refs[0].String(), args[1])
			return err
		},
	}
	rf.add(cmd, false)
	return cmd
}

func newSitesListCmd() *cobra.Command {
	var (
		rf registryFlags
		js bool
	)
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the buildings",
		Example: "  sightglass-ingest sites list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := rf.open(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			sites, err := db.Sites(cmd.Context())
			if err != nil {
				return err
			}
			if js {
				if sites == nil {
					sites = []store.Site{}
				}
				return writeJSON(cmd.OutOrStdout(), sites)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "BUILDING\tNAME")
			for _, s := range sites {
				fmt.Fprintf(tw, "%s\t%s\n", s.SiteRef, s.Name)
			}
			return tw.Flush()
		},
	}
	rf.add(cmd, false)
	cmd.Flags().BoolVar(&js, "json", false, "print the buildings as JSON")
	return cmd
}
