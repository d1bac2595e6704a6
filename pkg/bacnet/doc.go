// Package bacnet is a BACnet/IP client that only reads (ANSI/ASHRAE 135).
//
// It speaks the BACnet/IP virtual link layer (Original-Unicast,
// Original-Broadcast, Forwarded-NPDU, and foreign-device registration with
// a BBMD for discovery across subnets), the network layer with routing to
// devices behind BACnet routers (DNET/DADR out, SNET/SADR back), and the
// application layer's confirmed and unconfirmed requests and every answer
// (SimpleACK, ComplexACK, Error, Reject, Abort), receiving segmented
// ComplexACKs with Segment-ACKs and windowing.
//
// The services are Who-Is/I-Am, Who-Has/I-Have, ReadProperty,
// ReadPropertyMultiple (ALL, REQUIRED and OPTIONAL included) and
// ReadRange by position, sequence number and time. There is no write
// service, and Client's single send point passes every datagram through a
// Guard that refuses anything but these reads (see Guard).
//
// The tag codec (AppendValue, DecodeValues) covers every primitive type
// and constructed values; the decoder is bounded in depth and element
// count so a broken device cannot make it recurse or allocate without
// limit. Request decoders (DecodeReadPropertyRequest...) exist for the
// guard and for simulators.
package bacnet
