package bacnet

import (
	"fmt"
	"strconv"
	"strings"
)

// ObjectType is a BACnet object type (BACnetObjectType).
type ObjectType uint16

// The object types Sightglass reads; any other number is still valid on
// the wire and prints as its number.
const (
	ObjectAnalogInput          ObjectType = 0
	ObjectAnalogOutput         ObjectType = 1
	ObjectAnalogValue          ObjectType = 2
	ObjectBinaryInput          ObjectType = 3
	ObjectBinaryOutput         ObjectType = 4
	ObjectBinaryValue          ObjectType = 5
	ObjectDevice               ObjectType = 8
	ObjectMultiStateInput      ObjectType = 13
	ObjectMultiStateOutput     ObjectType = 14
	ObjectMultiStateValue      ObjectType = 19
	ObjectTrendLog             ObjectType = 20
	ObjectIntegerValue         ObjectType = 45
	ObjectPositiveIntegerValue ObjectType = 48
)

var objectTypeNames = map[ObjectType]string{
	ObjectAnalogInput: "analog-input", ObjectAnalogOutput: "analog-output", ObjectAnalogValue: "analog-value",
	ObjectBinaryInput: "binary-input", ObjectBinaryOutput: "binary-output", ObjectBinaryValue: "binary-value",
	ObjectDevice: "device", ObjectMultiStateInput: "multi-state-input", ObjectMultiStateOutput: "multi-state-output",
	ObjectMultiStateValue: "multi-state-value", ObjectTrendLog: "trend-log", ObjectIntegerValue: "integer-value",
	ObjectPositiveIntegerValue: "positive-integer-value",
	6:                          "calendar", 10: "file", 12: "loop", 15: "notification-class", 17: "schedule", 27: "trend-log-multiple",
}

// String names the object type, or gives its number.
func (t ObjectType) String() string {
	if n, ok := objectTypeNames[t]; ok {
		return n
	}
	return strconv.Itoa(int(t))
}

// ParseObjectType accepts a name ("analog-input", "AI" style abbreviations
// are not guessed) or a number.
func ParseObjectType(s string) (ObjectType, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for t, n := range objectTypeNames {
		if n == s {
			return t, nil
		}
	}
	if n, err := strconv.ParseUint(s, 10, 10); err == nil {
		return ObjectType(n), nil
	}
	return 0, fmt.Errorf("unknown object type %q: want a name such as analog-input or a number below 1024", s)
}

// PropertyID is a BACnet property identifier (BACnetPropertyIdentifier).
type PropertyID uint32

// The properties Sightglass reads.
const (
	PropAll                       PropertyID = 8
	PropDescription               PropertyID = 28
	PropEventState                PropertyID = 36
	PropMaxAPDULengthAccepted     PropertyID = 62
	PropObjectIdentifier          PropertyID = 75
	PropObjectList                PropertyID = 76
	PropObjectName                PropertyID = 77
	PropObjectType                PropertyID = 79
	PropOptional                  PropertyID = 80
	PropOutOfService              PropertyID = 81
	PropPresentValue              PropertyID = 85
	PropProtocolServicesSupported PropertyID = 97
	PropReliability               PropertyID = 103
	PropRequired                  PropertyID = 105
	PropSegmentationSupported     PropertyID = 107
	PropStatusFlags               PropertyID = 111
	PropUnits                     PropertyID = 117
	PropVendorIdentifier          PropertyID = 120
	PropLogBuffer                 PropertyID = 131
	PropLogDeviceObjectProperty   PropertyID = 132
	PropRecordCount               PropertyID = 141
	PropTotalRecordCount          PropertyID = 145
	PropStateText                 PropertyID = 110
	PropNumberOfStates            PropertyID = 74
	PropModelName                 PropertyID = 70
	PropVendorName                PropertyID = 121
	PropLogInterval               PropertyID = 134
	PropMaxSegmentsAccepted       PropertyID = 167
)

var propertyNames = map[PropertyID]string{
	PropAll: "all", PropDescription: "description", PropEventState: "event-state",
	PropMaxAPDULengthAccepted: "max-apdu-length-accepted", PropObjectIdentifier: "object-identifier",
	PropObjectList: "object-list", PropObjectName: "object-name", PropObjectType: "object-type",
	PropOptional: "optional", PropOutOfService: "out-of-service", PropPresentValue: "present-value",
	PropProtocolServicesSupported: "protocol-services-supported", PropReliability: "reliability",
	PropRequired: "required", PropSegmentationSupported: "segmentation-supported", PropStatusFlags: "status-flags",
	PropUnits: "units", PropVendorIdentifier: "vendor-identifier", PropLogBuffer: "log-buffer",
	PropLogDeviceObjectProperty: "log-device-object-property", PropRecordCount: "record-count",
	PropTotalRecordCount: "total-record-count", PropStateText: "state-text", PropNumberOfStates: "number-of-states",
	PropModelName: "model-name", PropVendorName: "vendor-name", PropLogInterval: "log-interval",
	PropMaxSegmentsAccepted: "max-segments-accepted",
	PropertyID(87):          "priority-array", PropertyID(104): "relinquish-default", PropertyID(44): "firmware-revision",
}

// String names the property, or gives its number.
func (p PropertyID) String() string {
	if n, ok := propertyNames[p]; ok {
		return n
	}
	return strconv.Itoa(int(p))
}

// ParsePropertyID accepts a name ("present-value") or a number.
func ParsePropertyID(s string) (PropertyID, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for p, n := range propertyNames {
		if n == s {
			return p, nil
		}
	}
	if n, err := strconv.ParseUint(s, 10, 22); err == nil {
		return PropertyID(n), nil
	}
	return 0, fmt.Errorf("unknown property %q: want a name such as present-value or a number", s)
}

// Segmentation is what a device supports (BACnetSegmentation).
type Segmentation uint8

// Segmentation support values.
const (
	SegmentedBoth     Segmentation = 0
	SegmentedTransmit Segmentation = 1
	SegmentedReceive  Segmentation = 2
	NoSegmentation    Segmentation = 3
)

// CanTransmit reports whether a device with this support can send a
// segmented response.
func (s Segmentation) CanTransmit() bool { return s == SegmentedBoth || s == SegmentedTransmit }

// String names the segmentation support.
func (s Segmentation) String() string {
	switch s {
	case SegmentedBoth:
		return "segmented-both"
	case SegmentedTransmit:
		return "segmented-transmit"
	case SegmentedReceive:
		return "segmented-receive"
	case NoSegmentation:
		return "no-segmentation"
	}
	return strconv.Itoa(int(s))
}

// Confirmed service choices (BACnetConfirmedServiceChoice). Only the
// read services are sent by this package; the others are named so the
// guard can say what it refused.
const (
	ServiceReadProperty          uint8 = 12
	ServiceReadPropertyMultiple  uint8 = 14
	ServiceWriteProperty         uint8 = 15
	ServiceWritePropertyMultiple uint8 = 16
	ServiceReadRange             uint8 = 26
)

// Unconfirmed service choices (BACnetUnconfirmedServiceChoice).
const (
	ServiceIAm    uint8 = 0
	ServiceIHave  uint8 = 1
	ServiceWhoHas uint8 = 7
	ServiceWhoIs  uint8 = 8
)

// Error is a BACnet Error PDU: the device understood the request and
// refused it for a reason it names.
type Error struct {
	Class, Code uint32
}

// Error names the class and code.
func (e *Error) Error() string {
	return fmt.Sprintf("bacnet error class %s code %s", errorClassName(e.Class), errorCodeName(e.Code))
}

// Error classes and the codes Sightglass looks at.
const (
	ErrorClassDevice   = 0
	ErrorClassObject   = 1
	ErrorClassProperty = 2
	ErrorClassServices = 5

	ErrorCodeUnknownObject        = 31
	ErrorCodeUnknownProperty      = 32
	ErrorCodeInvalidArrayIndex    = 42
	ErrorCodeServiceRequestDenied = 29
)

func errorClassName(c uint32) string {
	names := []string{"device", "object", "property", "resources", "security", "services", "vt", "communication"}
	if int(c) < len(names) {
		return names[c]
	}
	return strconv.Itoa(int(c))
}

func errorCodeName(c uint32) string {
	switch c {
	case ErrorCodeUnknownObject:
		return "unknown-object"
	case ErrorCodeUnknownProperty:
		return "unknown-property"
	case ErrorCodeInvalidArrayIndex:
		return "invalid-array-index"
	case ErrorCodeServiceRequestDenied:
		return "service-request-denied"
	case 0:
		return "other"
	case 9:
		return "invalid-data-type"
	case 40:
		return "write-access-denied"
	case 27:
		return "read-access-denied"
	case 2:
		return "configuration-in-progress"
	case 25:
		return "operational-problem"
	}
	return strconv.Itoa(int(c))
}

// RejectError is a Reject PDU: the device could not parse the request.
type RejectError struct{ Reason uint8 }

// Error names the reason.
func (e *RejectError) Error() string {
	return fmt.Sprintf("bacnet reject reason %d (%s)", e.Reason, rejectReasons[min(int(e.Reason), len(rejectReasons)-1)])
}

var rejectReasons = []string{"other", "buffer-overflow", "inconsistent-parameters", "invalid-parameter-data-type",
	"invalid-tag", "missing-required-parameter", "parameter-out-of-range", "too-many-arguments",
	"undefined-enumeration", "unrecognized-service", "reserved"}

// AbortError is an Abort PDU: the device gave up on the transaction.
type AbortError struct {
	Reason uint8
	Server bool
}

// Error names the reason.
func (e *AbortError) Error() string {
	return fmt.Sprintf("bacnet abort reason %d (%s)", e.Reason, abortReasons[min(int(e.Reason), len(abortReasons)-1)])
}

// Abort reasons a device may give.
const (
	AbortOther                    = 0
	AbortBufferOverflow           = 1
	AbortPreempted                = 3 // preempted-by-higher-priority-task
	AbortSegmentationNotSupported = 4
	AbortExceededReplyTime        = 8 // application-exceeded-reply-time
	AbortOutOfResources           = 9
	AbortTSMTimeout               = 10
	AbortApduTooLong              = 11
)

var abortReasons = []string{"other", "buffer-overflow", "invalid-apdu-in-this-state", "preempted-by-higher-priority-task",
	"segmentation-not-supported", "security-error", "insufficient-security", "window-size-out-of-range",
	"application-exceeded-reply-time", "out-of-resources", "tsm-timeout", "apdu-too-long", "reserved"}
