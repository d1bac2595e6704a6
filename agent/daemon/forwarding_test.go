package daemon

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/sightglass-bms/sightglass/agent/config"
)

// procSys builds a fake /proc/sys from "file=value" pairs.
func procSys(kv ...string) fs.FS {
	m := fstest.MapFS{}
	for _, e := range kv {
		k, v, _ := strings.Cut(e, "=")
		m[k] = &fstest.MapFile{Data: []byte(v + "\n")}
	}
	return m
}

func TestCheckForwarding(t *testing.T) {
	const (
		global = "net/ipv4/ip_forward"
		c4     = "net/ipv4/conf/ctl0/forwarding"
		u4     = "net/ipv4/conf/up0/forwarding"
		c6     = "net/ipv6/conf/ctl0/forwarding"
	)
	tests := []struct {
		name    string
		fs      fs.FS
		want    error  // errors.Is target; nil for no error
		mention string // in the error
		facts   int
	}{
		{"all off", procSys(global+"=0", c4+"=0", u4+"=0", c6+"=0"), nil, "", 4},
		{"all off without ipv6", procSys(global+"=0", c4+"=0", u4+"=0"), nil, "", 3},
		{"global on", procSys(global+"=1", c4+"=1", u4+"=1"), ErrForwarding, "/proc/sys/net/ipv4/ip_forward", 3},
		{"control on", procSys(global+"=0", c4+"=1", u4+"=0"), ErrForwarding, "conf/ctl0/forwarding", 3},
		{"uplink on", procSys(global+"=0", c4+"=0", u4+"=1"), ErrForwarding, "conf/up0/forwarding", 3},
		{"ipv6 on", procSys(global+"=0", c4+"=0", u4+"=0", c6+"=1"), ErrForwarding, "ipv6/conf/ctl0", 4},
		{"interface missing", procSys(global+"=0", c4+"=0"), fs.ErrNotExist, "conf/up0/forwarding", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			facts, err := CheckForwarding(tt.fs, "ctl0", "up0")
			if tt.want == nil && err != nil {
				t.Fatalf("err = %v, want none", err)
			}
			if tt.want != nil && (!errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.mention)) {
				t.Fatalf("err = %v, want %v naming %s", err, tt.want, tt.mention)
			}
			if len(facts) != tt.facts {
				t.Errorf("read %d switches (%v), want %d", len(facts), facts, tt.facts)
			}
		})
	}
}

func TestRefuseForwarding(t *testing.T) {
	on := procSys("net/ipv4/ip_forward=1", "net/ipv4/conf/ctl0/forwarding=1", "net/ipv4/conf/up0/forwarding=1")
	off := procSys("net/ipv4/ip_forward=0", "net/ipv4/conf/ctl0/forwarding=0", "net/ipv4/conf/up0/forwarding=0")
	nw := config.Network{Control: config.ControlNIC{Interface: "ctl0", Address: "10.0.0.5"}, Uplink: config.UplinkNIC{Interface: "up0"}, Line: 3}
	allowed := nw
	allowed.AllowForwarding = true
	tests := []struct {
		name    string
		fs      fs.FS
		n       config.Network
		refuse  bool
		logWant string
	}{
		{"forwarding on", on, nw, true, ""},
		{"forwarding off", off, nw, false, ""},
		{"forwarding on but allowed", on, allowed, false, "allowed by network.allow_forwarding"},
		{"no network section", on, config.Network{}, false, "no network section"},
		{"allowed does not excuse a missing interface", procSys("net/ipv4/ip_forward=0"), allowed, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			err := refuseForwarding(tt.fs, tt.n, slog.New(slog.NewTextHandler(&logs, nil)))
			if tt.refuse != (err != nil) {
				t.Fatalf("err = %v, want refused=%v", err, tt.refuse)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "refusing to start") {
				t.Errorf("err = %v: should say the agent refuses to start", err)
			}
			if !strings.Contains(logs.String(), tt.logWant) {
				t.Errorf("log %q lacks %q", logs.String(), tt.logWant)
			}
		})
	}
}
