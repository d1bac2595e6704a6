package bacnet

import "net/netip"

// SendForTest exposes the client's single send point, so tests can try to
// push a write through it and prove the guard refuses it.
func (c *Client) SendForTest(to netip.AddrPort, frame []byte) error { return c.send(to, frame) }
