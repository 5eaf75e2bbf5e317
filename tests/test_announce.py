"""When sbulb announces a VIP, and what it gives BIRD (sbulb/announce.py)."""

from __future__ import annotations

import ipaddress

from sbulb.announce import bird_config, decide
from sbulb.config import RealServer
from sbulb.state import DesiredState, ServiceSpec

VIP, VIP6 = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1")
RS = ipaddress.ip_address("10.0.2.1")


def svc(name: str, vip, weight: int = 1, down: bool = False) -> ServiceSpec:
    server = RealServer(RS if vip.version == 4 else ipaddress.ip_address("fd00::2"), weight)
    return ServiceSpec(name, vip, (5683,), (server,),
                       down=frozenset({server.address}) if down else frozenset())


def test_a_vip_is_announced_while_attached_and_one_of_its_services_can_serve() -> None:
    both = DesiredState((svc("coap", VIP), svc("dns", VIP, weight=0), svc("six", VIP6)))
    assert decide(both, attached=True) == {VIP: "announced", VIP6: "announced"}
    assert decide(both, attached=False) == {VIP: "not attached", VIP6: "not attached"}
    dead = DesiredState((svc("coap", VIP, down=True), svc("dns", VIP, weight=0)))
    assert decide(dead, attached=True) == {VIP: "no server takes new clients"}
    # a reload that failed to apply to one service withdraws its VIP, unless
    # another service of the VIP serves
    assert decide(both, True, failed=["six"]) == {VIP: "announced", VIP6: "reload failed"}
    assert decide(both, True, failed=["coap"])[VIP] == "no server takes new clients"


def test_the_bird_file_holds_a_static_protocol_per_family() -> None:
    text = bird_config([VIP6, VIP], pid=42)
    assert "protocol static sbulb_vips4 {\n\tipv4;\n\troute 10.0.0.1/32 blackhole;\n}" in text
    assert "protocol static sbulb_vips6 {\n\tipv6;\n\troute fd00::1/128 blackhole;\n}" in text
    empty = bird_config([], pid=42)
    assert "route" not in empty and "sbulb_vips4" in empty and "sbulb_vips6" in empty


def test_bird_is_told_only_what_changes_and_a_failure_is_retried(tmp_path) -> None:
    """No BIRD socket here: each change is tried (and fails, logged), the
    file is still written; the same set twice is not tried again."""
    from sbulb.announce import BirdAnnouncer

    include = tmp_path / "vips.conf"
    announcer = BirdAnnouncer(include, str(tmp_path / "no-bird.ctl"))
    assert not announcer.active
    assert announcer.apply({VIP: "announced"}) is False
    assert announcer.active and "10.0.0.1/32" in include.read_text()
    assert announcer.apply({VIP: "announced"}) is False  # still not told: tried again
    assert announcer.apply({VIP: "not attached"}) is False
    assert "route" not in include.read_text()
