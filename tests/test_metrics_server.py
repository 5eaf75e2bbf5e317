"""The metrics endpoint against clients that misbehave: bounded threads and
connections, a time limit per connection, one render per interval however
many scrapes, a clean stop. The first tests need no root (a fake data
path, 127.0.0.1); the last one holds 3000 connections to the real daemon
in the lab as an unprivileged user."""

from __future__ import annotations

import ipaddress
import select
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sbulb.config import IPAddress, RealServer
from sbulb.consts import Stat
from sbulb.dataplane import Traffic
from sbulb.lab import Lab, SbulbProcess, netns
from sbulb.metrics import CountCache, Exposition, MetricsServer
from sbulb.state import ServiceSpec, Snapshot
from tests.conftest import require_root
from tests.proc import sbulbctl


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.01)


# ---- without root: a fake data path


SERVER = ipaddress.ip_address("10.0.0.2")
SNAPSHOT = Snapshot(
    services=(ServiceSpec("default", ipaddress.ip_address("10.0.0.1"), (53,),
                          (RealServer(SERVER, 1),)),),
    ids={"default": 0}, interfaces=("eth0",), forward="mac-swap", max_associations=16)


class FakeDataplane:
    """Answers like Dataplane's counters; counts the association walks
    (the costly read) and refuses reads once closed, as the real one does."""

    def __init__(self) -> None:
        self.walks = 0
        self.closed = False

    def _check(self) -> None:
        assert not self.closed, "load() first"

    def member_traffic(self) -> dict[tuple[int, IPAddress], Traffic]:
        self._check()
        return {(0, SERVER): Traffic(3, 300, 2, 200)}

    def member_copy_failures(self) -> dict[tuple[int, IPAddress], int]:
        self._check()
        return {}

    def service_traffic(self, ids: list[int]) -> dict[int, Traffic]:
        self._check()
        return {i: Traffic(3, 300, 2, 200) for i in ids}

    def association_counts(self) -> dict[tuple[int, IPAddress], int]:
        self._check()
        self.walks += 1
        return {(0, SERVER): 1}

    def stats(self) -> dict[Stat, int]:
        self._check()
        return {stat: 0 for stat in Stat}


@pytest.fixture
def fake() -> FakeDataplane:
    return FakeDataplane()


@contextmanager
def serve(fake: FakeDataplane, **kw: float) -> Iterator[MetricsServer]:
    server = MetricsServer(lambda: SNAPSHOT, fake, "127.0.0.1", 0, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_exposition_renders_at_most_once_per_interval() -> None:
    now = [100.0]
    renders: list[float] = []

    def render() -> bytes:
        renders.append(now[0])
        now[0] += 0.3  # a render takes time: the interval counts from its end
        return f"text {len(renders)}".encode()

    exposition = Exposition(render, interval=1.0, clock=lambda: now[0])
    assert exposition.get() == b"text 1"  # renders at 100.0, done at 100.3
    now[0] = 101.2
    assert exposition.get() == b"text 1"  # 0.9 s after the end: cached
    now[0] = 101.3
    assert exposition.get() == b"text 2"
    assert renders == [100.0, 101.3] and exposition.renders == 2


def test_a_failed_render_is_remembered_too() -> None:
    now = [0.0]
    calls = []

    def render() -> bytes:
        calls.append(now[0])
        raise OSError("map gone")

    exposition = Exposition(render, interval=1.0, clock=lambda: now[0])
    assert exposition.get() is None and exposition.get() is None
    now[0] = 1.0
    assert exposition.get() is None
    assert calls == [0.0, 1.0]


def test_association_counts_are_walked_at_most_a_tenth_of_the_time() -> None:
    """The walk of the map is repeated after max(1 s, 10 x its duration):
    a million entries (0.4 s) are walked every 4 s, a thousand every 1 s."""
    now = [0.0]
    walks: list[float] = []

    def count() -> dict:
        walks.append(now[0])
        now[0] += 0.4  # the walk of a large map
        return {(0, SERVER): len(walks)}

    cache = CountCache(count, clock=lambda: now[0])
    assert cache.get() == {(0, SERVER): 1} and cache.duration == pytest.approx(0.4)
    for t in (1.0, 2.0, 4.3):
        now[0] = t
        assert cache.get() == {(0, SERVER): 1}  # the same counts, not walked again
    assert cache.age() == pytest.approx(3.9)
    now[0] = 4.4
    assert cache.get() == {(0, SERVER): 2} and walks == [0.0, 4.4]
    fast = CountCache(lambda: walks.append(now[0]) or {}, clock=lambda: now[0])
    now[0] = 10.0
    fast.get()
    now[0] = 10.9
    fast.get()
    now[0] = 11.0
    fast.get()
    assert walks == [0.0, 4.4, 10.0, 11.0]


def test_two_scrapes_render_once(fake: FakeDataplane) -> None:
    # a long interval, so that the two scrapes are surely within it
    with serve(fake, render_interval=60.0) as server:
        port = server.address[1]
        first, second = get(port), get(port, "/")
        assert first[0] == second[0] == 200 and first[1] == second[1]
        assert fake.walks == 1 and server.exposition.renders == 1
        text = first[1].decode()
        assert ('sbulb_packets_total{direction="to_server",server="10.0.0.2",'
                'service="default"} 3.0') in text
        assert 'sbulb_service_associations{service="default"} 1.0' in text
        assert get(port, method="HEAD") == (200, b"")
        assert get(port, method="POST")[0] == 405
        assert fake.walks == 1


def test_renders_again_after_the_interval(fake: FakeDataplane) -> None:
    with serve(fake, render_interval=0.2) as server:
        port = server.address[1]
        assert get(port)[0] == 200
        deadline = time.monotonic() + 5
        while fake.walks < 2 and time.monotonic() < deadline:
            assert get(port)[0] == 200
        assert fake.walks == 2


def held(port: int, request: bytes = b"GET /metrics HTTP/1.1\r\n") -> socket.socket:
    """A connection that sent part of a request and waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_excess_connections_are_closed_and_idle_ones_time_out(fake: FakeDataplane) -> None:
    threads = threading.active_count()
    with serve(fake, max_connections=4, timeout=2.0) as server:
        port = server.address[1]
        assert threading.active_count() == threads + 1  # one thread, whatever comes
        idle = [held(port) for _ in range(4)]
        wait_until(lambda: len(server._connections) == 4, 5, "4 connections open")
        started = time.monotonic()
        excess = held(port)
        assert closed_by_server(excess)
        assert server.rejected == 1  # closed on accept, not at its deadline
        for sock in idle:  # closed at their deadline, with no answer
            assert closed_by_server(sock)
        assert time.monotonic() - started < 10
        assert threading.active_count() == threads + 1
        assert get(port)[0] == 200
        for sock in [*idle, excess]:
            sock.close()


def test_a_large_answer_to_a_slow_reader(fake: FakeDataplane) -> None:
    big = b"# padding\n" * 200_000  # 2 MB: more than a socket buffer
    with serve(fake) as server:
        server.exposition = Exposition(lambda: big)
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK") and body == big


def test_stop_ends_the_thread_before_the_dataplane_closes(fake: FakeDataplane) -> None:
    threads = threading.active_count()
    server = MetricsServer(lambda: SNAPSHOT, fake, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = server.address[1]
    assert get(port)[0] == 200
    idle = [held(port) for _ in range(10)]
    server.stop()
    fake.closed = True  # what the daemon does next
    assert threading.active_count() == threads
    for sock in idle:
        assert closed_by_server(sock)
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    server.stop()  # twice is harmless


# ---- the real daemon, in the lab

METRICS_PORT = 9642
CLIENTS = 3000
MAX_THREADS = 16

# Run as nobody: opens `count` connections; on half of them sends a whole
# request (each a scrape, which a server rendering per request pays for
# each time), on the other half a request line with no end of headers (a
# thread-per-connection server waits on each forever); says how many it
# holds and holds them, reading nothing, until stdin closes.
HOLDER = r"""
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held, failed = [], 0
deadline = time.monotonic() + 60
for i in range(count):
    if time.monotonic() > deadline:
        break
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + (b"\r\n" if i % 2 else b""))
        held.append(s)
    except OSError:
        failed += 1
print(f"held {len(held)} failed {failed}", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(servers=1) as built:
        yield built


def python_pid(process: SbulbProcess) -> int:
    """The daemon's python3: SbulbProcess runs `nsenter ... python3 -m
    sbulb`, and nsenter may exec it or fork it."""
    deadline = time.monotonic() + 10
    while True:
        for pid in [process.pid, *children(process.pid)]:
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m",
                                                                                    b"sbulb"]:
                    return pid
            except FileNotFoundError:
                continue
        assert time.monotonic() < deadline, "the daemon's python3 not found"
        time.sleep(0.01)


def children(pid: int) -> list[int]:
    result = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            result += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return result


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for {pid}")


def status_time(lab: Lab) -> float:
    """Seconds the daemon takes to answer `status` on its control socket
    (what sbulbctl and the watchdog's loop depend on), timed out at 1 s."""
    from sbulb import control

    with netns(lab.lb_ns):
        path = next(iter(control.daemons().values()))
        started = time.monotonic()
        control.request(path, "status", timeout=1.0)  # raises if later
        return time.monotonic() - started


def scrape(lab: Lab) -> bytes:
    with netns(lab.lb_ns):
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics",
                                    timeout=5) as answer:
            text: bytes = answer.read()
            return text


@contextmanager
def holder(lab: Lab, on_wait: Callable[[], None]) -> Iterator[int]:
    """CLIENTS connections held by nobody in the load balancer's netns
    while the block runs (on_wait() is called while they are opened);
    yields how many it holds. The holder process ends with the block."""
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.lb_ns}", "prlimit", f"--nofile={CLIENTS + 100}",
         "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "/usr/bin/python3", "-c", HOLDER, str(METRICS_PORT), str(CLIENTS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        deadline = time.monotonic() + 90
        while not select.select([proc.stdout], [], [], 0.05)[0]:
            assert time.monotonic() < deadline, "the holder never said how many it holds"
            on_wait()
        line = proc.stdout.readline()
        assert line.startswith("held "), proc.stderr.read()
        yield int(line.split()[1])
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_3000_unprivileged_connections_do_not_stall_the_daemon(lab: Lab, tmp_path: Path) -> None:
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0])
    lab.forget_associations()
    process = lab.start_sbulb(lab.sbulb_args(4, conf, "--metrics", str(METRICS_PORT)), tmp_path)
    process.wait_ready()
    pid = python_pid(process)
    assert b"sbulb_info{" in scrape(lab)
    most = [threads_of(pid)]

    def sample() -> None:
        most.append(threads_of(pid))

    with holder(lab, sample) as count:
        # while they are held: threads stay few, the main loop answers
        assert max(most) <= MAX_THREADS, f"{max(most)} threads while connecting"
        timings = []
        for _ in range(5):
            timings.append(status_time(lab))
            sample()
        assert max(timings) < 1.0, timings
        started = time.monotonic()
        ctl = sbulbctl(lab, "status")
        ctl_seconds = time.monotonic() - started
        assert ctl.returncode == 0, ctl.stderr
        sample()
        assert max(most) <= MAX_THREADS, f"{max(most)} threads"
        # and the server kept up: nearly all could connect (the kernel's
        # backlog is not full of connections it does not accept)
        assert count >= CLIENTS * 0.9, f"only {count} of {CLIENTS} connected"
    print(f"{count} connections held; status answered in {max(timings):.3f}s at most, "
          f"sbulbctl status took {ctl_seconds:.2f}s; {max(most)} threads at most")
    # a normal scrape works again (at worst once the held ones time out)
    answers: list[bytes] = []

    def scraped() -> bool:
        try:
            answers.append(scrape(lab))
            return True
        except OSError:
            return False

    wait_until(scraped, 10, "scraped")
    assert b"sbulb_info{" in answers[-1]
    # and a stop while connections are open and scrapes in flight is clean
    with holder(lab, lambda: None):
        assert process.stop() == 0
    assert "Traceback" not in process.stderr and "load() first" not in process.stderr, \
        process.stderr
