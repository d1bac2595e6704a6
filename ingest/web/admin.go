package web

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sightglass-bms/sightglass/ingest/pki"
	"github.com/sightglass-bms/sightglass/ingest/store"
)

func (s *Server) adminRoutes(mux *http.ServeMux) {
	a := func(h func(http.ResponseWriter, *http.Request, *request)) http.HandlerFunc {
		return s.auth(store.RoleAdmin, h)
	}
	mux.HandleFunc("GET /admin", a(s.handleAdmin))
	mux.HandleFunc("GET /admin/audit", a(s.handleAuditLog))
	mux.HandleFunc("POST /admin/users", a(s.handleUserAdd))
	mux.HandleFunc("POST /admin/users/{name}/{action}", a(s.handleUserChange))
	mux.HandleFunc("POST /admin/sites/{tenant}/{site}/name", a(s.handleSiteName))
	mux.HandleFunc("POST /admin/tokens", a(s.handleTokenCreate))
	mux.HandleFunc("POST /admin/agents/{id}/revoke", a(s.handleRevoke))
}

type agentRow struct {
	store.Agent
	CertExpiry time.Time
}

type tokenRow struct {
	store.Token
	Prefix string
}

type adminPage struct {
	Users    []store.User
	Sites    []building
	Tokens   []tokenRow
	Agents   []agentRow
	Audit    []store.AuditEntry
	Message  string
	Error    string
	NewToken string // shown once, right after it was made
	Tokens0  bool   // whether tokens can be made here
}

func (s *Server) adminPage(r *http.Request) (adminPage, error) {
	ctx := r.Context()
	var p adminPage
	var err error
	if p.Users, err = s.st.Users(ctx); err != nil {
		return p, err
	}
	sites, err := s.st.Sites(ctx)
	if err != nil {
		return p, err
	}
	for _, st := range sites {
		p.Sites = append(p.Sites, siteLabel(st))
	}
	toks, err := s.st.Tokens(ctx)
	if err != nil {
		return p, err
	}
	for _, t := range toks {
		p.Tokens = append(p.Tokens, tokenRow{Token: t, Prefix: fmt.Sprintf("%x", t.Hash[:min(6, len(t.Hash))])})
	}
	agents, err := s.st.Agents(ctx)
	if err != nil {
		return p, err
	}
	for _, a := range agents {
		row := agentRow{Agent: a}
		if certs, err := s.st.Certs(ctx, a.ID); err == nil && len(certs) > 0 {
			row.CertExpiry = certs[0].NotAfter
		}
		p.Agents = append(p.Agents, row)
	}
	if p.Audit, err = s.st.AuditRecent(ctx, 0, 25); err != nil {
		return p, err
	}
	p.Tokens0 = s.cfg.CAFingerprint != (pki.Fingerprint{})
	return p, nil
}

func (s *Server) showAdmin(w http.ResponseWriter, r *http.Request, rq *request, status int, msg, errMsg, token string) {
	p, err := s.adminPage(r)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	p.Message, p.Error, p.NewToken = msg, errMsg, token
	s.render(w, r, status, "admin", rq, p)
}

func (s *Server) handleAdmin(w http.ResponseWriter, r *http.Request, rq *request) {
	s.showAdmin(w, r, rq, http.StatusOK, r.URL.Query().Get("done"), "", "")
}

// done redirects after a change (POST, redirect, GET) with a short note.
func done(w http.ResponseWriter, r *http.Request, msg string) {
	http.Redirect(w, r, "/admin?done="+strings.ReplaceAll(msg, " ", "+"), http.StatusSeeOther)
}

type auditPage struct {
	Entries []store.AuditEntry
	Older   string
}

const auditPageSize = 200

func (s *Server) handleAuditLog(w http.ResponseWriter, r *http.Request, rq *request) {
	before, _ := strconv.ParseInt(r.URL.Query().Get("before"), 10, 64)
	es, err := s.st.AuditRecent(r.Context(), before, auditPageSize)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	p := auditPage{Entries: es}
	if len(es) == auditPageSize {
		p.Older = "/admin/audit?before=" + strconv.FormatInt(es[len(es)-1].Seq, 10)
	}
	s.render(w, r, http.StatusOK, "audit", rq, p)
}

func (s *Server) handleUserAdd(w http.ResponseWriter, r *http.Request, rq *request) {
	ctx := r.Context()
	name, role, pw := strings.TrimSpace(r.PostFormValue("name")), r.PostFormValue("role"), r.PostFormValue("password")
	if err := CheckUserName(name); err != nil {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", err.Error(), "")
		return
	}
	if !store.ValidRole(role) {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", "Choose a role: admin, engineer or viewer.", "")
		return
	}
	if err := CheckPasswordPolicy(name, pw); err != nil {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", err.Error(), "")
		return
	}
	hash, err := s.hash(ctx, pw)
	if err != nil {
		s.busy(w, r, err)
		return
	}
	if _, err := s.st.AddUser(ctx, name, role, hash); err != nil {
		if errors.Is(err, store.ErrExists) {
			s.showAdmin(w, r, rq, http.StatusConflict, "", "A user with that name exists.", "")
			return
		}
		s.serverError(w, r, err)
		return
	}
	s.audit(ctx, "user:"+rq.user.Name, "user_add", name, "role="+role)
	done(w, r, "user "+name+" added")
}

// CheckUserName keeps user names printable, short and safe in a URL path:
// they appear in the audit log, on every page and in the admin's links.
func CheckUserName(name string) error {
	if name == "" || len(name) > 64 {
		return errors.New("a user name has 1 to 64 characters")
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._@-", c)) {
			return errors.New("a user name has only letters, digits and . _ @ -")
		}
	}
	return nil
}

// handleUserChange is role, sites, disable, enable, unlock, totp-reset and
// password (an admin's reset) of one user.
func (s *Server) handleUserChange(w http.ResponseWriter, r *http.Request, rq *request) {
	ctx := r.Context()
	name, action := r.PathValue("name"), r.PathValue("action")
	u, err := s.st.User(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		s.errorPage(w, r, http.StatusNotFound, "There is no such user.")
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	self := u.ID == rq.user.ID
	actor := "user:" + rq.user.Name
	switch action {
	case "role":
		role := r.PostFormValue("role")
		if !store.ValidRole(role) {
			s.showAdmin(w, r, rq, http.StatusBadRequest, "", "Choose a role: admin, engineer or viewer.", "")
			return
		}
		if self && role != store.RoleAdmin {
			s.showAdmin(w, r, rq, http.StatusBadRequest, "", "You cannot take your own admin role; ask another admin.", "")
			return
		}
		if err := s.st.SetRole(ctx, name, role); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.audit(ctx, actor, "role_change", name, u.Role+" -> "+role)
	case "sites":
		var refs []store.SiteRef
		for _, v := range r.PostForm["site"] {
			t, st, ok := strings.Cut(v, "/")
			if !ok || t == "" || st == "" {
				s.showAdmin(w, r, rq, http.StatusBadRequest, "", "A building is tenant/site.", "")
				return
			}
			refs = append(refs, store.SiteRef{Tenant: t, Site: st})
		}
		if err := s.st.AssignSites(ctx, name, refs); err != nil {
			s.serverError(w, r, err)
			return
		}
		var names []string
		for _, ref := range refs {
			names = append(names, ref.String())
		}
		s.audit(ctx, actor, "sites_assign", name, strings.Join(names, ","))
	case "disable", "enable":
		if self {
			s.showAdmin(w, r, rq, http.StatusBadRequest, "", "You cannot disable yourself.", "")
			return
		}
		if err := s.st.SetDisabled(ctx, name, action == "disable"); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.audit(ctx, actor, "user_"+action, name, "")
	case "unlock":
		if err := s.st.ClearLoginFailures(ctx, name); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.audit(ctx, actor, "user_unlock", name, "")
	case "totp-reset":
		// A lost phone, or a secret that no longer opens: the user sets
		// up a new one under Account at their next sign-in.
		if err := s.st.SetTOTP(ctx, name, nil); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.audit(ctx, actor, "totp_remove", name, "reset by an admin; sessions ended")
		if self {
			if err := s.newSession(w, r, rq.user, store.SessionFull); err != nil {
				s.serverError(w, r, err)
				return
			}
		}
	case "password":
		pw := r.PostFormValue("password")
		if err := CheckPasswordPolicy(name, pw); err != nil {
			s.showAdmin(w, r, rq, http.StatusBadRequest, "", err.Error(), "")
			return
		}
		hash, err := s.hash(ctx, pw)
		if err != nil {
			s.busy(w, r, err)
			return
		}
		if err := s.st.SetPassword(ctx, name, hash); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.audit(ctx, actor, "password_change", name, "reset by an admin; sessions ended")
		if self {
			if err := s.newSession(w, r, rq.user, store.SessionFull); err != nil {
				s.serverError(w, r, err)
				return
			}
		}
	default:
		s.errorPage(w, r, http.StatusNotFound, "There is no such page.")
		return
	}
	done(w, r, "user "+name+": "+action+" done")
}

func (s *Server) handleSiteName(w http.ResponseWriter, r *http.Request, rq *request) {
	ref := store.SiteRef{Tenant: r.PathValue("tenant"), Site: r.PathValue("site")}
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" || len(name) > 100 {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", "A building's name has 1 to 100 characters.", "")
		return
	}
	if err := s.st.PutSite(r.Context(), ref, name); err != nil {
		s.serverError(w, r, err)
		return
	}
	s.audit(r.Context(), "user:"+rq.user.Name, "site_name", ref.String(), clip(name))
	done(w, r, "building renamed")
}

func (s *Server) handleTokenCreate(w http.ResponseWriter, r *http.Request, rq *request) {
	ctx := r.Context()
	if s.cfg.CAFingerprint == (pki.Fingerprint{}) {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", "Enrollment tokens cannot be made here: use sightglass-ingest enroll create.", "")
		return
	}
	tenant, site := strings.TrimSpace(r.PostFormValue("tenant")), strings.TrimSpace(r.PostFormValue("site"))
	ttl, err := time.ParseDuration(r.PostFormValue("ttl"))
	if err != nil || ttl <= 0 || ttl > pki.MaxTokenValidity {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", fmt.Sprintf("Validity: a duration such as 2h, at most %v.", pki.MaxTokenValidity), "")
		return
	}
	if err := (pki.Identity{Tenant: tenant, Site: site, Agent: "ag-check"}).Validate(); err != nil {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", "Tenant and site: "+err.Error(), "")
		return
	}
	tok, err := pki.NewEnrollToken(s.cfg.CAFingerprint)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	exp := s.cfg.Now().Add(ttl).UTC().Truncate(time.Second)
	if err := s.st.CreateToken(ctx, store.Token{Hash: tok.Hash(), Tenant: tenant, Site: site, ExpiresAt: exp, CreatedBy: "user:" + rq.user.Name}); err != nil {
		s.serverError(w, r, err)
		return
	}
	s.audit(ctx, "user:"+rq.user.Name, "token_create", fmt.Sprintf("token:%x", tok.Hash()[:6]), fmt.Sprintf("tenant=%s site=%s expires=%s", tenant, site, exp.Format(time.RFC3339)))
	// Shown once, in this answer only; the store keeps the hash.
	s.showAdmin(w, r, rq, http.StatusOK, "Token made: give it to the installer now, it is not shown again.", "", tok.String())
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request, rq *request) {
	ctx := r.Context()
	id := r.PathValue("id")
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	if reason == "" {
		s.showAdmin(w, r, rq, http.StatusBadRequest, "", "Say why the agent is revoked.", "")
		return
	}
	a, err := s.st.Revoke(ctx, id, clip(reason))
	if errors.Is(err, store.ErrNotFound) {
		s.errorPage(w, r, http.StatusNotFound, "There is no such agent.")
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	s.audit(ctx, "user:"+rq.user.Name, "revoke", a.ID, "reason="+clip(reason))
	done(w, r, "agent "+a.ID+" revoked")
}
