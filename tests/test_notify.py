"""sd_notify without blocking: a reader that stalls cannot stop the daemon
(no root, no bcc)."""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path

import pytest

from sbulb.notify import SystemdNotifier, notify_address, pending_job


@pytest.fixture
def reader(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def in_thread(fn, timeout: float = 10.0) -> None:
    """Run fn; fail (rather than hang the suite) if it does not return."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), f"{fn} blocked for more than {timeout}s"
    if errors:
        raise errors[0]


def test_addresses() -> None:
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract"}) == "\0abstract"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_unset_is_a_no_op() -> None:
    n = SystemdNotifier({})
    n.notify("READY=1")
    assert n.dropped == 0


def test_messages_arrive_in_order(reader) -> None:
    path, sock = reader
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    n.notify("READY=1\nSTATUS=serving")
    n.notify("STATUS=2 down")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert sock.recv(4096) == b"STATUS=2 down"
    assert n.dropped == 0


def test_abstract_socket() -> None:
    name = f"sbulb-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_reader_that_stalls_costs_status_messages_not_the_loop(reader) -> None:
    path, sock = reader
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    # nobody reads: the queue fills within a few hundred datagrams, and a
    # blocking sender would hang here for good
    in_thread(lambda: [n.notify(f"STATUS=update {i}") for i in range(5000)])
    assert n.dropped > 0
    dropped = n.dropped
    # a state change waits (at most STATE_TIMEOUT), then is dropped too
    in_thread(lambda: n.notify("READY=1"))
    assert n.dropped == dropped + 1
    # once the reader catches up, messages flow again
    first = sock.recv(4096)
    assert first == b"STATUS=update 0"
    sock.setblocking(False)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
    sock.settimeout(2.0)
    n.notify("STOPPING=1")
    assert sock.recv(4096) == b"STOPPING=1"


def test_a_socket_gone_is_counted_not_raised(tmp_path: Path) -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    n.notify("STATUS=x")
    n.notify("READY=1")
    assert n.dropped == 2


def systemctl_answering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """`systemctl list-jobs` prints `text` (systemd is not PID 1 here)."""
    script = tmp_path / "systemctl"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}EOF\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


@pytest.mark.parametrize("listing,expected", [
    ("42 sbulb.service restart running\n", "restart"),
    ("43 sbulb.service stop running\n", "stop"),
    ("44 other.service restart running\n", None),  # not ours
    ("", None),  # no job
])
def test_pending_job_reads_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     listing: str, expected: str | None) -> None:
    systemctl_answering(tmp_path, monkeypatch, listing)
    assert pending_job("sbulb.service") == expected


def test_pending_job_without_a_unit_or_systemctl(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    systemctl_answering(tmp_path, monkeypatch, "42 sbulb.service restart running\n")
    monkeypatch.delenv("SBULB_UNIT", raising=False)
    assert pending_job() is None  # not under sbulb's unit: never asks
    monkeypatch.setenv("SBULB_UNIT", "sbulb.service")
    assert pending_job() == "restart"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert pending_job() is None  # no systemctl: stop as always
