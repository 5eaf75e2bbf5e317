#!/bin/sh
# make install / make uninstall: sbulb where Debian's python3 finds it, the
# sbulb and sbulbctl commands, the systemd units, example configs, man pages
# and bash completion.
#   DESTDIR  staging root (default: none)    PREFIX  (default: /usr/local)
# Configuration in /etc is never overwritten; uninstall removes an example
# config only if it is still the example, unchanged.
set -eu
cd "$(dirname "$0")/.."

action=${1:?usage: install.sh install|uninstall}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
PYTHON=${PYTHON:-/usr/bin/python3}

pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
site="$DESTDIR$PREFIX/lib/python$pyver/dist-packages"
bindir="$DESTDIR$PREFIX/bin"
docdir="$DESTDIR$PREFIX/share/doc/sbulb"
mandir="$DESTDIR$PREFIX/share/man"
completions="$DESTDIR$PREFIX/share/bash-completion/completions"
unitdir="$DESTDIR/etc/systemd/system"
confdir="$DESTDIR/etc/sbulb"
default="$DESTDIR/etc/default/sbulb"

# a command that runs a module's main() with Debian's python3
script() {
	printf '#!%s\nimport sys\n\nfrom %s import main\n\nsys.exit(main())\n' "$PYTHON" "$2" >"$1"
	chmod 0755 "$1"
}

# install a config file only if there is none
config() {
	if [ -e "$2" ]; then
		echo "install: keeping $2"
	else
		install -m 0644 "$1" "$2"
	fi
}

# remove a config file only if it is still our example
unconfig() {
	if [ -e "$2" ] && cmp -s "$1" "$2"; then
		rm -f "$2"
	elif [ -e "$2" ]; then
		echo "uninstall: keeping $2 (changed)"
	fi
}

case "$action" in
install)
	install -d "$site/sbulb/bpf" "$bindir" "$docdir" "$unitdir" "$confdir" "$(dirname "$default")"
	install -m 0644 sbulb/*.py "$site/sbulb/"
	install -m 0644 sbulb/bpf/*.c sbulb/bpf/*.h "$site/sbulb/bpf/"
	script "$bindir/sbulb" sbulb.cli
	script "$bindir/sbulbctl" sbulb.ctl
	install -m 0644 packaging/systemd/sbulb.service packaging/systemd/sbulb@.service "$unitdir/"
	install -m 0644 README.md "$docdir/"
	install -d "$docdir/prometheus" "$docdir/grafana"
	install -m 0644 packaging/prometheus/sbulb-alerts.yml "$docdir/prometheus/"
	install -m 0644 packaging/grafana/sbulb-dashboard.json "$docdir/grafana/"
	install -d "$mandir/man8" "$mandir/man5" "$completions"
	install -m 0644 packaging/man/sbulb.8 packaging/man/sbulbctl.8 "$mandir/man8/"
	install -m 0644 packaging/man/sbulb.conf.5 "$mandir/man5/"
	install -m 0644 packaging/bash-completion/sbulb packaging/bash-completion/sbulbctl \
		"$completions/"
	config packaging/systemd/sbulb.default "$default"
	config packaging/systemd/sbulb.conf "$confdir/sbulb.conf"
	config packaging/systemd/eth0.conf "$confdir/eth0.conf.example"
	if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
		systemctl daemon-reload
	fi
	echo "install: sbulb in $site, commands in $bindir, units in $unitdir"
	;;
uninstall)
	rm -rf "$site/sbulb" "$docdir"
	rm -f "$bindir/sbulb" "$bindir/sbulbctl" "$unitdir/sbulb.service" "$unitdir/sbulb@.service"
	rm -f "$mandir/man8/sbulb.8" "$mandir/man8/sbulbctl.8" "$mandir/man5/sbulb.conf.5"
	rm -f "$completions/sbulb" "$completions/sbulbctl"
	unconfig packaging/systemd/sbulb.default "$default"
	unconfig packaging/systemd/sbulb.conf "$confdir/sbulb.conf"
	unconfig packaging/systemd/eth0.conf "$confdir/eth0.conf.example"
	rmdir "$confdir" 2>/dev/null || true
	if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
		systemctl daemon-reload
	fi
	echo "uninstall: done"
	;;
*)
	echo "usage: install.sh install|uninstall" >&2
	exit 2
	;;
esac
