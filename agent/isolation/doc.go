// Package isolation proves, in Linux network namespaces, that the agent
// keeps the control network and the uplink apart: the controllers in a
// "control" namespace, the agent in an "edge" namespace with one veth link
// to each side, the ingest in a "cloud" namespace. Its test shows data
// flowing end to end, no path from either side to the other or to the
// agent, the agent's sockets being exactly the expected ones, the firewall
// in packaging/ doing what it says, the forwarding refusal at start, and a
// cut uplink losing nothing. The package has no API; see its tests.
package isolation
