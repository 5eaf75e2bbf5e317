"""The benchmark's lab: one link, as a one-armed load balancer sees it.

    ns <id>-lb  [lbw<hex>] ═══ veth ═══ [netwire]  ns <id>-net
    VIP 10.97.0.1 (lo)                   real servers 10.98.1.1, 10.98.1.2
    10.98.0.1/16                         10.98.0.2/16, a socket client 10.98.2.1
                                         generated clients 10.99.0.0/16

Everything a balancer handles arrives on its interface (lbw<hex>, "lbwire"
below) and leaves through it again (XDP_TX, or the kernel routing back out
of the same interface), as on a one-armed load balancer. The generator
injects frames into lbwire's receive ring from the net side
(BPF_PROG_TEST_RUN live frames on netwire, CPU 0); an XDP counter on
netwire counts what arrives for each destination.

lbwire's NAPI runs threaded, pinned to CPU 1: the balancer's data path has
that CPU and the generator the other. netwire's NAPI, which lbwire's
transmits schedule, runs there too (in softirq): the counter and the return
of the generator's pages to its pool, a fixed cost per packet for every
case. Given a thread of its own on CPU 0, it starves behind the generator,
which never sleeps. A veth only delivers frames
sent to it by XDP when its receiving end has NAPI: an XDP program attached in
native mode (every case attaches one; for the kernel's and userspace's
cases a two-instruction XDP_PASS), or GRO on (the generic XDP case).
"""

from __future__ import annotations

import os
import re
import uuid
from ipaddress import IPv4Address
from pathlib import Path
from typing import Callable

from sbulb.lab import PREFIX, cleanup_stale, forget_pins, in_ns, sh

NET_IF = "netwire"
VIP = IPv4Address("10.97.0.1")
LB_ADDRESS = IPv4Address("10.98.0.1")
NET_ADDRESS = IPv4Address("10.98.0.2")
SOCKET_CLIENT = IPv4Address("10.98.2.1")
CLIENT_BASE = IPv4Address("10.99.0.0")
PREFIX_LEN = 16
PORT = 5683
BALANCER_CPU = 1


def real_servers(count: int) -> list[IPv4Address]:
    return [IPv4Address(f"10.98.1.{i + 1}") for i in range(count)]


class BenchLab:
    def __init__(self, servers: int = 2, say: Callable[[str], None] = print) -> None:
        self.id = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lb_ns = f"{self.id}-lb"
        # the balancer's interface: a name of this lab's own, so that its
        # NAPI kernel thread (napi/<name>-<id>, host-wide) is told apart
        self.lb_if = f"lbw{self.id[-6:]}"
        self.net_ns = f"{self.id}-net"
        self.servers = real_servers(servers)
        self.say = say
        self._namespaces: list[str] = []
        self.lb_mac = ""
        self.net_mac = ""

    def __enter__(self) -> "BenchLab":
        try:
            cleanup_stale()
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self._namespaces):
            forget_pins(ns)
            sh("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()

    def _build(self) -> None:
        for ns in (self.lb_ns, self.net_ns):
            sh("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
            # IPv4 only: no neighbour discovery or MLD chatter on the link,
            # which the ceilings would count
            for key in ("net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"):
                in_ns(ns, "sysctl", "-qw", key)
        sh("ip", "-n", self.lb_ns, "link", "add", self.lb_if, "type", "veth", "peer", "name", NET_IF,
           "netns", self.net_ns)
        for ns, ifname in ((self.lb_ns, self.lb_if), (self.net_ns, NET_IF)):
            # a partial checksum left by transmit offload would be corrupted
            # by any NAT that updates it incrementally
            in_ns(ns, "ethtool", "-K", ifname, "tx", "off")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        net = f"/{PREFIX_LEN}"
        sh("ip", "-n", self.lb_ns, "addr", "add", f"{LB_ADDRESS}{net}", "dev", self.lb_if)
        sh("ip", "-n", self.lb_ns, "addr", "add", f"{VIP}/32", "dev", "lo")
        sh("ip", "-n", self.lb_ns, "route", "add", f"{CLIENT_BASE}{net}", "via", str(NET_ADDRESS))
        for address in (NET_ADDRESS, *self.servers, SOCKET_CLIENT):
            sh("ip", "-n", self.net_ns, "addr", "add", f"{address}{net}", "dev", NET_IF)
        sh("ip", "-n", self.net_ns, "route", "add", f"{VIP}/32", "via", str(LB_ADDRESS))
        # the balancer routes: forwarding on; no redirects (one-armed, every
        # forwarded packet leaves where it came in) and no reverse path filter
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.default.send_redirects=0",
                    f"net.ipv4.conf.{self.lb_if}.send_redirects=0",
                    "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{self.lb_if}.rp_filter=0"):
            in_ns(self.lb_ns, "sysctl", "-qw", key)
        # the far end takes, when the sample check lets them through, frames
        # from generated clients (sources it has no route back to) and from
        # its own socket client (a source that is local there)
        for key in ("net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{NET_IF}.rp_filter=0",
                    "net.ipv4.conf.all.accept_local=1", f"net.ipv4.conf.{NET_IF}.accept_local=1"):
            in_ns(self.net_ns, "sysctl", "-qw", key)
        self.lb_mac = in_ns(self.lb_ns, "cat", f"/sys/class/net/{self.lb_if}/address").stdout.strip()
        self.net_mac = in_ns(self.net_ns, "cat", f"/sys/class/net/{NET_IF}/address").stdout.strip()
        self.say(f"lab: namespaces {self.lb_ns} and {self.net_ns}, one veth "
                 f"({self.lb_if} <-> {NET_IF}), VIP {VIP}, real servers "
                 f"{', '.join(map(str, self.servers))}")

    # -- the balancer's CPU

    def set_gro(self, on: bool) -> None:
        in_ns(self.lb_ns, "ethtool", "-K", self.lb_if, "gro", "on" if on else "off")

    def napi_threads(self) -> set[int]:
        return set(napi_threads(self.lb_if))

    def pin_napi(self, known: set[int]) -> int:
        """Run the balancer interface's NAPI in a thread of its own on
        BALANCER_CPU; its thread id. Needs NAPI (an XDP program or GRO) to
        be there first; a new attachment makes a new thread, so call it
        after each, with the threads `known` before it."""
        in_ns(self.lb_ns, "sh", "-c", f"echo 1 > /sys/class/net/{self.lb_if}/threaded")
        threads = napi_threads(self.lb_if)
        if not threads:
            raise RuntimeError(f"no NAPI thread for {self.lb_if}")
        for tid in threads:
            os.sched_setaffinity(tid, {BALANCER_CPU})
        new = [tid for tid in threads if tid not in known]
        return (new or threads)[-1]

    def servers_resolved(self) -> bool:
        """Whether the balancer knows every real server's MAC."""
        valid = ("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT")
        table = in_ns(self.lb_ns, "ip", "-4", "neigh", "show", "dev", self.lb_if).stdout
        known = {line.split()[0] for line in table.splitlines()
                 if line.split() and line.split()[-1] in valid}
        return all(str(server) in known for server in self.servers)


def napi_threads(ifname: str) -> list[int]:
    """Kernel threads named napi/<ifname>-<id> (comm is cut at 15 bytes:
    ifname is at most 9 for the prefix to be whole)."""
    name = f"napi/{ifname}-"[:15]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(name) and re.fullmatch(r"napi/.*", comm):
            found.append(int(entry.name))
    return sorted(found)
