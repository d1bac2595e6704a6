package opcua

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// TestAllowedService checks the allowlist against every request type OPC
// UA defines: reads pass, everything else is refused.
func TestAllowedService(t *testing.T) {
	raw := ua.NewExtensionObject(&ua.ReadRawModifiedDetails{})
	tests := []struct {
		req  ua.Request
		want bool
	}{
		{&ua.FindServersRequest{}, true},
		{&ua.GetEndpointsRequest{}, true},
		{&ua.CreateSessionRequest{}, true},
		{&ua.ActivateSessionRequest{}, true},
		{&ua.CloseSessionRequest{}, true},
		{&ua.BrowseRequest{}, true},
		{&ua.BrowseNextRequest{}, true},
		{&ua.TranslateBrowsePathsToNodeIDsRequest{}, true},
		{&ua.ReadRequest{}, true},
		{&ua.HistoryReadRequest{HistoryReadDetails: raw}, true},
		{&ua.HistoryReadRequest{HistoryReadDetails: ua.NewExtensionObject(&ua.ReadProcessedDetails{})}, true},
		{&ua.HistoryReadRequest{HistoryReadDetails: ua.NewExtensionObject(&ua.ReadAtTimeDetails{})}, true},
		{&ua.HistoryReadRequest{HistoryReadDetails: ua.NewExtensionObject(&ua.ReadEventDetails{})}, true},
		{&ua.HistoryReadRequest{}, false},
		{&ua.HistoryReadRequest{HistoryReadDetails: ua.NewExtensionObject(&ua.UpdateDataDetails{})}, false},
		{&ua.CreateSubscriptionRequest{}, true},
		{&ua.ModifySubscriptionRequest{}, true},
		{&ua.SetPublishingModeRequest{}, true},
		{&ua.PublishRequest{}, true},
		{&ua.RepublishRequest{}, true},
		{&ua.TransferSubscriptionsRequest{}, true},
		{&ua.DeleteSubscriptionsRequest{}, true},
		{&ua.CreateMonitoredItemsRequest{}, true},
		{&ua.ModifyMonitoredItemsRequest{}, true},
		{&ua.SetMonitoringModeRequest{}, true},
		{&ua.DeleteMonitoredItemsRequest{}, true},
		// Everything below changes something, or is not needed to read.
		{&ua.WriteRequest{}, false},
		{&ua.HistoryUpdateRequest{}, false},
		{&ua.CallRequest{}, false},
		{&ua.AddNodesRequest{}, false},
		{&ua.AddReferencesRequest{}, false},
		{&ua.DeleteNodesRequest{}, false},
		{&ua.DeleteReferencesRequest{}, false},
		{&ua.RegisterNodesRequest{}, false},
		{&ua.UnregisterNodesRequest{}, false},
		{&ua.QueryFirstRequest{}, false},
		{&ua.QueryNextRequest{}, false},
		{&ua.CancelRequest{}, false},
		{&ua.SetTriggeringRequest{}, false},
		{&ua.RegisterServerRequest{}, false},
		{&ua.RegisterServer2Request{}, false},
		{&ua.FindServersOnNetworkRequest{}, false},
		{&ua.OpenSecureChannelRequest{}, false}, // the channel sends its own, never the driver
		{&ua.CloseSecureChannelRequest{}, false},
		{nil, false},
	}
	for _, tt := range tests {
		name := serviceName(tt.req)
		t.Run(name, func(t *testing.T) {
			if _, got := allowedService(tt.req); got != tt.want {
				t.Errorf("allowedService(%T) = %v, want %v", tt.req, got, tt.want)
			}
		})
	}
}

// TestGuardRefusesWrites drives deliberate writes at a live session: each
// is refused with ErrRefused, counted and logged, and none reaches the
// server, while a read on the same session still works.
func TestGuardRefusesWrites(t *testing.T) {
	sim := startSim(t, simopcua.Options{})
	var logs logBuffer
	points := simPoints(sim, 2)
	d, err := newDriver(driver.Device{Name: "sim", Settings: noneSettings(t, sim.URL), Points: points, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	node, _ := ua.ParseNodeID(points[0].Ref)
	writes := []ua.Request{
		&ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{NodeID: node, AttributeID: ua.AttributeIDValue, Value: &ua.DataValue{Value: ua.MustVariant(99.0)}}}},
		&ua.CallRequest{MethodsToCall: []*ua.CallMethodRequest{{ObjectID: node, MethodID: node}}},
		&ua.AddNodesRequest{},
		&ua.DeleteNodesRequest{},
		&ua.HistoryUpdateRequest{},
		&ua.RegisterNodesRequest{NodesToRegister: []*ua.NodeID{node}},
	}
	for _, req := range writes {
		err := d.g.Send(t.Context(), req, func(ua.Response) error { return nil })
		if !errors.Is(err, driver.ErrRefused) {
			t.Errorf("Send(%T) = %v, want ErrRefused", req, err)
		}
	}
	if got := d.Refusals(); got != uint64(len(writes)) {
		t.Errorf("Refusals() = %d, want %d", got, len(writes))
	}
	if n := strings.Count(logs.String(), "read-only guard refused"); n != len(writes) {
		t.Errorf("logged %d refusals, want %d:\n%s", n, len(writes), logs.String())
	}
	if _, err := d.Read(t.Context(), points); err != nil {
		t.Fatalf("Read after refusals: %v", err)
	}
	// The node helpers of gopcua go through the guard too: each request
	// they make is counted by admit.
	before, _ := d.g.stats()
	if _, err := d.g.Node(node).Value(t.Context()); err != nil {
		t.Fatalf("node helper Value: %v", err)
	}
	if _, err := d.g.Node(node).References(t.Context(), 0, ua.BrowseDirectionForward, ua.NodeClassAll, true); err != nil {
		t.Fatalf("node helper References: %v", err)
	}
	after, refused := d.g.stats()
	if after["Read"] != before["Read"]+1 || after["Browse"] != before["Browse"]+1 {
		t.Errorf("node helpers bypassed the guard: Read %d→%d, Browse %d→%d", before["Read"], after["Read"], before["Browse"], after["Browse"])
	}
	if refused["Write"] != 1 || refused["Call"] != 1 || refused["RegisterNodes"] != 1 {
		t.Errorf("refusals by service: %v", refused)
	}
	d.Close()
	got := sim.Services()
	if bad := notReads(got); len(bad) > 0 {
		t.Errorf("the server received %q; want only reads (all: %q)", bad, got)
	}
	if !slices.Contains(got, "Read") {
		t.Errorf("the server saw no Read: %q", got)
	}
}
