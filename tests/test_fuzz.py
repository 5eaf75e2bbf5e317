"""Property-based fuzzing of the XDP program through BPF_PROG_TEST_RUN, with
random frames, structured UDP packets with random fields, fragmented
datagrams (in any order, behind IPv6 extension headers) and mutated valid
packets. Whatever comes in:

- a frame that is not rewritten comes out unchanged (XDP_PASS) or is dropped;
- a rewritten frame (XDP_TX) differs from its input only in the MACs
  (swapped), one address (VIP -> real server or real server -> VIP), the
  TTL / hop limit (one lower) and the checksums; its IPv4 header checksum is
  valid exactly when the input's was, and its UDP checksum moved by exactly
  the address change (RFC 1624, computed here), so a whole datagram's is
  valid exactly when the input's was (IPv4 "no checksum" stays 0);
- a translated ICMP error keeps every checksum (outer IPv4, ICMP, quoted
  IPv4, quoted UDP) exactly as valid as it came in;
- only rewritten traffic may add associations.

By default each property runs SBULB_FUZZ_EXAMPLES=300 examples (well under a
minute in all); `SBULB_FUZZ_EXAMPLES=20000 make test PYTEST_ARGS=-kfuzz`
runs a long campaign.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_EOL, IPOption_NOP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sbulb.config import Limits
from sbulb.consts import XdpAction
from sbulb.dataplane import Dataplane
from tests.conftest import require_root
from tests.packets import (
    MAC_BALANCER,
    MAC_NEIGHBOUR,
    NETS,
    OTHER_PORT,
    PORT,
    UNBALANCED_PORT,
    icmp_error,
    quoted,
    udp,
)

EXAMPLES = int(os.environ.get("SBULB_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written to the tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
SERVERS = (0, 1, 2)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[dict[int, Dataplane]]:
    """One program per family, VIP and 3 real servers set, small LRUs."""
    require_root()
    planes = {}
    try:
        for family, net in NETS.items():
            dp = Dataplane(Limits(max_ports=4, max_real_servers=8, max_associations=512),
                           forward="mac-swap")  # no host FIB in the way
            planes[family] = dp
            dp.load()
            dp.configure(net.vip_ip, [PORT, OTHER_PORT])
            dp.set_real_servers(net.rs_ips(*SERVERS))
        yield planes
    finally:
        for dp in planes.values():
            dp.close()


# ---- headers and checksums, found independently of scapy and the program


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_header_ok(frame: bytes) -> bool:
    ihl = (frame[14] & 0x0F) * 4
    return ones_sum(frame[14:14 + ihl]) == 0xFFFF


@dataclass
class Layout:
    """Where things are in an IP/UDP frame: header offsets, and the UDP
    header's unless the frame is a later fragment."""

    v4: bool
    ttl: int
    src: slice
    dst: slice
    udp: int | None
    fragment: bool


def layout(frame: bytes) -> Layout | None:
    """The layout of a UDP frame, or None if it holds no UDP."""
    if frame[12:14] == b"\x08\x00":
        if frame[23] != 17:
            return None
        ihl = (frame[14] & 0x0F) * 4
        frag = struct.unpack_from("!H", frame, 20)[0]
        later = frag & 0x1FFF != 0
        return Layout(True, 22, slice(26, 30), slice(30, 34), None if later else 14 + ihl,
                      frag & 0x3FFF != 0)
    nh, off, is_fragment = frame[20], 54, False
    for _ in range(8):
        if nh in (0, 43, 60):
            nh, off = frame[off], off + (frame[off + 1] + 1) * 8
        elif nh == 44:
            is_fragment = True
            if struct.unpack_from("!H", frame, off + 2)[0] & 0xFFF8:
                return Layout(False, 21, slice(22, 38), slice(38, 54), None, True)
            nh, off = frame[off], off + 8
        else:
            break
    if nh != 17:
        return None
    return Layout(False, 21, slice(22, 38), slice(38, 54), off, is_fragment)


def udp_ok(frame: bytes, lay: Layout) -> bool:
    """The UDP checksum of a whole datagram is valid."""
    assert lay.udp is not None
    length = struct.unpack_from("!H", frame, lay.udp + 4)[0]
    datagram = frame[lay.udp:lay.udp + length]
    if lay.v4:
        pseudo = frame[26:34] + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = frame[22:54] + struct.pack("!IxxxB", length, 17)
    return ones_sum(pseudo + datagram) == 0xFFFF


def expected_udp_check(old: int, old_addr: bytes, new_addr: bytes) -> int:
    """RFC 1624 eqn. 3, computed here: HC' = ~(~HC + ~m + m'); 0 is sent as
    0xffff."""
    total = (~old & 0xFFFF) + ones_sum(new_addr) + (~ones_sum(old_addr) & 0xFFFF)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


# ---- the properties


def check(dp: Dataplane, family: int, frame: bytes) -> None:
    if len(frame) < 14:
        return  # the kernel runs no XDP program on such frames
    before = dp.associations()
    result = dp.test_run(frame)
    assert result.action in (XdpAction.PASS, XdpAction.DROP, XdpAction.TX)
    if result.action != XdpAction.TX:
        assert dp.associations() == before, "unbalanced traffic changed the associations"
        if result.action == XdpAction.PASS:
            assert result.frame == frame, "a passed frame was modified"
        return
    if icmp_offset(frame) is not None:
        check_icmp_rewrite(family, frame, result.frame)
    else:
        check_rewrite(family, frame, result.frame)


def icmp_offset(frame: bytes) -> int | None:
    """Where the ICMP(v6) header starts, if the frame is ICMP (no
    extension headers: that is what the generators make)."""
    if frame[12:14] == b"\x08\x00" and frame[23] == 1:
        return 14 + (frame[14] & 0x0F) * 4
    if frame[12:14] == b"\x86\xdd" and frame[20] == 58:
        return 54
    return None


def icmp_ok(frame: bytes) -> bool:
    off = icmp_offset(frame)
    assert off is not None
    if frame[12:14] == b"\x08\x00":
        end = 14 + struct.unpack_from("!H", frame, 16)[0]
        return ones_sum(frame[off:end]) == 0xFFFF
    length = struct.unpack_from("!H", frame, 18)[0]
    pseudo = frame[22:54] + struct.pack("!IxxxB", length, 58)
    return ones_sum(pseudo + frame[off:54 + length]) == 0xFFFF


def check_icmp_rewrite(family: int, inp: bytes, out: bytes) -> None:
    """A translated error: same length, MACs swapped, TTL one lower, one
    outer and one quoted address now the VIP or a real server, and every
    checksum (outer IPv4, ICMP, quoted IPv4, quoted UDP) valid exactly when
    it was."""
    net = NETS[family]
    ours = {net.vip_ip.packed} | {net.ip(net.real_servers[i]).packed for i in SERVERS}
    assert len(out) == len(inp)
    assert out[0:6] == inp[6:12] and out[6:12] == inp[0:6], "MACs not swapped"
    off = icmp_offset(inp)
    assert off is not None and icmp_offset(out) == off
    v4 = family == 4
    ttl = 22 if v4 else 21
    assert out[ttl] == inp[ttl] - 1 and inp[ttl] >= 2
    alen = 4 if v4 else 16
    q = off + 8  # the quoted IP header
    qsrc = slice(q + 12, q + 16) if v4 else slice(q + 8, q + 24)
    qdst = slice(q + 16, q + 20) if v4 else slice(q + 24, q + 40)
    outer = [slice(26, 30), slice(30, 34)] if v4 else [slice(22, 38), slice(38, 54)]
    changed_quoted = [sl for sl in (qsrc, qdst) if inp[sl] != out[sl]]
    assert len(changed_quoted) == 1 and out[changed_quoted[0]] in ours
    assert all(len(out[sl]) == alen for sl in outer)
    if v4:
        assert ipv4_header_ok(out) == ipv4_header_ok(inp), "outer IP checksum"
        qihl = (inp[q] & 0x0F) * 4
        quoted_ok = ones_sum(inp[q:q + qihl]) == 0xFFFF
        assert (ones_sum(out[q:q + qihl]) == 0xFFFF) == quoted_ok, "quoted IP checksum"
        qudp = q + qihl
    else:
        qudp = q + 40
    assert icmp_ok(out) == icmp_ok(inp), "ICMP checksum"
    old = int.from_bytes(inp[qudp + 6:qudp + 8], "big")
    new = int.from_bytes(out[qudp + 6:qudp + 8], "big")
    if old == 0 and v4:
        assert new == 0
    else:
        sl = changed_quoted[0]
        assert new == expected_udp_check(old, inp[sl], out[sl]), "quoted UDP checksum"


def check_rewrite(family: int, inp: bytes, out: bytes) -> None:
    net = NETS[family]
    vip = net.vip_ip.packed
    servers = {net.ip(net.real_servers[i]).packed for i in SERVERS}
    assert len(out) == len(inp)
    assert out[0:6] == inp[6:12] and out[6:12] == inp[0:6], "MACs not swapped"
    lay = layout(inp)
    assert lay is not None, "only UDP (or its later fragments) is rewritten"
    assert layout(out) == lay
    src, dst, ttl = lay.src, lay.dst, lay.ttl
    assert out[ttl] == inp[ttl] - 1 and inp[ttl] >= 2, "TTL / hop limit not one lower"
    ingress = inp[dst] == vip and out[dst] in servers and out[src] == inp[src]
    egress = inp[src] in servers and out[src] == vip and out[dst] == inp[dst]
    assert ingress or egress, "not a VIP <-> real server rewrite"
    # nothing else changed but the checksums
    changed = set(range(0, 12)) | {ttl} | set(range(src.start, src.stop))
    changed |= set(range(dst.start, dst.stop))
    if lay.v4:
        changed |= {24, 25}
    if lay.udp is not None:
        changed |= {lay.udp + 6, lay.udp + 7}
    assert [i for i in range(len(inp)) if i not in changed and inp[i] != out[i]] == []
    if lay.v4:
        assert ipv4_header_ok(out) == ipv4_header_ok(inp), "IP header checksum"
    if lay.udp is None:
        return  # a later fragment: no UDP header
    field = slice(lay.udp + 6, lay.udp + 8)
    old, new = (int.from_bytes(x[field], "big") for x in (inp, out))
    if lay.v4 and old == 0:
        assert new == 0, "IPv4 'no checksum' must stay 0"
        return
    rewritten = dst if ingress else src
    assert new == expected_udp_check(old, inp[rewritten], out[rewritten]), "UDP checksum"
    if not lay.fragment:
        assert udp_ok(out, lay) == udp_ok(inp, lay)


# ---- strategies


def addresses(family: int) -> st.SearchStrategy[str]:
    net = NETS[family]
    return st.sampled_from([net.vip, *net.real_servers, *net.clients, net.stranger])


ports = st.one_of(st.sampled_from([PORT, OTHER_PORT, UNBALANCED_PORT]), st.integers(1, 65535))


@st.composite
def udp_packets(draw: st.DrawFn, family: int) -> bytes:
    """Well-formed UDP packets with random addresses among the interesting
    ones, random ports, TTL, payload, IPv4 options and checksum 0."""
    src, dst = draw(addresses(family)), draw(addresses(family))
    sport, dport = draw(ports), draw(ports)
    ttl = draw(st.integers(0, 255))
    payload = draw(st.binary(max_size=80))
    eth = Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER)
    if family == 4:
        words = draw(st.sampled_from([0, 0, 0, 1, 2, 10]))
        options = [IPOption_NOP()] * (4 * words - 1) + [IPOption_EOL()] if words else []
        ip = IP(src=src, dst=dst, ttl=ttl, id=draw(st.integers(0, 65535)), options=options)
    else:
        ip = IPv6(src=src, dst=dst, hlim=ttl)
    frame = bytearray(bytes(eth / ip / UDP(sport=sport, dport=dport) / Raw(payload)))
    if family == 4 and draw(st.booleans()):
        off = 14 + (frame[14] & 0x0F) * 4
        frame[off + 6:off + 8] = b"\0\0"  # "no checksum"
    return bytes(frame)


EXT_HEADERS = [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(),
               IPv6ExtHdrRouting(addresses=["2001:db8::77"], segleft=0),
               IPv6ExtHdrRouting(addresses=["2001:db8::77"], segleft=1)]


@st.composite
def fragmented(draw: st.DrawFn, family: int) -> list[bytes]:
    """The fragments of a datagram with random fields (IPv6: behind random
    extension headers), in a random order."""
    src, dst = draw(addresses(family)), draw(addresses(family))
    sport, dport = draw(ports), draw(ports)
    ttl = draw(st.integers(0, 255))
    payload = draw(st.binary(min_size=60, max_size=400))
    eth = Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER)
    if family == 4:
        pkt = IP(src=src, dst=dst, ttl=ttl, id=draw(st.integers(0, 65535))) / UDP(
            sport=sport, dport=dport) / Raw(payload)
        frames = [bytes(eth / f) for f in fragment(pkt, fragsize=64)]
    else:
        pkt = IPv6(src=src, dst=dst, hlim=ttl)
        for ext in draw(st.lists(st.sampled_from(EXT_HEADERS), max_size=3)):
            pkt = pkt / ext.copy()
        pkt = pkt / IPv6ExtHdrFragment(id=draw(st.integers(0, 2**32 - 1))) / UDP(
            sport=sport, dport=dport) / Raw(payload)
        frames = [bytes(eth / f) for f in fragment6(pkt, 160)]
    return draw(st.permutations(frames))


@st.composite
def icmp_errors(draw: st.DrawFn, family: int) -> tuple[bytes, bytes]:
    """A client's datagram to the VIP (it makes an association), then an
    ICMP error of a random kind between random addresses, quoting a random
    flow (often that association's), maybe cut short."""
    net = NETS[family]
    client = draw(st.sampled_from(net.clients))
    cport = draw(st.integers(1, 65535))
    first = bytes(udp(net, client, net.vip, cport, PORT))
    qsrc, qdst = draw(addresses(family)), draw(addresses(family))
    qsport, qdport = draw(st.sampled_from([cport, PORT])), draw(st.sampled_from([cport, PORT]))
    if draw(st.booleans()):  # quote exactly what a real server received / a client sent
        qsrc, qdst, qsport, qdport = draw(st.sampled_from([
            (client, draw(st.sampled_from(net.real_servers[:3])), cport, PORT),
            (net.vip, client, PORT, cport)]))
    quote = quoted(net, qsrc, qdst, qsport, qdport, ttl=draw(st.integers(1, 255)))
    if draw(st.booleans()):
        quote = quote[:draw(st.integers(1, len(quote)))]
    kind = draw(st.sampled_from(["unreachable", "too-big", "time-exceeded"]))
    error = icmp_error(net, draw(addresses(family)), draw(addresses(family)), quote, kind,
                       ttl=draw(st.integers(0, 255)))
    return first, error


@st.composite
def mutated(draw: st.DrawFn, family: int) -> bytes:
    """A valid packet with a few bytes overwritten, and maybe cut short."""
    frame = bytearray(draw(udp_packets(family)))
    for _ in range(draw(st.integers(1, 4))):
        frame[draw(st.integers(12, len(frame) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(14, len(frame)))
    return bytes(frame[:cut])


@pytest.mark.parametrize("family", [4, 6])
def test_fuzz_structured_packets(fuzzed: dict[int, Dataplane], family: int) -> None:
    @FUZZ
    @given(udp_packets(family))
    def run(frame: bytes) -> None:
        check(fuzzed[family], family, frame)

    run()


@pytest.mark.parametrize("family", [4, 6])
def test_fuzz_fragments(fuzzed: dict[int, Dataplane], family: int) -> None:
    @FUZZ
    @given(fragmented(family))
    def run(frames: list[bytes]) -> None:
        for frame in frames:
            check(fuzzed[family], family, frame)

    run()


@pytest.mark.parametrize("family", [4, 6])
def test_fuzz_mutated_packets(fuzzed: dict[int, Dataplane], family: int) -> None:
    @FUZZ
    @given(mutated(family))
    def run(frame: bytes) -> None:
        check(fuzzed[family], family, frame)

    run()


@pytest.mark.parametrize("family", [4, 6])
def test_fuzz_icmp_errors(fuzzed: dict[int, Dataplane], family: int) -> None:
    @FUZZ
    @given(icmp_errors(family))
    def run(frames: tuple[bytes, bytes]) -> None:
        for frame in frames:
            check(fuzzed[family], family, frame)

    run()


def test_fuzz_random_frames(fuzzed: dict[int, Dataplane]) -> None:
    ethertypes = st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06", b"\x81\x00"])

    @FUZZ
    @given(st.binary(min_size=12, max_size=12), ethertypes, st.binary(min_size=0, max_size=120))
    def run(macs: bytes, ethertype: bytes, rest: bytes) -> None:
        check(fuzzed[4], 4, macs + ethertype + rest)

    run()


def test_fuzz_properties_catch_a_bad_rewrite() -> None:
    """The checker itself fails on a wrong checksum and on a wrong TTL."""
    net = NETS[4]
    inp = bytes(Ether(src=MAC_NEIGHBOUR, dst=MAC_BALANCER)
                / IP(src=net.clients[0], dst=net.vip, ttl=9) / UDP(sport=1, dport=PORT) / b"x")
    good = Ether(inp)
    good[Ether].src, good[Ether].dst = MAC_BALANCER, MAC_NEIGHBOUR
    good[IP].dst, good[IP].ttl = net.real_servers[0], 8
    del good[IP].chksum, good[UDP].chksum
    out = bytearray(bytes(good))
    check_rewrite(4, inp, bytes(out))
    bad_udp = bytearray(out)
    bad_udp[-3] ^= 1
    with pytest.raises(AssertionError):
        check_rewrite(4, inp, bytes(bad_udp))
    bad_ttl = bytearray(out)
    bad_ttl[22] = 9
    with pytest.raises(AssertionError):
        check_rewrite(4, inp, bytes(bad_ttl))
