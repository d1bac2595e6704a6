package buffer

import (
	"cmp"
	"context"
	"slices"
	"testing"

	"github.com/sightglass-bms/sightglass/pkg/batch"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// bufferTables resolves point tables from the buffer, as the uplink's
// peer, the ingest, will after the uplink sends them.
type bufferTables struct{ b *Buffer }

func (r bufferTables) PointTable(h batch.TableHash) ([]uint64, error) {
	data, err := r.b.Table(h)
	if err != nil {
		return nil, err
	}
	ids, got, err := batch.DecodePointTable(data)
	if err != nil {
		return nil, err
	}
	if got != h {
		return nil, batch.ErrCorrupt
	}
	return ids, nil
}

// TestRealCodec seals with pkg/batch's encoder: the batch the buffer hands
// out, with the table it stores, must decode to the samples appended.
func TestRealCodec(t *testing.T) {
	ctx := context.Background()
	b := openT(t, tempPath(t), Options{NoSync: true})
	defer b.Close()
	var want []telemetry.Sample
	for i := range 4 {
		s := mkSamples(i*50, 50)
		want = append(want, s...)
		if err := b.Append(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	seal := func(seq uint64, samples []telemetry.Sample) (batch.Encoded, error) {
		return batch.Encode(&batch.Batch{
			Header:  batch.Header{AgentID: "agent-1", Site: "site-1", Seq: seq, SentAt: samples[len(samples)-1].Time},
			Samples: samples,
		})
	}
	if _, _, err := b.Seal(ctx, 1000, seal); err != nil {
		t.Fatal(err)
	}
	s, ok, err := b.Next(0)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	got, err := batch.Decode(s.Data, bufferTables{b}, batch.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != s.Seq || int(got.Header.Samples) != s.Samples {
		t.Fatalf("decoded header %+v for batch %d of %d samples", got.Header, s.Seq, s.Samples)
	}
	slices.SortFunc(want, func(a, b telemetry.Sample) int {
		return cmp.Or(cmp.Compare(a.PointID, b.PointID), cmp.Compare(a.Time, b.Time))
	})
	if !sameSamples(got.Samples, want) {
		t.Fatal("decoded samples differ from the appended ones")
	}
}
