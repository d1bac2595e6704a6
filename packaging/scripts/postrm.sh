#!/bin/sh
# postrm of sightglass-agent and sightglass-ingest: `apt remove` keeps the
# state (the agent's buffer, site secret and certificate; the ingest's CA,
# archive and database) so a reinstall continues where it stopped;
# `apt purge` removes it and the dedicated user.
set -e
case "$DPKG_MAINTSCRIPT_PACKAGE" in
sightglass-agent) USER=sightglass DATA=/var/lib/sightglass CONFDIR=/etc/sightglass ;;
sightglass-ingest) USER=sightglass-ingest DATA=/var/lib/sightglass-ingest CONFDIR=/etc/sightglass-ingest ;;
*) exit 0 ;;
esac
if [ "$1" = purge ]; then
	rm -rf "$DATA" "$CONFDIR/cert"
	rmdir "$CONFDIR" 2>/dev/null || true
	if getent passwd "$USER" >/dev/null; then
		userdel "$USER" >/dev/null 2>&1 || true
	fi
	if getent group "$USER" >/dev/null; then
		groupdel "$USER" >/dev/null 2>&1 || true
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
