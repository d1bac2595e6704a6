package web

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/secretbox"
	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

var bigSite = store.SiteRef{Tenant: "acme", Site: "s-big"}

// benchServer is a dashboard over a fresh store, with an engineer of
// bigSite signed in; cookie is their session cookie.
func benchServer(b *testing.B, now time.Time) (*Server, *store.DB, *http.Cookie) {
	b.Helper()
	ctx := context.Background()
	clk := func() time.Time { return now }
	db, err := store.Open(ctx, filepath.Join(b.TempDir(), "bench.db"), store.Options{Now: clk})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	keys, _, err := secretbox.LoadOrCreate(filepath.Join(b.TempDir(), "totp.key"))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Config{Store: db, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clk, HashParams: cheap, TOTPKeys: keys})
	if err != nil {
		b.Fatal(err)
	}
	u, err := db.AddUser(ctx, "eng", store.RoleEngineer, "x")
	if err != nil {
		b.Fatal(err)
	}
	if err := db.AssignSites(ctx, "eng", []store.SiteRef{bigSite}); err != nil {
		b.Fatal(err)
	}
	id := randomBytes(32)
	if err := db.CreateSession(ctx, id, store.Session{UserID: u.ID, CSRF: randomBytes(32), Stage: store.SessionFull}); err != nil {
		b.Fatal(err)
	}
	return srv, db, &http.Cookie{Name: sessionCookie, Value: b64.EncodeToString(id)}
}

func benchGet(b *testing.B, srv *Server, cookie *http.Cookie, path string) int {
	b.Helper()
	h := srv.Handler()
	var size int
	for b.Loop() {
		req := httptest.NewRequest(http.MethodGet, "https://dash.example"+path, nil)
		req.AddCookie(cookie)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("GET %s: %d", path, w.Code)
		}
		size = w.Body.Len()
	}
	b.ReportMetric(float64(size), "page_bytes")
	return size
}

// BenchmarkBuildingPage loads a building of 10,000 named, tagged points:
// the first page of the list, a search, and the portfolio that counts the
// stale ones.
func BenchmarkBuildingPage(b *testing.B) {
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	srv, db, cookie := benchServer(b, now)
	const points = 10_000
	var cat []store.CatalogPoint
	for chunk := 0; chunk < points; chunk += 1000 {
		bt := &batch.Batch{Header: batch.Header{Seq: uint64(chunk)}}
		for p := chunk; p < chunk+1000; p++ {
			bt.Samples = append(bt.Samples, telemetry.Sample{PointID: uint64(p + 1), Time: now.Add(-time.Duration(p%600) * time.Second).UnixMilli(), Value: float64(p) / 7})
			cat = append(cat, store.CatalogPoint{ID: uint64(p + 1), Name: fmt.Sprintf("AHU-%02d/VAV-%03d/zone-temp-%05d", p/1000, p%1000/10, p), Unit: "degC", Tags: []string{"zone", fmt.Sprintf("floor-%d", p%12)}})
		}
		if err := db.ObserveBatch(ctx, bigSite, "ag-big", bt); err != nil {
			b.Fatal(err)
		}
	}
	if err := db.PutCatalog(ctx, bigSite.Tenant, bigSite.Site, "ag-big", cat); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct{ name, path string }{
		{"10k_points/first_page", "/b/acme/s-big"},
		{"10k_points/search", "/b/acme/s-big?q=zone-temp-0999&tag=zone"},
		{"10k_points/portfolio", "/"},
		{"10k_points/completeness_24h", "/b/acme/s-big/completeness"},
	} {
		b.Run(bc.name, func(b *testing.B) { benchGet(b, srv, cookie, bc.path) })
	}
}

// BenchmarkTrendYear charts one point holding a year of 5-minute samples
// (105,120) at each range's resolution, and exports the year as CSV.
func BenchmarkTrendYear(b *testing.B) {
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	srv, db, cookie := benchServer(b, now)
	start := now.Add(-365 * 24 * time.Hour).Truncate(24 * time.Hour)
	for d := range 366 {
		bt := &batch.Batch{Header: batch.Header{Seq: uint64(d)}}
		for k := range 288 {
			t := start.Add(time.Duration(d)*24*time.Hour + time.Duration(k)*5*time.Minute)
			if t.After(now) {
				break
			}
			bt.Samples = append(bt.Samples, telemetry.Sample{PointID: 7, Time: t.UnixMilli(), Value: 20 + float64(k%48)/4})
		}
		if err := db.ObserveBatch(ctx, bigSite, "ag-big", bt); err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct{ name, path string }{
		{"year/daily", "/b/acme/s-big/trend?p=0000000000000007&range=365d"},
		{"90d/daily", "/b/acme/s-big/trend?p=0000000000000007&range=90d"},
		{"30d/hourly", "/b/acme/s-big/trend?p=0000000000000007&range=30d"},
		{"48h/5min", "/b/acme/s-big/trend?p=0000000000000007&from=" + fmt.Sprint(now.Add(-48*time.Hour).UnixMilli()) + "&to=" + fmt.Sprint(now.UnixMilli())},
		{"year/csv", "/b/acme/s-big/trend.csv?p=0000000000000007&range=365d"},
	} {
		b.Run(bc.name, func(b *testing.B) { benchGet(b, srv, cookie, bc.path) })
	}
}
