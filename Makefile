# sbulb: the README's commands. Everything runs with Debian's python3, the
# interpreter that sees python3-bpfcc.
PYTHON ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: setup demo test bench install uninstall

setup:
	./scripts/setup.sh

demo: setup
	$(PYTHON) -m sbulb.demo

test: setup
	$(PYTHON) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

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
