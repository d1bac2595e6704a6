package drivertest

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"

	"go.yaml.in/yaml/v4"
)

// YAML is driver.Settings over YAML text, decoded strictly (unknown keys
// are errors naming their line) as the agent's configuration loader
// decodes a device's settings: what a driver's tests build devices with.
type YAML string

// Decode decodes the text into v; empty text leaves v unchanged.
func (s YAML) Decode(v any) error {
	if strings.TrimSpace(string(s)) == "" {
		return nil
	}
	var n yaml.Node
	if err := yaml.Load([]byte(s), &n); err != nil {
		return err
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = *n.Content[0]
	}
	if n.Kind == yaml.MappingNode && len(n.Content) == 0 {
		return nil
	}
	return n.Load(v, yaml.WithKnownFields())
}

// LogBuffer collects a driver's log lines for a test to inspect; it is
// safe for the driver's goroutines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was logged so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger logs into b at debug level.
func (b *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
