package web

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/store"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

func (s *Server) routes() {
	mux := http.NewServeMux()
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	files := http.FileServerFS(static)
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Files only: no directory listing.
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			s.errorPage(w, r, http.StatusNotFound, "There is no such page.")
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	})))
	mux.HandleFunc("GET /login", s.handleLoginGet)
	mux.HandleFunc("POST /login", s.handleLoginPost)
	mux.HandleFunc("GET /login/totp", s.handleTOTPGet)
	mux.HandleFunc("POST /login/totp", s.handleTOTPPost)
	mux.HandleFunc("POST /logout", s.auth("", s.handleLogout))
	mux.HandleFunc("GET /account", s.auth("", s.handleAccount))
	mux.HandleFunc("POST /account/password", s.auth("", s.handlePassword))
	mux.HandleFunc("POST /account/totp", s.auth("", s.handleTOTPSetup))

	mux.HandleFunc("GET /{$}", s.auth(store.RoleViewer, s.handlePortfolio))
	mux.HandleFunc("GET /b/{tenant}/{site}", s.auth(store.RoleViewer, s.site(s.handleBuilding)))
	mux.HandleFunc("GET /b/{tenant}/{site}/trend", s.auth(store.RoleViewer, s.site(s.handleTrend)))
	mux.HandleFunc("GET /b/{tenant}/{site}/trend.csv", s.auth(store.RoleEngineer, s.site(s.handleExport)))
	mux.HandleFunc("GET /b/{tenant}/{site}/completeness", s.auth(store.RoleViewer, s.site(s.handleCompleteness)))

	s.adminRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.errorPage(w, r, http.StatusNotFound, "There is no such page.")
	})
	s.mux = mux
}

// view is what every page template gets.
type view struct {
	Title string
	User  *store.User
	CSRF  string
	Now   time.Time
	Page  any
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, page string, rq *request, data any) {
	t := s.pages[page]
	if t == nil {
		s.serverError(w, r, fmt.Errorf("no template %q", page))
		return
	}
	v := view{Title: page, Now: s.cfg.Now(), Page: data}
	if rq != nil {
		v.User = &rq.user
		v.CSRF = b64.EncodeToString(rq.sess.CSRF)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout.html", v); err != nil {
		s.serverError(w, r, fmt.Errorf("rendering %s: %w", page, err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// Pages hold building data: never kept by a shared cache or the
	// browser's back button after sign-out.
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

type errorView struct {
	Status  int
	Text    string
	Message string
	Ref     string
}

// errorPage answers with a page that says what the user can do and
// nothing about the system: no paths, queries or stack traces.
func (s *Server) errorPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	s.errorRef(w, r, status, msg, "")
}

func (s *Server) errorRef(w http.ResponseWriter, r *http.Request, status int, msg, ref string) {
	t := s.pages["error"]
	var buf bytes.Buffer
	if t == nil || t.ExecuteTemplate(&buf, "layout.html", view{Title: http.StatusText(status), Now: s.cfg.Now(),
		Page: errorView{Status: status, Text: http.StatusText(status), Message: msg, Ref: ref}}) != nil {
		buf.Reset()
		buf.WriteString("<!doctype html><title>Error</title><p>Something went wrong.</p>")
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// serverError logs err under a reference the user can quote, and shows
// only the reference.
func (s *Server) serverError(w http.ResponseWriter, r *http.Request, err error) {
	ref := fmt.Sprintf("%x", randomBytes(6))
	s.log.Error("dashboard request failed", "ref", ref, "method", r.Method, "path", r.URL.Path, "err", err)
	s.errorRef(w, r, http.StatusInternalServerError, "Something went wrong on our side. Quote this reference to your administrator.", ref)
}

// building is a building the request may see.
type building struct {
	store.Site
	// Label is the display name, else the pseudonym.
	Label string
	Path  string // "/b/{tenant}/{site}"
}

func siteLabel(st store.Site) building {
	l := st.Name
	if l == "" {
		l = st.Site
	}
	return building{Site: st, Label: l, Path: "/b/" + st.Tenant + "/" + st.Site}
}

// site wraps a handler of one building: the building must exist and the
// user must be allowed it, else 404 — the same answer for both, so a URL
// does not even tell another building exists.
func (s *Server) site(h func(http.ResponseWriter, *http.Request, *request, building)) func(http.ResponseWriter, *http.Request, *request) {
	return func(w http.ResponseWriter, r *http.Request, rq *request) {
		ref := store.SiteRef{Tenant: r.PathValue("tenant"), Site: r.PathValue("site")}
		if !rq.user.MaySee(ref) {
			s.log.Info("refused a building outside the user's scope", "user", rq.user.Name, "tenant", clip(ref.Tenant), "site", clip(ref.Site))
			s.errorPage(w, r, http.StatusNotFound, "There is no such building, or it is not one of yours.")
			return
		}
		sites, err := s.st.Sites(r.Context())
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		for _, st := range sites {
			if st.SiteRef == ref {
				h(w, r, rq, siteLabel(st))
				return
			}
		}
		s.errorPage(w, r, http.StatusNotFound, "There is no such building, or it is not one of yours.")
	}
}

// pointView is one point as pages show it.
type pointView struct {
	ID       uint64
	Hex      string
	Name     string // from the catalogue, else the hex id
	Named    bool
	Unit     string
	Tags     []string
	Value    string
	Status   string
	Time     time.Time
	Age      time.Duration
	Stale    bool
	Interval time.Duration
}

// points joins a building's latest values with its catalogue.
func (s *Server) points(r *http.Request, b building) ([]pointView, error) {
	latest, err := s.st.LatestValues(r.Context(), b.SiteRef)
	if err != nil {
		return nil, err
	}
	cat, err := s.st.Catalog(r.Context(), b.Tenant, b.Site.Site)
	if err != nil {
		return nil, err
	}
	byID := make(map[uint64]store.CatalogPoint, len(cat))
	for _, c := range cat {
		byID[c.ID] = c
	}
	now := s.cfg.Now()
	out := make([]pointView, 0, len(latest))
	for _, l := range latest {
		c := byID[l.PointID]
		p := pointView{ID: l.PointID, Hex: fmt.Sprintf("%016x", l.PointID), Name: c.Name, Named: c.Name != "", Unit: c.Unit, Tags: c.Tags,
			Value: formatValue(l.Value), Status: l.Status.String(), Time: l.Time, Age: now.Sub(l.Time), Interval: l.Interval}
		if p.Name == "" {
			p.Name = p.Hex
		}
		p.Stale = p.Age > s.staleAfter(l.Interval)
		if l.Status == telemetry.StatusCommFailure {
			p.Value = "—"
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b pointView) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// staleAfter is how old a point's value may be before it counts as stale:
// three sampling intervals, at least StaleAfter.
func (s *Server) staleAfter(interval time.Duration) time.Duration {
	return max(3*interval, s.cfg.StaleAfter)
}

func formatValue(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

type agentView struct {
	store.AgentHealth
	Known      bool // the ingest has stored a batch of it
	Revoked    bool
	CertExpiry time.Time
	Offline    bool
}

type portfolioRow struct {
	building
	Points  int
	Stale   int
	Agents  []agentView
	Offline bool
}

type stalePoint struct {
	building
	pointView
}

type portfolioPage struct {
	Buildings []portfolioRow
	Stale     []stalePoint
	MoreStale int
}

// maxStaleListed caps the portfolio's list of stale points.
const maxStaleListed = 50

func (s *Server) handlePortfolio(w http.ResponseWriter, r *http.Request, rq *request) {
	ctx := r.Context()
	sites, err := s.st.Sites(ctx)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	healths, err := s.st.AgentHealths(ctx)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	agents, err := s.st.Agents(ctx)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	now := s.cfg.Now()
	var page portfolioPage
	for _, st := range sites {
		if !rq.user.MaySee(st.SiteRef) {
			continue
		}
		row := portfolioRow{building: siteLabel(st)}
		pts, err := s.points(r, row.building)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		row.Points = len(pts)
		for _, p := range pts {
			if p.Stale {
				row.Stale++
				if len(page.Stale) < maxStaleListed {
					page.Stale = append(page.Stale, stalePoint{row.building, p})
				} else {
					page.MoreStale++
				}
			}
		}
		seen := map[string]bool{}
		for _, h := range healths {
			if h.Site != st.SiteRef {
				continue
			}
			seen[h.AgentID] = true
			av := agentView{AgentHealth: h, Known: true, Offline: now.Sub(h.LastUpload) > s.cfg.AgentOffline}
			row.Agents = append(row.Agents, av)
		}
		for _, a := range agents {
			if a.Tenant == st.Tenant && a.Site == st.Site && !seen[a.ID] {
				row.Agents = append(row.Agents, agentView{AgentHealth: store.AgentHealth{AgentID: a.ID, Site: st.SiteRef}, Offline: true})
			}
		}
		for i := range row.Agents {
			av := &row.Agents[i]
			for _, a := range agents {
				if a.ID == av.AgentID {
					av.Revoked = a.Revoked()
				}
			}
			if certs, err := s.st.Certs(ctx, av.AgentID); err == nil && len(certs) > 0 {
				av.CertExpiry = certs[0].NotAfter
			}
			if av.Offline && !av.Revoked {
				row.Offline = true
			}
		}
		page.Buildings = append(page.Buildings, row)
	}
	slices.SortFunc(page.Stale, func(a, b stalePoint) int { return int(b.Age - a.Age) })
	s.render(w, r, http.StatusOK, "portfolio", rq, page)
}

// deviceTag is the tag prefix a full catalogue gives every point: the
// name of the device it is read from (agent/daemon.Catalog). Tags-only and
// no catalogue carry no device, names being what the policy withholds.
const deviceTag = "device:"

// deviceRow is one device of a building, summed over its points.
type deviceRow struct {
	Name   string
	Tag    string // the filter that lists its points
	URL    string
	Points int
	Stale  int
	Failed int // points whose latest read failed: fault or comm-failure
	Class  string
}

// pointDevice is the device a point's tags name, or "".
func pointDevice(p pointView) string {
	for _, t := range p.Tags {
		if name, ok := strings.CutPrefix(t, deviceTag); ok && name != "" {
			return name
		}
	}
	return ""
}

// devices groups a building's points by device, problems first, then by
// name. Points without a device tag are counted apart (NoDevice).
func devices(pts []pointView, path string) (rows []deviceRow, noDevice int) {
	by := map[string]*deviceRow{}
	for _, p := range pts {
		name := pointDevice(p)
		if name == "" {
			noDevice++
			continue
		}
		d := by[name]
		if d == nil {
			d = &deviceRow{Name: name, Tag: deviceTag + name, URL: path + "?" + url.Values{"tag": {deviceTag + name}}.Encode()}
			by[name] = d
		}
		d.Points++
		if p.Stale {
			d.Stale++
		}
		if p.Status == telemetry.StatusFault.String() || p.Status == telemetry.StatusCommFailure.String() {
			d.Failed++
		}
	}
	for _, d := range by {
		switch {
		case d.Failed > 0:
			d.Class = "bad"
		case d.Stale > 0:
			d.Class = "warn"
		default:
			d.Class = "ok"
		}
		rows = append(rows, *d)
	}
	rank := map[string]int{"bad": 0, "warn": 1, "ok": 2}
	slices.SortFunc(rows, func(a, b deviceRow) int {
		if r := rank[a.Class] - rank[b.Class]; r != 0 {
			return r
		}
		return strings.Compare(a.Name, b.Name)
	})
	return rows, noDevice
}

type buildingPage struct {
	building
	// Devices are the building's devices from the catalogue's device
	// tags; empty when the catalogue names none (tags-only or none).
	Devices []deviceRow
	// NoDevice counts the points without a device tag.
	NoDevice       int
	Points         []pointView
	Total, Matched int
	Q, Tag, Status string
	Tags           []string
	Statuses       []string
	PageNo, Pages  int
	PrevURL        string
	NextURL        string
}

// pageSize is how many points a building page lists at once; filters
// search all of them.
const pageSize = 200

func (s *Server) handleBuilding(w http.ResponseWriter, r *http.Request, rq *request, b building) {
	pts, err := s.points(r, b)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	q := r.URL.Query()
	page := buildingPage{building: b, Total: len(pts), Q: strings.TrimSpace(q.Get("q")), Tag: q.Get("tag"), Status: q.Get("status"),
		Statuses: []string{"ok", "stale", "fault", "comm-failure", "out-of-service", "overridden", "old"}}
	page.Devices, page.NoDevice = devices(pts, b.Path)
	tags := map[string]bool{}
	needle := strings.ToLower(page.Q)
	var matched []pointView
	for _, p := range pts {
		for _, t := range p.Tags {
			tags[t] = true
		}
		if needle != "" && !strings.Contains(strings.ToLower(p.Name), needle) && !strings.Contains(p.Hex, needle) {
			continue
		}
		if page.Tag != "" && !slices.Contains(p.Tags, page.Tag) {
			continue
		}
		switch {
		case page.Status == "":
		case page.Status == "old":
			if !p.Stale {
				continue
			}
		case p.Status != page.Status:
			continue
		}
		matched = append(matched, p)
	}
	for t := range tags {
		page.Tags = append(page.Tags, t)
	}
	slices.Sort(page.Tags)
	page.Matched = len(matched)
	page.Pages = max(1, (len(matched)+pageSize-1)/pageSize)
	page.PageNo, _ = strconv.Atoi(q.Get("page"))
	page.PageNo = min(max(page.PageNo, 1), page.Pages)
	lo := (page.PageNo - 1) * pageSize
	page.Points = matched[lo:min(lo+pageSize, len(matched))]
	link := func(n int) string {
		v := r.URL.Query()
		v.Set("page", strconv.Itoa(n))
		return b.Path + "?" + v.Encode()
	}
	if page.PageNo > 1 {
		page.PrevURL = link(page.PageNo - 1)
	}
	if page.PageNo < page.Pages {
		page.NextURL = link(page.PageNo + 1)
	}
	s.render(w, r, http.StatusOK, "building", rq, page)
}

// errBadRequest marks a query the user must fix; its message is shown.
var errBadRequest = errors.New("bad request")
