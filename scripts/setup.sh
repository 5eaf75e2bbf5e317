#!/bin/sh
# Prepare a Debian 12 machine to run and test sbulb (as root, idempotent):
# Debian packages, kernel headers for bcc, and bpffs.
#   setup.sh          what sbulb, its demo and its tests need
#   setup.sh bench    that, and what the benchmark compares sbulb with
set -eu

PACKAGES="python3-bpfcc python3-watchdog python3-scapy
python3-pytest python3-pyroute2 python3-hypothesis python3-prometheus-client
python3-setuptools
python3-wheel python3-pip python3-venv iproute2 ethtool util-linux procps
systemd diffutils prometheus
debhelper dh-python pybuild-plugin-pyproject python3-all lintian man-db
rsyslog softflowd nfdump socat bird2"

# the benchmark's peers (nginx's UDP proxy, nftables) and its chart
BENCH_PACKAGES="nftables nginx-light libnginx-mod-stream python3-matplotlib"

if [ "${1:-}" = "bench" ]; then
	PACKAGES="$PACKAGES $BENCH_PACKAGES"
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "setup: run as root (apt-get, /lib/modules, mount)" >&2
	exit 1
fi

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

apt_install() {
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

missing=""
for pkg in $PACKAGES; do
	installed "$pkg" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
	echo "setup: installing$missing"
	apt-get update -q
	# Debian starts a service when its package is installed (nginx on port
	# 80): the benchmark starts its own nginx in a namespace and wants none
	# on the host. A policy-rc.d that says no, for this install only, unless
	# the machine has one already.
	policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
		trap 'exit 130' INT TERM HUP  # so that dash runs the EXIT trap
	fi
	# shellcheck disable=SC2086
	apt_install $missing
	if [ -n "$policy" ]; then
		rm -f "$policy"
		trap - EXIT INT TERM HUP
	fi
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Debian kernels have a
# headers package of their own; cloud and VM kernels often do not, and then
# we link the distribution's newest headers there: an XDP program only uses
# stable uapi definitions, which these headers have.
release=$(uname -r)
modules=/lib/modules/$release
if [ ! -e "$modules/build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
	if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
		echo "setup: installing linux-headers-$release"
		apt_install "linux-headers-$release"
	fi
fi
if [ ! -e "$modules/build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
	arch=$(dpkg --print-architecture)
	installed "linux-headers-$arch" || {
		echo "setup: no headers package for kernel $release; installing linux-headers-$arch"
		apt-get update -q
		apt_install "linux-headers-$arch"
	}
	newest=$(ls -d /lib/modules/*/build 2>/dev/null | sort -V | tail -n 1)
	if [ -z "$newest" ]; then
		echo "setup: linux-headers-$arch installed no headers under /lib/modules" >&2
		exit 1
	fi
	donor=$(dirname "$newest")
	echo "setup: kernel $release has no headers: linking those of $(basename "$donor")"
	mkdir -p "$modules"
	ln -sfn "$(readlink -f "$donor/build")" "$modules/build"
	# Debian splits headers in an arch part (build) and a common part (source)
	if [ -e "$donor/source" ]; then
		ln -sfn "$(readlink -f "$donor/source")" "$modules/source"
	fi
fi

if ! mountpoint -q /sys/fs/bpf; then
	echo "setup: mounting bpffs on /sys/fs/bpf"
	mount -t bpf bpf /sys/fs/bpf
fi
