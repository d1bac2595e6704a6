package azure_test

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/sightglass-bms/sightglass/ingest/blob"
	"github.com/sightglass-bms/sightglass/ingest/blob/azure"
	"github.com/sightglass-bms/sightglass/ingest/server"
)

// The server's /readyz asks the store itself when it can.
var _ server.Pinger = (*azure.Store)(nil)

// FuzzServiceResponse feeds Put and Get arbitrary answers from the service
// (status, error code, body, stored MD5) and checks what they conclude
// from them: never a panic, "created" only for 201, "already stored" only
// for a taken name whose stored bytes are the offered ones, bytes from Get
// only from a success and only when they match the stored MD5, and every
// error on one line.
func FuzzServiceResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, status uint16, code string, body, storedMD5 []byte) {
		if status < 100 || status > 599 || strings.ContainsAny(code, "\r\n\x00") {
			t.Skip()
		}
		answer := func(st int, code string) *http.Response {
			r := reply(st, code, body)
			if len(storedMD5) > 0 {
				r.Header.Set("Content-MD5", base64.StdEncoding.EncodeToString(storedMD5))
			}
			return r
		}
		offered := []byte("offered bytes")
		const name = "t1/s1/2026/01/02/03/ag-1-00000000000000000001.sgb"

		// Put: the fuzzed answer to the write, then a stored blob of body.
		f := &fakeService{answer: func(i int, _ *http.Request) *http.Response {
			if i == 0 {
				return answer(int(status), code)
			}
			return answer(http.StatusOK, "")
		}}
		created, err := newFakeStore(t, f).Put(t.Context(), name, offered)
		taken := (status == http.StatusConflict && code == "BlobAlreadyExists") ||
			(status == http.StatusPreconditionFailed && code == "ConditionNotMet")
		md5OK := len(storedMD5) != md5.Size || bytes.Equal(storedMD5, md5sum(body))
		switch {
		case created && (err != nil || status != http.StatusCreated):
			t.Fatalf("Put = true, %v after HTTP %d %q", err, status, code)
		case !created && err == nil && !(taken && bytes.Equal(body, offered) && md5OK):
			t.Fatalf("Put reported already stored after HTTP %d %q with stored %q", status, code, body)
		case errors.Is(err, blob.ErrConflict) && !(taken && !bytes.Equal(body, offered)):
			t.Fatalf("Put reported a conflict after HTTP %d %q with stored %q: %v", status, code, body, err)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("Put error spans lines: %q", err)
		}

		// Get: the fuzzed answer to the download.
		f = &fakeService{answer: func(int, *http.Request) *http.Response { return answer(int(status), code) }}
		got, err := newFakeStore(t, f).Get(t.Context(), name)
		switch {
		case err == nil && status != http.StatusOK && status != http.StatusPartialContent:
			t.Fatalf("Get succeeded after HTTP %d %q", status, code)
		case err == nil && !bytes.Equal(got, body):
			t.Fatalf("Get = %q, the service sent %q", got, body)
		case err == nil && !md5OK:
			t.Fatalf("Get returned bytes that do not match the stored MD5")
		case errors.Is(err, blob.ErrNotFound) && code != "BlobNotFound":
			t.Fatalf("Get reported not found after HTTP %d %q", status, code)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("Get error spans lines: %q", err)
		}
	})
}

func md5sum(b []byte) []byte {
	s := md5.Sum(b)
	return s[:]
}
