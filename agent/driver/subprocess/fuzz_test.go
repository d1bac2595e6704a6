package subprocess

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/telemetry"
)

// FuzzDecodeAnswer feeds the parent's decoder what a broken child could
// send: it must never panic or allocate beyond a small multiple of the
// frame, and what it accepts must encode back to the same answer.
func FuzzDecodeAnswer(f *testing.F) {
	f.Add(encodeAnswer(answer{typ: ansReady, version: Version, caps: capDiscoverer}))
	f.Add(encodeAnswer(answer{typ: ansOK, id: 7}))
	f.Add(encodeAnswer(answer{typ: ansSamples, id: 2, samples: []telemetry.Sample{{PointID: 1, Time: 1767323045000, Value: 21.5}, {PointID: 2, Status: telemetry.StatusFault}}}))
	f.Add(encodeAnswer(answer{typ: ansPoints, id: 3, points: []driver.Point{{Ref: "ns=2;s=AHU1.SAT", Name: "SAT", Unit: "°C", Tags: []string{"ahu"}, Settings: yamlSettings("mode: subscribe\n")}}}))
	f.Add(encodeAnswer(answer{typ: ansError, id: 4, err: remoteError("reading: connection lost", 1)}))
	f.Add(encodeAnswer(answer{typ: ansSamples, id: 5, samples: []telemetry.Sample{{PointID: 1, Time: 1767323045000, Value: 21.5}}, state: []byte(`{"version":1,"points":{"ns=2;s=Hist":{"last":1767323045000}}}`)}))
	f.Add(encodeAnswer(answer{typ: ansSamples, id: 6, state: []byte{}}))
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := decodeAnswer(body)
		if err != nil {
			return
		}
		if a.typ == ansError {
			a.err = remoteError(a.err.Error(), errorKinds(a.err))
		}
		again, err := decodeAnswer(encodeAnswer(a))
		if err != nil {
			t.Fatalf("an accepted answer does not decode once re-encoded: %v", err)
		}
		if a.typ != ansError && !answersEqual(a, again) {
			t.Fatalf("re-encoded %+v decodes to %+v", a, again)
		}
	})
}

// FuzzReadFrame reads frames from arbitrary bytes: bounded, no panic.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	_ = writeFrame(&buf, encodeAnswer(answer{typ: ansOK, id: 1}))
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{0, 0, 0, 3, 'o', 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for range 16 {
			body, err := readFrame(r)
			if err != nil {
				return
			}
			if len(body) == 0 || len(body) > MaxFrame {
				t.Fatalf("readFrame returned %d bytes", len(body))
			}
		}
	})
}

// FuzzDecodeCall feeds the child's decoder; the parent is trusted, but a
// frame it cannot decode must be an error, not a crash.
func FuzzDecodeCall(f *testing.F) {
	body, err := encodeStart(0, start{version: Version, driver: "opcua", device: "d", level: slog.LevelInfo, interval: time.Minute, settings: yamlSettings("endpoint: opc.tcp://127.0.0.1:4840\n"), points: []driver.Point{{ID: 1, Ref: "i=2258"}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(body)
	read := newEnc(msgRead, 2)
	read.uvarint(1000)
	read.uvarint(2)
	read.uvarint(1)
	read.uvarint(0)
	read.point(driver.Point{ID: 5, Ref: "x"}, []byte("offset: 1"))
	f.Add(read.b)
	cancel := newEnc(msgCancel, 0)
	cancel.uvarint(2)
	f.Add(cancel.b)
	restore := newEnc(msgRestore, 3)
	restore.uvarint(uint64(5 * time.Second))
	restore.optBytes([]byte(`{"version":1,"points":{"ns=2;s=Hist":{"last":1767323045000,"gaps":[{"from":1,"to":2}]}}}`))
	f.Add(restore.b)
	f.Fuzz(func(t *testing.T, body []byte) {
		_, _ = decodeCall(body)
	})
}

// FuzzRelayRecord feeds the stderr relay lines a child could write: a
// line is relayed or reported as not a record, never a crash.
func FuzzRelayRecord(f *testing.F) {
	f.Add([]byte(`{"time":"2026-12-01T09:00:00.123Z","level":"WARN","msg":"x","device":"ahu","n":3,"g":{"a":1.5,"b":[1,"x"]}}`))
	f.Add([]byte(`{"level":"DEBUG-2","msg":""}`))
	f.Add([]byte(`panic: runtime error: index out of range`))
	f.Add([]byte(`{"msg":1}`))
	h := slog.NewTextHandler(bytes.NewBuffer(nil), &slog.HandlerOptions{Level: slog.LevelDebug - 8})
	f.Fuzz(func(t *testing.T, line []byte) {
		relayRecord(context.Background(), h, line)
	})
}
