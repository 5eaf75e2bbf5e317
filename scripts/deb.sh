#!/bin/sh
# make deb: the Debian package, built with Debian's tools (dpkg-buildpackage,
# debhelper, dh-python) from a copy of the tree, so that the build leaves
# nothing in it. The .deb lands in DEB_DIR (default build/deb).
set -eu
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-build/deb}")
rm -rf "$out/src"
mkdir -p "$out/src"
# what git tracks, and new files it does not ignore; every file without git
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$out/src"
else
	tar --exclude=./build --exclude=./bench-results --exclude='__pycache__' -cf - . |
		tar -xf - -C "$out/src"
fi
# Debian's python3 and tools first (another python3 may come first on PATH)
cd "$out/src"
PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
rm -rf "$out/src"
ls "$out"/sbulb_*_all.deb
