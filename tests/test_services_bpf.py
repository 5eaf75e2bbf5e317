"""Several services in the data path, frame by frame (BPF_PROG_TEST_RUN,
no interface): each VIP:port leads to its own pool, associations are per
service, a server of one service is not a server of another, counters are
per service and per (service, server)."""

from __future__ import annotations

import struct
from dataclasses import replace

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from sbulb.config import RealServer
from sbulb.consts import Stat, XdpAction
from sbulb.dataplane import Dataplane, Traffic
from sbulb.state import DesiredState, ServiceSpec
from tests.packets import NETS, udp

TX, PASS, DROP = XdpAction.TX, XdpAction.PASS, XdpAction.DROP
V4, V6 = NETS[4], NETS[6]
COAP, SYSLOG = 5683, 514
OTHER_VIP = "10.0.0.50"


def service(name: str, vip: str, ports: tuple[int, ...], *servers: str) -> ServiceSpec:
    return ServiceSpec(name, V4.ip(vip), ports, tuple(RealServer(V4.ip(s)) for s in servers))


def three_services(dp: Dataplane, syslog_servers: tuple[str, ...] | None = None) -> None:
    """coap (VIP:5683, rs0 rs1), syslog (same VIP, 514: rs2, and rs0 from
    its port 514), coap6 (the IPv6 VIP, 5683: rs0 rs1 of IPv6), and `edge`
    (another VIP, 5683: rs3)."""
    rs = V4.real_servers
    syslog = syslog_servers if syslog_servers is not None else (rs[2], rs[0])
    dp.set_services(DesiredState((
        service("coap", V4.vip, (COAP,), rs[0], rs[1]),
        service("syslog", V4.vip, (SYSLOG,), *syslog),
        service("coap6", V6.vip, (COAP,), *V6.real_servers[:2]),
        service("edge", OTHER_VIP, (COAP,), rs[3]),
    )))


def send(dp: Dataplane, frame: bytes) -> tuple[XdpAction, Ether]:
    result = dp.test_run(frame)
    return result.action, Ether(result.frame)


def to_vip(dp: Dataplane, client: str, sport: int, dport: int, vip: str = V4.vip,
           net=V4) -> str:
    """A client's datagram to a VIP:port: the real server it went to."""
    action, out = send(dp, bytes(udp(net, client, vip, sport, dport)))
    assert action == TX, out.show2(dump=True)
    layer = out[IP] if net.family == 4 else out[IPv6]
    return layer.dst


def fresh(dp: Dataplane) -> None:
    dp.reset_state()
    three_services(dp)


def test_each_vip_port_leads_to_its_own_pool(loaded: Dataplane) -> None:
    fresh(loaded)
    rs = V4.real_servers
    assert [to_vip(loaded, V4.clients[0], p, COAP) for p in (1, 2, 3)] == [rs[0], rs[1], rs[0]]
    assert [to_vip(loaded, V4.clients[0], p, SYSLOG) for p in (1, 2, 3)] == [rs[2], rs[0], rs[2]]
    assert to_vip(loaded, V4.clients[0], 1, COAP, vip=OTHER_VIP) == rs[3]
    assert [to_vip(loaded, V6.clients[0], p, COAP, vip=V6.vip, net=V6) for p in (1, 2)] == list(
        V6.real_servers[:2])
    # a port of the VIP no service has is not ours
    assert send(loaded, bytes(udp(V4, V4.clients[0], V4.vip, 1, 9999)))[0] == PASS
    # syslog's port on the other VIP is not balanced either
    assert send(loaded, bytes(udp(V4, V4.clients[0], OTHER_VIP, 1, SYSLOG)))[0] == PASS


def test_a_client_of_two_services_has_an_association_in_each(loaded: Dataplane) -> None:
    fresh(loaded)
    rs = V4.real_servers
    client = V4.clients[1]
    assert to_vip(loaded, client, 4000, COAP) == rs[0]
    assert to_vip(loaded, client, 4000, SYSLOG) == rs[2]
    for _ in range(3):  # and each sticks, whichever the other says
        assert to_vip(loaded, client, 4000, SYSLOG) == rs[2]
        assert to_vip(loaded, client, 4000, COAP) == rs[0]
    ids = {name: loaded.service_id(name) for name in ("coap", "syslog")}
    held = loaded.service_associations()
    assert held[(ids["coap"], V4.ip(client), 4000)] == V4.ip(rs[0])
    assert held[(ids["syslog"], V4.ip(client), 4000)] == V4.ip(rs[2])
    assert loaded.association(V4.ip(client), 4000, ids["syslog"]) == V4.ip(rs[2])


def test_egress_belongs_to_the_service_of_the_server_port(loaded: Dataplane) -> None:
    fresh(loaded)
    rs = V4.real_servers
    client = V4.clients[0]
    assert to_vip(loaded, client, 7000, COAP) == rs[0]  # coap: rs0
    # rs0 answers from 5683: coap's server, source becomes the VIP
    action, out = send(loaded, bytes(udp(V4, rs[0], client, COAP, 7000)))
    assert action == TX and (out[IP].src, out[UDP].sport) == (V4.vip, COAP)
    # rs0 is syslog's too: from 514 it speaks first to the same client,
    # which gets an association in syslog (none moved in coap)
    action, out = send(loaded, bytes(udp(V4, rs[0], client, SYSLOG, 7000)))
    assert action == TX and (out[IP].src, out[UDP].sport) == (V4.vip, SYSLOG)
    assert loaded.association(V4.ip(client), 7000, loaded.service_id("syslog")) == V4.ip(rs[0])
    # rs2 (syslog) is not this client's syslog server: dropped
    assert send(loaded, bytes(udp(V4, rs[2], client, SYSLOG, 7000)))[0] == DROP
    # rs1 (coap) is not its coap server: dropped
    assert send(loaded, bytes(udp(V4, rs[1], client, COAP, 7000)))[0] == DROP
    # rs2 from coap's port is not a coap server at all: not ours
    assert send(loaded, bytes(udp(V4, rs[2], client, COAP, 7000)))[0] == PASS
    # rs3 (edge, the other VIP) from 5683: edge's server, the other VIP
    action, out = send(loaded, bytes(udp(V4, rs[3], client, COAP, 7001)))
    assert action == TX and out[IP].src == OTHER_VIP


def test_changing_one_pool_moves_no_client_of_another(loaded: Dataplane) -> None:
    fresh(loaded)
    rs = V4.real_servers
    coap = [to_vip(loaded, V4.clients[0], p, COAP) for p in range(10, 16)]
    syslog = [to_vip(loaded, V4.clients[0], p, SYSLOG) for p in range(10, 16)]
    assert set(syslog) == {rs[0], rs[2]}
    three_services(loaded, syslog_servers=(rs[2], rs[1]))  # rs0 leaves syslog only
    assert [to_vip(loaded, V4.clients[0], p, COAP) for p in range(10, 16)] == coap
    after = [to_vip(loaded, V4.clients[0], p, SYSLOG) for p in range(10, 16)]
    for before, now in zip(syslog, after):  # rs2's stay; rs0's pick anew
        assert now == rs[2] if before == rs[2] else now in (rs[1], rs[2])
    assert rs[1] in after
    # rs0 from 514 is no longer a server of anything: not ours
    assert send(loaded, bytes(udp(V4, rs[0], V4.clients[0], SYSLOG, 10)))[0] == PASS


def test_counters_per_service_and_per_member(loaded: Dataplane) -> None:
    fresh(loaded)
    rs = V4.real_servers
    client = V4.clients[0]
    to_coap = bytes(udp(V4, client, V4.vip, 1, COAP))
    to_syslog = bytes(udp(V4, client, V4.vip, 1, SYSLOG, payload=b"x" * 50))
    for _ in range(3):
        assert send(loaded, to_coap)[0] == TX  # rs0 in coap
    for _ in range(2):
        assert send(loaded, to_syslog)[0] == TX  # rs2 in syslog
    back = bytes(udp(V4, rs[0], client, COAP, 1))
    assert send(loaded, back)[0] == TX
    ids = {name: loaded.service_id(name) for name in ("coap", "syslog", "coap6", "edge")}
    per_service = loaded.service_traffic(list(ids.values()))
    assert per_service[ids["coap"]] == Traffic(3, 3 * len(to_coap), 1, len(back))
    assert per_service[ids["syslog"]] == Traffic(2, 2 * len(to_syslog), 0, 0)
    assert per_service[ids["coap6"]] == Traffic() == per_service[ids["edge"]]
    members = loaded.member_traffic()
    assert members[(ids["coap"], V4.ip(rs[0]))] == Traffic(3, 3 * len(to_coap), 1, len(back))
    # rs0 is in syslog too, where it has carried nothing
    assert members[(ids["syslog"], V4.ip(rs[0]))] == Traffic()
    assert members[(ids["syslog"], V4.ip(rs[2]))] == Traffic(2, 2 * len(to_syslog), 0, 0)


def test_every_packet_gets_one_counted_xdp_action(loaded: Dataplane) -> None:
    fresh(loaded)
    frames = [bytes(udp(V4, V4.clients[0], V4.vip, 1, COAP)),     # TX
              bytes(udp(V4, V4.clients[0], V4.vip, 1, 9999)),     # PASS: not ours
              bytes(udp(V4, V4.real_servers[1], V4.clients[0], COAP, 1)),  # DROP
              bytes(udp(V4, V4.clients[0], V4.vip, 2, SYSLOG))]   # TX
    actions = [send(loaded, f)[0] for f in frames]
    assert actions == [TX, PASS, DROP, TX]
    stats = loaded.stats()
    assert stats[Stat.ACTION_TX] == 2 and stats[Stat.ACTION_PASS] == 1
    assert stats[Stat.ACTION_DROP] == 1
    assert stats[Stat.ACTION_ABORTED] == stats[Stat.ACTION_REDIRECT] == 0


# ---- per-packet mode


def per_packet(dp: Dataplane, net=V4, weights: tuple[int, ...] = (2, 1, 1)) -> None:
    dp.reset_state()
    servers = tuple(RealServer(net.ip(a), w) for a, w in zip(net.real_servers, weights))
    dp.set_services(DesiredState((ServiceSpec("stats", net.vip_ip, (COAP,), servers,
                                              "per-packet"),)))


def test_per_packet_spreads_one_client_by_weight(loaded: Dataplane) -> None:
    """30000 datagrams from one client ip:port to servers of weight 2:1:1:
    15000/7500/7500 (one CPU: exact), no association."""
    per_packet(loaded)
    frame = bytes(udp(V4, V4.clients[0], V4.vip, 4000, COAP))
    counts: dict[bytes, int] = {}
    for _ in range(30000):
        out = loaded.test_run(frame)
        assert out.action == TX
        dst = out.frame[30:34]  # IPv4 destination
        counts[dst] = counts.get(dst, 0) + 1
    rs = [V4.ip(a).packed for a in V4.real_servers[:3]]
    assert [counts.get(a, 0) for a in rs] == [15000, 7500, 7500]
    assert loaded.associations() == {}
    assert loaded.stats()[Stat.ASSOC_CLIENT] == 0


def test_per_packet_ipv6_and_answers_from_any_server(loaded: Dataplane) -> None:
    per_packet(loaded, net=V6, weights=(1, 1, 1))
    seen = [to_vip(loaded, V6.clients[0], 9, COAP, vip=V6.vip, net=V6) for _ in range(6)]
    assert seen == list(V6.real_servers[:3]) * 2
    for server in V6.real_servers[:3]:  # each answers the client, from the VIP
        action, out = send(loaded, bytes(udp(V6, server, V6.clients[0], COAP, 9)))
        assert action == TX and out[IPv6].src == V6.vip
    assert loaded.associations() == {}


def test_per_packet_fragments_follow_their_first(loaded: Dataplane) -> None:
    from tests.packets import big_udp, fragments

    per_packet(loaded, weights=(1, 1, 1))
    targets = []
    for frag_id in (1, 2, 3):
        frames = fragments(bytes(big_udp(V4, V4.clients[0], V4.vip, 5, COAP, frag_id=frag_id)))
        assert len(frames) > 1
        outs = [loaded.test_run(f) for f in frames]
        assert all(o.action == TX for o in outs)
        dsts = {Ether(o.frame)[IP].dst for o in outs}
        assert len(dsts) == 1  # a datagram stays whole on one server
        targets.append(dsts.pop())
    assert targets == list(V4.real_servers[:3])  # datagrams go round


def test_per_packet_icmp_from_a_server_reaches_the_client(loaded: Dataplane) -> None:
    from tests.packets import icmp_error, quoted

    per_packet(loaded, weights=(1, 1, 1))
    server = to_vip(loaded, V4.clients[0], 7, COAP)
    error = icmp_error(V4, server, V4.clients[0], quoted(V4, V4.clients[0], server, 7, COAP),
                       "unreachable")
    action, out = send(loaded, error)
    assert action == TX and out[IP].src == V4.vip
    to_other = icmp_error(V4, server, V4.clients[1], quoted(V4, V4.clients[0], server, 7, COAP),
                          "unreachable")
    assert send(loaded, to_other)[0] == DROP


# ---- mirror mode (the copies themselves are made by the kernel's broadcast,
# which BPF_PROG_TEST_RUN does not run: tests/test_modes.py and
# tests/test_services.py see them arrive)


REDIRECT = XdpAction.REDIRECT
META = 24  # bytes of struct sbulb_mirror_meta in front of a broadcast frame


def mirror(dp: Dataplane, net=V4, weights: tuple[int, ...] = (1, 1, 0)) -> None:
    dp.reset_state()
    dp.expect_interfaces(["lo"])  # one interface: every copy leaves there
    servers = tuple(RealServer(net.ip(a), w) for a, w in zip(net.real_servers, weights))
    dp.set_services(DesiredState((ServiceSpec("logs", net.vip_ip, (SYSLOG,), servers,
                                              "mirror"),)))


def test_mirror_fixtures(loaded: Dataplane) -> None:
    """A client's datagram (whole, or each fragment) is broadcast untouched
    (the egress program rewrites each copy); only the primary's (the first
    server's) answers reach the client, from the VIP; nothing is
    associated."""
    from tests.packets import big_udp, fragments

    for net, layer in ((V4, IP), (V6, IPv6)):
        mirror(loaded, net)
        rs, client = net.real_servers, net.clients[0]
        frame = bytes(udp(net, client, net.vip, 4000, SYSLOG))
        out = loaded.test_run(frame)
        # the frame untouched, behind the metadata for the egress program
        # (mirror.h struct sbulb_mirror_meta): two targets of weight > 0
        assert (out.action, out.frame[META:]) == (REDIRECT, frame)
        magic, targets, _, seq, _ = struct.unpack("=HHIII", out.frame[:16])
        assert (magic, targets) == (0x5B1B, 2)
        assert struct.unpack("=HHIII", loaded.test_run(frame).frame[:16])[3] == seq + 1
        pieces = fragments(bytes(big_udp(net, client, net.vip, 4001, SYSLOG, frag_id=9)))
        assert len(pieces) > 1
        assert [loaded.test_run(f).action for f in pieces] == [REDIRECT] * len(pieces)
        lost = fragments(bytes(big_udp(net, net.clients[1], net.vip, 4002, SYSLOG, frag_id=10)))[1]
        assert loaded.test_run(lost).action == DROP  # its first never came
        action, answer = send(loaded, bytes(udp(net, rs[0], client, SYSLOG, 4000)))
        assert action == TX and answer[layer].src == net.vip
        for other in rs[1:3]:  # a target, and a member of weight 0
            assert send(loaded, bytes(udp(net, other, client, SYSLOG, 4000)))[0] == DROP
        stats = loaded.stats()
        assert stats[Stat.TX_MIRROR] == 2 + len(pieces)
        assert stats[Stat.DROP_MIRROR_REPLY] == 2
        assert stats[Stat.DROP_FRAG_UNKNOWN] == 1
        assert loaded.associations() == {}


def test_mirror_icmp_from_the_primary_only_reaches_the_client(loaded: Dataplane) -> None:
    from tests.packets import icmp_error, quoted

    mirror(loaded)
    rs, client = V4.real_servers, V4.clients[0]
    for server, wanted in ((rs[0], TX), (rs[1], DROP)):
        error = icmp_error(V4, server, client, quoted(V4, client, server, 7, SYSLOG),
                           "unreachable")
        action, out = send(loaded, error)
        assert action == wanted
        if action == TX:
            assert out[IP].src == V4.vip
    # the dropped error still counts against its server (passive_fall)
    assert {a: n for (_, a), n in loaded.member_unreachable().items() if n} == {
        V4.ip(rs[0]): 1, V4.ip(rs[1]): 1}


def test_a_mirror_service_without_targets_drops(loaded: Dataplane) -> None:
    mirror(loaded, weights=(0, 0, 0))
    frame = bytes(udp(V4, V4.clients[0], V4.vip, 4000, SYSLOG))
    assert loaded.test_run(frame).action == DROP
    assert loaded.stats()[Stat.DROP_NO_REAL_SERVER] == 1


# ---- health: down servers, probes


def with_down(dp: Dataplane, on_down: str, down: tuple[str, ...]) -> None:
    from sbulb.config import Checks

    spec = service("coap", V4.vip, (COAP,), *V4.real_servers[:3])
    spec = ServiceSpec(spec.name, spec.vip, spec.ports, spec.servers, "sticky",
                       Checks(None, on_down), frozenset(V4.ip(a) for a in down))
    dp.set_services(DesiredState((spec,)))


def test_a_down_server_keeps_its_clients_or_moves_them(loaded: Dataplane) -> None:
    rs = V4.real_servers
    for on_down in ("keep", "move"):
        loaded.reset_state()
        with_down(loaded, on_down, ())
        first = [to_vip(loaded, V4.clients[0], p, COAP) for p in (1, 2, 3)]
        assert first == list(rs[:3])
        with_down(loaded, on_down, (rs[0],))
        again = to_vip(loaded, V4.clients[0], 1, COAP)
        if on_down == "keep":
            assert again == rs[0]  # sbulb's stickiness: it comes back with its server
        else:
            assert again in rs[1:3]  # moved, on its next datagram
        newcomers = {to_vip(loaded, V4.clients[1], p, COAP) for p in range(10, 16)}
        assert newcomers == {rs[1], rs[2]}  # no new client for a down server
        moved = loaded.stats()[Stat.ASSOC_REPICK]
        assert moved == (0 if on_down == "keep" else 1)
        # back up: new clients reach it again; nobody moves back
        with_down(loaded, on_down, ())
        assert to_vip(loaded, V4.clients[0], 1, COAP) == again


def test_answers_to_health_probes_are_left_to_the_stack(loaded: Dataplane) -> None:
    fresh(loaded)
    lb, probe_port = "10.0.0.200", 40000
    answer = bytes(udp(V4, V4.real_servers[0], lb, COAP, probe_port))
    assert send(loaded, answer)[0] == TX  # not a probe: a server speaking first
    loaded.reset_state()
    loaded.add_probe_endpoint(V4.ip(lb), probe_port)
    try:
        assert send(loaded, answer)[0] == PASS
        assert loaded.associations() == {}
    finally:
        loaded.remove_probe_endpoint(V4.ip(lb), probe_port)


def test_association_counts_read_in_batches_agree_with_the_map(loaded: Dataplane) -> None:
    """Metrics and status count clients per (service, server) from batched
    map reads; they agree with an entry-by-entry walk, whatever the batch
    size (1 entry: a bucket larger than the batch makes it grow)."""
    fresh(loaded)
    for port in range(1, 301):
        to_vip(loaded, V4.clients[port % 2], port, COAP)
        if port % 2:
            to_vip(loaded, V4.clients[0], port, SYSLOG)
        if port % 5 == 0:
            to_vip(loaded, V6.clients[0], port, COAP, vip=V6.vip, net=V6)
    walked: dict[tuple[int, object], int] = {}
    for (i, _, _), server in loaded.service_associations().items():
        walked[(i, server)] = walked.get((i, server), 0) + 1
    assert sum(walked.values()) == 300 + 150 + 60
    assert len(walked) == 2 + 2 + 2  # coap: rs0 rs1, syslog: rs2 rs0, coap6: two
    for batch in (0, 1, 7, 4096):
        assert loaded.association_counts(batch) == walked, batch
    loaded.reset_state()
    assert loaded.association_counts() == {}


# ---- telemetry mode (per packet; templates copied as in mirror mode, and
# handed to the daemon)

FLOWS = 2055


def telemetry(dp: Dataplane, net=V4, weights: tuple[int, ...] = (2, 1, 0)) -> None:
    dp.reset_state()
    dp.expect_interfaces(["lo"])
    servers = tuple(RealServer(net.ip(a), w) for a, w in zip(net.real_servers, weights))
    dp.set_services(DesiredState((ServiceSpec("flows", net.vip_ip, (FLOWS,), servers,
                                              "telemetry"),)))


def test_telemetry_fixtures(loaded: Dataplane) -> None:
    """NetFlow v9 and IPFIX datagrams with a template or options template
    (anywhere among the first sets) are broadcast to every target of
    weight > 0 once and handed to the daemon whole; data, NetFlow v5, sFlow
    and malformed exports go per packet, by weight; nothing is associated."""
    from tests.packets import DATA_RECORD, TEMPLATE_RECORD, big_udp, fragments, ipfix, netflow9

    data, tmpl = (256, DATA_RECORD), (0, TEMPLATE_RECORD)
    templates = {
        "v9 template": netflow9(tmpl, data),
        "v9 options template": netflow9((1, TEMPLATE_RECORD)),
        "v9 template after data": netflow9(data, data, tmpl),
        "ipfix template": ipfix((2, TEMPLATE_RECORD), data),
        "ipfix options template": ipfix(data, (3, TEMPLATE_RECORD)),
    }
    per_packet_exports = {
        "v9 data": netflow9(data, data),
        "ipfix data": ipfix(data),
        "v9 set ids of ipfix": netflow9((2, TEMPLATE_RECORD), (3, TEMPLATE_RECORD)),
        "ipfix set ids of v9": ipfix((0, TEMPLATE_RECORD), (1, TEMPLATE_RECORD)),
        "netflow v5": struct.pack("!HH", 5, 1) + bytes(20 + 48),
        "sflow v5": struct.pack("!II", 5, 1) + bytes(40),
        "too short": b"\x00\x09",
        "v9 zero length flowset": netflow9(data)[:20] + struct.pack("!HH", 0, 0) + bytes(8),
        "v9 flowset past the datagram": netflow9(data)[:20] + struct.pack("!HH", 0, 64) + bytes(8),
        "ipfix length past the datagram": ipfix((2, TEMPLATE_RECORD), length=200),
        "ipfix template past its length": ipfix(data, (2, TEMPLATE_RECORD), length=16 + 12),
        "v9 template beyond 6 flowsets": netflow9(*([data] * 6), tmpl),
    }
    # where the copies for the collectors that do not get the data are cut:
    # after the leading templates (0: whole)
    cut = {"v9 template": 20 + 4 + len(TEMPLATE_RECORD), "v9 options template": 0,
           "v9 template after data": 0, "ipfix template": 16 + 4 + len(TEMPLATE_RECORD),
           "ipfix options template": 0}
    for net, layer in ((V4, IP), (V6, IPv6)):
        telemetry(loaded, net)
        rs, client = net.real_servers, net.clients[0]
        slots = {loaded.member_slot("flows", net.ip(a)): a for a in rs[:3]}
        whole = []
        for name, payload in templates.items():
            frame = bytes(udp(net, client, net.vip, 9995, FLOWS, payload))
            out = loaded.test_run(frame)
            assert (out.action, out.frame[META:]) == (REDIRECT, frame), name
            magic, targets, _, _, _, slot, trim = struct.unpack("=HHIIIII", out.frame[:META])
            assert (magic, targets, trim) == (0x5B1C, 2, cut[name]), name  # 2 of weight > 0
            whole.append(slots[slot])
            kept = loaded.take_templates()
            assert [(t.service, t.frame) for t in kept] == [
                (loaded.service_id("flows"), frame)], name
        # the whole one (the data's share) goes round by weight 2:1
        assert whole == [rs[0], rs[1], rs[0], rs[0], rs[1]]
        seen = []
        for name, payload in per_packet_exports.items():
            out = loaded.test_run(bytes(udp(net, client, net.vip, 9995, FLOWS, payload)))
            assert out.action == TX, name
            seen.append(Ether(out.frame)[layer].dst)
        # smooth weighted round robin 2:1 (after the 5 above), whatever they hold
        assert seen.count(rs[0]) == 8 and seen.count(rs[1]) == 4 and rs[2] not in seen
        assert loaded.take_templates() == []
        # a fragmented template: every fragment copied, the first one kept
        big = netflow9(tmpl, (256, DATA_RECORD * 400))
        pieces = fragments(bytes(big_udp(net, client, net.vip, 9995, FLOWS, frag_id=11,
                                         payload=big)))
        assert len(pieces) > 1
        outs = [loaded.test_run(f) for f in pieces]
        assert [o.action for o in outs] == [REDIRECT] * len(pieces)
        assert {struct.unpack("=H", o.frame[:2])[0] for o in outs} == {0x5B1C}
        assert [t.frame for t in loaded.take_templates()] == [pieces[0]]
        # any collector's answer reaches the exporter from the VIP
        action, answer = send(loaded, bytes(udp(net, rs[1], client, FLOWS, 9995)))
        assert action == TX and answer[layer].src == net.vip
        stats = loaded.stats()
        assert stats[Stat.TX_TEMPLATE] == len(templates) + len(pieces)
        assert stats[Stat.TX_INGRESS] == len(per_packet_exports)
        assert stats[Stat.TEMPLATE_NOT_KEPT] == 0
        assert loaded.associations() == {}


def test_a_telemetry_template_too_long_to_keep_is_still_copied(loaded: Dataplane) -> None:
    """A template frame longer than the daemon's record (2048 bytes, a
    jumbo frame) is copied but counted as not kept."""
    from tests.packets import TEMPLATE_RECORD, netflow9

    telemetry(loaded)
    frame = bytes(udp(V4, V4.clients[0], V4.vip, 9995, FLOWS,
                      netflow9((0, TEMPLATE_RECORD), (256, bytes(2100)))))
    assert loaded.test_run(frame).action == REDIRECT
    assert loaded.take_templates() == []
    assert loaded.stats()[Stat.TEMPLATE_NOT_KEPT] == 1


def test_a_telemetry_service_without_targets_drops_templates(loaded: Dataplane) -> None:
    from tests.packets import TEMPLATE_RECORD, netflow9

    telemetry(loaded, weights=(0, 0, 0))
    frame = bytes(udp(V4, V4.clients[0], V4.vip, 9995, FLOWS, netflow9((0, TEMPLATE_RECORD))))
    assert loaded.test_run(frame).action == DROP
    assert loaded.stats()[Stat.DROP_NO_REAL_SERVER] == 1


# ---- scheduler = maglev


def test_maglev_new_clients_get_the_server_the_table_names(loaded: Dataplane) -> None:
    """Each new client gets the server that entry client_hash % size of the
    Maglev table names, as any balancer with the same config computes it
    (here: Python, from the config alone); 10 servers share 50000 clients
    within 5% of the mean; removing one moves only its clients' new picks,
    while associated clients stay."""
    import collections

    from sbulb import maglev
    from sbulb.config import Scheduler

    loaded.reset_state()
    pool = tuple(RealServer(V4.ip(f"10.77.2.{i}")) for i in range(10, 20))
    sched = Scheduler("maglev", 65537, 11)
    dtls = ServiceSpec("dtls", V4.vip_ip, (COAP,), pool, scheduler=sched)
    loaded.set_services(DesiredState((dtls,)))
    table = maglev.table(tuple((s.address, 1) for s in pool), 65537, 11)

    def predicted(client: str, port: int, servers=pool, entries=table) -> str:
        return str(servers[entries[maglev.client_hash(V4.ip(client), port) % 65537]].address)

    got = collections.Counter()
    for n in range(50000):
        client, port = V4.clients[n % 2], 1024 + n // 2
        server = to_vip(loaded, client, port, COAP)
        if n < 2000:
            assert server == predicted(client, port), (client, port)
        got[server] += 1
    assert len(got) == 10 and max(got.values()) / 5000 < 1.05, got
    # one server leaves: associated clients keep theirs (or, its own, pick
    # again from the new table); new clients follow the new table
    gone = pool[3].address
    rest = pool[:3] + pool[4:]
    loaded.set_services(DesiredState((replace(dtls, servers=rest),)))
    rest_table = maglev.table(tuple((s.address, 1) for s in rest), 65537, 11)
    for n in range(49600, 50000):  # (the latest: the fixture's LRU map holds them)
        client, port = V4.clients[n % 2], 1024 + n // 2
        before = predicted(client, port)
        now = to_vip(loaded, client, port, COAP)
        assert now == before if before != str(gone) else now == predicted(
            client, port, rest, rest_table)
    for n in range(400):
        client, port = V4.clients[n % 2], 40000 + n
        assert to_vip(loaded, client, port, COAP) == predicted(client, port, rest, rest_table)
