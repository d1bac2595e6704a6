package opcua

import (
	"context"
	"fmt"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// historyPageSize is how many values one HistoryRead asks for per node;
// historyMaxPages bounds the continuation points followed per backfill.
const (
	historyPageSize = 1000
	historyMaxPages = 100
)

// backfillGap reads, for each point with history: true, the values the
// server logged since the point's newest sample, at most BackfillMax back.
// They are returned by the next Read. A server without history for a node
// is logged and skipped: backfill is a bonus, never a reason to fail.
func (d *Driver) backfillGap(ctx context.Context) {
	end := d.now()
	for _, p := range d.pointList {
		pc := d.points[p.Ref]
		if !pc.history {
			continue
		}
		d.mu.Lock()
		ms := d.tl.of(p.ID).last
		d.mu.Unlock()
		if ms == 0 {
			continue
		}
		start := time.UnixMilli(ms + 1)
		if floor := end.Add(-d.cfg.backfillMax); start.Before(floor) {
			start = floor
		}
		if !start.Before(end) {
			continue
		}
		samples, err := d.History(ctx, p, start, end)
		if err != nil {
			d.log.Warn("HistoryRead backfill failed; the gap stays", "point", p.Ref, "from", start, "to", end, "err", err)
			continue
		}
		d.log.Info("backfilled the gap from the server's history", "point", p.Ref, "from", start, "to", end, "samples", len(samples))
		d.mu.Lock()
		d.backfill = append(d.backfill, samples...)
		d.mu.Unlock()
	}
}

// History reads the raw values the server logged for p in [start, end),
// following continuation points, through the guard.
func (d *Driver) History(ctx context.Context, p driver.Point, start, end time.Time) ([]telemetry.Sample, error) {
	pc, ok := d.points[p.Ref]
	if !ok {
		var err error
		if pc, err = parsePoint(p); err != nil {
			return nil, err
		}
	}
	details := ua.NewExtensionObject(&ua.ReadRawModifiedDetails{
		StartTime:        start,
		EndTime:          end,
		NumValuesPerNode: historyPageSize,
	})
	var out []telemetry.Sample
	var cont []byte
	for page := 0; ; page++ {
		release := page >= historyMaxPages
		var res *ua.HistoryReadResponse
		err := d.g.Send(ctx, &ua.HistoryReadRequest{
			HistoryReadDetails:        details,
			TimestampsToReturn:        ua.TimestampsToReturnBoth,
			ReleaseContinuationPoints: release,
			NodesToRead:               []*ua.HistoryReadValueID{{NodeID: pc.node, DataEncoding: &ua.QualifiedName{}, ContinuationPoint: cont}},
		}, func(v ua.Response) error { return assign(v, &res) })
		if err != nil {
			return out, fmt.Errorf("history of %s: %w", p.Ref, err)
		}
		if release {
			d.log.Warn("history backfill stopped at its page limit", "point", p.Ref, "samples", len(out))
			return out, nil
		}
		samples, r, err := d.historyPage(p, res, start, end)
		out = append(out, samples...)
		if err != nil {
			return out, err
		}
		if len(r.ContinuationPoint) == 0 {
			return out, nil
		}
		cont = r.ContinuationPoint
	}
}

// historyPage turns one HistoryRead answer for p into samples within
// [start, end), and returns the node's result for its continuation point.
func (d *Driver) historyPage(p driver.Point, res *ua.HistoryReadResponse, start, end time.Time) ([]telemetry.Sample, *ua.HistoryReadResult, error) {
	if res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
		return nil, nil, fmt.Errorf("history of %s: %w", p.Ref, res.ResponseHeader.ServiceResult)
	}
	if len(res.Results) != 1 || res.Results[0] == nil {
		return nil, nil, fmt.Errorf("history of %s: the server answered %d results for 1 node", p.Ref, len(res.Results))
	}
	r := res.Results[0]
	if r.StatusCode&0x80000000 != 0 {
		return nil, nil, fmt.Errorf("history of %s: %w", p.Ref, r.StatusCode)
	}
	if r.HistoryData == nil || r.HistoryData.Value == nil {
		return nil, r, nil
	}
	hd, ok := r.HistoryData.Value.(*ua.HistoryData)
	if !ok {
		return nil, nil, fmt.Errorf("history of %s: unexpected history data %T", p.Ref, r.HistoryData.Value)
	}
	now := d.now()
	var out []telemetry.Sample
	for _, dv := range hd.DataValues {
		s := d.sample(p, dv, now)
		if t := time.UnixMilli(s.Time); t.Before(start) || !t.Before(end) {
			continue // bounds, or a server that ignores the range
		}
		out = append(out, s)
	}
	return out, r, nil
}
