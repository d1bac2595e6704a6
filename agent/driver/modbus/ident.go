package modbus

import (
	"context"
	"errors"
	"fmt"
	"strings"

	gmodbus "github.com/goburrow/modbus"
)

// DeviceID is what a device tells about itself through Read Device
// Identification (function 43, MEI type 14).
type DeviceID struct {
	Vendor      string `json:"vendor,omitempty"`       // object 0
	ProductCode string `json:"product_code,omitempty"` // object 1
	Revision    string `json:"revision,omitempty"`     // object 2
	VendorURL   string `json:"vendor_url,omitempty"`   // object 3
	ProductName string `json:"product_name,omitempty"` // object 4
	Model       string `json:"model,omitempty"`        // object 5
}

// String is the identification on one line.
func (id DeviceID) String() string {
	var parts []string
	for _, s := range []string{id.Vendor, id.ProductName, id.Model, id.ProductCode, id.Revision} {
		if s != "" && !strings.Contains(strings.Join(parts, " "), s) {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, " ")
}

func (id *DeviceID) set(obj byte, v string) {
	switch obj {
	case 0:
		id.Vendor = v
	case 1:
		id.ProductCode = v
	case 2:
		id.Revision = v
	case 3:
		id.VendorURL = v
	case 4:
		id.ProductName = v
	case 5:
		id.Model = v
	}
}

// deviceIDPage is one answer to a Read Device Identification request.
type deviceIDPage struct {
	more    bool
	next    byte
	objects map[byte]string
}

// decodeDeviceID decodes the data of a function 43/14 answer (after the
// function code): MEI type, read code, conformity level, more follows,
// next object id, object count, then id-length-value objects.
func decodeDeviceID(data []byte) (deviceIDPage, error) {
	if len(data) < 6 {
		return deviceIDPage{}, fmt.Errorf("device identification answer of %d bytes: want at least 6", len(data))
	}
	if data[0] != meiReadDeviceID {
		return deviceIDPage{}, fmt.Errorf("device identification answer with MEI type %d: want 14", data[0])
	}
	p := deviceIDPage{more: data[3] == 0xff, next: data[4], objects: map[byte]string{}}
	n := int(data[5])
	rest := data[6:]
	for i := range n {
		if len(rest) < 2 || len(rest) < 2+int(rest[1]) {
			return deviceIDPage{}, fmt.Errorf("device identification object %d of %d is cut off", i+1, n)
		}
		id, l := rest[0], int(rest[1])
		p.objects[id] = strings.TrimRight(string(rest[2:2+l]), "\x00 ")
		rest = rest[2+l:]
	}
	if len(rest) != 0 {
		return deviceIDPage{}, fmt.Errorf("device identification answer has %d bytes after its %d objects", len(rest), n)
	}
	return p, nil
}

// ReadDeviceID asks unit for its identification (function 43/14, the
// regular category, falling back to basic), through the guard.
func (g *Guard) ReadDeviceID(ctx context.Context, tr *Transport, unit byte) (DeviceID, error) {
	var id DeviceID
	code := byte(2) // regular: basic objects plus product name and model
	next := byte(0)
	// A device announcing more objects forever must not keep us here.
	for range 8 {
		resp, err := g.roundTrip(ctx, tr, unit, &gmodbus.ProtocolDataUnit{FunctionCode: fcEncapsulated, Data: []byte{meiReadDeviceID, code, next}})
		var mbErr *gmodbus.ModbusError
		if errors.As(err, &mbErr) && code == 2 && (mbErr.ExceptionCode == 2 || mbErr.ExceptionCode == 3) {
			code, next = 1, 0
			continue
		}
		if err != nil {
			return id, fmt.Errorf("reading device identification of unit %d: %w", unit, err)
		}
		page, err := decodeDeviceID(resp.Data)
		if err != nil {
			return id, fmt.Errorf("reading device identification of unit %d: %w", unit, err)
		}
		for obj, v := range page.objects {
			id.set(obj, v)
		}
		if !page.more || page.next <= next {
			return id, nil
		}
		next = page.next
	}
	return id, nil
}

// roundTrip sends one PDU through the guarded packager and transporter,
// as goburrow's client does for the functions it knows.
func (g *Guard) roundTrip(ctx context.Context, tr *Transport, unit byte, pdu *gmodbus.ProtocolDataUnit) (*gmodbus.ProtocolDataUnit, error) {
	pk := g.Packager(newPackager(unit))
	req, err := pk.Encode(pdu)
	if err != nil {
		return nil, err
	}
	resp, err := g.Transporter(tr.bind(ctx)).Send(req)
	if err != nil {
		return nil, err
	}
	if err := pk.Verify(req, resp); err != nil {
		return nil, err
	}
	out, err := pk.Decode(resp)
	if err != nil {
		return nil, err
	}
	if out.FunctionCode != pdu.FunctionCode {
		code := byte(0)
		if len(out.Data) > 0 {
			code = out.Data[0]
		}
		return nil, &gmodbus.ModbusError{FunctionCode: out.FunctionCode, ExceptionCode: code}
	}
	return out, nil
}
