"""A restart in place (SIGUSR2, sbulbctl restart) under steady traffic
through the lab: every datagram answered, no client moved, the same
process, a new program swapped in atomically. The lab's VIP is a local
address of the balancer, where a service of the lab answers as `lb-local`:
a datagram that met the interface without sbulb's program is answered
from there (counted as moved), or lost."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from sbulb.lab import PORT, Lab, RoutedLab, xdp_programs
from tests.conftest import require_root
from tests.proc import ctl_json, sbulbctl

CLIENTS = 12
MAX_DATAGRAMS = 200000  # the traffic loop's bound (it stops well before)
PACE = 0.0005  # seconds between two datagrams: steady traffic, not a flood


@pytest.fixture(scope="module")
def one_armed() -> Iterator[Lab]:
    require_root()
    with Lab(servers=3) as built:
        yield built


@pytest.fixture(scope="module")
def routed() -> Iterator[RoutedLab]:
    """sbulb on both interfaces of a router, --forward fib, redirects."""
    require_root()
    with RoutedLab(servers=3) as built:
        yield built


def programs(lab: Lab) -> list[tuple[int, str]]:
    return [p for interface in lab.lb_interfaces for p in xdp_programs(lab.lb_ns, interface)]


class Traffic:
    """One datagram at a time from CLIENTS clients in turn, each waiting
    for its answer (1 s): counts sent, lost and answered by another server
    than the client's."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.clients = [lab.client(4) for _ in range(CLIENTS)]
        self.servers = [c.exchange(lab.v4.vip, PORT, b"first").server for c in self.clients]
        self.sent = self.lost = self.moved = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        for i in range(MAX_DATAGRAMS):
            if self._stop.is_set():
                return
            client = self.clients[i % CLIENTS]
            payload = b"datagram %d" % i
            client.send(self.lab.v4.vip, PORT, payload)
            reply = client.receive(timeout=1.0)
            self.sent += 1
            if reply is None or reply.payload != payload:
                self.lost += 1
            elif reply.server != self.servers[i % CLIENTS]:
                self.moved += 1
            time.sleep(PACE)  # the traffic's rate, not a synchronisation

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def wait_sent(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < count:
            assert time.monotonic() < deadline and self._thread.is_alive(), self.sent
            time.sleep(0.01)  # polling a counter, bounded by the deadline

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for client in self.clients:
            client.close()


@pytest.mark.parametrize("setup,how", [("one_armed", "signal"), ("one_armed", "sbulbctl"),
                                       ("routed", "signal")])
def test_restart_in_place_loses_nothing(request: pytest.FixtureRequest, tmp_path: Path,
                                        setup: str, how: str) -> None:
    lab: Lab = request.getfixturevalue(setup)
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1, 2])
    lab.forget_associations()
    process = lab.start_sbulb(lab.sbulb_args(4, conf, "-l", "INFO"), tmp_path)
    try:
        process.wait_ready()
        before = programs(lab)
        with Traffic(lab) as traffic:
            assert traffic.servers == ["rs0", "rs1", "rs2"] * (CLIENTS // 3)
            traffic.wait_sent(20)
            if how == "signal":
                process.proc.send_signal(signal.SIGUSR2)
            else:
                asked = sbulbctl(lab, "restart")
                assert asked.returncode == 0 and "restarting in place" in asked.stdout, asked.stderr
            process.notify.wait_for("RELOADING=1", 10)
            at_restart = traffic.sent
            process.wait_ready(timeout=120)  # the new sbulb compiled and swapped in
            during = traffic.sent - at_restart
            traffic.wait_sent(traffic.sent + 50)
        # traffic flowed all through the compile, and none of it was lost
        assert during >= 20, during
        assert (traffic.lost, traffic.moved) == (0, 0), (traffic.lost, traffic.moved, traffic.sent)
        assert process.proc.poll() is None  # the same process (systemd's main PID)
        after = programs(lab)  # a new program on every interface
        assert [name for _, name in after] == ["sbulb_xdp"] * len(lab.lb_interfaces)
        assert not set(after) & set(before)
        assert "event=start.took_over" in process.stderr
        assert "event=stop.restarting" in process.stderr
        assert "start.replacing_leftover" not in process.stderr
        assert ctl_json(lab, "associations", "count") == CLIENTS
        assert process.stop() == 0
        assert programs(lab) == []  # a stop still detaches
    finally:
        process.close()


def fake_systemctl(directory: Path) -> dict[str, str]:
    """An environment whose `systemctl list-jobs` prints the file `job` of
    `directory`: systemd is not PID 1 on this machine, so this stands in
    for its answer while it runs a job for sbulb-test.service (JOB UNIT
    TYPE STATE)."""
    directory.mkdir(exist_ok=True)
    script = directory / "systemctl"
    script.write_text(f'#!/bin/sh\n[ "$1" = list-jobs ] && cat {directory / "job"}\nexit 0\n')
    script.chmod(0o755)
    return {"PATH": f"{directory}:/usr/sbin:/usr/bin:/sbin:/bin", "SBULB_UNIT": "sbulb-test.service"}


@pytest.mark.parametrize("setup", ["one_armed", "routed"])
def test_systemctl_restart_hands_the_program_over(request: pytest.FixtureRequest,
                                                  tmp_path: Path, setup: str) -> None:
    """SIGTERM while systemd runs a restart job for the unit: the program
    stays attached and the sbulb started next takes it over, so traffic
    flows through the whole new compile. A stop job still detaches."""
    lab: Lab = request.getfixturevalue(setup)
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1, 2])
    lab.forget_associations()
    args = lab.sbulb_args(4, conf, "-l", "INFO")
    env = fake_systemctl(tmp_path / "bin")
    job = tmp_path / "bin" / "job"
    job.write_text("42 sbulb-test.service restart running\n")
    first = lab.start_sbulb(args, tmp_path, env=env)
    second = None
    try:
        first.wait_ready()
        before = programs(lab)
        with Traffic(lab) as traffic:
            traffic.wait_sent(20)
            assert first.stop() == 0
            assert programs(lab) == before  # still attached, still serving
            at_stop = traffic.sent
            second = lab.start_sbulb(args, tmp_path, env=env)  # what systemd starts next
            second.wait_ready(timeout=120)
            during = traffic.sent - at_stop
            traffic.wait_sent(traffic.sent + 50)
        assert during >= 20, during
        assert (traffic.lost, traffic.moved) == (0, 0), (traffic.lost, traffic.moved, traffic.sent)
        assert "event=stop.restart_pending" in first.stderr
        assert "event=start.took_over" in second.stderr
        assert programs(lab) != before
        # systemctl stop: the job is a stop, sbulb detaches as it always did
        job.write_text("43 sbulb-test.service stop running\n")
        assert second.stop() == 0
        assert programs(lab) == []
        assert "stop.restart_pending" not in second.stderr
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_stop_sent_while_restarting_in_place_stops(one_armed: Lab, tmp_path: Path) -> None:
    """SIGTERM right after SIGUSR2 (systemctl stop during a restart in
    place) is not lost in the exec: the next sbulb stops, and detaches the
    program the last one left, as a stop does."""
    lab = one_armed
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1])
    process = lab.start_sbulb(lab.sbulb_args(4, conf, "-l", "INFO"), tmp_path)
    try:
        process.wait_ready()
        process.proc.send_signal(signal.SIGUSR2)
        process.notify.wait_for("RELOADING=1", 10)
        assert process.stop() == 0
    finally:
        process.close()
    assert programs(lab) == []
