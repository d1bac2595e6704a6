package csvtrend

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// bmsDir holds the real trend exports shared by the repository's tests.
const bmsDir = "../../../testdata/bms"

// yamlSettings and logBuffer are the kit's test fixtures.
type (
	yamlSettings = drivertest.YAML
	logBuffer    = drivertest.LogBuffer
)

// newTestDriver builds and connects a driver with the given settings.
func newTestDriver(t *testing.T, settings string, points ...driver.Point) (*Driver, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	d, err := newDriver(driver.Device{
		Name:     "test",
		Settings: yamlSettings(settings),
		Points:   points,
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("new driver: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Connect(t.Context()); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	return d, logs
}

// old is an mtime long settled.
var old = time.Now().Add(-time.Hour)

// writeFile writes a fixture file with a settled mtime.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	return p
}

// copyFile copies a fixture into dir with a settled mtime.
func copyFile(t *testing.T, src, dir string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, filepath.Base(src), string(data))
}

// tree maps every file under root (relative path) to its content hash.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	m, err := hashTree(root)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func hashTree(root string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		sum := sha256.Sum256(data)
		out[filepath.ToSlash(rel)] = hex.EncodeToString(sum[:])
		return nil
	})
	return out, err
}

func names(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// byID groups samples by point.
func byID(samples []telemetry.Sample) map[uint64][]telemetry.Sample {
	out := map[uint64][]telemetry.Sample{}
	for _, s := range samples {
		out[s.PointID] = append(out[s.PointID], s)
	}
	return out
}

// utc formats a sample time for comparison.
func utc(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }
