# sbulb: the README's commands. Everything runs with Debian's python3, the
# interpreter that sees python3-bpfcc.
PYTHON ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit bench install uninstall deb

setup:
	./scripts/setup.sh

demo: setup
	$(PYTHON) -m sbulb.demo

test: setup
	$(PYTHON) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# the inner loop: what needs neither root nor bcc (config, planner, health, watcher,
# the bench's report), a few seconds; `make test` runs these too
UNIT_TESTS = tests/test_config.py tests/test_state.py tests/test_watcher.py \
	tests/test_bench_report.py tests/test_health.py tests/test_notify.py \
	tests/test_log.py tests/test_monitoring.py tests/test_telemetry.py tests/test_maglev.py \
	tests/test_announce.py
test-unit:
	$(PYTHON) -m pytest -p no:cacheprovider $(UNIT_TESTS) $(PYTEST_ARGS)

# sbulb side by side with nftables, nginx and a Python forwarder (~7 min);
# results in bench-results/ (BENCH_ARGS: see python3 -m sbulb.bench --help)
BENCH_ARGS ?=
bench:
	./scripts/setup.sh bench
	$(PYTHON) -m sbulb.bench $(BENCH_ARGS)

# DESTDIR=... PREFIX=... as usual (PREFIX defaults to /usr/local)
install:
	PYTHON=$(PYTHON) ./scripts/install.sh install

uninstall:
	PYTHON=$(PYTHON) ./scripts/install.sh uninstall

# the Debian package (dpkg-buildpackage -us -uc -b on a copy of the tree),
# in DEB_DIR: dpkg -i build/deb/sbulb_*_all.deb
DEB_DIR ?= build/deb
deb:
	./scripts/deb.sh $(DEB_DIR)
