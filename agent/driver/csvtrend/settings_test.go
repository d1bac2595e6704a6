package csvtrend

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

func TestNewValidatesSettings(t *testing.T) {
	tests := []struct {
		name     string
		settings string
		points   []driver.Point
		want     []string // substrings the error must contain; none: valid
	}{
		{name: "minimal", settings: "path: /data/trends"},
		{name: "everything", settings: `
path: /data/trends
pattern: "AHU*.csv"
timezone: America/Chicago
processed_dir: done
failed_dir: /var/lib/sightglass/failed
states: {Auto: 2, Hand: 3}
point_from: column
settle: 0s
max_file_size: 512MiB
`, points: []driver.Point{{ID: 1, Ref: "SAT"}, {ID: 2, Ref: "MAT"}}},
		{name: "nil settings", settings: "", want: []string{"settings.path: required"}},
		{name: "unknown field names its line", settings: "path: /x\npaht: /y\n", want: []string{"line 2", "paht"}},
		{name: "bad timezone", settings: "path: /x\ntimezone: Mars/Olympus", want: []string{"settings.timezone", "Mars/Olympus"}},
		{name: "bad pattern", settings: "path: /x\npattern: '[a'", want: []string{"settings.pattern"}},
		{name: "pattern with directory", settings: "path: /x\npattern: sub/*.csv", want: []string{"settings.pattern"}},
		{name: "bad point_from", settings: "path: /x\npoint_from: header", want: []string{"settings.point_from", "auto, column or file"}},
		{name: "negative settle", settings: "path: /x\nsettle: -1s", want: []string{"settings.settle"}},
		{name: "bad settle", settings: "path: /x\nsettle: soon", want: []string{"line 2", "soon"}},
		{name: "bad max_file_size names field and line", settings: "path: /x\nmax_file_size: lots", want: []string{"line 2", "settings.max_file_size", `"lots"`}},
		{name: "zero max_file_size", settings: "path: /x\nmax_file_size: 0", want: []string{"settings.max_file_size: must be above 0"}},
		{name: "numeric state", settings: "path: /x\nstates: {'1': 5}", want: []string{"settings.states", "is a number already"}},
		{name: "conflicting states", settings: "path: /x\nstates: {Auto: 1, AUTO: 2}", want: []string{"same text"}},
		{name: "processed is path", settings: "path: /x\nprocessed_dir: /x/", want: []string{"settings.processed_dir: must differ"}},
		{name: "failed is processed", settings: "path: /x\nprocessed_dir: a\nfailed_dir: a", want: []string{"settings.failed_dir"}},
		{name: "empty ref", settings: "path: /x", points: []driver.Point{{ID: 1, Ref: " "}}, want: []string{"point 1: ref: required"}},
		{name: "duplicate ref", settings: "path: /x", points: []driver.Point{{ID: 1, Ref: "SAT"}, {ID: 2, Ref: "SAT"}}, want: []string{`point "SAT": listed twice`}},
		{name: "point settings refused", settings: "path: /x", points: []driver.Point{{ID: 1, Ref: "SAT", Settings: yamlSettings("column: 3")}}, want: []string{`point "SAT"`, "take no settings"}},
		{name: "differing intervals", settings: "path: /x", points: []driver.Point{{ID: 1, Ref: "A", Interval: time.Minute}, {ID: 2, Ref: "B", Interval: time.Hour}}, want: []string{"share one interval"}},
		{name: "every problem at once", settings: "timezone: Nowhere/Land\npoint_from: rows\nsettle: -2s",
			points: []driver.Point{{ID: 1}}, want: []string{"settings.path", "settings.timezone", "settings.point_from", "settings.settle", "ref: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(driver.Device{Name: "ahu7", Settings: yamlSettings(tt.settings), Points: tt.points})
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("New succeeded; want an error mentioning %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), `device "ahu7"`) {
				t.Errorf("error %q does not name the device", err)
			}
		})
	}
}

func TestNewNilSettings(t *testing.T) {
	if _, err := New(driver.Device{Name: "x"}); err == nil || !strings.Contains(err.Error(), "settings.path") {
		t.Fatalf("New without settings: %v; want an error about settings.path", err)
	}
}

func TestSettingsDefaults(t *testing.T) {
	d, err := newDriver(driver.Device{Name: "x", Settings: yamlSettings("path: /data/t")})
	if err != nil {
		t.Fatal(err)
	}
	c := d.cfg
	if c.pattern != "*.csv" || c.loc.String() != "UTC" || c.pointFrom != pointFromAuto || c.settle != DefaultSettle || c.maxSize != DefaultMaxFileSize {
		t.Errorf("defaults: pattern %q, zone %s, point_from %q, settle %s, max_file_size %d", c.pattern, c.loc, c.pointFrom, c.settle, c.maxSize)
	}
	for _, s := range []string{"on", "off", "true", "false", "occupied", "unoccupied", "active", "inactive", "open", "closed", "enabled", "disabled", "yes", "no"} {
		if _, ok := c.states[s]; !ok {
			t.Errorf("default state %q missing", s)
		}
	}
}

func TestInfo(t *testing.T) {
	info := Info()
	if info.Name != "csvtrend" || info.New == nil {
		t.Fatalf("Info() = %+v", info)
	}
	r, err := driver.NewRegistry(info)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Lookup("csvtrend"); !ok {
		t.Error("registry has no csvtrend")
	}
}

// TestSampleConfig: every device in sample.yaml is accepted by New.
func TestSampleConfig(t *testing.T) {
	var doc struct {
		Devices []struct {
			Name     string         `yaml:"name"`
			Driver   string         `yaml:"driver"`
			Interval time.Duration  `yaml:"interval"`
			Discover bool           `yaml:"discover"`
			Settings map[string]any `yaml:"settings"`
			Points   []struct {
				Ref  string `yaml:"ref"`
				Name string `yaml:"name"`
			} `yaml:"points"`
		} `yaml:"devices"`
	}
	dec := yaml.NewDecoder(strings.NewReader(SampleConfig))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Devices) == 0 {
		t.Fatal("sample.yaml has no device")
	}
	for _, dev := range doc.Devices {
		t.Run(dev.Name, func(t *testing.T) {
			if dev.Driver != Name {
				t.Errorf("driver %q", dev.Driver)
			}
			settings, err := yaml.Marshal(dev.Settings)
			if err != nil {
				t.Fatal(err)
			}
			var points []driver.Point
			for i, p := range dev.Points {
				points = append(points, driver.Point{ID: uint64(i + 1), Ref: p.Ref, Name: p.Name})
			}
			if _, err := New(driver.Device{Name: dev.Name, Settings: yamlSettings(settings), Points: points}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
