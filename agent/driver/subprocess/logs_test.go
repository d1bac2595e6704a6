package subprocess

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestRelayRecord(t *testing.T) {
	tests := []struct {
		name   string
		line   string
		level  slog.Level // of the parent's handler
		record bool       // a record, relayed or filtered
		want   string     // in the parent's output; "" for nothing
	}{
		{"attributes in order", `{"time":"2026-12-01T09:00:00.5Z","level":"WARN","msg":"session lost","endpoint":"opc.tcp://127.0.0.1:4840","failures":3,"ratio":0.5,"ok":false}`, slog.LevelInfo, true,
			`time=2026-12-01T09:00:00.500Z level=WARN msg="session lost" endpoint=opc.tcp://127.0.0.1:4840 failures=3 ratio=0.5 ok=false`},
		{"groups", `{"time":"2026-12-01T09:00:00Z","level":"INFO","msg":"m","g":{"b":2,"a":"x"}}`, slog.LevelInfo, true, `g.a=x g.b=2`},
		{"filtered by level", `{"time":"2026-12-01T09:00:00Z","level":"DEBUG","msg":"chatty"}`, slog.LevelInfo, true, ""},
		{"custom level", `{"time":"2026-12-01T09:00:00Z","level":"ERROR+2","msg":"bad"}`, slog.LevelInfo, true, `level=ERROR+2 msg=bad`},
		{"a panic", `panic: runtime error: index out of range [3] with length 3`, slog.LevelInfo, false, ""},
		{"JSON without a message", `{"level":"INFO"}`, slog.LevelInfo, false, ""},
		{"cut short", `{"level":"INFO","msg":"x"`, slog.LevelInfo, false, ""},
		{"trailing bytes", `{"level":"INFO","msg":"x"} and more`, slog.LevelInfo, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			h := slog.NewTextHandler(&out, &slog.HandlerOptions{Level: tt.level})
			if got := relayRecord(context.Background(), h, []byte(tt.line)); got != tt.record {
				t.Errorf("relayRecord = %v, want %v", got, tt.record)
			}
			if tt.want == "" && out.Len() > 0 {
				t.Errorf("relayed %q; want nothing", out.String())
			}
			if !strings.Contains(out.String(), tt.want) {
				t.Errorf("relayed %q; want it to contain %q", out.String(), tt.want)
			}
		})
	}
}

func TestStderrQuote(t *testing.T) {
	var out bytes.Buffer
	s := &stderrRelay{log: slog.New(slog.NewTextHandler(&out, nil))}
	lines := []string{"runtime: out of memory: cannot allocate 34359738368-byte block", "fatal error: out of memory", "", "goroutine 1 [running]:", "main.f()", "\tmain.go:3", "created by main"}
	s.run(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	want := "runtime: out of memory: cannot allocate 34359738368-byte block | fatal error: out of memory | … | main.f() | \tmain.go:3 | created by main"
	if got := s.quote(); got != want {
		t.Errorf("quote = %q\nwant %q", got, want)
	}
	if n := strings.Count(out.String(), "driver host stderr"); n != 6 {
		t.Errorf("%d lines logged, want the 6 non-empty ones:\n%s", n, out.String())
	}
	short := &stderrRelay{log: slog.New(slog.DiscardHandler)}
	short.run(strings.NewReader("panic: boom\n\ngoroutine 1\n"))
	if got := short.quote(); got != "panic: boom | goroutine 1" {
		t.Errorf("quote of two lines = %q", got)
	}
	long := &stderrRelay{log: slog.New(slog.DiscardHandler)}
	long.run(strings.NewReader(strings.Repeat("x", 2*maxLine) + "\nend\n"))
	if q := long.quote(); !strings.HasSuffix(q, " | end") || len(q) > maxQuoted+20 {
		t.Errorf("an overlong line quoted as %d bytes: %.80q", len(q), q)
	}
}
