package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/sightglass-bms/sightglass/ingest/pki"
)

// DemoUser is the dashboard account the demo makes; its password is
// generated when the demo starts and printed, never stored in the repo.
const DemoUser = "demo"

// initDashboard picks the dashboard's port and adds the demo user, an
// engineer of the demo building, with a generated password. It returns
// the ingest configuration's lines for the dashboard.
func (s *Stack) initDashboard(ctx context.Context) (string, error) {
	port, err := s.reservePort()
	if err != nil {
		return "", err
	}
	s.DashboardURL = fmt.Sprintf("https://127.0.0.1:%d/", port)
	out, err := s.runIngest(ctx, "users", "add", DemoUser, "--role", "engineer", "--site", s.Tenant+"/"+s.Site,
		"--generate", "--json", "--db", s.database())
	if err != nil {
		return "", err
	}
	var u struct {
		Password string `json:"password"`
	}
	if err := json.Unmarshal([]byte(out), &u); err != nil || u.Password == "" {
		return "", fmt.Errorf("adding the demo's dashboard user: unexpected output %q: %v", out, err)
	}
	s.DashboardPassword = u.Password
	if _, err := s.runIngest(ctx, "sites", "name", s.Tenant+"/"+s.Site, "Demo Building", "--db", s.database()); err != nil {
		return "", err
	}
	return fmt.Sprintf("web_listen: 127.0.0.1:%d\n", port), nil
}

// CACertFile is the demo CA's certificate, for a browser that should
// trust the dashboard.
func (s *Stack) CACertFile() string { return filepath.Join(s.caDir(), pki.CACertFile) }
