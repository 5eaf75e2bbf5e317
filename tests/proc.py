"""Helpers for tests that run the real `python3 -m sbulb` in a bare network
namespace of their own (one veth pair, no lab). Everything created is
removed, even when the test fails."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from sbulb import lab
from sbulb.lab import SbulbProcess, sh

REPO = Path(__file__).resolve().parents[1]


def wait_until(done: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `done` every 20 ms until it is true or `timeout` seconds have
    passed (datagrams land in sockets: there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.02)
    return done()


def sbulbctl(in_lab: lab.Lab, *args: str):
    """`python3 -m sbulb.ctl ARGS` in the lab's load-balancer namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", in_lab.lb_ns, sys.executable, "-m", "sbulb.ctl", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def ctl_json(in_lab: lab.Lab, *args: str):
    """sbulbctl ARGS --json, which must succeed: its answer."""
    result = sbulbctl(in_lab, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run(*cmd: str, check: bool = True):
    return sh(*cmd, check=check)


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh network namespace with a veth pair (veth0 <-> veth1), up."""
    name = f"sbt-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        run("ip", "-n", name, "link", "set", "veth0", "up")
        run("ip", "-n", name, "link", "set", "veth1", "up")
        yield name
    finally:
        lab.forget_pins(name)
        run("ip", "netns", "del", name, check=False)


def xdp_programs(ns: str, ifname: str = "veth0") -> list[tuple[int, str]]:
    return lab.xdp_programs(ns, ifname)


@contextmanager
def sbulb(ns: str, args: Sequence[str], workdir: Path, **kw: object) -> Iterator[SbulbProcess]:
    process = SbulbProcess(ns, args, workdir, **kw)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        process.close()
