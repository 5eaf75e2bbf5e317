"""How rewritten packets leave (forward.h): the FIB path, redirects to
other sbulb interfaces, unknown neighbours, hosts that do not forward, and
sbulb's MAC swap. Run with BPF_PROG_TEST_RUN as if received on an
interface of a namespace of the test's own, with routes and static
neighbours, so every output byte is known."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
from pyroute2.netns import popns, pushns
from scapy.layers.l2 import Ether

from sbulb.config import Limits
from sbulb.consts import Stat, XdpAction
from sbulb.dataplane import Dataplane, interface_index
from sbulb.lab import sh
from tests.conftest import require_root
from tests.packets import NETS, OTHER_PORT, PORT, natted, udp

RS0_MAC = "02:00:00:00:0a:00"  # rs0's MAC, on x0
GW_MAC = "02:00:00:00:0b:00"  # the clients' gateway, on y0
OTHER_GW_MAC = "02:00:00:00:0c:00"  # a gateway on z0, an interface sbulb is not on

TOPOLOGY = {
    4: dict(x0="10.0.0.254/24", y0="10.1.0.1/24", z0="10.2.0.1/24", gw="10.1.0.2",
            other_gw="10.2.0.2", client_net="192.0.2.1/32", other_client="192.0.2.2/32"),
    6: dict(x0="2001:db8::fe/64", y0="2001:db8:1::1/64", z0="2001:db8:2::1/64",
            gw="2001:db8:1::2", other_gw="2001:db8:2::2", client_net="2001:db8:c::1/128",
            other_client="2001:db8:c::2/128"),
}


class Net:
    def __init__(self, name: str) -> None:
        self.name = name

    def ip(self, *args: str) -> None:
        sh("ip", "-n", self.name, *args)


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    """x0 (where packets come in, and rs0 lives), y0 (towards the clients,
    sbulb attached), z0 (towards other clients, sbulb not attached)."""
    require_root()
    name = f"sbt-fwd-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    n = Net(name)
    try:
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                    "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"):
            sh("ip", "netns", "exec", name, "sysctl", "-qw", key)
        for dev in ("x0", "y0", "z0"):
            n.ip("link", "add", dev, "type", "veth", "peer", "name", dev + "p")
            n.ip("link", "set", dev, "up")
            n.ip("link", "set", dev + "p", "up")
        for family, t in TOPOLOGY.items():
            net = NETS[family]
            extra = ["nodad"] if family == 6 else []
            for dev in ("x0", "y0", "z0"):
                n.ip("addr", "add", t[dev], "dev", dev, *extra)
            n.ip("neigh", "add", net.real_servers[0], "lladdr", RS0_MAC, "dev", "x0", "nud",
                 "permanent")
            n.ip("neigh", "add", t["gw"], "lladdr", GW_MAC, "dev", "y0", "nud", "permanent")
            n.ip("neigh", "add", t["other_gw"], "lladdr", OTHER_GW_MAC, "dev", "z0", "nud",
                 "permanent")
            n.ip("route", "add", t["client_net"], "via", t["gw"], "dev", "y0")
            n.ip("route", "add", t["other_client"], "via", t["other_gw"], "dev", "z0")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="module")
def fib_plane(ns: str) -> Iterator[Dataplane]:
    dp = Dataplane(Limits(max_associations=1024), forward="fib")
    dp.load()
    pushns(ns)
    try:
        dp.attach("y0", "generic")  # a redirect target (x0 needs nothing: test runs)
        yield dp
    finally:
        dp.close()
        popns()


def mac_of(ns: str, dev: str) -> str:
    import json

    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout)[0]["address"]


def with_macs(frame: bytes, src: str, dst: str) -> bytes:
    out = Ether(frame)
    out[Ether].src, out[Ether].dst = src, dst
    return bytes(out)


def configure_plane(dp: Dataplane, family: int) -> None:
    net = NETS[family]
    dp.reset_state()
    dp.configure(net.vip_ip, [PORT, OTHER_PORT])
    dp.set_real_servers(net.rs_ips(0, 1))


@pytest.mark.parametrize("family", [4, 6])
def test_fib_paths(ns: str, fib_plane: Dataplane, family: int) -> None:
    dp, net = fib_plane, NETS[family]
    configure_plane(dp, family)
    x0 = interface_index("x0")
    C, V, RS = net.clients, net.vip, net.real_servers

    # to rs0, whose MAC the kernel knows, out of x0 where it came in
    pkt = udp(net, C[0], V, 1000, PORT)
    result = dp.test_run(bytes(pkt), ingress_ifindex=x0)
    assert result.action == XdpAction.TX
    assert result.frame == with_macs(natted(pkt, dst=RS[0]), mac_of(ns, "x0"), RS0_MAC)

    # to rs1, no neighbour yet: MAC swap for now, and the miss is noted
    pkt = udp(net, C[0], V, 1001, PORT)
    result = dp.test_run(bytes(pkt), ingress_ifindex=x0)
    assert result.action == XdpAction.TX
    assert result.frame == natted(pkt, dst=RS[1])
    assert dp.take_neighbour_misses() == [(net.ip(RS[1]), x0)]
    assert dp.take_neighbour_misses() == []

    # rs0's answer to a client behind the gateway on y0, where sbulb is too
    pkt = udp(net, RS[0], C[0], PORT, 1000)
    result = dp.test_run(bytes(pkt), ingress_ifindex=x0)
    assert result.action == XdpAction.REDIRECT
    assert result.frame == with_macs(natted(pkt, src=V), mac_of(ns, "y0"), GW_MAC)

    # to a client behind z0, where sbulb is not: the kernel forwards it, so
    # the frame stays addressed to this host
    pkt = udp(net, C[1], V, 2000, PORT)
    assert dp.test_run(bytes(pkt), ingress_ifindex=x0).action == XdpAction.TX  # rs0
    pkt = udp(net, RS[0], C[1], PORT, 2000)
    result = dp.test_run(bytes(pkt), ingress_ifindex=x0)
    assert result.action == XdpAction.PASS
    assert result.frame == with_macs(natted(pkt, src=V), pkt[Ether].src, pkt[Ether].dst)

    stats = dp.stats()
    assert (stats[Stat.FWD_FIB_TX], stats[Stat.FWD_NO_NEIGH_SWAP], stats[Stat.FWD_FIB_REDIRECT],
            stats[Stat.FWD_FIB_PASS]) == (2, 1, 1, 1)
    assert stats[Stat.TX_INGRESS] == 3 and stats[Stat.TX_EGRESS] == 2


@pytest.mark.parametrize("family", [4, 6])
def test_no_neighbour_on_another_interface_goes_to_the_kernel(ns: str, fib_plane: Dataplane,
                                                               family: int) -> None:
    dp, net = fib_plane, NETS[family]
    configure_plane(dp, family)
    x0 = interface_index("x0")
    gw = TOPOLOGY[family]["gw"]
    sh("ip", "-n", ns, "neigh", "del", gw, "dev", "y0")
    try:
        assert dp.test_run(bytes(udp(net, net.clients[0], net.vip, 1, PORT)),
                           ingress_ifindex=x0).action == XdpAction.TX
        result = dp.test_run(bytes(udp(net, net.real_servers[0], net.clients[0], PORT, 1)),
                             ingress_ifindex=x0)
        assert result.action == XdpAction.PASS
        assert dp.stats()[Stat.FWD_NO_NEIGH_PASS] == 1
        assert (net.ip(gw), interface_index("y0")) in dp.take_neighbour_misses()
    finally:
        sh("ip", "-n", ns, "neigh", "replace", gw, "lladdr", GW_MAC, "dev", "y0", "nud",
           "permanent")


@pytest.mark.parametrize("family", [4, 6])
def test_too_big_for_the_egress_and_no_route(ns: str, fib_plane: Dataplane, family: int) -> None:
    """Bigger than the egress MTU: the kernel gets it (to fragment it or to
    answer); no route: dropped. Neither is sent blindly."""
    dp, net = fib_plane, NETS[family]
    configure_plane(dp, family)
    x0 = interface_index("x0")
    C, V, RS = net.clients, net.vip, net.real_servers
    assert dp.test_run(bytes(udp(net, C[0], V, 1, PORT)), ingress_ifindex=x0).action == XdpAction.TX
    sh("ip", "-n", ns, "link", "set", "dev", "y0", "mtu", "1280")
    try:
        big = udp(net, RS[0], C[0], PORT, 1, payload=bytes(1300))
        result = dp.test_run(bytes(big), ingress_ifindex=x0)
        assert result.action == XdpAction.PASS
        assert Ether(result.frame)[Ether].dst == big[Ether].dst
        assert dp.stats()[Stat.FWD_FRAG_NEEDED] == 1
    finally:
        sh("ip", "-n", ns, "link", "set", "dev", "y0", "mtu", "1500")
    unreachable = "192.0.2.3" if family == 4 else "2001:db8:c::3"
    sh("ip", "-n", ns, "route", "add", "unreachable", unreachable)
    try:
        assert dp.test_run(bytes(udp(net, unreachable, V, 3, PORT)),
                           ingress_ifindex=x0).action == XdpAction.TX  # second client: rs1
        result = dp.test_run(bytes(udp(net, RS[1], unreachable, PORT, 3)), ingress_ifindex=x0)
        assert result.action == XdpAction.DROP
        assert dp.stats()[Stat.FWD_FIB_DROP] == 1
    finally:
        sh("ip", "-n", ns, "route", "del", "unreachable", unreachable)


def test_host_that_does_not_forward_gets_sbulbs_mac_swap(ns: str, fib_plane: Dataplane) -> None:
    """A one-armed sbulb host with forwarding off works as sbulb did."""
    dp, net = fib_plane, NETS[4]
    configure_plane(dp, 4)
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.x0.forwarding=0")
    try:
        pkt = udp(net, net.clients[0], net.vip, 1000, PORT)
        result = dp.test_run(bytes(pkt), ingress_ifindex=interface_index("x0"))
        assert result.action == XdpAction.TX
        assert result.frame == natted(pkt, dst=net.real_servers[0])
        assert dp.stats()[Stat.FWD_MAC_SWAP] == 1
    finally:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.x0.forwarding=1")


def test_mac_swap_mode_never_asks_the_fib(ns: str) -> None:
    dp = Dataplane(Limits(max_associations=64), forward="mac-swap")
    dp.load()
    try:
        assert "-DSBULB_FORWARD_FIB=0" in dp.cflags()
        net = NETS[4]
        configure_plane(dp, 4)
        pushns(ns)
        try:
            pkt = udp(net, net.clients[0], net.vip, 1000, PORT)
            result = dp.test_run(bytes(pkt), ingress_ifindex=interface_index("x0"))
        finally:
            popns()
        assert result.frame == natted(pkt, dst=net.real_servers[0])  # not RS0_MAC
        assert dp.stats()[Stat.FWD_MAC_SWAP] == 1
    finally:
        dp.close()
