#!/bin/sh
# Installs the Debian packages kvchain builds and tests with, if any is
# missing. Needs root (or sudo) only when something must be installed.
set -eu

packages="build-essential autoconf automake libtool pkg-config liburing-dev libnuma-dev
libprotobuf-c-dev protobuf-c-compiler libcunit1-dev libpcre2-dev
libutf8proc-dev libjansson-dev libsystemd-dev groff-base python3"

missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "installing:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
	sudo=""
else
	sudo="sudo"
fi
$sudo apt-get update -qq
# shellcheck disable=SC2086 # the list is meant to split into words
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
