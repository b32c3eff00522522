#!/bin/sh
# Configures and builds kvchain in build/ (or $BUILD_DIR) unless it is
# already built; extra arguments go to configure.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}

"$top/scripts/deps.sh"
if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ] ||
   [ "$top/Makefile.am" -nt "$top/configure" ]; then
	(cd "$top" && autoreconf -fi >/dev/null 2>&1)
fi
mkdir -p "$build"
cd "$build"
if [ ! -f Makefile ]; then
	"$top/configure" -q "$@"
fi
make -j"$(nproc)" >/dev/null
