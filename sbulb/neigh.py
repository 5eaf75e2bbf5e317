"""Netlink questions to the kernel: which addresses are this host's, and
resolving next hops.

Get the kernel to resolve next hops the data path met without a neighbour
entry (forward.h notes them): an RTM_NEWNEIGH with NTF_USE makes the kernel
start ARP / neighbour discovery for the address, as if it had a packet for
it. With --forward fib, a packet whose next hop is out of the interface it
came in has been sent with a MAC swap meanwhile; once the neighbour is
known, the FIB path takes over."""

from __future__ import annotations

import ipaddress
import logging
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sbulb.config import IPAddress

log = logging.getLogger(__name__)

NTF_USE = 0x01  # uapi linux/neighbour.h


def resolve(misses: Iterable[tuple[IPAddress, int]]) -> int:
    """Ask for each (address, ifindex); returns how many were asked. Never
    raises: a failure is logged (the next miss will ask again)."""
    asked = 0
    misses = list(misses)
    if not misses:
        return 0
    try:
        with IPRoute() as ipr:
            for address, ifindex in misses:
                try:
                    ipr.neigh("replace", dst=str(address), ifindex=ifindex, flags=NTF_USE,
                              state=0)
                    asked += 1
                    log.debug("neigh.resolve address=%s ifindex=%d", address, ifindex)
                except NetlinkError as e:
                    log.warning("neigh.resolve_failed address=%s ifindex=%d error=%s",
                                address, ifindex, e)
    except OSError as e:
        log.warning("neigh.resolve_failed error=%s", e)
    return asked


def local_addresses() -> set[IPAddress]:
    """The addresses configured on this network namespace's interfaces
    (empty if netlink cannot be asked: a warning less, nothing worse)."""
    found: set[IPAddress] = set()
    try:
        with IPRoute() as ipr:
            for message in ipr.get_addr():
                # IFA_LOCAL when there is one: on a point-to-point link
                # IFA_ADDRESS is the peer's (IPv6 has only IFA_ADDRESS)
                value = message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS")
                if value:
                    found.add(ipaddress.ip_address(value.split("%")[0]))
    except (OSError, NetlinkError, ValueError) as e:
        log.warning("neigh.addresses_failed error=%s", e)
    return found


def route_interface(address: IPAddress) -> int | None:
    """The interface (ifindex) this host's routes reach `address` through,
    or None if there is no route (or netlink cannot be asked)."""
    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=str(address))
    except (OSError, NetlinkError) as e:
        log.warning("neigh.route_failed address=%s error=%s", address, e)
        return None
    for route in routes:
        oif = route.get_attr("RTA_OIF")
        if oif:
            return int(oif)
    return None
