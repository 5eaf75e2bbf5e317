"""`make demo` tells its story and exits 0; the lab is torn down on a
signal, and a killed lab's namespaces are removed by the next one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from sbulb import lab
from tests.conftest import require_root
from tests.proc import REPO


def namespaces() -> list[str]:
    return lab.sh("ip", "netns", "list").stdout.split()


def test_demo_tells_the_story() -> None:
    require_root()
    result = subprocess.run([sys.executable, "-m", "sbulb.demo"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in [
        "spread: rs0 3, rs1 3, rs2 3",
        "90/90 answered by the client's own server",
        "90/90 from 10.77.100.1:5683",
        "its datagrams to the VIP then reach: rs1 rs1 rs1 rs1 rs1",
        "rs2 tries to speak to rs1's client: dropped by sbulb",
        " 0 by another server than before",
        "sbulb exited with 0; XDP programs left on the interface: none",
        "4/4 sticky, 4/4 from [fd77:100::1]:5683",
        "to 10.77.100.1:5683: rs0 rs1 rs0 rs1; to 10.77.100.1:5684: rs2 rs3 rs2 rs3",
        "and to [fd77:100::1]:5683: rs2 rs3",
        "coap's clients stay (4/4 on their server), telemetry's go to: rs3 rs3 rs3 rs3",
        "4 new clients go to: rs0 rs2 rs0 rs2",
        "rs1's service started again: up",
        "rs0 received: 100 B whole from 10.77.1.10, 3000 B whole from 10.77.1.10, "
        "8000 B whole from 10.77.1.10",
        "rs1 received: 100 B whole from 10.77.1.10, 3000 B whole from 10.77.1.10, "
        "8000 B whole from 10.77.1.10",
        "-v 9: 5000 flows exported",
        ": 5000 of 5000",
    ]:
        assert line in out, out
    assert "rs3" in out.split("4 new clients go to:")[1].splitlines()[0]
    assert not [ns for ns in namespaces() if ns.startswith(lab.PREFIX)]


def test_lab_is_torn_down_on_sigterm() -> None:
    require_root()
    demo = subprocess.Popen([sys.executable, "-m", "sbulb.demo"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 120
        for line in demo.stdout:  # ends at EOF if the demo dies
            if line.startswith("1. ") or time.monotonic() > deadline:
                break
        assert line.startswith("1. "), "the demo never got to its traffic"
        ours = [ns for ns in namespaces() if ns.startswith(f"{lab.PREFIX}-{demo.pid}-")]
        assert len(ours) == 7  # client, router, lb, rs0..rs3
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 130
        assert not [ns for ns in namespaces() if ns.startswith(f"{lab.PREFIX}-{demo.pid}-")]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_namespaces_of_a_killed_lab_are_removed() -> None:
    require_root()
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{lab.PREFIX}-{dead.pid}-dead00-client"
    lab.sh("ip", "netns", "add", name)
    try:
        assert name in lab.cleanup_stale()
        assert name not in namespaces()
    finally:
        lab.sh("ip", "netns", "del", name, check=False)
