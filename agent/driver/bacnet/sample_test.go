package bacnet

import (
	"regexp"
	"testing"

	"go.yaml.in/yaml/v4"

	"github.com/sightglass-bms/sightglass/pkg/driver"
)

// TestSampleConfig: every device in sample.yaml is accepted by New, as
// written and with its commented-out settings switched on, so the keys
// and defaults it shows exist.
func TestSampleConfig(t *testing.T) {
	uncomment := regexp.MustCompile(`(?m)^(\s+)# ([a-z_]+: )`)
	for _, variant := range []struct{ name, text string }{
		{"as written", SampleConfig},
		{"commented settings on", uncomment.ReplaceAllString(SampleConfig, "$1$2")},
	} {
		t.Run(variant.name, func(t *testing.T) {
			var doc struct {
				Devices []struct {
					Name     string    `yaml:"name"`
					Driver   string    `yaml:"driver"`
					Settings yaml.Node `yaml:"settings"`
					Points   []struct {
						Ref      string `yaml:"ref"`
						TrendLog string `yaml:"trend_log"`
					} `yaml:"points"`
				} `yaml:"devices"`
			}
			if err := yaml.Load([]byte(variant.text), &doc); err != nil {
				t.Fatal(err)
			}
			if len(doc.Devices) == 0 {
				t.Fatal("sample.yaml has no device")
			}
			for _, dev := range doc.Devices {
				settings, err := yaml.Marshal(&dev.Settings)
				if err != nil {
					t.Fatal(err)
				}
				var points []driver.Point
				for i, p := range dev.Points {
					pt := driver.Point{ID: uint64(i + 1), Ref: p.Ref}
					if p.TrendLog != "" {
						pt.Settings = yamlText("trend_log: " + p.TrendLog)
					}
					points = append(points, pt)
				}
				if dev.Driver != Name {
					t.Errorf("%s: driver %q", dev.Name, dev.Driver)
				}
				if _, err := New(driver.Device{Name: dev.Name, Settings: yamlText(settings), Points: points}); err != nil {
					t.Errorf("%s: %v", dev.Name, err)
				}
			}
		})
	}
}
