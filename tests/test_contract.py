"""The C side (sbulb/bpf/*.h) and the Python side agree on numbers and
sizes: counter slots, event types, map key/value layouts."""

from __future__ import annotations

import ctypes as ct
import re
from pathlib import Path

import pytest

from sbulb.config import Limits
from sbulb.consts import STAT_MAX, EventType, Stat
from sbulb.dataplane import (
    ADDR_SIZE,
    ASSOC_KEY_SIZE,
    ASSOC_SIZE,
    ENDPOINT_SIZE,
    EVENT_SIZE,
    MEMBER_REF_SIZE,
    MEMBER_SIZE,
    SERVICE_SIZE,
    Dataplane,
    source_dir,
)
from tests.conftest import require_root

BPF_DIR = Path(__file__).resolve().parents[1] / "sbulb" / "bpf"


def c_enum(header: str, name: str) -> dict[str, int]:
    """NAME = number pairs of `enum name { ... }` in a header."""
    text = (BPF_DIR / header).read_text()
    body = re.search(r"enum %s \{(.*?)\};" % name, text, re.S)
    assert body, f"enum {name} not found in {header}"
    return {k: int(v) for k, v in re.findall(r"^\s*(\w+)\s*=\s*(\d+)\s*,", body.group(1), re.M)}


def test_stat_slots_match_the_c_enum() -> None:
    c = c_enum("consts.h", "sbulb_stat")
    assert c.pop("SBULB_STAT_MAX") == STAT_MAX == len(Stat)
    assert c == {f"SBULB_STAT_{s.name}": s.value for s in Stat}


def test_event_types_match_the_c_enum() -> None:
    c = c_enum("consts.h", "sbulb_event_type")
    assert c == {f"SBULB_EV_{e.name}": e.value for e in EventType}


def test_every_slot_has_a_kind() -> None:
    from sbulb.consts import STAT_KINDS, StatKind

    assert set(STAT_KINDS) == set(Stat)
    # the action slots are XDP_ABORTED.. XDP_REDIRECT in order (balancer.c
    # counts SBULB_STAT_ACTION_ABORTED + action)
    from sbulb.consts import XdpAction

    actions = [s for s in Stat if s.kind is StatKind.ACTION]
    assert [s.value - Stat.ACTION_ABORTED for s in actions] == [a.value for a in XdpAction]
    assert [s.label for s in actions] == [a.name.lower() for a in XdpAction]


def test_numbers_are_unique() -> None:
    assert len({s.value for s in Stat}) == len(Stat)
    assert sorted(s.value for s in Stat) == list(range(STAT_MAX))


def test_sources_are_found_as_package_data() -> None:
    assert source_dir() == BPF_DIR
    text = "".join(p.read_text() for p in BPF_DIR.iterdir())
    assert not re.search(r'#include\s+"[^"]+\.c"', text), "never #include a .c file"


def test_map_layouts_match_what_python_packs(loaded: Dataplane) -> None:
    sizes = {
        "sbulb_vip_ports": (ENDPOINT_SIZE, 4),
        "sbulb_endpoints": (ENDPOINT_SIZE, MEMBER_REF_SIZE),
        "sbulb_svc": (4, SERVICE_SIZE),
        "sbulb_rs": (4, MEMBER_SIZE),
        "sbulb_vips": (ADDR_SIZE, 4),
        "sbulb_rs_index": (ADDR_SIZE, 4),
        "sbulb_ring": (4, 4),
        "sbulb_probes": (ENDPOINT_SIZE, 4),
        "sbulb_assoc": (ASSOC_KEY_SIZE, ASSOC_SIZE),
    }
    for name, (key, value) in sizes.items():
        table = loaded._table(name)
        assert (ct.sizeof(table.Key), ct.sizeof(table.Leaf)) == (key, value), name


def test_event_layout_matches() -> None:
    require_root()
    dp = Dataplane(Limits(max_associations=64), events=1)
    dp.load()
    try:
        table = dp._table("sbulb_events")
        cls = type(table.event(ct.addressof(ct.create_string_buffer(EVENT_SIZE))))
        assert ct.sizeof(cls) == EVENT_SIZE
        assert [f[0] for f in cls._fields_] == [
            "type", "client_port", "port", "service", "client", "server", "other"
        ]
    finally:
        dp.close()


def test_ring_size_matches() -> None:
    from sbulb.config import RING_SIZE

    text = (BPF_DIR / "consts.h").read_text()
    assert re.search(rf"#define SBULB_RING_SIZE {RING_SIZE}\b", text)


@pytest.mark.parametrize("define,value", [
    ("SBULB_MAX_PORTS", 16), ("SBULB_MAX_REAL_SERVERS", 32),
    ("SBULB_MAX_ASSOCIATIONS", 1048576),
])
def test_c_defaults_are_sbulbs_defaults(define: str, value: int) -> None:
    text = (BPF_DIR / "consts.h").read_text()
    assert re.search(rf"#define {define} {value}\b", text)
    limits = Limits()
    assert value in (limits.max_ports, limits.max_real_servers, limits.max_associations)
