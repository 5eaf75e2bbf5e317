"""Packet builders for the packet tests: scapy makes both the input and the
exact expected output (checksums recomputed from scratch by scapy)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

MAC_NEIGHBOUR = "02:00:00:00:00:01"  # the router the balancer talks to
MAC_BALANCER = "02:00:00:00:00:02"

PORT = 5683
OTHER_PORT = 5684  # balanced too
UNBALANCED_PORT = 9999


@dataclass(frozen=True)
class Net:
    """Addresses of one family."""

    family: int
    vip: str
    real_servers: tuple[str, ...]
    clients: tuple[str, ...]
    stranger: str  # neither VIP nor real server

    def ip(self, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(text)

    @property
    def vip_ip(self):
        return self.ip(self.vip)

    def rs_ips(self, *indexes: int):
        return [self.ip(self.real_servers[i]) for i in indexes]


NETS = {
    4: Net(
        4,
        "10.0.0.1",
        ("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"),
        ("192.0.2.1", "192.0.2.2"),
        "10.0.0.99",
    ),
    6: Net(
        6,
        "2001:db8::1",
        ("2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8::5"),
        ("2001:db8:c::1", "2001:db8:c::2"),
        "2001:db8::99",
    ),
}


def udp(
    net: Net,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    payload: bytes = b"sbulb test payload",
    ttl: int = 64,
) -> Packet:
    """An Ethernet frame from the neighbour to the balancer."""
    if net.family == 4:
        ip = IP(src=src, dst=dst, ttl=ttl, id=4242)
    else:
        ip = IPv6(src=src, dst=dst, hlim=ttl)
    return Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER) / ip / UDP(sport=sport, dport=dport) / Raw(
        payload
    )


def natted(pkt: Packet, src: str | None = None, dst: str | None = None) -> bytes:
    """What the balancer must send for `pkt`: MACs swapped, an address
    rewritten, TTL / hop limit one lower, checksums valid."""
    out = Ether(bytes(pkt))
    out[Ether].src, out[Ether].dst = pkt[Ether].dst, pkt[Ether].src
    ip = out[IP] if IP in out else out[IPv6]
    if src is not None:
        ip.src = src
    if dst is not None:
        ip.dst = dst
    if IP in out:
        out[IP].ttl -= 1
        del out[IP].chksum
        if pkt[UDP].chksum != 0:
            del out[UDP].chksum
    else:
        out[IPv6].hlim -= 1
        del out[UDP].chksum
    return bytes(out)


def with_udp_checksum_zero(pkt: Packet) -> Packet:
    out = Ether(bytes(pkt))
    out[UDP].chksum = 0
    return Ether(bytes(out))


def payload_for_zero_checksum(net: Net, src: str, dst: str, sport: int, dport: int) -> bytes:
    """A payload whose UDP checksum, for these addresses, computes to 0 (so
    it must be sent as 0xffff). The last word cancels the sum of the rest."""
    base = b"zero-sum" + b"\0\0"
    frame = Ether(bytes(udp(net, src, dst, sport, dport, base)))
    check = frame[UDP].chksum  # ~sum with the last word 0
    payload = base[:-2] + check.to_bytes(2, "big")
    assert Ether(bytes(udp(net, src, dst, sport, dport, payload)))[UDP].chksum == 0xFFFF
    return payload


BIG_PAYLOAD = bytes(range(256)) * 12  # 3072 bytes: three fragments at MTU 1500


def big_udp(net: Net, src: str, dst: str, sport: int, dport: int, frag_id: int = 77,
            payload: bytes = BIG_PAYLOAD) -> Packet:
    """A datagram that needs fragments (IPv6: with the fragment header that
    fragment6 splits)."""
    if net.family == 4:
        return udp(net, src, dst, sport, dport, payload)
    return Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER) / IPv6(src=src, dst=dst, hlim=64) / (
        IPv6ExtHdrFragment(id=frag_id) / UDP(sport=sport, dport=dport) / Raw(payload)
    )


# ---- NetFlow v9 / IPFIX (telemetry mode)

# a template record: id 256, two fields (IPv4 source and destination address)
TEMPLATE_RECORD = struct.pack("!HHHHHH", 256, 2, 8, 4, 12, 4)
DATA_RECORD = bytes(8)  # one record of template 256


def netflow9(*flowsets: tuple[int, bytes], source_id: int = 7, sequence: int = 1) -> bytes:
    """A NetFlow v9 export datagram: its header, then (flowset id, body) each
    with its 4-byte flowset header."""
    body = b"".join(struct.pack("!HH", fid, 4 + len(data)) + data for fid, data in flowsets)
    return struct.pack("!HHIIII", 9, len(flowsets), 1000, 1_700_000_000, sequence,
                       source_id) + body


def ipfix(*sets: tuple[int, bytes], domain: int = 7, length: int | None = None) -> bytes:
    """An IPFIX message: its header (length = the message, unless given),
    then (set id, body) each with its 4-byte set header."""
    body = b"".join(struct.pack("!HH", sid, 4 + len(data)) + data for sid, data in sets)
    total = 16 + len(body) if length is None else length
    return struct.pack("!HHIII", 10, total, 1_700_000_000, 1, domain) + body


def fragments(frame: bytes) -> list[bytes]:
    """The frames a 1500-byte MTU link carries for this datagram (scapy
    computes the UDP checksum over the whole datagram, in the first one)."""
    pkt = Ether(frame)
    eth = Ether(src=pkt[Ether].src, dst=pkt[Ether].dst)
    if IP in pkt:
        return [bytes(eth / f) for f in fragment(pkt[IP], fragsize=1480)]
    return [bytes(eth / f) for f in fragment6(pkt[IPv6], 1500)]


def quoted(net: Net, src: str, dst: str, sport: int, dport: int, ttl: int = 60) -> bytes:
    """A datagram as an ICMP error quotes it (here whole: scapy then computes
    its UDP checksum right, and so can the expectation)."""
    ip = IP(src=src, dst=dst, ttl=ttl, id=999) if net.family == 4 else IPv6(src=src, dst=dst, hlim=ttl)
    return bytes(ip / UDP(sport=sport, dport=dport) / Raw(b"the quoted datagram"))


def icmp_error(net: Net, src: str, dst: str, quote: bytes, kind: str, macs_swapped: bool = False,
               ttl: int = 64) -> bytes:
    """An ICMP(v6) error of `kind` (unreachable, too-big, time-exceeded)
    from src to dst about `quote`, every checksum computed by scapy."""
    eth = Ether(src=MAC_BALANCER, dst=MAC_NEIGHBOUR) if macs_swapped else Ether(
        src=MAC_NEIGHBOUR, dst=MAC_BALANCER)
    if net.family == 4:
        icmp = {"unreachable": ICMP(type=3, code=3), "too-big": ICMP(type=3, code=4, nexthopmtu=1400),
                "time-exceeded": ICMP(type=11, code=0)}[kind]
        return bytes(eth / IP(src=src, dst=dst, ttl=ttl, id=555) / icmp / Raw(quote))
    icmp6 = {"unreachable": ICMPv6DestUnreach(code=4), "too-big": ICMPv6PacketTooBig(mtu=1400),
             "time-exceeded": ICMPv6TimeExceeded()}[kind]
    return bytes(eth / IPv6(src=src, dst=dst, hlim=ttl) / icmp6 / Raw(quote))
