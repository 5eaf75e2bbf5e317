"""Service modes end to end with the real programs users run them for
(issue "Modes"): a syslog migration through mirror mode with rsyslog
receivers and `logger`, through the lab and the real CLI."""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from sbulb.lab import Lab, in_ns
from tests.conftest import require_root
from tests.proc import ctl_json, wait_until

SYSLOG_PORT = 5514  # the lab's UdpService does not listen here: rsyslog does
MESSAGES = 500
START_TIMEOUT = 20.0
DELIVERY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(servers=3) as built:
        yield built


class Rsyslog:
    """rsyslogd in a namespace: imudp on SYSLOG_PORT (IPv4 and IPv6), every
    message written as "<sender address> <message>" to one file."""

    def __init__(self, ns: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ns = ns
        self.out = directory / "messages.log"
        conf = directory / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{directory}" maxMessageSize="64k")\n'
            'module(load="imudp")\n'
            f'input(type="imudp" port="{SYSLOG_PORT}" rcvbufSize="16m")\n'
            'template(name="line" type="string" string="%fromhost-ip% %msg%\\n")\n'
            f'*.* action(type="omfile" file="{self.out}" template="line")\n')
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "rsyslogd", "-n", "-f", str(conf),
             "-i", str(directory / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not wait_until(self._listening, START_TIMEOUT):
            self.close()
            raise AssertionError(f"rsyslogd in {ns} did not open UDP port {SYSLOG_PORT}")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"rsyslogd in {self.ns} exited: {self.process.stderr.read()}")
        ss = in_ns(self.ns, "ss", "-Hnlu", f"sport = :{SYSLOG_PORT}")
        return ss.stdout.count(f":{SYSLOG_PORT}") >= 2  # IPv4 and IPv6

    def lines(self) -> list[str]:
        if not self.out.exists():
            return []
        return self.out.read_text(errors="replace").splitlines()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


def _messages(seed: int) -> list[str]:
    """MESSAGES distinct messages of 100 to 8000 bytes: the longest are
    fragmented over the lab's 1500-byte MTU."""
    rng = random.Random(seed)
    sizes = [100, 8000] + [rng.randint(100, 8000) for _ in range(MESSAGES - 2)]
    return [(f"mirror-{i:03d}-{size:04d} " + "x" * size)[:size] for i, size in enumerate(sizes)]


@pytest.mark.parametrize("family", [4, 6])
def test_syslog_migration_through_mirror_mode(lab: Lab, tmp_path: Path, family: int) -> None:
    """The seed's log migration: `logger` sends 500 messages of 100 to 8000
    bytes to the VIP, and each of three rsyslog receivers behind a mirror
    service writes all 500, whole, with the client as their sender."""
    net = lab.addresses(family)
    receivers: list[Rsyslog] = []
    try:
        for i, ns in enumerate(lab.server_ns):
            receivers.append(Rsyslog(ns, tmp_path / f"rs{i}"))
        conf = tmp_path / "sbulb.conf"
        conf.write_text(f"[Service syslog]\nmode = mirror\naddress = {net.vip}\n"
                        f"ports = {SYSLOG_PORT}\n"
                        f"servers = {' '.join(str(a) for a in net.real_servers)}\n")
        process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"],
                                  tmp_path)
        try:
            process.wait_ready()
            messages = _messages(family)
            source = tmp_path / "messages.txt"
            source.write_text("".join(m + "\n" for m in messages))
            sent = in_ns(lab.client_ns, "logger", "-d", "-n", str(net.vip), "-P",
                         str(SYSLOG_PORT), "--size", "9000", "-t", "sbulb-test", "-f",
                         str(source))
            assert sent.returncode == 0, sent.stderr
            complete = wait_until(lambda: all(len(r.lines()) >= MESSAGES for r in receivers),
                                   DELIVERY_TIMEOUT)
            status = ctl_json(lab, "status")
        finally:
            process.close()
    finally:
        for receiver in receivers:
            receiver.close()
    got = [r.lines() for r in receivers]
    assert complete, f"received {[len(lines) for lines in got]} of {MESSAGES} messages"
    # the sender rsyslog saw is the client (the kernel picks which of the
    # client's addresses), not the balancer
    sender = got[0][0].split(" ", 1)[0]
    assert sender in {str(c) for c in net.clients}
    wanted = sorted(f"{sender} {m}" for m in messages)
    for i, lines in enumerate(got):
        assert sorted(lines) == wanted, f"rs{i}"
    counters = status["counters"]
    assert counters["MIRROR_FAILED"] == 0
    # fragments were mirrored: more frames than messages, three copies each
    assert counters["TX_MIRROR"] > MESSAGES
    assert counters["MIRROR_SENT"] == 3 * counters["TX_MIRROR"]
