// Package packaging holds the Debian packaging of the agent and the ingest
// (nfpm configurations, hardened systemd units, the edge box's nftables
// ruleset, maintainer scripts) and the tests that hold it to what an
// installer is promised; it has no Go API. See README.md.
package packaging
