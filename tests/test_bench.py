"""The benchmark's instruments, checked: the load generator (BPF_PROG_TEST_RUN
live frames) sends exactly what it is asked to, from each client in turn,
as datagrams a real stack accepts (checksums included), and the counter on
the far end counts them. The benchmark's numbers rest on both.

NAPI is not moved to a thread of its own here: the receiving side then runs
on the sending CPU, in step with the generator, and nothing is lost to a
full ring."""

from __future__ import annotations

import select
import socket
import time
from ipaddress import IPv4Address
from typing import Iterator

import pytest

from sbulb.bench.measure import SO_RCVBUFFORCE, udp_errors, udp_frame
from sbulb.bench.topology import NET_IF, PORT, VIP, BenchLab
from sbulb.dataplane import attach_pass_program
from sbulb.lab import netns, sh
from tests.conftest import require_root


@pytest.fixture(scope="module")
def tools() -> Iterator[object]:
    require_root()
    from sbulb.bench.tools import BenchTools

    loaded = BenchTools(PORT)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture
def lab(tools) -> Iterator[BenchLab]:
    with BenchLab(say=lambda text: None) as built:
        tools.reset_counted()
        tools.reset_ceiling()
        tools.let_counted_through(False)
        tools.attach(built.net_ns, NET_IF, "count")
        yield built


def reaches(read, expected, limit: float = 5.0):
    """read() once it equals `expected`, or when `limit` seconds have passed
    (polled: frames still in flight land within milliseconds)."""
    deadline = time.monotonic() + limit
    value = read()
    while value != expected and time.monotonic() < deadline:
        select.select([], [], [], 0.02)
        value = read()
    return value


def test_generator_sends_the_count_and_the_counter_counts_it(lab, tools):
    tools.attach(lab.lb_ns, lab.lb_if, "reflect")
    generated = tools.generate(lab.net_ns, NET_IF, udp_frame(lab, 64), 30.0, clients=100,
                               count=5000)
    assert generated.sent == 5000
    assert generated.rate > 0
    assert reaches(tools.ceiling_count, 5000) == 5000  # the reflector saw each one
    # the reflected frames, to the VIP, each counted once on the far end
    assert reaches(tools.counted, {VIP: 5000}) == {VIP: 5000}


def test_generated_frames_are_datagrams_from_each_client_with_valid_checksums(lab, tools):
    """Frames to a real server's address, routed back by the balancer's
    kernel (which checks the IP header checksum), let through by the counter
    to a socket (the far end's stack checks the UDP checksum)."""
    server = lab.servers[0]
    with netns(lab.lb_ns):
        attach_pass_program(lab.lb_if)
    sh("ip", "-n", lab.lb_ns, "neigh", "replace", str(server), "lladdr", lab.net_mac,
       "dev", lab.lb_if, "nud", "permanent")
    tools.let_counted_through(True)
    payload = b"generated datagram"
    frame = udp_frame(lab, payload, dst=server)
    # clients from another address than the template's: the address's part
    # in both checksums is updated too
    base = IPv4Address("10.99.1.0")
    clients = 300
    with netns(lab.net_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        sock.bind((str(server), PORT))
        errors = udp_errors(lab.net_ns)
        generated = tools.generate(lab.net_ns, NET_IF, frame, 30.0, clients=clients,
                                   base=base, count=clients)
        assert generated.sent == clients
        sources = []
        while len(sources) < clients:
            readable, _, _ = select.select([sock], [], [], 5.0)
            if not readable:
                break
            data, source = sock.recvfrom(2048)
            assert data == payload
            sources.append(source)
        expected = [(str(base + i // 16384), 1024 + i % 16384) for i in range(clients)]
        assert sorted(sources) == sorted(expected)
        assert udp_errors(lab.net_ns) == errors
        assert reaches(tools.counted, {server: clients}) == {server: clients}
    finally:
        sock.close()
        tools.let_counted_through(False)


def test_paced_generator_keeps_its_rate_and_stops_at_the_count(lab, tools):
    """Pacing by the generator's own clock: the rate it reports is the one
    asked for (loosely: a VM's clock reads are slow), and it never sends more
    than asked."""
    tools.attach(lab.lb_ns, lab.lb_if, "drop")
    generated = tools.generate(lab.net_ns, NET_IF, udp_frame(lab, 64), 30.0, rate=100_000.0,
                               clients=10, count=20_000)
    assert generated.sent == 20_000
    assert 50_000 < generated.rate < 150_000
    assert reaches(tools.ceiling_count, 20_000) == 20_000


def test_generator_stops_at_its_time_bound(lab, tools):
    """A count it cannot reach in time: the run ends at `seconds` anyway,
    having sent about what the rate allows."""
    tools.attach(lab.lb_ns, lab.lb_if, "drop")
    generated = tools.generate(lab.net_ns, NET_IF, udp_frame(lab, 64), 0.3, rate=1000.0,
                               clients=10, count=1_000_000)
    assert 100 <= generated.sent <= 600
    assert generated.seconds < 5.0


