"""Health checks (sbulb/health.py): parsing, the state machine, and the
prober against real sockets on loopback (127.0.0.1 and ::1). No root needed.

Every wait is on a queue or an event with a timeout, so a broken prober fails
a test in seconds instead of hanging it.
"""

from __future__ import annotations

import errno
import ipaddress
import queue
import select
import socket
import threading
import time
from typing import Iterator, Optional

import pytest

from sbulb import health
from sbulb.config import ConfigError, IPAddress
from sbulb.health import (CheckSpec, Health, Key, Prober, ServerHealth, Verdict,
                          parse_count, parse_duration, parse_expect, parse_hex)

LOOPBACKS = ("127.0.0.1", "::1")


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# --- parsing ----------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("2s", 2.0), ("500ms", 0.5), ("1.5s", 1.5), ("2", 2.0), (" 3 s ", 3.0),
    ("0.25", 0.25), ("1ms", 0.001), ("3600s", 3600.0), ("3600000ms", 3600.0), ("2S", 2.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", "s", "0", "0s", "0ms", "-1s", "3601", "3600.5s", "2m", "1h", "inf", "nan",
    "1e3", "2 2", "abc", "1.5.5s",
])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_duration(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, data", [
    ("40 01 00 00", b"\x40\x01\x00\x00"), ("40010000", b"\x40\x01\x00\x00"),
    ("", b""), ("   ", b""), ("ff FE 0a", b"\xff\xfe\x0a"), ("4 0 0 1", b"\x40\x01"),
])
def test_parse_hex(text: str, data: bytes) -> None:
    assert parse_hex(text) == data


@pytest.mark.parametrize("text", ["4", "40 0", "zz", "0x40", "40-01", "40,01", "é0"])
def test_parse_hex_bad(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_hex(text)
    assert "\n" not in str(e.value)


def test_parse_expect() -> None:
    assert parse_expect("") is None
    assert parse_expect("  ") is None
    pattern = parse_expect("^pong [0-9]+")
    assert pattern is not None
    assert pattern.search(b"pong 42\n")
    assert not pattern.search(b"ping 42")
    # a bytes pattern: escapes reach the regex engine
    assert parse_expect(r"\x40\x01").search(b"xx\x40\x01")  # type: ignore[union-attr]
    assert parse_expect("é").search("é".encode())  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["[", "(", "a{2,1}", "*"])
def test_parse_expect_bad(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_expect(text)
    assert "\n" not in str(e.value)


def test_parse_count() -> None:
    assert parse_count("1", "rise") == 1
    assert parse_count(" 100 ", "rise") == 100
    assert parse_count("3", "fall") == 3
    for bad in ("0", "101", "-1", "", "x", "2.5", "1_0", "+3", "99999"):
        with pytest.raises(ConfigError, match="fall"):
            parse_count(bad, "fall")


def test_check_spec() -> None:
    CheckSpec(port=53).check()
    CheckSpec(port=65535, send=parse_hex("40 01"), expect=parse_expect("^\x60"),
              interval=0.2, timeout=0.1, rise=1, fall=1, start_down=True).check()
    bad = [
        CheckSpec(port=0), CheckSpec(port=65536),
        CheckSpec(port=53, interval=1.0, timeout=1.0),  # timeout must be shorter
        CheckSpec(port=53, interval=1.0, timeout=2.0),
        CheckSpec(port=53, timeout=0.0), CheckSpec(port=53, interval=-1.0),
        CheckSpec(port=53, interval=float("nan")), CheckSpec(port=53, interval=4000.0),
        CheckSpec(port=53, rise=0), CheckSpec(port=53, fall=101),
        CheckSpec(port=53, send=b"x" * 70000),
    ]
    for spec in bad:
        with pytest.raises(ConfigError) as e:
            spec.check()
        assert "\n" not in str(e.value)


def test_check_spec_equality() -> None:
    """The prober tells unchanged targets by equality: patterns compiled twice
    from the same text are equal."""
    a = CheckSpec(port=1, send=b"x", expect=parse_expect("^y"))
    b = CheckSpec(port=1, send=b"x", expect=parse_expect("^y"))
    assert a == b and hash(a) == hash(b)
    assert a != CheckSpec(port=1, send=b"x", expect=parse_expect("^z"))


# --- the state machine ------------------------------------------------------

OK = Verdict(True, "ok", 0.001)
TIMEOUT = Verdict(False, "timeout")
ICMP = Verdict(False, "icmp")
MISMATCH = Verdict(False, "mismatch")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, seconds: float = 2.0) -> float:
        self.now += seconds
        return self.now


def feed(h: ServerHealth, spec: CheckSpec, clock: FakeClock, *verdicts: Verdict) -> list[bool]:
    return [h.record(v, clock.tick(), spec) for v in verdicts]


def test_unknown_to_up_after_rise() -> None:
    spec, clock = CheckSpec(port=1, rise=3, fall=2), FakeClock()
    h = ServerHealth.initial(spec, clock.now)
    assert h.state == Health.UNKNOWN and h.since == 1000.0 and h.takes_traffic
    assert feed(h, spec, clock, OK, OK) == [False, False]
    assert h.state == Health.UNKNOWN and h.successes == 2
    assert feed(h, spec, clock, OK) == [True]
    assert h.state == Health.UP and h.since == clock.now and h.takes_traffic
    assert (h.reason, h.rtt) == ("ok", 0.001)
    assert feed(h, spec, clock, OK) == [False]  # already up
    assert (h.successes, h.failures, h.probes, h.probe_failures) == (4, 0, 4, 0)


def test_up_to_down_after_fall_timeouts() -> None:
    spec, clock = CheckSpec(port=1, rise=1, fall=3), FakeClock()
    h = ServerHealth.initial(spec, clock.now)
    assert feed(h, spec, clock, OK) == [True]
    up_since = h.since
    assert feed(h, spec, clock, TIMEOUT, TIMEOUT) == [False, False]
    assert h.state == Health.UP and h.since == up_since and h.failures == 2
    assert feed(h, spec, clock, TIMEOUT) == [True]
    assert h.state == Health.DOWN and not h.takes_traffic and h.since == clock.now
    assert (h.reason, h.rtt) == ("timeout", None)
    assert (h.successes, h.failures, h.probes, h.probe_failures) == (0, 3, 4, 3)
    # and back up after rise successes
    assert feed(h, spec, clock, OK) == [True]
    assert h.state == Health.UP and h.failures == 0


def test_unknown_to_down_after_fall() -> None:
    spec, clock = CheckSpec(port=1, rise=2, fall=2), FakeClock()
    h = ServerHealth.initial(spec, clock.now)
    assert feed(h, spec, clock, MISMATCH, TIMEOUT) == [False, True]
    assert h.state == Health.DOWN and h.reason == "timeout"


def test_icmp_counts_as_failure() -> None:
    spec, clock = CheckSpec(port=1, rise=1, fall=2), FakeClock()
    h = ServerHealth.initial(spec, clock.now)
    feed(h, spec, clock, OK)
    assert feed(h, spec, clock, ICMP, TIMEOUT) == [False, True]
    assert h.state == Health.DOWN
    feed(h, spec, clock, OK)
    assert feed(h, spec, clock, TIMEOUT, ICMP) == [False, True]
    assert h.state == Health.DOWN and h.reason == "icmp"


def test_flapping_below_thresholds_changes_nothing() -> None:
    spec, clock = CheckSpec(port=1, rise=2, fall=2), FakeClock()
    for start in (Health.UNKNOWN, Health.UP, Health.DOWN):
        h = ServerHealth(state=start, since=clock.now)
        since = h.since
        changes = feed(h, spec, clock, *([OK, TIMEOUT, OK, ICMP, OK, MISMATCH] * 5))
        assert not any(changes)
        assert h.state == start and h.since == since
        assert h.probes == 30 and h.probe_failures == 15
        assert h.successes == 0 and h.failures == 1 and h.reason == "mismatch"


def test_start_down() -> None:
    spec, clock = CheckSpec(port=1, rise=2, fall=3, start_down=True), FakeClock()
    h = ServerHealth.initial(spec, clock.now)
    assert h.state == Health.DOWN and not h.takes_traffic
    assert feed(h, spec, clock, TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT) == [False] * 4
    assert feed(h, spec, clock, OK, OK) == [False, True]
    assert h.state == Health.UP


def test_health_values() -> None:
    assert Health.UP == "up" and Health("down") is Health.DOWN
    assert Health.UNKNOWN.value == "unknown"


# --- the prober on loopback -------------------------------------------------

class UdpServer:
    """A UDP server thread on loopback: mode "echo" sends each datagram back,
    "reply" answers `payload`, "silent" never answers; `delay` holds replies.
    Every datagram it receives is put on `received` as (time, data, peer)."""

    def __init__(self, host: str, mode: str = "echo", payload: bytes = b"",
                 delay: float = 0.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = ip(host)
        self.port: int = self.sock.getsockname()[1]
        self.mode, self.payload, self.delay = mode, payload, delay
        self.received: queue.Queue[tuple[float, bytes, tuple]] = queue.Queue()
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending: list[tuple[float, bytes, tuple]] = []  # delayed replies
        while True:
            timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
            ready, _, _ = select.select([self.sock, self._stop_r], [], [], timeout)
            if self._stop_r in ready:
                return
            if self.sock in ready:
                data, peer = self.sock.recvfrom(65535)
                self.received.put((time.monotonic(), data, peer))
                if self.mode != "silent":
                    answer = data if self.mode == "echo" else self.payload
                    pending.append((time.monotonic() + self.delay, answer, peer))
            while pending and pending[0][0] <= time.monotonic():
                _, answer, peer = pending.pop(0)
                self.sock.sendto(answer, peer)

    def close(self) -> None:
        self._stop_w.send(b"x")
        self._thread.join(2.0)
        self.sock.close()
        self._stop_r.close()
        self._stop_w.close()


@pytest.fixture
def server_factory() -> Iterator:
    servers: list[UdpServer] = []

    def make(host: str, **kw) -> UdpServer:
        servers.append(UdpServer(host, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


class Verdicts:
    """on_verdicts for a Prober: a queue, read with timeouts."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[float, Key, Verdict]] = queue.Queue()

    def __call__(self, batch: list[tuple[Key, Verdict]]) -> None:
        for key, verdict in batch:
            self.q.put((time.monotonic(), key, verdict))

    def next(self, key: Optional[Key] = None, timeout: float = 3.0) -> tuple[float, Verdict]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no verdict for {key} within {timeout}s")
            try:
                at, k, v = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if key is None or k == key:
                return at, v


@pytest.fixture
def prober() -> Iterator[tuple[Prober, Verdicts]]:
    verdicts = Verdicts()
    p = Prober(verdicts)
    p.start()
    yield p, verdicts
    p.stop()


def closed_port(host: str) -> int:
    """A port nothing listens on (bound, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(endpoint: tuple[IPAddress, int]) -> bool:
    """Whether a UDP socket may bind the endpoint (that is: the probe socket
    that had it is closed)."""
    address, port = endpoint
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(address), port))
        except OSError as e:
            assert e.errno == errno.EADDRINUSE
            return False
        return True


@pytest.mark.parametrize("host", LOOPBACKS)
def test_echo_ok(host, server_factory, prober) -> None:
    p, verdicts = prober
    server = server_factory(host)
    key = ("svc", server.address)
    spec = CheckSpec(port=server.port, send=b"ping\x00", expect=parse_expect("^ping\x00$"),
                     interval=0.2, timeout=0.1)
    started = time.monotonic()
    p.set_targets({key: spec})
    first, v = verdicts.next(key)
    assert v.ok and v.reason == "ok" and v.rtt is not None and 0 <= v.rtt < spec.timeout
    assert first - started < 0.2 + spec.timeout
    second, v = verdicts.next(key)
    assert v.ok and second - first == pytest.approx(spec.interval, abs=0.1)
    _, data, peer = server.received.get(timeout=1)
    assert data == b"ping\x00"
    # the server saw the probe come from the socket local_endpoints() reports
    assert p.local_endpoints() == {(ip(peer[0]), peer[1])}


@pytest.mark.parametrize("host", LOOPBACKS)
def test_empty_probe_any_reply(host, server_factory, prober) -> None:
    p, verdicts = prober
    server = server_factory(host, mode="reply", payload=b"whatever")
    key = ("svc", server.address)
    p.set_targets({key: CheckSpec(port=server.port, interval=0.2, timeout=0.1)})
    _, v = verdicts.next(key)
    assert v.ok
    _, data, _ = server.received.get(timeout=1)
    assert data == b""


@pytest.mark.parametrize("host", LOOPBACKS)
def test_closed_port_icmp_at_once(host, prober) -> None:
    p, verdicts = prober
    key = ("svc", ip(host))
    spec = CheckSpec(port=closed_port(host), interval=1.0, timeout=0.8)
    started = time.monotonic()
    p.set_targets({key: spec})
    at, v = verdicts.next(key)
    assert (v.ok, v.reason, v.rtt) == (False, "icmp", None)
    assert at - started < 0.4  # first probe at once (one target), ICMP well before 0.8 s
    # the socket stays: the next probe reports it again
    assert len(p.local_endpoints()) == 1
    _, v = verdicts.next(key)
    assert v.reason == "icmp"


@pytest.mark.parametrize("host", LOOPBACKS)
def test_mismatch(host, server_factory, prober) -> None:
    p, verdicts = prober
    server = server_factory(host, mode="reply", payload=b"nope")
    key = ("svc", server.address)
    p.set_targets({key: CheckSpec(port=server.port, send=b"ping", expect=parse_expect("^pong"),
                                  interval=0.2, timeout=0.1)})
    for _ in range(2):
        _, v = verdicts.next(key)
        assert (v.ok, v.reason) == (False, "mismatch")


@pytest.mark.parametrize("host", LOOPBACKS)
def test_timeout(host, server_factory, prober) -> None:
    p, verdicts = prober
    server = server_factory(host, mode="silent")
    key = ("svc", server.address)
    spec = CheckSpec(port=server.port, send=b"ping", interval=0.3, timeout=0.15)
    p.set_targets({key: spec})
    at, v = verdicts.next(key)
    sent, _, _ = server.received.get(timeout=1)
    assert (v.ok, v.reason, v.rtt) == (False, "timeout", None)
    assert at - sent == pytest.approx(spec.timeout, abs=0.08)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_late_reply_not_counted(host, server_factory, prober) -> None:
    """Replies that arrive after the timeout (but before the next probe) are
    drained, never taken as the answer to the next probe."""
    p, verdicts = prober
    server = server_factory(host, delay=0.15)
    key = ("svc", server.address)
    p.set_targets({key: CheckSpec(port=server.port, send=b"ping", interval=0.3, timeout=0.1)})
    for _ in range(4):
        _, v = verdicts.next(key)
        assert v.reason == "timeout"


def test_unchanged_spec_keeps_schedule_and_socket(server_factory, prober) -> None:
    p, verdicts = prober
    server = server_factory("127.0.0.1")
    key = ("svc", server.address)
    spec = CheckSpec(port=server.port, send=b"a", interval=0.3, timeout=0.1)
    p.set_targets({key: spec})
    first, _, _ = server.received.get(timeout=1)
    endpoints = p.local_endpoints()
    p.set_targets({key: CheckSpec(port=server.port, send=b"a", interval=0.3, timeout=0.1)})
    p.set_targets(dict({key: spec}))
    second, data, _ = server.received.get(timeout=1)
    # a reset schedule would have probed again at once
    assert second - first == pytest.approx(spec.interval, abs=0.05)
    assert p.local_endpoints() == endpoints

    # a changed spec on the same port: probed soon, on the same socket
    changed = CheckSpec(port=server.port, send=b"b", interval=2.0, timeout=0.1)
    started = time.monotonic()
    p.set_targets({key: changed})
    while True:
        at, data, _ = server.received.get(timeout=1)
        if data == b"b":
            break
    assert at - started < 0.25
    assert p.local_endpoints() == endpoints


@pytest.mark.parametrize("host", LOOPBACKS)
def test_removed_target_stops_and_closes(host, server_factory, prober) -> None:
    p, verdicts = prober
    keep_srv, drop_srv = server_factory(host), server_factory(host)
    keep = ("keep", keep_srv.address)
    drop = ("drop", drop_srv.address)  # same address, another service
    spec_keep = CheckSpec(port=keep_srv.port, interval=0.1, timeout=0.05)
    spec_drop = CheckSpec(port=drop_srv.port, interval=0.1, timeout=0.05)
    p.set_targets({keep: spec_keep, drop: spec_drop})
    verdicts.next(drop)
    verdicts.next(keep)
    # one local address, two sources: one socket probes both
    (shared,) = p.local_endpoints()
    assert drop_srv.received.get(timeout=1)[2][1] == keep_srv.received.get(timeout=1)[2][1]

    p.set_targets({keep: spec_keep})
    assert p.local_endpoints() == {shared}  # the kept target still uses it
    # nothing queued after set_targets returned concerns the removed target
    # (verdicts are delivered under the prober's lock), and probes stop
    while not drop_srv.received.empty():
        drop_srv.received.get_nowait()
    for _ in range(4):  # four more intervals of the kept target
        verdicts.next(keep)
    assert drop_srv.received.empty()
    while not verdicts.q.empty():
        assert verdicts.q.get_nowait()[1] == keep

    p.set_targets({})  # the last target gone: its socket is closed
    assert p.local_endpoints() == set()
    assert port_is_free(shared)


def test_targets_that_share_a_source_get_sockets_of_their_own(server_factory, prober) -> None:
    """Two services checking the same server and port: replies are told
    apart by their source, so each needs a socket of its own; an ICMP error
    for one target on a shared socket fails that target alone."""
    p, verdicts = prober
    server = server_factory("127.0.0.1", mode="reply", payload=b"pong")
    spec = CheckSpec(port=server.port, send=b"x", interval=0.2, timeout=0.1)
    closed = CheckSpec(port=closed_port("127.0.0.1"), interval=0.2, timeout=0.1)
    a, b, c = ("a", server.address), ("b", server.address), ("c", server.address)
    p.set_targets({a: spec, b: spec, c: closed})
    assert len(p.local_endpoints()) == 2  # a and c on one, b on the next slot
    reasons: dict[Key, list[str]] = {a: [], b: [], c: []}
    while min(len(r) for r in reasons.values()) < 3:
        _, key, v = verdicts.q.get(timeout=2)
        reasons[key].append(v.reason)
    assert reasons[a][:3] == reasons[b][:3] == ["ok"] * 3
    assert reasons[c][:3] == ["icmp"] * 3
    sources = {server.received.get(timeout=1)[2] for _ in range(4)}
    assert len({port for _, port in sources}) == 2


def test_stop_joins_and_closes(server_factory) -> None:
    verdicts = Verdicts()
    p = Prober(verdicts)
    servers = [server_factory(h) for h in LOOPBACKS]
    targets = {(f"s{i}", s.address): CheckSpec(port=s.port, interval=0.1, timeout=0.05)
               for i, s in enumerate(servers)}
    targets[("closed", ip("127.0.0.1"))] = CheckSpec(port=closed_port("127.0.0.1"),
                                                     interval=0.1, timeout=0.05)
    p.set_targets(targets)  # before start: sockets exist at once
    endpoints = p.local_endpoints()
    assert len(endpoints) == 2  # one per local address
    assert {e[0] for e in endpoints} == {ip("127.0.0.1"), ip("::1")}
    p.start()
    for key in targets:
        verdicts.next(key)
    thread = p._thread
    assert thread is not None and thread.is_alive()
    started = time.monotonic()
    p.stop()
    assert time.monotonic() - started < 2.0
    assert not thread.is_alive()
    assert p.local_endpoints() == set()
    assert all(port_is_free(e) for e in endpoints)
    with pytest.raises(RuntimeError):
        p.set_targets(targets)
    p.stop()  # twice is fine


def test_stop_without_start() -> None:
    p = Prober(lambda batch: None)
    p.set_targets({("s", ip("127.0.0.1")): CheckSpec(port=closed_port("127.0.0.1"))})
    (endpoint,) = p.local_endpoints()
    p.stop()
    assert port_is_free(endpoint)


def test_error_recreates_socket(server_factory, prober) -> None:
    """An OSError other than an ICMP one is an "error" verdict, and the next
    probe goes out on a new socket bound to the same local port."""
    p, verdicts = prober
    server = server_factory("127.0.0.1")
    key = ("svc", server.address)
    p.set_targets({key: CheckSpec(port=server.port, interval=0.15, timeout=0.05)})
    assert verdicts.next(key)[1].ok
    (endpoint,) = p.local_endpoints()
    class Broken:
        """The socket, except that sending fails as on a socket gone bad."""

        def __init__(self, real: socket.socket) -> None:
            self.real = real

        def sendto(self, *args: object) -> int:
            raise OSError(errno.EPIPE, "Broken pipe")

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    with p._lock:
        shared = p._targets[key].sock
        assert shared is not None
        shared.sock = Broken(shared.sock)  # type: ignore[assignment]
    reasons = [verdicts.next(key)[1].reason for _ in range(3)]
    assert reasons[:2] == ["error", "ok"] or reasons[1:] == ["error", "ok"]
    assert p.local_endpoints() == {endpoint}


def test_error_on_attach() -> None:
    """A target that cannot get a socket is reported at each probe."""
    verdicts = Verdicts()
    p = Prober(verdicts)
    key = ("svc", ip("::1"))
    real_open = p._open
    calls = []

    def failing_open(slot):
        calls.append(slot)
        if len(calls) <= 2:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(slot)

    p._open = failing_open  # type: ignore[method-assign]
    p.set_targets({key: CheckSpec(port=closed_port("::1"), interval=0.1, timeout=0.05)})
    assert p.local_endpoints() == set()
    p.start()
    try:
        assert verdicts.next(key)[1].reason == "error"  # second failure, at the probe
        assert verdicts.next(key)[1].reason == "icmp"  # third call opens it
        assert len(p.local_endpoints()) == 1
    finally:
        p.stop()


def test_many_targets_spread(server_factory, prober) -> None:
    p, verdicts = prober
    server = server_factory("127.0.0.1")
    n = 200
    spec = CheckSpec(port=server.port, interval=1.0, timeout=0.5)
    started = time.monotonic()
    p.set_targets({(f"s{i}", server.address): spec for i in range(n)})
    assert len(p.local_endpoints()) == n
    times = [server.received.get(timeout=2)[0] for _ in range(n)]
    assert max(times) - started < 0.3  # all within 0.2 s (and some slack)
    assert max(times) - min(times) > 0.1  # but not all at once
    seen = set()
    while len(seen) < n:
        _, key, v = verdicts.q.get(timeout=2)
        assert v.ok
        seen.add(key)


def test_set_targets_validates() -> None:
    p = Prober(lambda batch: None)
    try:
        good = {("a", ip("127.0.0.1")): CheckSpec(port=closed_port("127.0.0.1"))}
        p.set_targets(good)
        with pytest.raises(ConfigError):
            p.set_targets({("b", ip("127.0.0.1")): CheckSpec(port=9, interval=1, timeout=1)})
        assert len(p.local_endpoints()) == 1  # unchanged
        with pytest.raises(TypeError):
            p.set_targets({("c", "127.0.0.1"): CheckSpec(port=9)})  # type: ignore[dict-item]
    finally:
        p.stop()


def test_nofile_raised_once(monkeypatch) -> None:
    limits = {"soft": 300, "hard": 4096}
    calls = []

    def getrlimit(which):
        return limits["soft"], limits["hard"]

    def setrlimit(which, value):
        calls.append(value)
        limits["soft"] = value[0]

    monkeypatch.setattr(health.resource, "getrlimit", getrlimit)
    monkeypatch.setattr(health.resource, "setrlimit", setrlimit)
    p = Prober(lambda batch: None)
    p._raise_nofile(10)
    assert calls == []  # fits
    p._raise_nofile(1000)
    assert calls == [(4096, 4096)]
    p._raise_nofile(5000)
    assert calls == [(4096, 4096)]  # once
    p.stop()
