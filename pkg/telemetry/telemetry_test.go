package telemetry

import "testing"

func TestStatusNamesRoundTrip(t *testing.T) {
	for s := StatusOK; s <= MaxStatus; s++ {
		got, err := ParseStatus(s.String())
		if err != nil || got != s {
			t.Errorf("ParseStatus(%q) = %v, %v; want %v", s.String(), got, err, s)
		}
	}
	if _, err := ParseStatus("bogus"); err == nil {
		t.Error("ParseStatus(bogus) succeeded")
	}
	if got := Status(200).String(); got != "status(200)" {
		t.Errorf("unknown status prints %q", got)
	}
}
