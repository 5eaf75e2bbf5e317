"""What the daemon keeps of telemetry templates, and what it replays
(sbulb/telemetry.py): pure Python, frames built by scapy."""

from __future__ import annotations

import ipaddress
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from sbulb.config import RealServer
from sbulb.state import ServiceSpec
from sbulb.telemetry import Exporter, TemplateStore, joiners, parse_frame, template_ids, udp_packet
from tests.packets import NETS, TEMPLATE_RECORD, big_udp, fragments, ipfix, netflow9, udp

V4, V6 = NETS[4], NETS[6]
DATA = (256, bytes(8))


def template(template_id: int, *fields: tuple[int, int]) -> bytes:
    return struct.pack("!HH", template_id, len(fields)) + b"".join(
        struct.pack("!HH", kind, length) for kind, length in fields)


def test_template_ids_of_each_kind_of_set() -> None:
    """v9 templates and options templates (scope and option lengths in
    bytes), IPFIX templates with an enterprise field (8-byte specifier) and
    options templates (scope count), padding at the end of a set."""
    v9 = netflow9((0, template(256, (8, 4), (12, 4)) + template(257, (1, 4))),
                  (1, struct.pack("!HHH", 300, 4, 4) + bytes(8) + bytes(2)), DATA)
    assert template_ids(v9) == (256, 257, 300)
    enterprise = struct.pack("!HHHHI", 400, 2, 0x8000 | 100, 4, 29305) + struct.pack(
        "!HH", 8, 4)
    options = struct.pack("!HHHHHHH", 401, 2, 1, 144, 4, 41, 8)
    assert template_ids(ipfix((2, enterprise + bytes(2)), (3, options), DATA)) == (400, 401)
    assert template_ids(netflow9(DATA)) == ()
    assert template_ids(ipfix(DATA)) == ()
    assert template_ids(netflow9(DATA)[:20] + struct.pack("!HH", 0, 99)) == ()  # past the end
    assert template_ids(b"\x00\x05" + bytes(30)) == ()  # NetFlow v5


def test_a_frame_is_parsed_to_its_exporter_and_port() -> None:
    for net in (V4, V6):
        payload = netflow9((0, TEMPLATE_RECORD), source_id=42)
        frame = bytes(udp(net, net.clients[0], net.vip, 9995, 2055, payload))
        got = parse_frame(frame)
        assert got is not None
        assert got.exporter == Exporter(ipaddress.ip_address(net.clients[0]), 9995, 9, 42)
        assert (got.port, got.template_ids, got.payload) == (2055, (256,), payload)
        ipfix_frame = bytes(udp(net, net.clients[0], net.vip, 4739, 4739,
                                ipfix((2, TEMPLATE_RECORD), domain=5)))
        assert parse_frame(ipfix_frame).exporter.domain == 5  # type: ignore[union-attr]
        # a fragment's templates may be in the fragments after it: not kept
        big = netflow9((0, TEMPLATE_RECORD), (256, bytes(3200)))
        first = fragments(bytes(big_udp(net, net.clients[0], net.vip, 9995, 2055,
                                        payload=big)))[0]
        assert parse_frame(first) is None
        assert parse_frame(bytes(udp(net, net.clients[0], net.vip, 9995, 2055,
                                     netflow9(DATA)))) is None
        assert parse_frame(frame[:40]) is None


def frame_of(exporter: str, sport: int, payload: bytes) -> bytes:
    return bytes(udp(V4, exporter, V4.vip, sport, 2055, payload))


def test_the_store_keeps_the_latest_datagram_per_template_and_exporter() -> None:
    store = TemplateStore(max_exporters=2)
    (a, b), c = V4.clients, V4.real_servers[3]  # three exporters
    first = netflow9((0, template(256, (8, 4)) + template(257, (12, 4))), sequence=1)
    newer = netflow9((0, template(256, (8, 4), (12, 4))), sequence=2)
    store.add("flows", frame_of(a, 9995, first))
    store.add("flows", frame_of(a, 9995, newer))
    # 257 still comes only from the first; 256 from the newer, sent after it
    assert [d.payload for d in store.datagrams("flows")] == [first, newer]
    store.add("flows", frame_of(a, 9996, first))  # another source port: another exporter
    assert len(store.datagrams("flows")) == 3
    store.add("flows", frame_of(b, 9995, first))  # a third: the oldest one goes
    assert {d.exporter.port for d in store.datagrams("flows")} == {9996, 9995}
    assert store.add("flows", frame_of(c, 9995, netflow9(DATA))) is None
    counts = store.counts()["flows"]
    assert (counts.exporters, counts.seen, counts.not_kept) == (2, 5, 1)
    store.keep_only(["other"])
    assert store.datagrams("flows") == [] and "flows" not in store.counts()


def spec(mode: str, *servers: tuple[str, int]) -> ServiceSpec:
    return ServiceSpec("flows", V4.vip_ip, (2055,),
                       tuple(RealServer(V4.ip(a), w) for a, w in servers), mode)


def test_joiners_are_new_copy_targets_of_telemetry_services() -> None:
    rs = V4.real_servers
    before = spec("telemetry", (rs[0], 1), (rs[1], 0))
    after = spec("telemetry", (rs[0], 1), (rs[1], 1), (rs[2], 2))
    assert joiners({"flows": before}, [after]) == {"flows": (V4.ip(rs[1]), V4.ip(rs[2]))}
    assert joiners({"flows": after}, [after]) == {}
    down = spec("telemetry", (rs[0], 1), (rs[1], 1))
    back = {"flows": ServiceSpec("flows", down.vip, down.ports, down.servers, "telemetry",
                                 down=frozenset({V4.ip(rs[1])}))}
    assert joiners(back, [down]) == {"flows": (V4.ip(rs[1]),)}
    assert joiners({"flows": spec("per-packet", (rs[0], 1))}, [spec("telemetry", (rs[0], 1))]) == {
        "flows": (V4.ip(rs[0]),)}
    assert joiners({}, [spec("mirror", (rs[0], 1))]) == {}


def test_replayed_packets_carry_the_exporter_address_and_a_valid_checksum() -> None:
    for net, layer in ((V4, IP), (V6, IPv6)):
        src, dst = net.ip(net.clients[0]), net.ip(net.real_servers[0])
        raw = udp_packet(src, 9995, dst, 2055, b"template bytes")
        pkt = layer(raw)
        assert (pkt.src, pkt.dst, pkt[UDP].sport, pkt[UDP].dport) == (
            str(src), str(dst), 9995, 2055)
        sent = pkt[UDP].chksum
        del pkt[UDP].chksum
        assert layer(bytes(pkt))[UDP].chksum == sent
        assert bytes(pkt[UDP].payload) == b"template bytes"
