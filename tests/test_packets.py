"""Packet tests: the compiled XDP program run with BPF_PROG_TEST_RUN on
scapy-built frames, outputs compared byte for byte (checksums included) with
scapy-built expectations.

A flow is an ordered list of steps run on fresh state: packets with their
expected verdict and output, real-server changes, and checks of the
association map and counters. Every flow runs for IPv4 and IPv6.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Iterator, Union

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from sbulb.config import Limits
from sbulb.consts import Stat, XdpAction
from sbulb.dataplane import Dataplane
from tests.conftest import require_root
from tests.packets import (
    MAC_BALANCER,
    icmp_error,
    quoted,
    big_udp,
    fragments,
    MAC_NEIGHBOUR,
    NETS,
    OTHER_PORT,
    PORT,
    UNBALANCED_PORT,
    Net,
    natted,
    payload_for_zero_checksum,
    udp,
    with_udp_checksum_zero,
)

TX, PASS, DROP = XdpAction.TX, XdpAction.PASS, XdpAction.DROP


@dataclass
class Send:
    """Run one frame; expect a verdict and, for TX, exactly `expect`.
    PASS must leave the frame untouched."""

    what: str
    packet: Packet
    action: XdpAction
    expect: bytes | None = None


@dataclass
class Servers:
    """Set the real servers (indexes into Net.real_servers), in this order."""

    indexes: tuple[int, ...]


@dataclass
class Assocs:
    """The association map holds exactly these: (client index, port) -> real server index."""

    expected: dict[tuple[int, int], int]


@dataclass
class Counts:
    """Counters: verdict slots not listed must be 0; listed slots must match."""

    expected: dict[Stat, int] = field(default_factory=dict)


Step = Union[Send, Servers, Assocs, Counts]


def flows(n: Net) -> dict[str, list[Step]]:
    V, RS, C = n.vip, n.real_servers, n.clients

    def ingress(client: int, sport: int, server: int, **kw) -> Send:
        pkt = udp(n, C[client], V, sport, kw.pop("dport", PORT), **kw)
        return Send(
            f"client{client}:{sport} -> VIP goes to rs{server}", pkt, TX, natted(pkt, dst=RS[server])
        )

    def egress(server: int, client: int, dport: int, **kw) -> Send:
        pkt = udp(n, RS[server], C[client], kw.pop("sport", PORT), dport, **kw)
        return Send(f"rs{server} -> client{client}:{dport} leaves from VIP", pkt, TX, natted(pkt, src=V))

    def passes(what: str, pkt: Packet) -> Send:
        return Send(what, pkt, PASS)

    def drops(what: str, pkt: Packet) -> Send:
        return Send(what, pkt, DROP)

    result: dict[str, list[Step]] = {
        "client_initiated": [
            ingress(0, 1000, 0),
            egress(0, 0, 1000),
            Assocs({(0, 1000): 0}),
            Counts({Stat.TX_INGRESS: 1, Stat.TX_EGRESS: 1, Stat.ASSOC_CLIENT: 1}),
        ],
        "stickiness": [
            ingress(0, 1000, 0),
            ingress(0, 1001, 1),
            ingress(0, 1000, 0, payload=b"second"),
            ingress(0, 1000, 0, payload=b"third"),
            ingress(1, 1000, 2),
            ingress(0, 1001, 1, payload=b"again"),
            Assocs({(0, 1000): 0, (0, 1001): 1, (1, 1000): 2}),
            Counts({Stat.TX_INGRESS: 6, Stat.ASSOC_CLIENT: 3}),
        ],
        "round_robin": [
            ingress(0, 2000, 0),
            ingress(0, 2001, 1),
            ingress(0, 2002, 2),
            ingress(0, 2003, 0),
            ingress(1, 2000, 1),
            ingress(1, 2001, 2),
            Counts({Stat.TX_INGRESS: 6, Stat.ASSOC_CLIENT: 6}),
        ],
        "same_ip_different_ports": [
            ingress(0, 3000, 0),
            ingress(0, 3001, 1),
            egress(1, 0, 3001),
            egress(0, 0, 3000),
            drops("rs1 may not answer client0:3000 (rs0's)", udp(n, RS[1], C[0], PORT, 3000)),
            Counts({Stat.TX_INGRESS: 2, Stat.TX_EGRESS: 2, Stat.DROP_NOT_ASSOCIATED: 1,
                    Stat.ASSOC_CLIENT: 2}),
        ],
        "every_balanced_port": [
            ingress(0, 1000, 0, dport=OTHER_PORT),
            egress(0, 0, 1000, sport=OTHER_PORT),
            Assocs({(0, 1000): 0}),
        ],
        "server_initiated": [
            egress(1, 0, 4000),
            Assocs({(0, 4000): 1}),
            ingress(0, 4000, 1),
            ingress(0, 4001, 0),  # the cursor did not move for rs1's association
            drops("rs2 may not speak to rs1's client", udp(n, RS[2], C[0], PORT, 4000)),
            Counts({Stat.TX_INGRESS: 2, Stat.TX_EGRESS: 1, Stat.DROP_NOT_ASSOCIATED: 1,
                    Stat.ASSOC_CLIENT: 1, Stat.ASSOC_SERVER: 1}),
        ],
        "remove_first_real_server": [
            ingress(0, 1, 0),
            ingress(0, 2, 1),
            ingress(0, 3, 2),
            Servers((1, 2)),
            ingress(0, 1, 2),  # re-picked: cursor 3 % 2 -> ring[1] = rs2
            ingress(0, 2, 1),
            ingress(0, 3, 2),
            passes("rs0 is no real server anymore", udp(n, RS[0], C[0], PORT, 1)),
            Assocs({(0, 1): 2, (0, 2): 1, (0, 3): 2}),
            Counts({Stat.TX_INGRESS: 6, Stat.PASS_NOT_BALANCED: 1, Stat.ASSOC_CLIENT: 3,
                    Stat.ASSOC_REPICK: 1}),
        ],
        "remove_last_real_server": [
            ingress(0, 1, 0),
            ingress(0, 2, 1),
            ingress(0, 3, 2),
            Servers((0, 1)),
            ingress(0, 3, 1),  # re-picked: cursor 3 % 2 -> ring[1] = rs1
            ingress(0, 1, 0),
            ingress(0, 2, 1),
            Assocs({(0, 1): 0, (0, 2): 1, (0, 3): 1}),
        ],
        "add_real_server": [
            Servers((0,)),
            ingress(0, 1, 0),
            Servers((0, 1)),
            ingress(0, 2, 1),
            ingress(0, 3, 0),
            ingress(0, 1, 0),
            Assocs({(0, 1): 0, (0, 2): 1, (0, 3): 0}),
        ],
        "update_real_servers": [
            Servers((0, 1)),
            ingress(0, 1, 0),
            ingress(0, 2, 1),
            Servers((1, 3)),
            ingress(0, 2, 1),  # rs1 stays: so does its client
            ingress(0, 1, 1),  # rs0 left: cursor 2 % 2 -> ring[0] = rs1
            ingress(0, 3, 3),
            Assocs({(0, 1): 1, (0, 2): 1, (0, 3): 3}),
        ],
        "server_takes_over_removed_servers_client": [
            ingress(0, 1, 0),
            Servers((1, 2)),
            egress(2, 0, 1),
            ingress(0, 1, 2),
            Assocs({(0, 1): 2}),
            Counts({Stat.TX_INGRESS: 2, Stat.TX_EGRESS: 1, Stat.ASSOC_CLIENT: 1,
                    Stat.ASSOC_REPICK: 1}),
        ],
        "no_real_server": [
            Servers(()),
            drops("nobody to send to", udp(n, C[0], V, 1, PORT)),
            Assocs({}),
            Counts({Stat.DROP_NO_REAL_SERVER: 1}),
        ],
        "unbalanced_traffic_untouched": [
            passes("VIP, unbalanced port", udp(n, C[0], V, 1, UNBALANCED_PORT)),
            passes("balanced port, not the VIP", udp(n, C[0], n.stranger, 1, PORT)),
            passes("real server, unbalanced source port", udp(n, RS[0], C[0], UNBALANCED_PORT, 1)),
            passes("stranger from a balanced port", udp(n, n.stranger, C[0], PORT, 1)),
            Assocs({}),
            Counts({Stat.PASS_NOT_BALANCED: 4}),
        ],
        "ttl": [
            passes("TTL 1 to the VIP goes to the kernel", udp(n, C[0], V, 1, PORT, ttl=1)),
            passes("TTL 0 too", udp(n, C[0], V, 1, PORT, ttl=0)),
            Assocs({}),
            ingress(0, 1, 0, ttl=2),
            passes("TTL 1 from a real server", udp(n, RS[0], C[0], PORT, 1, ttl=1)),
            egress(0, 0, 1, ttl=2),
            Counts({Stat.PASS_TTL: 3, Stat.TX_INGRESS: 1, Stat.TX_EGRESS: 1,
                    Stat.ASSOC_CLIENT: 1}),
        ],
        "checksum_computed_zero_sent_as_ffff": [
            ingress(0, 7, 0, payload=payload_for_zero_checksum(n, C[0], RS[0], 7, PORT)),
            egress(0, 0, 7, payload=payload_for_zero_checksum(n, V, C[0], PORT, 7)),
        ],
        "ethernet_padding": [
            Send(
                "a padded frame is balanced, padding kept",
                Ether(bytes(udp(n, C[0], V, 1, PORT, payload=b"x")) + bytes(20)),
                TX,
                natted(udp(n, C[0], V, 1, PORT, payload=b"x"), dst=RS[0]) + bytes(20),
            ),
        ],
        "fragments_both_ways": [
            *[Send(f"fragment {i} of a client's datagram", frame, TX, out) for i, (frame, out) in
              enumerate(zip(fragments(bytes(big_udp(n, C[0], V, 5000, PORT))),
                            fragments(natted(big_udp(n, C[0], V, 5000, PORT), dst=RS[0]))))],
            *[Send(f"fragment {i} of the server's answer", frame, TX, out) for i, (frame, out) in
              enumerate(zip(fragments(bytes(big_udp(n, RS[0], C[0], PORT, 5000, 78))),
                            fragments(natted(big_udp(n, RS[0], C[0], PORT, 5000, 78), src=V))))],
            Assocs({(0, 5000): 0}),
            Counts({Stat.TX_INGRESS: 3, Stat.TX_EGRESS: 3, Stat.ASSOC_CLIENT: 1}),
        ],
        "later_fragment_before_its_first_is_dropped": [
            drops("fragment 1 first: nobody knows where it goes",
                  Ether(fragments(bytes(big_udp(n, C[0], V, 5001, PORT)))[1])),
            *[Send(f"then fragment {i}", Ether(frame), TX, out) for i, (frame, out) in
              enumerate(zip(fragments(bytes(big_udp(n, C[0], V, 5001, PORT))),
                            fragments(natted(big_udp(n, C[0], V, 5001, PORT), dst=RS[0]))))],
            Counts({Stat.DROP_FRAG_UNKNOWN: 1, Stat.TX_INGRESS: 3, Stat.ASSOC_CLIENT: 1}),
        ],
        "fragments_not_ours_untouched": [
            *[passes(f"fragment {i} to a stranger", Ether(frame)) for i, frame in
              enumerate(fragments(bytes(big_udp(n, C[0], n.stranger, 1, PORT))))],
            passes("a later fragment to a stranger, first",
                   Ether(fragments(bytes(big_udp(n, C[0], n.stranger, 2, PORT, 79)))[2])),
            *[passes(f"fragment {i} to the VIP's unbalanced port", Ether(frame)) for i, frame in
              enumerate(fragments(bytes(big_udp(n, C[0], V, 3, UNBALANCED_PORT, 80))))],
            Assocs({}),
            Counts({Stat.PASS_NOT_BALANCED: 7}),
        ],
        "icmp_errors_from_a_server_reach_the_client_from_the_vip": [
            ingress(0, 1000, 0),
            *[Send(f"{kind} from rs0 about client0:1000's datagram",
                   Ether(icmp_error(n, RS[0], C[0], quoted(n, C[0], RS[0], 1000, PORT), kind)),
                   TX,
                   icmp_error(n, V, C[0], quoted(n, C[0], V, 1000, PORT), kind,
                              macs_swapped=True, ttl=63))
              for kind in ("unreachable", "too-big", "time-exceeded")],
            Send("too-big from a router before rs0: its source stays",
                 Ether(icmp_error(n, n.stranger, C[0], quoted(n, C[0], RS[0], 1000, PORT), "too-big")),
                 TX,
                 icmp_error(n, n.stranger, C[0], quoted(n, C[0], V, 1000, PORT), "too-big",
                            macs_swapped=True, ttl=63)),
            Counts({Stat.TX_INGRESS: 1, Stat.TX_ICMP_EGRESS: 4, Stat.ASSOC_CLIENT: 1}),
        ],
        "icmp_errors_about_our_answers_reach_the_server": [
            ingress(0, 1000, 0),
            ingress(0, 1001, 1),
            *[Send(f"{kind} to the VIP about our answer to client0:{port}",
                   Ether(icmp_error(n, n.stranger, V, quoted(n, V, C[0], PORT, port), kind)),
                   TX,
                   icmp_error(n, n.stranger, RS[server], quoted(n, RS[server], C[0], PORT, port),
                              kind, macs_swapped=True, ttl=63))
              for kind in ("too-big", "unreachable") for port, server in ((1000, 0), (1001, 1))],
            Counts({Stat.TX_INGRESS: 2, Stat.TX_ICMP_INGRESS: 4, Stat.ASSOC_CLIENT: 2}),
        ],
        "icmp_errors_not_ours_untouched": [
            ingress(0, 1000, 0),
            passes("about a client with no association",
                   Ether(icmp_error(n, RS[0], C[0], quoted(n, C[0], RS[0], 2000, PORT), "unreachable"))),
            passes("about a client of another server (no steering)",
                   Ether(icmp_error(n, RS[1], C[0], quoted(n, C[0], RS[1], 1000, PORT), "unreachable"))),
            passes("about an unbalanced port",
                   Ether(icmp_error(n, RS[0], C[0], quoted(n, C[0], RS[0], 1000, UNBALANCED_PORT),
                                    "unreachable"))),
            passes("to the VIP about a client nobody knows",
                   Ether(icmp_error(n, n.stranger, V, quoted(n, V, C[1], PORT, 5), "too-big"))),
            passes("TTL 1", Ether(icmp_error(n, RS[0], C[0], quoted(n, C[0], RS[0], 1000, PORT),
                                             "unreachable", ttl=1))),
            passes("quote cut inside the UDP header",
                   Ether(icmp_error(n, RS[0], C[0], quoted(n, C[0], RS[0], 1000, PORT)[:-23],
                                    "unreachable"))),
            Counts({Stat.TX_INGRESS: 1, Stat.ASSOC_CLIENT: 1, Stat.PASS_NOT_BALANCED: 4,
                    Stat.PASS_TTL: 1, Stat.PASS_MALFORMED: 1}),
        ],
        "not_ip_not_udp": [
            passes("ARP", Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER) / ARP()),
            passes("TCP to VIP:port", _l3(n, C[0], V) / TCP(sport=1, dport=PORT)),
            Counts({Stat.PASS_NOT_IP: 1, Stat.PASS_NOT_UDP: 1}),
        ],
    }
    if n.family == 4:
        result.update(_v4_flows(n, ingress, passes))
    else:
        result.update(_v6_flows(n, ingress, passes))
    return result


def _l3(n: Net, src: str, dst: str) -> Packet:
    eth = Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER)
    return eth / (IP(src=src, dst=dst) if n.family == 4 else IPv6(src=src, dst=dst))


def _v4_flows(n: Net, ingress, passes) -> dict[str, list[Step]]:
    V, RS, C = n.vip, n.real_servers, n.clients

    def with_options(length: int, sport: int) -> Packet:
        # NOPs then EOL: IHL = 5 + length / 4
        opts = [IPOption_NOP()] * (length - 1) + [IPOption_EOL()]
        return Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER) / IP(
            src=C[0], dst=V, ttl=64, options=opts
        ) / UDP(sport=sport, dport=PORT) / Raw(b"options")

    def options_case(length: int, sport: int, server: int) -> Send:
        pkt = Ether(bytes(with_options(length, sport)))
        assert pkt[IP].ihl == 5 + length // 4
        return Send(f"IHL {pkt[IP].ihl}", pkt, TX, natted(pkt, dst=RS[server]))

    zero = with_udp_checksum_zero(udp(n, C[0], V, 11, PORT))
    reply_zero = with_udp_checksum_zero(udp(n, RS[0], C[0], PORT, 11))
    frag_first = Ether(bytes(udp(n, C[0], V, 1, PORT, ttl=1)))
    frag_first[IP].flags = "MF"
    del frag_first[IP].chksum  # recomputed: a wrong one is malformed
    frag_later = Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER) / IP(
        src=C[0], dst=V, proto=17, frag=3, id=4242, ttl=1
    ) / Raw(b"later fragment")
    return {
        "ipv4_udp_checksum_zero_stays_zero": [
            Send("no checksum stays no checksum", zero, TX, natted(zero, dst=RS[0])),
            Send("also on the way back", reply_zero, TX, natted(reply_zero, src=V)),
        ],
        "ipv4_options": [
            options_case(4, 9, 0),
            options_case(40, 10, 1),
            Assocs({(0, 9): 0, (0, 10): 1}),
        ],
        "ipv4_fragment_ttl_expired": [
            passes("first fragment, TTL 1", Ether(bytes(frag_first))),
            passes("a later one follows it", Ether(bytes(frag_later))),
            Assocs({}),
            Counts({Stat.PASS_TTL: 2}),
        ],
        "ipv4_bad_header_length": [
            passes("IHL 4", Ether(bytes(udp(n, C[0], V, 1, PORT))[:14] + b"\x44"
                                  + bytes(udp(n, C[0], V, 1, PORT))[15:])),
            passes("IP total length beyond the frame", _retot(udp(n, C[0], V, 1, PORT), +8)),
            passes("IP total length short of UDP", _retot(udp(n, C[0], V, 1, PORT), -2)),
            Counts({Stat.PASS_MALFORMED: 3}),
        ],
    }


def _retot(pkt: Packet, delta: int) -> Packet:
    out = Ether(bytes(pkt))
    out[IP].len = len(out[IP]) + delta
    del out[IP].chksum
    return Ether(bytes(out))


def _v6_flows(n: Net, ingress, passes) -> dict[str, list[Step]]:
    V, RS, C = n.vip, n.real_servers, n.clients
    eth = Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER)

    def ext_case(what: str, ext: Packet, sport: int, server: int) -> Send:
        pkt = Ether(bytes(eth / IPv6(src=C[0], dst=V) / ext / UDP(sport=sport, dport=PORT)
                          / Raw(b"ext")))
        return Send(what, pkt, TX, natted(pkt, dst=RS[server]))
    zero = with_udp_checksum_zero(udp(n, C[0], V, 11, PORT))
    return {
        "ipv6_extension_headers_walked": [
            ext_case("hop-by-hop", IPv6ExtHdrHopByHop(), 21, 0),
            ext_case("destination options", IPv6ExtHdrDestOpt(), 22, 1),
            ext_case("routing, no segment left", IPv6ExtHdrRouting(addresses=[n.stranger], segleft=0),
                     23, 2),
            ext_case("hop-by-hop and destination options",
                     IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(), 24, 0),
            Counts({Stat.TX_INGRESS: 4, Stat.ASSOC_CLIENT: 4}),
        ],
        "ipv6_extension_headers_not_walked": [
            passes("routing with a segment left: the VIP is not the destination",
                   eth / IPv6(src=C[0], dst=V) / IPv6ExtHdrRouting(addresses=[n.stranger], segleft=1)
                   / UDP(sport=1, dport=PORT)),
            passes("AH", eth / IPv6(src=C[0], dst=V, nh=51) / Raw(bytes(24))),
            passes("more extension headers than we walk",
                   eth / IPv6(src=C[0], dst=V) / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                   / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                   / UDP(sport=1, dport=PORT)),
            passes("truncated extension header",
                   Ether(bytes(eth / IPv6(src=C[0], dst=V) / IPv6ExtHdrDestOpt()
                               / UDP(sport=1, dport=PORT))[:14 + 40 + 4])),
            Assocs({}),
            Counts({Stat.PASS_IPV6_EXT: 3, Stat.PASS_MALFORMED: 1}),
        ],
        "ipv6_udp_checksum_zero_is_invalid": [
            passes("checksum 0 is not allowed on IPv6", zero),
            Counts({Stat.PASS_MALFORMED: 1}),
        ],
        "ipv6_payload_length_mismatch": [
            passes("payload length beyond the frame", _v6_plen(udp(n, C[0], V, 1, PORT), +8)),
            Counts({Stat.PASS_MALFORMED: 1}),
        ],
        "ipv4_mapped_addresses_not_balanced": [
            passes("to ::ffff:VIP-like", udp(n, "::ffff:192.0.2.1", "::ffff:10.0.0.1", 1, PORT)),
            passes("from a mapped address", udp(n, "::ffff:10.0.0.3", C[0], PORT, 1)),
            Assocs({}),
            Counts({Stat.PASS_NOT_BALANCED: 2}),
        ],
        "icmpv6_error_quoting_a_first_fragment": [
            ingress(0, 1000, 0),
            Send("packet too big about the server's fragmented answer: to that server",
                 Ether(icmp_error(n, n.stranger, V, quoted_fragment(V, C[0], PORT, 1000), "too-big")),
                 TX,
                 icmp_error(n, n.stranger, RS[0], quoted_fragment(RS[0], C[0], PORT, 1000),
                            "too-big", macs_swapped=True, ttl=63)),
            passes("about a later fragment: no ports to match",
                   Ether(icmp_error(n, n.stranger, V, quoted_fragment(V, C[0], PORT, 1000, 8),
                                    "too-big"))),
            Counts({Stat.TX_INGRESS: 1, Stat.ASSOC_CLIENT: 1, Stat.TX_ICMP_INGRESS: 1,
                    Stat.PASS_NOT_BALANCED: 1}),
        ],
        "ipv6_fragments_with_destination_options_inside": [
            *[Send(f"fragment {i}", Ether(frame), TX, out) for i, (frame, out) in
              enumerate(zip(fragments(bytes(dstopt_big(n, C[0], V, 6000))),
                            fragments(natted(dstopt_big(n, C[0], V, 6000), dst=RS[0]))))],
            Counts({Stat.TX_INGRESS: 3, Stat.ASSOC_CLIENT: 1}),
        ],
        "ipv6_first_fragment_malformed_later_ones_follow_it": [
            *[passes(f"fragment {i} (UDP checksum 0: not ours to rewrite)", Ether(frame))
              for i, frame in enumerate(fragments(bytes(zero_sum_big(n, RS[0], C[0]))))],
            Counts({Stat.PASS_MALFORMED: 3}),
        ],
        "ipv6_later_fragments_of_other_protocols_pass": [
            passes("a TCP fragment to the VIP", eth / IPv6(src=C[0], dst=V)
                   / IPv6ExtHdrFragment(id=9, offset=100, nh=6) / Raw(b"tcp data")),
            Counts({Stat.PASS_NOT_UDP: 1}),
        ],
        "icmpv6_quoting_ipv4_mapped_addresses_untouched": [
            ingress(0, 1000, 0),
            passes("mapped quote", Ether(icmp_error(n, RS[0], C[0], bytes(
                IPv6(src="::ffff:192.0.2.1", dst="::ffff:10.0.0.2") / UDP(sport=1000, dport=PORT)),
                "unreachable"))),
            Counts({Stat.TX_INGRESS: 1, Stat.ASSOC_CLIENT: 1, Stat.PASS_NOT_BALANCED: 1}),
        ],
        "icmpv6_untouched": [
            passes("echo request", eth / IPv6(src=C[0], dst=V, nh=58) / Raw(b"\x80\x00" + bytes(6))),
            Counts({Stat.PASS_NOT_UDP: 1}),
        ],
    }


def dstopt_big(n: Net, src: str, dst: str, sport: int) -> Packet:
    """A fragmented datagram whose fragmentable part starts with
    destination options: later fragments name those, not UDP."""
    return Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER) / IPv6(src=src, dst=dst, hlim=64) / (
        IPv6ExtHdrFragment(id=33) / IPv6ExtHdrDestOpt() / UDP(sport=sport, dport=PORT)
        / Raw(bytes(range(256)) * 12))


def zero_sum_big(n: Net, src: str, dst: str) -> Packet:
    """A fragmented IPv6 datagram with a zero UDP checksum (RFC 6935
    tunnels): its first fragment is passed, and so must the rest be."""
    pkt = Ether(bytes(big_udp(n, src, dst, PORT, 8000, 34)))
    pkt[UDP].chksum = 0
    return Ether(bytes(pkt))


def quoted_fragment(src: str, dst: str, sport: int, dport: int, offset: int = 0) -> bytes:
    """The quote of an IPv6 fragment of a UDP datagram (the first one holds
    the UDP header)."""
    frag = IPv6ExtHdrFragment(id=5, m=1, offset=offset)
    body = UDP(sport=sport, dport=dport) / Raw(b"start of a big answer")
    if offset:
        body = Raw(b"the middle of a big answer")
    return bytes(IPv6(src=src, dst=dst, hlim=60) / frag / body)


def _v6_plen(pkt: Packet, delta: int) -> Packet:
    out = Ether(bytes(pkt))
    out[IPv6].plen = out[IPv6].plen + delta
    return Ether(bytes(out))


CASES = [
    pytest.param(family, steps, id=f"v{family}-{name}")
    for family, net in NETS.items()
    for name, steps in flows(net).items()
]


def configure(dp: Dataplane, net: Net, servers: tuple[int, ...] = (0, 1, 2)) -> None:
    dp.reset_state()
    dp.configure(net.vip_ip, [PORT, OTHER_PORT])
    dp.set_real_servers(net.rs_ips(*servers))


def _describe(frame: bytes) -> str:
    return Ether(frame).show2(dump=True)


@pytest.mark.parametrize("family,steps", CASES)
def test_flow(loaded: Dataplane, family: int, steps: list[Step]) -> None:
    net = NETS[family]
    configure(loaded, net)
    for step in steps:
        if isinstance(step, Servers):
            loaded.set_real_servers(net.rs_ips(*step.indexes))
        elif isinstance(step, Send):
            frame = bytes(step.packet)
            result = loaded.test_run(frame)
            assert result.action == step.action, step.what
            if step.action == PASS:
                assert result.frame == frame, f"{step.what}: a passed frame was changed"
            elif step.action == TX:
                assert step.expect is not None
                assert result.frame == step.expect, (
                    f"{step.what}\n--- got\n{_describe(result.frame)}\n"
                    f"--- expected\n{_describe(step.expect)}"
                )
        elif isinstance(step, Assocs):
            expected = {
                (net.ip(net.clients[c]), port): net.ip(net.real_servers[s])
                for (c, port), s in step.expected.items()
            }
            assert loaded.associations() == expected
        elif isinstance(step, Counts):
            stats = loaded.stats()
            for stat in Stat:
                if stat in step.expected:
                    assert stats[stat] == step.expected[stat], stat.name
                elif stat.is_verdict:
                    assert stats[stat] == 0, stat.name


def test_every_packet_is_counted_once(loaded: Dataplane) -> None:
    """The verdict slots add up to the packets run, whatever the flows did."""
    net = NETS[4]
    configure(loaded, net)
    frames = [
        udp(net, net.clients[0], net.vip, 1, PORT),
        udp(net, net.real_servers[0], net.clients[0], PORT, 1),
        udp(net, net.real_servers[1], net.clients[0], PORT, 1),
        udp(net, net.clients[0], net.vip, 1, UNBALANCED_PORT),
        Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER) / ARP(),
    ]
    for frame in frames:
        loaded.test_run(bytes(frame))
    stats = loaded.stats()
    assert sum(v for s, v in stats.items() if s.is_verdict) == len(frames)


def _truncations(frame: bytes) -> Iterator[bytes]:
    # Below 14 bytes the kernel refuses to run an XDP program at all.
    for length in range(14, len(frame)):
        yield frame[:length]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_truncated_frames_pass_untouched(loaded: Dataplane, family: int, direction: str) -> None:
    """Cut at every byte, through every header boundary: never a fault, never
    a rewrite, never an association."""
    net = NETS[family]
    configure(loaded, net)
    if direction == "ingress":
        full = bytes(udp(net, net.clients[0], net.vip, 1, PORT, payload=b"12345678"))
    else:
        full = bytes(udp(net, net.real_servers[0], net.clients[0], PORT, 1, payload=b"12345678"))
    count = 0
    for frame in _truncations(full):
        result = loaded.test_run(frame)
        assert result.action == PASS, f"length {len(frame)}"
        assert result.frame == frame, f"length {len(frame)}"
        count += 1
    assert loaded.associations() == {}
    assert loaded.stats()[Stat.PASS_MALFORMED] == count
    # and the whole frame still works
    assert loaded.test_run(full).action == TX


@pytest.fixture(scope="module")
def tiny_lru() -> Iterator[Dataplane]:
    require_root()
    dp = Dataplane(Limits(max_associations=8), forward="mac-swap")
    dp.load()
    try:
        yield dp
    finally:
        dp.close()


def test_lru_eviction_with_tiny_max_associations(tiny_lru: Dataplane) -> None:
    """-ma 8: the map never holds more than 8; a new client always gets an
    association; the least recently used ones are evicted first."""
    net = NETS[4]
    configure(tiny_lru, net, servers=(0, 1))
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # the kernel's LRU lists are per CPU
    try:

        def send(port: int) -> XdpAction:
            return tiny_lru.test_run(bytes(udp(net, net.clients[0], net.vip, port, PORT))).action

        for port in range(1, 9):
            assert send(port) == TX
        assert {p for (_, p) in tiny_lru.associations()} == set(range(1, 9))
        assert send(1) == TX  # client 1 is now the most recently used
        for port in range(100, 104):
            assert send(port) == TX
            ports = {p for (_, p) in tiny_lru.associations()}
            assert len(ports) <= 8
            assert port in ports and 1 in ports
        assert 2 not in ports, "the least recently used association should be gone"
        assert send(2) == TX  # an evicted client comes back: new association
        assert 2 in {p for (_, p) in tiny_lru.associations()}
    finally:
        os.sched_setaffinity(0, affinity)


def test_events_report_association_changes_and_drops() -> None:
    """With events compiled in (log level TRACE), the ring buffer reports what
    the data path did, and the types decode through bcc."""
    require_root()
    from sbulb.consts import EVENTS_ALL, EventType

    dp = Dataplane(Limits(), events=EVENTS_ALL, forward="mac-swap")
    dp.load()
    try:
        net = NETS[6]
        configure(dp, net)
        c0, rs0, rs1 = net.ip(net.clients[0]), *net.rs_ips(0, 1)
        dp.test_run(bytes(udp(net, net.clients[0], net.vip, 1000, PORT)))
        dp.test_run(bytes(udp(net, net.clients[0], net.vip, 1000, PORT)))
        dp.test_run(bytes(udp(net, net.real_servers[1], net.clients[0], PORT, 1000)))
        dp.test_run(bytes(udp(net, net.real_servers[1], net.clients[0], PORT, 2000)))
        events = dp.poll_events()
        summary = [(e.type, e.client, e.client_port, e.port, e.server, e.other) for e in events]
        assert summary == [
            (EventType.ASSOC_CLIENT, c0, 1000, PORT, rs0, None),
            (EventType.REUSED_INGRESS, c0, 1000, PORT, rs0, None),
            (EventType.DROP_NOT_ASSOCIATED, c0, 1000, PORT, rs1, rs0),
            (EventType.ASSOC_SERVER, c0, 2000, PORT, rs1, None),
        ]
        assert dp.poll_events() == []
    finally:
        dp.close()


def test_default_build_has_no_event_code(loaded: Dataplane) -> None:
    """Events are compiled out unless the log level asks for them."""
    assert loaded.events == 0
    assert "-DSBULB_EVENTS=0" in loaded.cflags()
    with pytest.raises(KeyError):
        loaded._table("sbulb_events")
    # ICMP reaching the VIP is not ours either
    net = NETS[4]
    configure(loaded, net)
    frame = bytes(_l3(net, net.clients[0], net.vip) / ICMP())
    assert loaded.test_run(frame).action == PASS


def test_replace_every_server_at_the_limit(loaded: Dataplane) -> None:
    """-mrs servers replaced by -mrs others in one reload: new servers are
    written before old ones go, and there is room for both."""
    net = NETS[4]
    configure(loaded, net)
    limit = loaded.limits.max_real_servers
    first = [net.ip(f"10.0.1.{i}") for i in range(1, limit + 1)]
    second = [net.ip(f"10.0.2.{i}") for i in range(1, limit + 1)]
    mixed = second[: limit // 2] + first[: limit - limit // 2]
    port = 40000
    for servers in (first, second, mixed, first[:1], second):
        change = loaded.set_real_servers(servers)
        assert set(loaded.real_servers()) == set(servers) and loaded.ring() == servers
        assert set(change.added) | set(change.kept) == set(servers)
        for _ in servers:  # new clients land on the new list only
            port += 1
            out = Ether(loaded.test_run(bytes(udp(net, net.clients[1], net.vip, port, PORT))).frame)
            assert net.ip(out[IP].dst) in servers


def test_reload_writes_the_cycle_into_the_other_ring_half(loaded: Dataplane) -> None:
    """A packet that read the service descriptor just before a reload still
    walks a complete cycle: the new cycle goes into the ring half not in
    use, the descriptor switches, and the old half is left as it was."""
    net = NETS[4]
    configure(loaded, net, servers=(0, 1, 2, 3))
    service = loaded._layout.ids["default"]
    svc, ring = loaded._table("sbulb_svc"), loaded._table("sbulb_ring")

    def descriptor() -> tuple[int, int]:
        return struct.unpack_from("II", bytes(svc[svc.Key(service)]), 16)

    def cycle(base: int, length: int) -> list[int]:
        return [ring[ring.Key(base + i)].value for i in range(length)]

    old_base, old_len = descriptor()
    old_cycle = cycle(old_base, old_len)
    assert old_len == 4 and len(set(old_cycle)) == 4
    loaded.set_real_servers(net.rs_ips(1))
    new_base, new_len = descriptor()
    assert new_base != old_base and new_len == 1
    assert cycle(old_base, old_len) == old_cycle
    assert loaded.ring() == [net.ip(net.real_servers[1])]
    assert cycle(new_base, 1)[0] in old_cycle  # the server that stays keeps its slot


@pytest.mark.parametrize("family", [4, 6])
def test_only_our_fragments_are_tracked(loaded: Dataplane, family: int) -> None:
    """The fragment map remembers datagrams to the VIP or from a real
    server, not the rest of the traffic a host sees."""
    net = NETS[family]
    configure(loaded, net)
    for frame in fragments(bytes(big_udp(net, net.clients[0], net.stranger, 1, PORT))):
        assert loaded.test_run(frame).action == PASS
    assert loaded.fragments_tracked() == 0
    for frame in fragments(bytes(big_udp(net, net.clients[0], net.vip, 1, PORT))):
        assert loaded.test_run(frame).action == TX
    assert loaded.fragments_tracked() == 1


def test_weights_split_new_clients_smoothly(loaded: Dataplane) -> None:
    """3:1 over 400 new clients: 300/100, interleaved a b a a."""
    from sbulb.config import RealServer

    net = NETS[4]
    configure(loaded, net)
    a, b = net.rs_ips(0, 1)
    loaded.set_real_servers([RealServer(a, 3), RealServer(b, 1)])
    assert loaded.ring() == [a, b, a, a]
    picks = []
    for port in range(1, 401):
        out = Ether(loaded.test_run(bytes(udp(net, net.clients[0], net.vip, port, PORT))).frame)
        picks.append(net.ip(out[IP].dst))
    assert picks[:8] == [a, b, a, a, a, b, a, a]
    assert (picks.count(a), picks.count(b)) == (300, 100)


def test_drained_server_keeps_its_clients_and_gets_no_new_one(loaded: Dataplane) -> None:
    from sbulb.config import RealServer

    net = NETS[6]
    configure(loaded, net)
    rs0, rs1 = net.rs_ips(0, 1)
    loaded.set_real_servers([RealServer(rs0), RealServer(rs1)])
    run = lambda frame: loaded.test_run(bytes(frame))  # noqa: E731
    assert run(udp(net, net.clients[0], net.vip, 1, PORT)).action == TX  # -> rs0
    loaded.set_real_servers([RealServer(rs0, 0), RealServer(rs1)])
    assert loaded.ring() == [rs1] and set(loaded.real_servers()) == {rs0, rs1}
    for port in range(2, 12):  # new clients: rs1 only
        out = Ether(run(udp(net, net.clients[0], net.vip, port, PORT)).frame)
        assert net.ip(out[IPv6].dst) == rs1
    # rs0's client stays with it, both ways, and rs0 may still start a conversation
    out = Ether(run(udp(net, net.clients[0], net.vip, 1, PORT)).frame)
    assert net.ip(out[IPv6].dst) == rs0
    assert run(udp(net, net.real_servers[0], net.clients[0], PORT, 1)).action == TX
    assert run(udp(net, net.real_servers[0], net.clients[1], PORT, 7)).action == TX
    assert loaded.associations()[(net.ip(net.clients[1]), 7)] == rs0


def test_fragment_verdicts_expire() -> None:
    """IP ids repeat: a later fragment must not follow an old datagram's
    verdict. Built with a 0 ns lifetime, every remembered verdict is stale."""
    require_root()
    dp = Dataplane(Limits(max_associations=64), forward="mac-swap",
                   defines={"SBULB_FRAG_TIMEOUT_NS": 0})
    dp.load()
    try:
        net = NETS[4]
        configure(dp, net)
        frames = fragments(bytes(big_udp(net, net.clients[0], net.vip, 1, PORT)))
        assert dp.test_run(frames[0]).action == TX
        assert dp.test_run(frames[1]).action == DROP
        assert dp.stats()[Stat.DROP_FRAG_UNKNOWN] == 1
    finally:
        dp.close()


@pytest.mark.parametrize("family", [4, 6])
def test_traffic_counted_per_server_and_direction(loaded: Dataplane, family: int) -> None:
    from sbulb.dataplane import Traffic

    net = NETS[family]
    configure(loaded, net)
    rs0, rs1, rs2 = net.rs_ips(0, 1, 2)
    to0 = bytes(udp(net, net.clients[0], net.vip, 1, PORT, payload=b"x" * 10))
    from0 = bytes(udp(net, net.real_servers[0], net.clients[0], PORT, 1, payload=b"y" * 30))
    for _ in range(3):
        assert loaded.test_run(to0).action == TX
    for _ in range(2):
        assert loaded.test_run(from0).action == TX
    to1 = bytes(udp(net, net.clients[0], net.vip, 2, PORT))
    assert loaded.test_run(to1).action == TX
    traffic = loaded.server_traffic()
    assert traffic[rs0] == Traffic(3, 3 * len(to0), 2, 2 * len(from0))
    assert traffic[rs1] == Traffic(1, len(to1), 0, 0)
    assert traffic[rs2] == Traffic()
    # every fragment counts, the later ones too (they carry no port)
    frames = fragments(bytes(big_udp(net, net.clients[1], net.vip, 9, PORT)))
    for frame in frames:
        assert loaded.test_run(frame).action == TX  # third new client: rs2
    assert loaded.server_traffic()[rs2] == Traffic(len(frames), sum(map(len, frames)), 0, 0)
    # a removed server's slot starts from zero for the next one
    loaded.set_real_servers(net.rs_ips(1, 2))
    loaded.set_real_servers(net.rs_ips(1, 2, 3))
    assert loaded.server_traffic()[net.ip(net.real_servers[3])] == Traffic()
