package csvtrend

import (
	"strings"
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestClockForms(t *testing.T) {
	tests := []struct {
		zone string
		cell string
		want string // UTC, RFC 3339
	}{
		{"UTC", "2025-01-01 00:15:00", "2025-01-01T00:15:00Z"},
		{"America/Chicago", "2025-01-01 00:15:00", "2025-01-01T06:15:00Z"},
		{"America/Chicago", "2025-01-01T00:15:00", "2025-01-01T06:15:00Z"},
		{"America/Chicago", "2025-01-01 00:15", "2025-01-01T06:15:00Z"},
		{"America/Chicago", "2025-07-01 00:15:00.250", "2025-07-01T05:15:00.25Z"},
		{"America/Chicago", "2025-01-01T00:15:00Z", "2025-01-01T00:15:00Z"},
		{"America/Chicago", "2025-01-01T00:15:00.5+02:00", "2024-12-31T22:15:00.5Z"},
		{"America/Chicago", "2025-01-01 00:15:00-05:00", "2025-01-01T05:15:00Z"},
		{"America/Chicago", "5/7/2022 12:00", "2022-05-07T17:00:00Z"},
		{"America/Chicago", "5/7/2022 9:05", "2022-05-07T14:05:00Z"},
		{"America/Chicago", "12/31/2022 23:59:59", "2023-01-01T05:59:59Z"},
		{"America/Chicago", "5/7/2022 1:05 PM", "2022-05-07T18:05:00Z"},
		{"America/Chicago", "07-May-22 12:00:00 PM CDT", "2022-05-07T17:00:00Z"},
		{"America/Chicago", "02-Mar-22 12:00:43 PM CST", "2022-03-02T18:00:43Z"},
		{"America/Chicago", "2-Mar-22 12:00:43 AM CST", "2022-03-02T06:00:43Z"},
		{"America/Chicago", "07-may-22 12:00:00 pm cdt", "2022-05-07T17:00:00Z"},
		{"America/New_York", "01-Jan-26 12:00:00 AM EST", "2026-01-01T05:00:00Z"},
		{"America/New_York", "26-Mar-26 8:00:00 AM EDT", "2026-03-26T12:00:00Z"},
		{"America/Chicago", "07-May-2022 12:00:00 PM CDT", "2022-05-07T17:00:00Z"},
		// An abbreviation out of season still names its offset.
		{"America/Chicago", "07-Jan-22 12:00:00 PM CDT", "2022-01-07T17:00:00Z"},
		// UTC is unambiguous in any zone.
		{"America/Chicago", "07-May-22 12:00:00 PM UTC", "2022-05-07T12:00:00Z"},
		{"America/Chicago", "  5/7/2022 12:00  ", "2022-05-07T17:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.zone+" "+tt.cell, func(t *testing.T) {
			got, err := newClock(mustLoc(t, tt.zone)).parse(tt.cell)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if s := got.UTC().Format(time.RFC3339Nano); s != tt.want {
				t.Errorf("parse(%q) = %s, want %s", tt.cell, s, tt.want)
			}
		})
	}
}

func TestClockRejects(t *testing.T) {
	tests := []struct {
		zone string
		cell string
		want string
	}{
		{"America/Chicago", "07-May-22 12:00:00 PM EDT", `zone abbreviation "EDT" is not used by time zone America/Chicago (it uses CDT, CST)`},
		{"America/Chicago", "01-Jan-26 12:00:00 AM EST", "set settings.timezone"},
		{"UTC", "07-May-22 12:00:00 PM CDT", `"CDT" is not used by time zone UTC`},
		{"UTC", "", "empty timestamp"},
		{"UTC", "yesterday", "not one of the accepted forms"},
		{"UTC", "13/45/2022 12:00", "not one of the accepted forms"},
		{"UTC", "2025-01-01T00:15:00Z CDT", "not one of the accepted forms"},
		{"UTC", strings.Repeat("9", 500), "…"},
	}
	for _, tt := range tests {
		t.Run(tt.cell, func(t *testing.T) {
			_, err := newClock(mustLoc(t, tt.zone)).parse(tt.cell)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parse(%q) error = %v, want one containing %q", tt.cell, err, tt.want)
			}
		})
	}
}

// TestClockDST covers the hour that happens twice when daylight saving time
// ends and the hour that never happens when it starts.
func TestClockDST(t *testing.T) {
	tests := []struct {
		name  string
		cells []string
		want  []string
	}{
		{
			// 2022-11-06 in Chicago: 01:00-01:59 happens first in CDT (UTC-5), then in CST (UTC-6).
			name:  "repeated hour in time order crosses into CST",
			cells: []string{"11/6/2022 0:45", "11/6/2022 1:30", "11/6/2022 1:45", "11/6/2022 1:00", "11/6/2022 1:30", "11/6/2022 2:00"},
			want:  []string{"2022-11-06T05:45:00Z", "2022-11-06T06:30:00Z", "2022-11-06T06:45:00Z", "2022-11-06T07:00:00Z", "2022-11-06T07:30:00Z", "2022-11-06T08:00:00Z"},
		},
		{
			name:  "repeated hour alone is its first occurrence",
			cells: []string{"2022-11-06 01:30:00"},
			want:  []string{"2022-11-06T06:30:00Z"},
		},
		{
			name:  "abbreviation settles the repeated hour",
			cells: []string{"06-Nov-22 1:30:00 AM CST", "06-Nov-22 1:30:00 AM CDT"},
			want:  []string{"2022-11-06T07:30:00Z", "2022-11-06T06:30:00Z"},
		},
		{
			// 2022-03-13 in Chicago: 02:00-02:59 never happens; read as CST.
			name:  "skipped hour reads with the offset before the change",
			cells: []string{"3/13/2022 1:55", "3/13/2022 2:30", "3/13/2022 3:05"},
			want:  []string{"2022-03-13T07:55:00Z", "2022-03-13T08:30:00Z", "2022-03-13T08:05:00Z"},
		},
		{
			name:  "abbreviations across the spring change",
			cells: []string{"13-Mar-22 1:59:59 AM CST", "13-Mar-22 3:00:00 AM CDT"},
			want:  []string{"2022-03-13T07:59:59Z", "2022-03-13T08:00:00Z"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock(mustLoc(t, "America/Chicago"))
			for i, cell := range tt.cells {
				got, err := c.parse(cell)
				if err != nil {
					t.Fatalf("parse(%q): %v", cell, err)
				}
				if s := got.UTC().Format(time.RFC3339); s != tt.want[i] {
					t.Errorf("parse(%q) = %s, want %s", cell, s, tt.want[i])
				}
			}
		})
	}
}

func BenchmarkClock(b *testing.B) {
	loc, err := time.LoadLocation("America/Chicago")
	if err != nil {
		b.Fatal(err)
	}
	for _, cell := range []string{"2025-01-01 00:15:00", "5/7/2022 12:00", "07-May-22 12:00:00 PM CDT"} {
		b.Run(cell, func(b *testing.B) {
			c := newClock(loc)
			for b.Loop() {
				if _, err := c.parse(cell); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
