"""End to end, through the lab: real sockets in network namespaces, the real
`python3 -m sbulb` in the load balancer's namespace with a config file, as an
operator runs it. IPv4 and IPv6 each. Every receive has a timeout; every
traffic loop is bounded."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Iterator

import pytest

from sbulb.lab import CLOSED_PORT, PORT, UNBALANCED_PORT, Lab, RoutedLab, SbulbProcess, sh
from tests.conftest import require_root
from tests.proc import ctl_json, wait_until

FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
SILENCE = 1.0  # how long a datagram that must never arrive is waited for
RELOAD = 10.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(servers=4) as built:
        yield built
    left = sh("ip", "netns", "list").stdout
    assert built.id not in left, left


@pytest.fixture
def balancer(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SbulbProcess]:
    """sbulb for rs0..rs2 of the test's family, started through the CLI."""
    family = request.node.callspec.params["family"]
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, family, [0, 1, 2])
    lab.forget_associations()  # each test starts from a fresh map
    process = lab.start_sbulb(
        lab.sbulb_args(family, conf, "-l", "INFO", ports=(PORT, CLOSED_PORT)), tmp_path)
    process.config = conf  # type: ignore[attr-defined]
    process.wait_ready()
    yield process
    process.close()


def wait_reload(process: SbulbProcess) -> str:
    process.notify.wait_for("RELOADING=1", RELOAD)
    return process.notify.wait_for("READY=1", RELOAD)


@pytest.mark.parametrize("family", FAMILIES)
def test_round_robin_stickiness_and_vip_source(lab: Lab, balancer: SbulbProcess, family: int) -> None:
    vip = lab.addresses(family).vip
    clients = [lab.client(family, index=i % 2) for i in range(6)]
    first = [c.exchange(vip, PORT, b"hello").server for c in clients]
    assert first == ["rs0", "rs1", "rs2", "rs0", "rs1", "rs2"]
    for round_ in range(10):
        for client, server in zip(clients, first):
            reply = client.exchange(vip, PORT, b"datagram %d" % round_)
            assert reply.server == server, "a client changed server"
            assert (reply.source, reply.source_port) == (vip, PORT)


@pytest.mark.parametrize("family", FAMILIES)
def test_server_initiated(lab: Lab, balancer: SbulbProcess, family: int) -> None:
    a = lab.addresses(family)
    client = lab.client(family, index=1)
    lab.service("rs1").send(family, PORT, client.address, client.port, b"observe")
    pushed = client.receive(timeout=5)
    assert pushed is not None and pushed.server == "rs1" and pushed.payload == b"observe"
    assert (pushed.source, pushed.source_port) == (a.vip, PORT)
    # the client's datagrams now reach the server that spoke first
    for n in range(5):
        assert client.exchange(a.vip, PORT, b"ack %d" % n).server == "rs1"
    # another real server may not speak to rs1's client...
    lab.service("rs2").send(family, PORT, client.address, client.port, b"intruder")
    lab.service("rs1").send(family, PORT, client.address, client.port, b"marker")
    received = [client.receive(timeout=5)]
    received.append(client.receive(timeout=SILENCE))
    assert [(r.server, r.payload) for r in received if r] == [("rs1", b"marker")]


@pytest.mark.parametrize("family", FAMILIES)
def test_unbalanced_traffic_is_unaffected(lab: Lab, balancer: SbulbProcess, family: int) -> None:
    a = lab.addresses(family)
    client = lab.client(family)
    # the VIP on a port sbulb does not balance: the load balancer's own stack
    assert client.exchange(a.vip, UNBALANCED_PORT, b"other port").server == "lb-local"
    # the balanced port on an address that is not the VIP
    reply = client.exchange(a.lb, PORT, b"not the vip")
    assert (reply.server, reply.source) == ("lb-local", a.lb)
    # and the balanced path still works
    assert client.exchange(a.vip, PORT, b"balanced").server == "rs0"


@pytest.mark.parametrize("family", FAMILIES)
def test_config_file_changes_at_run_time(lab: Lab, balancer: SbulbProcess, family: int) -> None:
    vip = lab.addresses(family).vip
    conf: Path = balancer.config  # type: ignore[attr-defined]
    clients = [lab.client(family) for _ in range(6)]
    owner = {c.port: c.exchange(vip, PORT, b"first").server for c in clients}
    assert sorted(owner.values()) == ["rs0", "rs0", "rs1", "rs1", "rs2", "rs2"]

    def served_by() -> dict[int, str]:
        return {c.port: c.exchange(vip, PORT, b"again").server for c in clients}

    # add rs3: existing clients stay, new ones reach it
    lab.write_config(conf, family, [0, 1, 2, 3])
    assert "over 4 real server(s)" in wait_reload(balancer)
    assert served_by() == owner
    newcomers = [lab.client(family).exchange(vip, PORT, b"new").server for _ in range(4)]
    assert "rs3" in newcomers

    # remove rs0: its clients move, the others stay
    lab.write_config(conf, family, [1, 2, 3])
    assert "over 3 real server(s)" in wait_reload(balancer)
    now = served_by()
    for port, server in owner.items():
        if server == "rs0":
            assert now[port] in ("rs1", "rs2", "rs3")
        else:
            assert now[port] == server
    owner = now

    # an invalid file: rejected, the running configuration keeps serving
    conf.write_text("[Real Servers]\nnot-an-address\n")
    assert "last reload rejected" in wait_reload(balancer)
    assert served_by() == owner
    assert "config.rejected" in balancer.stderr and "not-an-address" in balancer.stderr


@pytest.mark.parametrize(
    "family,signum", [(4, signal.SIGTERM), (6, signal.SIGINT)], ids=["ipv4-sigterm", "ipv6-sigint"]
)
def test_stop_and_restart(lab: Lab, balancer: SbulbProcess, tmp_path: Path, family: int,
                          signum: int) -> None:
    vip = lab.addresses(family).vip
    client = lab.client(family)
    assert client.exchange(vip, PORT, b"balanced").server.startswith("rs")
    assert lab.xdp_programs() == ["sbulb_xdp"]

    assert balancer.stop(signum) == 0
    balancer.notify.wait_for("STOPPING=1", 5)
    assert lab.xdp_programs() == []
    # nothing rewrites the VIP's traffic anymore: its own stack answers
    assert client.exchange(vip, PORT, b"unbalanced").server == "lb-local"

    again = lab.start_sbulb(balancer.args, tmp_path)
    again.wait_ready()
    assert client.exchange(vip, PORT, b"balanced again").server.startswith("rs")
    assert again.stop() == 0
    assert lab.xdp_programs() == []


@pytest.mark.parametrize("family", FAMILIES)
def test_datagrams_bigger_than_the_mtu_both_ways(lab: Lab, balancer: SbulbProcess,
                                                 family: int) -> None:
    """3000 bytes through 1500-MTU links: the client's kernel fragments it,
    every fragment reaches the associated server, which reassembles it; its
    3000-byte answer comes back fragmented, from the VIP, whole."""
    vip = lab.addresses(family).vip
    client = lab.client(family)
    owner = client.exchange(vip, PORT, b"small first").server
    big = bytes(range(256)) * 11 + b"x" * 184  # 3000 bytes
    for n in range(3):
        reply = client.exchange(vip, PORT, big[:-1] + bytes([n]))
        assert reply.server == owner and (reply.source, reply.source_port) == (vip, PORT)
    fresh = lab.client(family)  # a datagram that starts an association is fragmented too
    assert fresh.exchange(vip, PORT, big).server.startswith("rs")


@pytest.mark.parametrize("family", [pytest.param(4, id="ipv4")])
def test_ipv4_options_datagram(lab: Lab, balancer: SbulbProcess, family: int) -> None:
    vip = lab.addresses(family).vip
    client = lab.client(family)
    options = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL: IHL 6
    client.sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, options)
    assert client.sock.getsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, 40) == options
    reply = client.exchange(vip, PORT, b"with options")
    assert reply.server.startswith("rs") and reply.source == vip


@pytest.mark.parametrize("family", FAMILIES)
def test_port_unreachable_from_a_server_reaches_the_client(lab: Lab, balancer: SbulbProcess,
                                                          family: int) -> None:
    """Nobody listens on the balanced CLOSED_PORT: the real server's ICMP
    port unreachable, translated to quote the VIP, reaches the client's
    connected socket as ECONNREFUSED."""
    vip = lab.addresses(family).vip
    client = lab.client(family)
    client.sock.connect((str(vip), CLOSED_PORT))
    client.sock.settimeout(5)
    client.sock.send(b"anyone there?")
    with pytest.raises(ConnectionRefusedError):
        client.sock.recv(100)


@pytest.mark.parametrize("family", FAMILIES)
def test_path_mtu_discovery_through_the_balancer(lab: Lab, balancer: SbulbProcess,
                                                 family: int) -> None:
    """The clients' link shrinks to 1400: the router's fragmentation needed
    / packet too big about the server's 1482-byte answer is sent to the VIP;
    sbulb hands it to that server, which learns the path MTU and sends its
    next answers in fragments that fit."""
    a = lab.addresses(family)
    client = lab.client(family)
    assert client.exchange(a.vip, PORT, b"small").server == "rs0"
    rs0 = lab.server_ns[0]
    try:
        lab.set_mtu(lab.router_ns, "to-clients", 1400)
        lab.set_mtu(lab.client_ns, "eth0", 1400)
        big = b"p" * 1450  # the answer, 1454 bytes of UDP, needs 1482 on the wire
        reply = client.exchange(a.vip, PORT, big, timeout=2.0, attempts=3)
        assert (reply.server, reply.source) == ("rs0", a.vip)
        route = sh("ip", "-n", rs0, f"-{family}", "route", "get", str(client.address)).stdout
        assert "mtu 1400" in route, route
    finally:
        lab.set_mtu(lab.router_ns, "to-clients", 1500)
        lab.set_mtu(lab.client_ns, "eth0", 1500)
        sh("ip", "-n", rs0, f"-{family}", "route", "flush", "cache", check=False)


@pytest.fixture(scope="module")
def routed_lab() -> Iterator[RoutedLab]:
    require_root()
    with RoutedLab(servers=3) as built:
        yield built
    assert built.id not in sh("ip", "netns", "list").stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_fib_forwarding_through_a_two_interface_router(routed_lab: RoutedLab, tmp_path: Path,
                                                       family: int) -> None:
    """sbulb on both interfaces of a router (--forward fib, the default):
    clients on one side, servers on the other. After the first packets (the
    kernel forwards those whose neighbour it does not know yet, and learns
    it), XDP redirects every packet itself: the kernel forwards none."""
    lab, vip = routed_lab, routed_lab.addresses(family).vip
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, family, [0, 1, 2])
    lab.forget_associations()  # each test starts from a fresh map
    process = lab.start_sbulb(lab.sbulb_args(family, conf), tmp_path)
    assert "on eth0, eth1" in process.wait_ready()
    clients = [lab.client(family) for _ in range(6)]
    owner = [c.exchange(vip, PORT, b"hello").server for c in clients]
    assert owner == ["rs0", "rs1", "rs2", "rs0", "rs1", "rs2"]
    before = lab.forwarded_by_kernel(family)
    for round_ in range(10):
        for client, server in zip(clients, owner):
            reply = client.exchange(vip, PORT, b"round %d" % round_)
            assert (reply.server, reply.source) == (server, vip)
    assert lab.forwarded_by_kernel(family) - before == 0
    assert process.stop() == 0
    assert lab.xdp_programs(ifname="eth0") == [] and lab.xdp_programs(ifname="eth1") == []


@pytest.mark.parametrize("family", FAMILIES)
def test_mirror_through_a_two_interface_router(routed_lab: RoutedLab, tmp_path: Path,
                                               family: int) -> None:
    """Mirror on the router: datagrams arrive on eth0, their copies leave
    by eth1 (the interface the targets' route names), rewritten with the
    FIB's MACs; the primary's answers go back out of eth0 from the VIP."""
    import time

    lab, net = routed_lab, routed_lab.addresses(family)
    conf = tmp_path / "sbulb.conf"
    conf.write_text(f"[Service logs]\nmode = mirror\naddress = {net.vip}\nports = {PORT}\n"
                    f"servers = {' '.join(str(a) for a in net.real_servers)}\n")
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf)], tmp_path)
    try:
        process.wait_ready()
        client = lab.client(family)
        targets = [lab.service(name) for name in ("rs0", "rs1", "rs2")]

        # the first copies find no neighbour on eth1 (not made, counted)
        # until the daemon has the kernel resolve them
        start = {t.name: t.received for t in targets}
        for n in range(100):  # at most 100 datagrams, 50 ms apart
            client.exchange(net.vip, PORT, b"warm %d" % n)
            if all(t.received > start[t.name] for t in targets):
                break
            time.sleep(0.05)
        before = {t.name: t.received for t in targets}
        replies = [client.exchange(net.vip, PORT, b"copy %d" % n) for n in range(20)]
        arrived = wait_until(lambda: all(t.received - before[t.name] >= 20 for t in targets))
        status = ctl_json(lab, "status")
    finally:
        process.close()
    assert {(r.server, r.source) for r in replies} == {("rs0", net.vip)}
    assert arrived, {t.name: t.received - before[t.name] for t in targets}
    assert status["counters"]["FWD_FIB_REDIRECT"] >= 20  # the primary's answers, eth1 -> eth0


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_next_hop_is_resolved_by_the_daemon(lab: Lab, balancer: SbulbProcess,
                                                    family: int) -> None:
    """A one-armed host that forwards: the FIB path, MAC addresses from the
    kernel's neighbour table. When the router's entry is gone, datagrams
    still flow (MAC swap) and sbulb gets the kernel to resolve it again."""
    import time

    a = lab.addresses(family)
    sysctl = ("net.ipv4.conf.all.forwarding" if family == 4 else "net.ipv6.conf.all.forwarding")
    lab_sh = ["ip", "netns", "exec", lab.lb_ns, "sysctl", "-qw"]
    sh(*lab_sh, f"{sysctl}=1")
    try:
        client = lab.client(family)
        assert client.exchange(a.vip, PORT, b"warm").server.startswith("rs")
        sh("ip", "-n", lab.lb_ns, f"-{family}", "neigh", "flush", "dev", "eth0")
        assert client.exchange(a.vip, PORT, b"no neighbour").server.startswith("rs")
        deadline = time.monotonic() + 5
        while True:
            out = sh("ip", "-n", lab.lb_ns, f"-{family}", "neigh", "show",
                     str(a.router_lb_side), "dev", "eth0").stdout
            if any(state in out for state in ("REACHABLE", "STALE", "DELAY", "PROBE")):
                break
            assert time.monotonic() < deadline, f"router not resolved: {out!r}"
            time.sleep(0.1)  # polling the kernel's table, bounded by the deadline
    finally:
        sh(*lab_sh, f"{sysctl}=0")


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_and_drain_through_the_config_file(lab: Lab, balancer: SbulbProcess,
                                                  family: int) -> None:
    """rs0 = 3, rs1 = 1 (rs2 left out): 400 new clients split 3:1 within 5%.
    Then rs0 is drained (weight 0): its clients stay, new ones go elsewhere."""
    vip = lab.addresses(family).vip
    servers = lab.addresses(family).real_servers
    conf: Path = balancer.config  # type: ignore[attr-defined]
    conf.write_text(f"[Real Servers]\n{servers[0]} = 3\n{servers[1]}\n")
    wait_reload(balancer)
    # explicit ports: a new socket on a port that was used before would be
    # the same client ip:port to sbulb, with its association
    picks = []
    for port in range(30000, 30400):
        client = lab.client(family, port=port)
        picks.append(client.exchange(vip, PORT, b"weighted").server)
        client.close()  # 400 sockets: give each port back
    assert abs(picks.count("rs0") - 300) <= 20 and abs(picks.count("rs1") - 100) <= 20, picks

    regulars = [lab.client(family, port=port) for port in range(31000, 31008)]
    owner = {c.port: c.exchange(vip, PORT, b"before").server for c in regulars}
    conf.write_text(f"[Real Servers]\n{servers[0]} = 0\n{servers[1]}\n{servers[2]}\n")
    wait_reload(balancer)
    for client in regulars:
        assert client.exchange(vip, PORT, b"after").server == owner[client.port]
    newcomers = [lab.client(family, port=port).exchange(vip, PORT, b"new").server
                 for port in range(32000, 32012)]
    assert "rs0" not in newcomers and {"rs1", "rs2"} <= set(newcomers)


@pytest.mark.parametrize("family", FAMILIES)
def test_restart_keeps_every_client_on_its_server(lab: Lab, balancer: SbulbProcess,
                                                  tmp_path: Path, family: int) -> None:
    """Clients keep sending while sbulb restarts: once the new process is
    ready, every client is answered, by the server it had before. Only the
    sending thread uses the client sockets (a second reader would take its
    answers)."""
    import threading

    vip = lab.addresses(family).vip
    clients = [lab.client(family) for _ in range(6)]
    owner = {c.port: c.exchange(vip, PORT, b"before").server for c in clients}
    assert sorted(owner.values()) == ["rs0", "rs0", "rs1", "rs1", "rs2", "rs2"]

    ready = threading.Event()  # the new sbulb said READY=1
    enough = threading.Event()  # three rounds were sent after that
    moved: list[str] = []
    lost_after_ready: list[int] = []

    def traffic() -> None:
        n = rounds_after_ready = 0
        while rounds_after_ready < 3 and n < 200000:  # bounded in packets
            was_ready = ready.is_set()
            # the other way round: a fresh round robin would give them other servers
            for client in reversed(clients):
                n += 1
                payload = b"n%d" % n
                client.send(vip, PORT, payload)
                reply = client.receive(timeout=1.0)
                while reply is not None and reply.payload != payload:
                    reply = client.receive(timeout=1.0)  # a late answer to an earlier one
                if not was_ready:
                    continue  # the restart window: anything goes
                if reply is None:
                    lost_after_ready.append(client.port)
                elif reply.server != owner[client.port]:
                    moved.append(f"{client.port}: {owner[client.port]} -> {reply.server}")
            rounds_after_ready += was_ready
        enough.set()

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    assert balancer.stop() == 0
    again = lab.start_sbulb(balancer.args, tmp_path)
    again.wait_ready()
    ready.set()
    assert enough.wait(timeout=60), "the sender did not finish"
    sender.join(timeout=10)
    assert moved == [] and lost_after_ready == []
    assert "pin.reused" in again.stderr
    assert again.stop() == 0
