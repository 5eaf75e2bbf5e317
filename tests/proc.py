"""Helpers for tests that run the real `python3 -m sbulb` in a network
namespace of their own: namespaces, an sd_notify socket, the process.
Everything created is removed, even when the test fails."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0  # compile + load, on a slow machine
STOP_TIMEOUT = 30.0


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


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
        run("ip", "netns", "del", name, check=False)


def xdp_programs(ns: str, ifname: str = "veth0") -> list[tuple[int, str]]:
    """(id, name) of the XDP programs attached to an interface."""
    out = run("ip", "-n", ns, "-j", "-d", "link", "show", "dev", ifname).stdout
    xdp = json.loads(out)[0].get("xdp", {})
    attached = xdp.get("attached") or ([{"prog": xdp["prog"]}] if "prog" in xdp else [])
    return [(a["prog"]["id"], a["prog"]["name"]) for a in attached]


class NotifySocket:
    """The socket systemd would give a Type=notify service."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"notify-{uuid.uuid4().hex[:8]}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.received: list[str] = []

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first message (past or future) with a line starting with prefix."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.received:
                if any(line.startswith(prefix) for line in message.splitlines()):
                    self.received.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {prefix!r} within {timeout}s; got {self.received}")
            self.sock.settimeout(remaining)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Sbulb:
    """`python3 -m sbulb ARGS` started in a namespace, as an operator would."""

    def __init__(
        self,
        ns: str,
        args: Sequence[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.notify = NotifySocket(workdir)
        self.stderr_path = workdir / f"sbulb-{uuid.uuid4().hex[:8]}.stderr"
        environ = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **(env or {})}
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *prefix, sys.executable, "-m", "sbulb", *args],
                cwd=REPO,
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self) -> str:
        try:
            return self.notify.wait_for("READY=1", START_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"sbulb not ready; rc={self.proc.poll()} stderr:\n{self.stderr}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill the process we started if it still runs; release the socket."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self.notify.close()


@contextmanager
def sbulb(ns: str, args: Sequence[str], workdir: Path, **kw: object) -> Iterator[Sbulb]:
    process = Sbulb(ns, args, workdir, **kw)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        process.close()
