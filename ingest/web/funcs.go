package web

import (
	"fmt"
	"html/template"
	"strings"
	"time"
)

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"ago":  ago,
	"when": func(t time.Time) string { return whenFmt(t) },
	"dur":  durFmt,
	"join": strings.Join,
	"pct":  func(v float64) string { return fmt.Sprintf("%.1f%%", v) },
	"b64":  func(b []byte) string { return fmt.Sprintf("%x", b) },
	"days": func(t, now time.Time) int { return int(t.Sub(now).Hours() / 24) },
}

func whenFmt(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// ago is an age as people read it: "42 s", "5 min", "3 h", "12 d".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return durFmt(now.Sub(t))
}

func durFmt(d time.Duration) string {
	switch {
	case d < 0:
		return "in the future"
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h", int(d.Hours()))
	}
	return fmt.Sprintf("%d d", int(d.Hours()/24))
}
