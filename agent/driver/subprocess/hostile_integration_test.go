package subprocess

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sightglass-bms/sightglass/agent/driver/opcua"
	"github.com/sightglass-bms/sightglass/pkg/driver"
	"github.com/sightglass-bms/sightglass/pkg/driver/drivertest"
	simopcua "github.com/sightglass-bms/sightglass/pkg/sim/opcua"
)

// rlimitEnv caps the driver host's address space (in TestMain): the
// hostile server's claim must fail in the child at once, whatever this
// machine's overcommit policy would let a virtual reservation get away with.
const rlimitEnv = "SIGHTGLASS_SUBPROCESS_TEST_RLIMIT_AS"

// cappedSelfCommand is selfCommand with the child's address space capped.
func cappedSelfCommand() (*exec.Cmd, error) {
	cmd, err := selfCommand()
	if err == nil {
		cmd.Env = append(cmd.Env, rlimitEnv+"=1")
	}
	return cmd, err
}

// startHostile serves what gopcua v0.9.0 cannot survive: it acknowledges
// the client's Hello and answers its OpenSecureChannel (security None) with
// a response header whose string table claims 2³¹−1 strings in four bytes.
// gopcua's decoder makes that slice (32 GiB) before it finds the bytes
// missing. It records how many channels were opened at it.
func startHostile(t *testing.T) (url string, opened func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	n := make(chan struct{}, 100)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				if hostileExchange(conn) == nil {
					n <- struct{}{}
				}
			}()
		}
	}()
	return "opc.tcp://" + ln.Addr().String(), func() int { return len(n) }
}

// hostileExchange is one connection: Hello → Acknowledge, then
// OpenSecureChannel → the hostile response.
func hostileExchange(conn net.Conn) error {
	if _, err := readUACP(conn, "HEL"); err != nil {
		return err
	}
	var ack bytes.Buffer
	ack.WriteString("ACKF")
	le(&ack, uint32(28), uint32(0), uint32(65535), uint32(65535), uint32(0), uint32(0))
	if _, err := conn.Write(ack.Bytes()); err != nil {
		return err
	}
	opn, err := readUACP(conn, "OPN")
	if err != nil {
		return err
	}
	// The request: channel id, then the asymmetric security header (policy
	// URI, certificate, thumbprint), then the sequence header.
	r := bytes.NewReader(opn[4:])
	for range 3 {
		var l int32
		if err := binary.Read(r, binary.LittleEndian, &l); err != nil {
			return err
		}
		if l > 0 {
			if _, err := r.Seek(int64(l), io.SeekCurrent); err != nil {
				return err
			}
		}
	}
	var seq, reqID uint32
	if err := binary.Read(r, binary.LittleEndian, &seq); err != nil {
		return err
	}
	if err := binary.Read(r, binary.LittleEndian, &reqID); err != nil {
		return err
	}
	var body bytes.Buffer
	le(&body, uint32(1)) // secure channel id
	policy := "http://opcfoundation.org/UA/SecurityPolicy#None"
	le(&body, int32(len(policy)))
	body.WriteString(policy)
	le(&body, int32(-1), int32(-1)) // no certificate, no thumbprint
	le(&body, uint32(1), reqID)     // sequence number, request id
	// OpenSecureChannelResponse (four-byte node id 449), its response
	// header: timestamp, request handle, good status, no diagnostics, and
	// the string table's length. Nothing follows.
	body.Write([]byte{0x01, 0x00})
	le(&body, uint16(449), int64(0), uint32(1), uint32(0))
	body.WriteByte(0)
	le(&body, uint32(math.MaxInt32))
	var msg bytes.Buffer
	msg.WriteString("OPNF")
	le(&msg, uint32(8+body.Len()))
	msg.Write(body.Bytes())
	_, err = conn.Write(msg.Bytes())
	return err
}

// readUACP reads one message of type typ and returns it after its 8-byte
// header.
func readUACP(r io.Reader, typ string) ([]byte, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	if string(hdr[:3]) != typ {
		return nil, fmt.Errorf("got %q, want %s", hdr[:3], typ)
	}
	size := binary.LittleEndian.Uint32(hdr[4:])
	if size < 8 || size > 1<<20 {
		return nil, fmt.Errorf("%s of %d bytes", typ, size)
	}
	b := make([]byte, size-8)
	_, err := io.ReadFull(r, b)
	return b, err
}

func le(w *bytes.Buffer, vs ...any) {
	for _, v := range vs {
		_ = binary.Write(w, binary.LittleEndian, v)
	}
}

// TestHostileServerIntegration is the reason the package exists: an OPC UA
// server makes gopcua allocate 32 GiB from one small message. The child
// dies of it; the agent (this process) does not, reports the device's
// connection lost with the child's last words, and its other device reads
// on before, during and after.
func TestHostileServerIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an OPC UA server and driver hosts (not with -short)")
	}
	hostileURL, opened := startHostile(t)
	sim, err := simopcua.Start(t.Context(), simopcua.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the devices (cleanups run last first): the server waits
	// for open sessions.
	t.Cleanup(func() { sim.Close() })
	info := Wrap(opcua.Info(), cappedSelfCommand, Options{Grace: time.Second})
	device := func(name, url string, points []driver.Point) driver.Driver {
		settings := drivertest.YAML(fmt.Sprintf("endpoint: %s\nsecurity_policy: None\nsecurity_mode: None\npki_dir: %s\n", url, t.TempDir()))
		d, err := info.New(driver.Device{Name: name, Settings: settings, Points: points})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	good := []driver.Point{{ID: 1, Ref: sim.Variables()[0]}}
	healthy := device("healthy", sim.URL, good)
	hostile := device("hostile", hostileURL, []driver.Point{{ID: 2, Ref: "ns=2;s=X"}})
	connect(t, healthy)
	if _, err := readT(t, healthy, good); err != nil {
		t.Fatal(err)
	}
	before := ownKB(t, "VmHWM")
	for attempt := range 2 {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		began := time.Now()
		err := hostile.Connect(ctx)
		cancel()
		if took := time.Since(began); took > 5*time.Second {
			t.Errorf("Connect %d took %s", attempt+1, took)
		}
		if !errors.Is(err, driver.ErrConnLost) {
			t.Fatalf("Connect %d to the hostile server = %v; want ErrConnLost", attempt+1, err)
		}
		if !strings.Contains(err.Error(), "driver host") || !strings.Contains(err.Error(), "exit status 2") {
			t.Errorf("Connect %d: %v; want the child's death named", attempt+1, err)
		}
		if !raceEnabled && !strings.Contains(err.Error(), "out of memory") {
			t.Errorf("Connect %d: %v; want the child's out-of-memory quoted", attempt+1, err)
		}
		if err := hostile.Close(); err != nil {
			t.Errorf("Close after the death: %v", err)
		}
		if _, err := readT(t, healthy, good); err != nil {
			t.Errorf("the healthy device after the hostile one's child died: %v", err)
		}
	}
	if opened() == 0 {
		t.Error("the hostile server answered no OpenSecureChannel: the test proves nothing")
	}
	if after := ownKB(t, "VmHWM"); after-before > 256<<10 {
		t.Errorf("the agent's own peak RSS grew by %d MB: the allocation happened here, not in the child", (after-before)>>10)
	}
}

// ownKB reads a kB field of this process's status.
func ownKB(t *testing.T, field string) int {
	t.Helper()
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}
