#!/bin/sh
# prerm of sightglass-agent and sightglass-ingest: stop and disable the
# service before its binary goes away. The agent's buffer is on disk and
# the ingest finishes in-flight batches, so stopping loses nothing.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl stop "$DPKG_MAINTSCRIPT_PACKAGE.service" >/dev/null 2>&1 || true
	systemctl disable "$DPKG_MAINTSCRIPT_PACKAGE.service" >/dev/null 2>&1 || true
fi
exit 0
