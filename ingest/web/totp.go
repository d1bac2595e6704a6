package web

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"html/template"
	"net/url"
	"strings"
	"time"

	"github.com/skip2/go-qrcode"
)

// TOTP is RFC 6238 with the parameters every authenticator app supports:
// HMAC-SHA1, 30-second steps, six digits. It is written here on
// crypto/hmac (two dozen lines) rather than taken from a module, so the
// whole second factor is readable in one place.
const (
	totpStep   = 30 * time.Second
	totpDigits = 6
	// totpSkew accepts the step before and after the current one: phone
	// clocks drift and people type slowly.
	totpSkew = 1
	// TOTPSecretLen is the secret's length in bytes (160 bits, RFC 4226's
	// recommendation).
	TOTPSecretLen = 20
)

// NewTOTPSecret returns a random TOTP secret.
func NewTOTPSecret() ([]byte, error) {
	s := make([]byte, TOTPSecretLen)
	if _, err := rand.Read(s); err != nil {
		return nil, fmt.Errorf("making a TOTP secret: %w", err)
	}
	return s, nil
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// TOTPSecretString is the secret as authenticator apps take it (base32).
func TOTPSecretString(secret []byte) string { return b32.EncodeToString(secret) }

// ParseTOTPSecret reads a base32 secret as TOTPSecretString writes it;
// spaces and case are ignored.
func ParseTOTPSecret(s string) ([]byte, error) {
	s = strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), " ", ""))
	b, err := b32.DecodeString(strings.TrimRight(s, "="))
	if err != nil || len(b) < 10 {
		return nil, fmt.Errorf("reading a TOTP secret: want base32 of at least 80 bits")
	}
	return b, nil
}

// TOTPURI is the otpauth:// URI an authenticator app imports.
func TOTPURI(issuer, account string, secret []byte) string {
	q := url.Values{}
	q.Set("secret", TOTPSecretString(secret))
	q.Set("issuer", issuer)
	q.Set("algorithm", "SHA1")
	q.Set("digits", fmt.Sprint(totpDigits))
	q.Set("period", fmt.Sprint(int(totpStep/time.Second)))
	return "otpauth://totp/" + url.PathEscape(issuer+":"+account) + "?" + q.Encode()
}

// hotp is RFC 4226's HOTP value for counter.
func hotp(secret []byte, counter uint64) string {
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], counter)
	m := hmac.New(sha1.New, secret)
	m.Write(msg[:])
	sum := m.Sum(nil)
	off := sum[len(sum)-1] & 0x0f
	code := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	return fmt.Sprintf("%0*d", totpDigits, code%1_000_000)
}

// TOTPCode is the code for time t.
func TOTPCode(secret []byte, t time.Time) string {
	return hotp(secret, uint64(t.Unix())/uint64(totpStep/time.Second))
}

// checkTOTP returns the step code matches at time t (within the skew), or
// -1. The caller records the step so a code is accepted only once.
func checkTOTP(secret []byte, code string, t time.Time) int64 {
	code = strings.TrimSpace(code)
	if len(code) != totpDigits {
		return -1
	}
	now := t.Unix() / int64(totpStep/time.Second)
	for d := -totpSkew; d <= totpSkew; d++ {
		step := now + int64(d)
		if hmac.Equal([]byte(hotp(secret, uint64(step))), []byte(code)) {
			return step
		}
	}
	return -1
}

// totpQR draws uri as a QR code in inline SVG (one path of unit squares),
// so an authenticator app can scan it: no image request, nothing for the
// CSP to allow. skip2/go-qrcode does the encoding; the SVG is ours.
func totpQR(uri string) (template.HTML, error) {
	q, err := qrcode.New(uri, qrcode.Medium)
	if err != nil {
		return "", fmt.Errorf("drawing the TOTP QR code: %w", err)
	}
	bm := q.Bitmap()
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="qr" viewBox="0 0 %d %d" role="img" aria-label="QR code of the second-factor secret"><rect class="qr-bg" width="%d" height="%d"/><path class="qr-fg" d="`,
		len(bm), len(bm), len(bm), len(bm))
	for y, row := range bm {
		for x, on := range row {
			if on {
				fmt.Fprintf(&b, "M%d %dh1v1h-1z", x, y)
			}
		}
	}
	b.WriteString(`"/></svg>`)
	return template.HTML(b.String()), nil //nolint:gosec // numbers only
}
