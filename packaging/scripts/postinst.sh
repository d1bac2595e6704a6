#!/bin/sh
# postinst of sightglass-agent and sightglass-ingest (dpkg names the
# package in DPKG_MAINTSCRIPT_PACKAGE): a dedicated unprivileged system
# user, the directories it may write, and systemd told about the unit. The
# service is not started here: the agent needs a config and an enrollment
# first, the ingest a CA (see the package README).
set -e

case "$DPKG_MAINTSCRIPT_PACKAGE" in
sightglass-agent)
	USER=sightglass DATA=/var/lib/sightglass CONF=/etc/sightglass/agent.yaml
	# Renewal replaces the agent's certificate and key here.
	EXTRA=/etc/sightglass/cert ;;
sightglass-ingest)
	USER=sightglass-ingest DATA=/var/lib/sightglass-ingest CONF=/etc/sightglass-ingest/ingest.yaml
	EXTRA= ;;
*)
	echo "postinst: unknown package '$DPKG_MAINTSCRIPT_PACKAGE'" >&2
	exit 1 ;;
esac

[ "$1" = configure ] || exit 0

if ! getent group "$USER" >/dev/null; then
	groupadd --system "$USER"
fi
if ! getent passwd "$USER" >/dev/null; then
	useradd --system --gid "$USER" --home-dir "$DATA" --no-create-home \
		--shell /usr/sbin/nologin --comment "$DPKG_MAINTSCRIPT_PACKAGE" "$USER"
fi

install -d -m 0750 -o "$USER" -g "$USER" "$DATA"
if [ -n "$EXTRA" ]; then
	install -d -m 0700 -o "$USER" -g "$USER" "$EXTRA"
fi
# A config may name secrets (a device password file, Azure credentials):
# readable by the service's group, not by everyone.
chgrp "$USER" "$CONF"
chmod 0640 "$CONF"

if [ "$DPKG_MAINTSCRIPT_PACKAGE" = sightglass-agent ] && command -v sysctl >/dev/null 2>&1; then
	sysctl -q -p /usr/lib/sysctl.d/60-sightglass-agent.conf >/dev/null 2>&1 || true
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
