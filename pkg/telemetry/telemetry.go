// Package telemetry defines the sample, the unit of data every part of
// Sightglass passes along: drivers produce samples, the buffer stores them,
// the wire format carries them and the ingest archives them.
package telemetry

import "fmt"

// Status says how far a sample's value can be trusted. The set is what
// BACnet status flags, Modbus exceptions and OPC UA status codes map onto;
// the numeric values are part of the wire format and must never change.
type Status uint8

const (
	// StatusOK is a good value read from the device.
	StatusOK Status = 0
	// StatusStale is a value the device reported but did not refresh in time.
	StatusStale Status = 1
	// StatusFault is a value the device itself flags as faulty (BACnet FAULT,
	// a Modbus exception, an OPC UA Bad status).
	StatusFault Status = 2
	// StatusCommFailure means the device could not be reached; the value is
	// meaningless (zero).
	StatusCommFailure Status = 3
	// StatusOutOfService is a point the device marks out of service.
	StatusOutOfService Status = 4
	// StatusOverridden is a value an operator or the device overrode by hand.
	StatusOverridden Status = 5
	// StatusInAlarm is a good value the device flags as in alarm (BACnet
	// IN_ALARM): the reading is trustworthy, and it is outside its limits.
	StatusInAlarm Status = 6
)

// MaxStatus is the largest defined status; decoders refuse anything above it.
const MaxStatus = StatusInAlarm

var statusNames = [...]string{"ok", "stale", "fault", "comm-failure", "out-of-service", "overridden", "in-alarm"}

// String returns the status's stable lower-case name, as used in JSON output.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// ParseStatus is the inverse of Status.String.
func ParseStatus(name string) (Status, error) {
	for i, n := range statusNames {
		if n == name {
			return Status(i), nil
		}
	}
	return 0, fmt.Errorf("unknown status %q: want one of %v", name, statusNames)
}

// Sample is one value of one point at one time. PointID is the point's
// pseudonym (see package anon): a sample never carries a name or address.
type Sample struct {
	PointID uint64
	// Time is Unix time in milliseconds (UTC).
	Time   int64
	Value  float64
	Status Status
}
