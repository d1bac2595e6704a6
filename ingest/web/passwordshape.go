package web

import (
	"strings"
	"unicode"
)

// The embedded list catches the passwords people choose most; these
// checks catch the shapes that generate endless variants of them, which
// no list of a few hundred entries can hold: a short unit repeated
// (qwertyqwerty, letmeinletmein), a walk along the keyboard or the
// alphabet (123456789012, abcdefghijkl, zaq12wsxcde3), and the user's own
// name or e-mail address with a few characters added.

// repeatsUnit reports whether s is a shorter unit written out at least
// twice (a partial copy may trail: "abcabcab").
func repeatsUnit(s string) bool {
	r := []rune(s)
	for unit := 1; unit <= len(r)/2; unit++ {
		same := true
		for i := unit; i < len(r) && same; i++ {
			same = r[i] == r[i-unit]
		}
		if same {
			return true
		}
	}
	return false
}

// keyboardRows is the US QWERTY layout, unshifted, each row shifted half
// a key right of the one above as on a real keyboard.
var keyboardRows = []string{"1234567890-=", "qwertyuiop[]", "asdfghjkl;'", "zxcvbnm,./"}

// keyPos maps a key to its row and column.
var keyPos = func() map[rune][2]int {
	m := map[rune][2]int{}
	for r, row := range keyboardRows {
		for c, k := range row {
			m[k] = [2]int{r, c}
		}
	}
	return m
}()

// adjacentKeys reports whether a and b touch on the keyboard: the same
// key, neighbours in a row, or the two keys above or below (a row sits
// half a key right of the one above, so q touches 1, 2, a and w).
func adjacentKeys(a, b rune) bool {
	pa, oka := keyPos[a]
	pb, okb := keyPos[b]
	if !oka || !okb {
		return false
	}
	dr, dc := pb[0]-pa[0], pb[1]-pa[1]
	switch dr {
	case 0:
		return dc >= -1 && dc <= 1
	case 1: // b is in the row below: its columns c-1 and c touch
		return dc == 0 || dc == -1
	case -1: // b is in the row above: columns c and c+1 touch
		return dc == 0 || dc == 1
	}
	return false
}

// sequential reports whether b follows or precedes a in the alphabet or
// among the digits (0 follows 9, as on the keyboard's top row).
func sequential(a, b rune) bool {
	switch {
	case a >= 'a' && a <= 'z' && b >= 'a' && b <= 'z':
		return b-a == 1 || a-b == 1
	case unicode.IsDigit(a) && unicode.IsDigit(b):
		d := (b - a + 10) % 10
		return d == 1 || d == 9
	}
	return false
}

// isWalk reports whether s (lower case) is mostly walks: runs in which
// each character touches the one before on the keyboard or follows it in
// the alphabet or digits. It takes runs of four or more on average to
// count, so a passphrase, whose words break the walk every few
// characters, passes.
func isWalk(s string) bool {
	r := []rune(s)
	if len(r) < 2 {
		return false
	}
	runs := 1
	for i := 1; i < len(r); i++ {
		if r[i] != r[i-1] && !adjacentKeys(r[i-1], r[i]) && !sequential(r[i-1], r[i]) {
			runs++
		}
	}
	return len(r) >= 4*runs
}

// letters keeps the letters and digits of s, lower-cased: "J.Smith" and
// "jsmith" are one name.
func letters(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		if unicode.IsLetter(c) || unicode.IsDigit(c) {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// namePadded is the length of the most a password may add to the user's
// name or e-mail address and still count as "the name with a few
// characters added".
const namePadded = 6

// derivedFromName reports whether pw is the user's name, or part of an
// e-mail address used as the name (the local part; the domain's first
// label), with a few characters added. The local part and the name itself
// are refused anywhere in the password, as before; a domain label, which
// colleagues share and may use in a passphrase, only when little else is
// added.
func derivedFromName(name, pw string) bool {
	p := letters(pw)
	if p == "" {
		return false
	}
	local, domain, isMail := strings.Cut(strings.ToLower(name), "@")
	for _, part := range []string{name, local} {
		if l := letters(part); len(l) >= 3 && strings.Contains(p, l) {
			return true
		}
	}
	if isMail {
		label, _, _ := strings.Cut(domain, ".")
		if l := letters(label); len(l) >= 3 && strings.Contains(p, l) && len(p)-len(l) <= namePadded {
			return true
		}
		if l := letters(name); len(l) >= 3 && len(p)-len(l) <= namePadded && strings.Contains(p, l) {
			return true
		}
	}
	return false
}
