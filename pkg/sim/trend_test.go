package sim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTrendReplayWritesEveryCompleteRow(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.csv")
	data := "timestamp,A (°F),B\n" +
		"2025-01-01 00:00:00,1.5,On\n" +
		"2025-01-01 00:15:00,2.5,\n" +
		"not a time,9,9\n" +
		"2025-01-01 00:30:00,3.5,Off\n" +
		"2025-01-01 00:45:00,4" // truncated, as at the end of AHU7.csv
	if err := os.WriteFile(src, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	// 15 minutes in 1 ms: the whole trend is due at once.
	r := &TrendReplay{Source: src, Dir: out, Prefix: "x", Speed: 900_000, Every: time.Millisecond}
	n, err := r.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("wrote %d rows, want 3", n)
	}
	files, _ := filepath.Glob(filepath.Join(out, "*.csv"))
	var rows []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if lines[0] != "timestamp,A (°F),B" {
			t.Errorf("%s: header %q", f, lines[0])
		}
		rows = append(rows, lines[1:]...)
	}
	if len(rows) != 3 || !strings.HasSuffix(rows[0], ",1.5,On") || !strings.HasSuffix(rows[2], ",3.5,Off") {
		t.Errorf("rows = %q", rows)
	}
	if parts, _ := filepath.Glob(filepath.Join(out, "*.part")); len(parts) != 0 {
		t.Errorf("left partial files: %v", parts)
	}
}

func TestTrendReplayRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.csv")
	os.WriteFile(empty, []byte("timestamp,A\n"), 0o644)
	for _, r := range []*TrendReplay{
		{Source: filepath.Join(dir, "missing.csv"), Dir: dir, Speed: 1},
		{Source: empty, Dir: dir, Speed: 1},
		{Source: empty, Dir: dir, Speed: 0},
	} {
		if _, err := r.Run(context.Background()); err == nil {
			t.Errorf("%+v: Run succeeded", r)
		}
	}
}
