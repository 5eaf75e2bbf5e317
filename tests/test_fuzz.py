"""Property-based fuzzing of the XDP program through BPF_PROG_TEST_RUN, with
random frames, structured UDP packets with random fields, and mutated valid
packets. Whatever comes in:

- a frame that is not rewritten comes out unchanged (XDP_PASS) or is dropped;
- a rewritten frame (XDP_TX) differs from its input only in the MACs
  (swapped), one address (VIP -> real server or real server -> VIP), the
  TTL / hop limit (one lower) and the checksums, and its IP and UDP
  checksums are valid exactly when the input's were (IPv4 "no checksum"
  stays 0);
- only rewritten traffic may add associations.

By default each property runs SBULB_FUZZ_EXAMPLES=300 examples (well under a
minute in all); `SBULB_FUZZ_EXAMPLES=20000 make test PYTEST_ARGS=-ktest_fuzz`
runs a long campaign.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sbulb.config import Limits
from sbulb.consts import XdpAction
from sbulb.dataplane import Dataplane
from tests.conftest import require_root
from tests.packets import MAC_BALANCER, MAC_NEIGHBOUR, NETS, OTHER_PORT, PORT, UNBALANCED_PORT

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
    """One program per family, VIP and 3 real servers set, small LRU."""
    require_root()
    planes = {}
    try:
        for family, net in NETS.items():
            dp = Dataplane(Limits(max_ports=4, max_real_servers=8, max_associations=512))
            planes[family] = dp
            dp.load()
            dp.configure(net.vip_ip, [PORT, OTHER_PORT])
            dp.set_real_servers(net.rs_ips(*SERVERS))
        yield planes
    finally:
        for dp in planes.values():
            dp.close()


# ---- checksums, computed independently of scapy and of the program


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


def l4_offset(frame: bytes) -> int:
    return 14 + ((frame[14] & 0x0F) * 4 if frame[12:14] == b"\x08\x00" else 40)


def udp_ok(frame: bytes) -> bool:
    """The UDP checksum of the datagram (udp length bytes) is valid."""
    off = l4_offset(frame)
    length = struct.unpack_from("!H", frame, off + 4)[0]
    datagram = frame[off:off + length]
    if frame[12:14] == b"\x08\x00":
        pseudo = frame[26:34] + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = frame[22:54] + struct.pack("!IxxxB", length, 17)
    return ones_sum(pseudo + datagram) == 0xFFFF


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
    check_rewrite(family, frame, result.frame)


def check_rewrite(family: int, inp: bytes, out: bytes) -> None:
    net = NETS[family]
    vip = net.vip_ip.packed
    servers = {net.ip(net.real_servers[i]).packed for i in SERVERS}
    assert len(out) == len(inp)
    assert out[0:6] == inp[6:12] and out[6:12] == inp[0:6], "MACs not swapped"
    ethertype = inp[12:14]
    assert ethertype in (b"\x08\x00", b"\x86\xdd") and out[12:14] == ethertype
    if ethertype == b"\x08\x00":
        ihl = (inp[14] & 0x0F) * 4
        ttl, check, src, dst = 22, slice(24, 26), slice(26, 30), slice(30, 34)
    else:
        ihl = 40
        ttl, check, src, dst = 21, None, slice(22, 38), slice(38, 54)
    assert inp[14 + 9 if ethertype == b"\x08\x00" else 20] == 17, "only UDP is rewritten"
    assert out[ttl] == inp[ttl] - 1 and inp[ttl] >= 2, "TTL / hop limit not one lower"
    ingress = inp[dst] == vip and out[dst] in servers and out[src] == inp[src]
    egress = inp[src] in servers and out[src] == vip and out[dst] == inp[dst]
    assert ingress or egress, "not a VIP <-> real server rewrite"
    # nothing else changed but the checksums
    udp_check = slice(14 + ihl + 6, 14 + ihl + 8)
    changed = {ttl} | set(range(*udp_check.indices(len(inp)))) | set(range(0, 12))
    changed |= set(range(*src.indices(len(inp)))) | set(range(*dst.indices(len(inp))))
    if check is not None:
        changed |= set(range(*check.indices(len(inp))))
    assert [i for i in range(len(inp)) if i not in changed and inp[i] != out[i]] == []
    # checksums: valid exactly when they were
    if check is not None:
        assert ipv4_header_ok(out) == ipv4_header_ok(inp)
    if ethertype == b"\x08\x00" and inp[udp_check] == b"\0\0":
        assert out[udp_check] == b"\0\0", "IPv4 'no checksum' must stay 0"
    else:
        assert udp_ok(out) == udp_ok(inp)
        assert out[udp_check] != b"\0\0"


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
        off = l4_offset(bytes(frame))
        frame[off + 6:off + 8] = b"\0\0"  # "no checksum"
    return bytes(frame)


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
def test_fuzz_mutated_packets(fuzzed: dict[int, Dataplane], family: int) -> None:
    @FUZZ
    @given(mutated(family))
    def run(frame: bytes) -> None:
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
