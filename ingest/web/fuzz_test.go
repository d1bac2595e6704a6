package web

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzVerifyPassword feeds stored hashes of any shape to the verifier: it
// must never panic, and a damaged hash never matches.
func FuzzVerifyPassword(f *testing.F) {
	good, err := HashPassword(testPassword, cheap)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, testPassword)
	f.Add("$argon2id$v=19$m=64,t=1,p=1$c2FsdA$", "x")
	f.Add("$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5", "x")
	f.Fuzz(func(t *testing.T, hash, pw string) {
		ok, err := VerifyPassword(hash, pw)
		if ok && err != nil {
			t.Fatalf("matched with an error: %v", err)
		}
		if ok && hash != good {
			// Only a well-formed hash of pw can match; prove it by
			// checking it is one.
			if !strings.HasPrefix(hash, "$argon2id$v=19$") {
				t.Fatalf("hash %q matched", hash)
			}
		}
	})
}

// FuzzParseWindow reads any query as a chart window: an error, or a window
// with from before to, no longer than a year, on a known resolution.
func FuzzParseWindow(f *testing.F) {
	for _, q := range []string{"", "range=7d", "range=1y", "from=0&to=1", "from=-9223372036854775808&to=9223372036854775807", "from=5&to=5"} {
		f.Add(q)
	}
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		w, err := parseWindow(q, now)
		if err != nil {
			return
		}
		if !w.From.Before(w.To) || w.To.Sub(w.From) > maxSpan+w.Res || (w.Res != 5*time.Minute && w.Res != time.Hour && w.Res != 24*time.Hour) {
			t.Fatalf("window %+v from %q", w, raw)
		}
	})
}

// FuzzRequest sends any path and query, signed in as alice (an engineer
// of building A): the answer is never a server error and never carries
// building B's data.
func FuzzRequest(f *testing.F) {
	e := newEnv(f)
	c := e.client()
	c.mustLogin("alice")
	u, _ := url.Parse(e.ts.URL)
	var cookie *http.Cookie
	for _, ck := range c.hc.Jar.Cookies(u) {
		if ck.Name == sessionCookie {
			cookie = ck
		}
	}
	for _, u := range buildingURLs {
		f.Add(u.path)
	}
	f.Add("/b/acme/s-aaaa/trend?p=0000000000000001&range=365d")
	f.Add("/b/acme/s-aaaa?q=%00&status=old&page=-1")
	h := e.srv.Handler()
	f.Fuzz(func(t *testing.T, target string) {
		ref, err := url.ParseRequestURI(target)
		if err != nil || ref.Host != "" || !strings.HasPrefix(target, "/") {
			return
		}
		req, err := http.NewRequest(http.MethodGet, "https://dash.example"+ref.RequestURI(), nil)
		if err != nil {
			return
		}
		req.RemoteAddr = "192.0.2.1:1234"
		req.AddCookie(cookie)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("GET %s: %d", target, w.Code)
		}
		for _, leak := range []string{secretName, "B-return", "Building B"} {
			if strings.Contains(w.Body.String(), leak) {
				t.Fatalf("GET %s shows %q", target, leak)
			}
		}
	})
}
