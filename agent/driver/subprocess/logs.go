package subprocess

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

const (
	// maxLine is the longest stderr line relayed whole; longer ones are cut.
	maxLine = 64 << 10
	// maxPlainLines caps the non-JSON stderr lines (a panic's stack, the
	// runtime's out-of-memory report) relayed per child, so a child that
	// dumps thousands of goroutines cannot flood the agent's log.
	maxPlainLines = 200
	// headLines and tailLines are how many of the first and last non-JSON
	// lines an exit error quotes: a Go crash says what happened first
	// ("runtime: out of memory: cannot allocate …", "fatal error: …") and
	// where last.
	headLines = 2
	tailLines = 3
	// maxQuoted caps each quoted line in an exit error.
	maxQuoted = 300
)

// stderrRelay reads the child's stderr: JSON lines are the child's slog
// records, re-logged through the device's logger with their time, level
// and attributes; anything else (a panic, the runtime's fatal errors) is
// logged as it comes and kept for the exit error.
type stderrRelay struct {
	log *slog.Logger

	mu      sync.Mutex
	first   []string // the first non-JSON lines: "panic: …", "fatal error: …"
	tail    []string // the last non-JSON lines
	plain   int      // non-JSON lines seen
	dropped int      // of those, not logged (over maxPlainLines)
}

// run relays r until it ends.
func (s *stderrRelay) run(r io.Reader) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.line(line)
			// Skip the rest of the overlong line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err != nil {
				break
			}
			continue
		}
		if len(line) > 0 {
			s.line(line)
		}
		if err != nil {
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped > 0 {
		s.log.Warn("driver host: stderr lines not logged", "lines", s.dropped)
	}
}

func (s *stderrRelay) line(b []byte) {
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return
	}
	if relayRecord(context.Background(), s.log.Handler(), b) {
		return
	}
	text := strings.ToValidUTF8(string(b), "?")
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.first) < headLines {
		s.first = append(s.first, text)
	}
	s.plain++
	s.tail = append(s.tail, text)
	if len(s.tail) > tailLines {
		s.tail = s.tail[1:]
	}
	if s.plain > maxPlainLines {
		s.dropped++
		return
	}
	s.log.Warn("driver host stderr", "line", text)
}

// quote returns the first and last non-JSON lines for an exit error, or
// "" when there were none.
func (s *stderrRelay) quote() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.plain == 0 {
		return ""
	}
	var lines []string
	switch skipped := s.plain - len(s.first) - len(s.tail); {
	case skipped < 0: // the tail repeats some of the head
		lines = slices.Concat(s.first, s.tail[-skipped:])
	case skipped == 0:
		lines = slices.Concat(s.first, s.tail)
	default:
		lines = slices.Concat(s.first, []string{"…"}, s.tail)
	}
	q := make([]string, len(lines))
	for i, l := range lines {
		if len(l) > maxQuoted {
			l = l[:maxQuoted] + "…"
		}
		q[i] = l
	}
	return strings.Join(q, " | ")
}

// relayRecord re-logs one JSON record of the child's slog handler through
// h, keeping its time, level, message and attributes in order. It reports
// false when line is not such a record.
func relayRecord(ctx context.Context, h slog.Handler, line []byte) bool {
	if len(line) == 0 || line[0] != '{' {
		return false
	}
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	var (
		t      time.Time
		level  = slog.LevelInfo
		msg    string
		sawMsg bool
		attrs  []slog.Attr
	)
	for d.More() {
		kt, err := d.Token()
		if err != nil {
			return false
		}
		key, ok := kt.(string)
		if !ok {
			return false
		}
		var v any
		if err := d.Decode(&v); err != nil {
			return false
		}
		switch key {
		case slog.TimeKey:
			if s, ok := v.(string); ok {
				t, _ = time.Parse(time.RFC3339Nano, s)
			}
		case slog.LevelKey:
			if s, ok := v.(string); ok {
				_ = level.UnmarshalText([]byte(s))
			}
		case slog.MessageKey:
			msg, sawMsg = v.(string)
		default:
			attrs = append(attrs, attrOf(key, v))
		}
	}
	// A record ends with its object: a line cut short (the child died
	// mid-write, or the line was too long) is not one.
	if tok, err := d.Token(); err != nil || tok != json.Delim('}') {
		return false
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return false
	}
	if !sawMsg {
		return false
	}
	if !h.Enabled(ctx, level) {
		return true
	}
	if t.IsZero() {
		t = time.Now()
	}
	r := slog.NewRecord(t, level, msg, 0)
	r.AddAttrs(attrs...)
	_ = h.Handle(ctx, r)
	return true
}

// attrOf turns a decoded JSON value back into an attribute: objects become
// groups (keys sorted: JSON objects decode unordered), numbers ints where
// they are whole.
func attrOf(key string, v any) slog.Attr {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return slog.Int64(key, i)
		}
		f, _ := v.Float64()
		return slog.Float64(key, f)
	case string:
		return slog.String(key, v)
	case bool:
		return slog.Bool(key, v)
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		group := make([]any, 0, len(keys))
		for _, k := range keys {
			group = append(group, attrOf(k, v[k]))
		}
		return slog.Group(key, group...)
	default:
		return slog.Any(key, v)
	}
}
