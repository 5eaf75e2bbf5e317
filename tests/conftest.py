"""Shared fixtures. Tests that need root fail (never skip) without it: CI
runs as root, and a skipped core test would hide a missing feature."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sbulb.config import Limits  # noqa: E402
from sbulb.dataplane import Dataplane  # noqa: E402


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (XDP, BPF maps, network namespaces): run `make test`")


@pytest.fixture(scope="module")
def loaded() -> Iterator[Dataplane]:
    """The program as sbulb builds it by default (no events), small maps, with
    sbulb's MAC swap: test runs without an interface would otherwise ask
    this host's FIB (tests/test_forward.py covers that path). Loaded once
    per module, never attached."""
    require_root()
    dp = Dataplane(Limits(max_ports=4, max_real_servers=8, max_associations=4096),
                   forward="mac-swap")
    dp.load()
    try:
        yield dp
    finally:
        dp.close()
