package blob

import (
	"testing"
	"time"
)

func TestParseBatchName(t *testing.T) {
	name := BatchName("acme", "s-7f3a", "ag-1-x", 42, time.Date(2026, 12, 1, 13, 0, 0, 0, time.UTC))
	tenant, site, agent, seq, ok := ParseBatchName(name)
	if !ok || tenant != "acme" || site != "s-7f3a" || agent != "ag-1-x" || seq != 42 {
		t.Errorf("ParseBatchName(%q) = %q %q %q %d %v", name, tenant, site, agent, seq, ok)
	}
	for _, bad := range []string{
		"acme/s-7f3a/tables/abc.sgt",
		"acme/s-7f3a/claims/ag/00000000000000000042",
		"acme/s-7f3a/2026/12/01/13/ag-42.sgb",                        // seq not 20 digits
		"acme/s-7f3a/2026/12/01/13/-00000000000000000042.sgb",        // no agent
		"acme/s-7f3a/2026/12/01/ag-00000000000000000042.sgb",         // no hour
		"acme/s-7f3a/2026/12/01/13/ag-0000000000000000004x.sgb",      // not a number
		"acme/s-7f3a/2026/12/01/day/part-00000000000000000001.sgb/x", // deeper
	} {
		if _, _, _, _, ok := ParseBatchName(bad); ok {
			t.Errorf("ParseBatchName(%q) accepted a name that is no batch's", bad)
		}
	}
}
