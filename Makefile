# sbulb: the README's commands. Everything runs with Debian's python3, the
# interpreter that sees python3-bpfcc.
PYTHON ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: setup demo test

setup:
	./scripts/setup.sh

demo: setup
	$(PYTHON) -m sbulb.demo

test: setup
	$(PYTHON) -m pytest -p no:cacheprovider $(PYTEST_ARGS)
