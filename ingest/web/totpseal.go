package web

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/sightglass-bms/sightglass/ingest/secretbox"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

// TOTP secrets are kept in the store sealed by secretbox under a key file
// outside the database, each bound to its user's id, so a copy of the
// database reveals none and a sealed secret copied to another user's row
// does not open. A row without the version prefix is a plaintext secret
// from a release before sealing: it is used, and sealed on the next
// successful sign-in or at start (PrepareTOTPSecrets).

// ErrWrongTOTPKey means sealed TOTP secrets in the store name a key the
// key file does not hold: the ingest was started with the wrong key file.
var ErrWrongTOTPKey = errors.New("TOTP secrets sealed under another key")

// TOTPStore is what sealing and re-sealing TOTP secrets needs of the hot
// store; *store.DB is one.
type TOTPStore interface {
	Users(ctx context.Context) ([]store.User, error)
	ReplaceTOTP(ctx context.Context, userID int64, prev, next []byte) (bool, error)
}

var _ TOTPStore = (*store.DB)(nil)

// totpAD binds a sealed secret to the user's row and to its purpose.
func totpAD(userID int64) []byte {
	return []byte("sightglass/web/totp/user/" + strconv.FormatInt(userID, 10))
}

// openTOTP returns u's TOTP secret in the clear, and whether the stored
// form should be sealed again (plaintext from an older release, or sealed
// under the key a rotation is replacing).
func openTOTP(keys *secretbox.Keyring, u store.User) (secret []byte, stale bool, err error) {
	if !secretbox.IsSealed(u.TOTPSecret) {
		return u.TOTPSecret, true, nil
	}
	secret, current, err := keys.Open(u.TOTPSecret, totpAD(u.ID))
	if err != nil {
		return nil, false, fmt.Errorf("opening the second factor of user %q: %w", u.Name, err)
	}
	return secret, !current, nil
}

// sealTOTP seals secret for the user with id.
func sealTOTP(keys *secretbox.Keyring, id int64, secret []byte) ([]byte, error) {
	sealed, err := keys.Seal(secret, totpAD(id))
	if err != nil {
		return nil, fmt.Errorf("sealing the second factor of user %d: %w", id, err)
	}
	return sealed, nil
}

// keepCurrent makes sure stored, just written for the user with id, is
// under the key the key file holds now: if a rotation put a new key in
// place between sealing and storing, it seals secret again in its place.
// Without this a value sealed under the old key could be stored after the
// rotation's last pass and outlive the old key file.
func keepCurrent(ctx context.Context, st TOTPStore, keys *secretbox.Keyring, id int64, stored, secret []byte) error {
	for range 3 {
		cur, err := keys.IsCurrent(stored)
		if err != nil || cur {
			return err
		}
		next, err := sealTOTP(keys, id, secret)
		if err != nil {
			return err
		}
		ok, err := st.ReplaceTOTP(ctx, id, stored, next)
		if err != nil || !ok {
			// Changed meanwhile (a reset, a new set-up): that write is
			// the one that counts, and it did its own check.
			return err
		}
		stored = next
	}
	return fmt.Errorf("sealing the second factor of user %d: the key file keeps changing", id)
}

// reseal stores secret sealed under the current key in place of the
// user's stored value, if that is still what the row holds. It reports
// whether it replaced it.
func reseal(ctx context.Context, st TOTPStore, keys *secretbox.Keyring, u store.User, secret []byte) (bool, error) {
	next, err := sealTOTP(keys, u.ID, secret)
	if err != nil {
		return false, err
	}
	ok, err := st.ReplaceTOTP(ctx, u.ID, u.TOTPSecret, next)
	if err != nil || !ok {
		return false, err
	}
	return true, keepCurrent(ctx, st, keys, u.ID, next, secret)
}

// SealReport counts what PrepareTOTPSecrets and RotateTOTPKey found.
type SealReport struct {
	// KeyID is the id of the key every readable secret is sealed under.
	KeyID string `json:"key_id"`
	// Sealed is how many users have a second factor.
	Sealed int `json:"sealed"`
	// Upgraded were plaintext (from an older release) and are sealed now.
	Upgraded int `json:"upgraded"`
	// Resealed were under the previous key and are under the current now.
	Resealed int `json:"resealed"`
	// Unreadable name a key the keyring holds but do not open (altered or
	// copied from another user's row); those users' second factor must be
	// reset (`users totp-reset`). Their sign-in fails until then.
	Unreadable []string `json:"unreadable,omitempty"`
}

// checkKeys fails with ErrWrongTOTPKey when any sealed secret names a key
// keys does not hold, listing the users and the key ids.
func checkKeys(users []store.User, keys *secretbox.Keyring) error {
	foreign := map[string][]string{}
	cur, old := keys.CurrentID(), keys.OldID()
	for _, u := range users {
		if !secretbox.IsSealed(u.TOTPSecret) {
			continue
		}
		id, err := secretbox.KeyIDOf(u.TOTPSecret)
		if err != nil || id == cur || id == old {
			continue // a damaged value is reported per user, not as a wrong key
		}
		foreign[id] = append(foreign[id], u.Name)
	}
	if len(foreign) == 0 {
		return nil
	}
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(foreign)) {
		parts = append(parts, fmt.Sprintf("key %s (users %s)", id, strings.Join(foreign[id], ", ")))
	}
	return fmt.Errorf("%w: the database holds second-factor secrets sealed under %s, but the key file %s holds key %s: start with the key file that sealed them (restore it from backup, or its %s after an interrupted rotation), or reset those users' second factor with `sightglass-ingest users totp-reset NAME`",
		ErrWrongTOTPKey, strings.Join(parts, "; "), keys.Path(), cur, secretbox.OldSuffix)
}

// PrepareTOTPSecrets runs at start, before the dashboard serves: it fails
// with ErrWrongTOTPKey (naming the key file) when sealed secrets name a
// key keys does not hold, never locking those users out silently; then it
// seals every plaintext secret (an upgrade from a release before sealing)
// and every one under a rotation's previous key, and logs the counts. A
// secret that does not open is logged with what to do and counted.
func PrepareTOTPSecrets(ctx context.Context, st TOTPStore, keys *secretbox.Keyring, log *slog.Logger) (SealReport, error) {
	rep, err := resealAll(ctx, st, keys, log, nil)
	if err != nil {
		return rep, err
	}
	if rep.Upgraded > 0 || rep.Resealed > 0 {
		log.Info("sealed the dashboard's TOTP secrets", "upgraded_from_plaintext", rep.Upgraded,
			"resealed_under_current_key", rep.Resealed, "key_file", keys.Path(), "key_id", keys.CurrentID())
	}
	if old := keys.OldID(); old != "" {
		log.Warn("a TOTP key rotation did not finish: every secret is sealed under the new key now; run `sightglass-ingest users rotate-key` again to remove the old key file",
			"old_key_file", keys.Path()+secretbox.OldSuffix, "old_key_id", old)
	}
	return rep, nil
}

// resealAll checks the keys and seals every stale secret under the
// current key. crash, when set (tests), is called after each re-sealed
// secret and stops the pass with its error, as a crash would.
func resealAll(ctx context.Context, st TOTPStore, keys *secretbox.Keyring, log *slog.Logger, crash func(n int) error) (SealReport, error) {
	rep := SealReport{KeyID: keys.CurrentID()}
	// A few passes: a user who changes their second factor while we run
	// makes our replace miss, and the next pass sees the new value.
	for pass := 0; ; pass++ {
		users, err := st.Users(ctx)
		if err != nil {
			return rep, fmt.Errorf("sealing TOTP secrets: %w", err)
		}
		if err := checkKeys(users, keys); err != nil {
			return rep, err
		}
		rep.Sealed, rep.Unreadable = 0, nil
		missed := 0
		for _, u := range users {
			if !u.HasTOTP() {
				continue
			}
			rep.Sealed++
			secret, stale, err := openTOTP(keys, u)
			if err != nil {
				rep.Unreadable = append(rep.Unreadable, u.Name)
				log.Error("a TOTP secret does not open: that user cannot sign in until their second factor is reset with `sightglass-ingest users totp-reset`",
					"user", u.Name, "err", err)
				continue
			}
			if !stale {
				continue
			}
			ok, err := reseal(ctx, st, keys, u, secret)
			if err != nil {
				return rep, fmt.Errorf("sealing TOTP secrets: %w", err)
			}
			if !ok {
				missed++
				continue
			}
			if secretbox.IsSealed(u.TOTPSecret) {
				rep.Resealed++
			} else {
				rep.Upgraded++
			}
			if crash != nil {
				if err := crash(rep.Upgraded + rep.Resealed); err != nil {
					return rep, err
				}
			}
		}
		if missed == 0 {
			return rep, nil
		}
		if pass == 4 {
			return rep, fmt.Errorf("sealing TOTP secrets: %d kept changing while being sealed; run again", missed)
		}
	}
}

// RotateTOTPKey puts a new key in the key file at path and seals every
// TOTP secret under it, keeping the previous key as path+".old" until all
// are done (see secretbox.BeginRotation for why a crash at any moment
// leaves every secret readable). Running it again after a crash finishes
// the rotation. A running ingest follows: it reloads the key file when it
// meets the new key or the file changed before it seals.
func RotateTOTPKey(ctx context.Context, st TOTPStore, path string, log *slog.Logger) (SealReport, error) {
	return rotateTOTPKey(ctx, st, path, log, nil)
}

func rotateTOTPKey(ctx context.Context, st TOTPStore, path string, log *slog.Logger, crash func(n int) error) (SealReport, error) {
	unlock, err := secretbox.LockRotation(path)
	if err != nil {
		return SealReport{}, err
	}
	defer unlock()
	// Refuse before touching any file when the key on disk is not the one
	// that sealed the secrets: rotating would bury the right one.
	keys, err := secretbox.Open(path)
	if err != nil {
		return SealReport{}, err
	}
	users, err := st.Users(ctx)
	if err != nil {
		return SealReport{}, fmt.Errorf("rotating the TOTP key: %w", err)
	}
	if err := checkKeys(users, keys); err != nil {
		return SealReport{}, err
	}
	if keys, err = secretbox.BeginRotation(path); err != nil {
		return SealReport{}, err
	}
	log.Info("rotating the TOTP key", "key_file", path, "old_key_id", keys.OldID(), "new_key_id", keys.CurrentID())
	rep, err := resealAll(ctx, st, keys, log, crash)
	if err != nil {
		return rep, fmt.Errorf("rotating the TOTP key (run it again to finish; until then both %s and %s are needed): %w", path, path+secretbox.OldSuffix, err)
	}
	if len(rep.Unreadable) > 0 {
		// Finishing would leave them naming a key that no file holds,
		// and every later start would refuse.
		return rep, fmt.Errorf("rotating the TOTP key: the second factor of %s does not open under either key: reset it with `sightglass-ingest users totp-reset NAME`, then run rotate-key again to finish (until then keep %s)",
			strings.Join(rep.Unreadable, ", "), path+secretbox.OldSuffix)
	}
	if err := keys.FinishRotation(); err != nil {
		return rep, err
	}
	log.Info("rotated the TOTP key", "key_file", path, "key_id", keys.CurrentID(), "resealed", rep.Resealed, "upgraded_from_plaintext", rep.Upgraded)
	return rep, nil
}
