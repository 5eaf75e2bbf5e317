"""The planner (sbulb/state.py): pure Python, no root, no bcc.

The writes are replayed into a model of the maps (dicts keyed as the data
path keys them), and after every single write the model is checked the way
a packet would walk it: so "a packet never finds half a service" is checked
write by write, not only at the end.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

import pytest

from sbulb import state
from sbulb.config import MAGLEV_ENTRIES, MIRROR_SLOTS, RING_SIZE, IPAddress, Limits, RealServer
from sbulb.state import DesiredState, Layout, PlanError, ServiceSpec, plan

LIMITS = Limits(max_ports=8, max_real_servers=8, max_services=4)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def spec(name: str, vip: str, ports: tuple[int, ...], *servers: str) -> ServiceSpec:
    pool = []
    for s in servers:
        address, _, weight = s.partition("=")
        pool.append(RealServer(ip(address), int(weight) if weight else 1))
    return ServiceSpec(name, ip(vip), ports, tuple(pool))


COAP = spec("coap", "10.0.0.1", (5683, 5684), "10.0.1.1", "10.0.1.2=3", "10.0.1.3=0")
SYSLOG = spec("syslog", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2")
DNS6 = spec("dns", "2001:db8::1", (53,), "2001:db8:1::1", "2001:db8:1::2")


@dataclass
class Maps:
    """The data path's maps, as dicts."""

    names: dict[int, str] = field(default_factory=dict)
    addresses: set[tuple[str, IPAddress]] = field(default_factory=set)
    members: dict[int, tuple[IPAddress, int]] = field(default_factory=dict)
    endpoints: dict[tuple[IPAddress, int], tuple[int, int]] = field(default_factory=dict)
    ring: dict[int, int] = field(default_factory=dict)
    services: dict[int, tuple[IPAddress, int, int]] = field(default_factory=dict)
    copies: dict[int, tuple[int, int]] = field(default_factory=dict)  # service -> copy base, len
    maglev: dict[int, int] = field(default_factory=dict)  # sbulb_maglev entry -> slot
    tables: dict[int, tuple[int, int]] = field(default_factory=dict)  # service -> maglev base, len
    vip_ports: dict[tuple[IPAddress, int], int] = field(default_factory=dict)
    mirror_of: dict[int, int] = field(default_factory=dict)  # service -> its mirror slot
    mirror_entries: dict[int, int] = field(default_factory=dict)  # mirror slot -> entries

    def write(self, w: state.Write) -> None:
        if isinstance(w, state.NameService):
            self.names[w.id] = w.name
        elif isinstance(w, state.ForgetService):
            self.names.pop(w.id, None)
        elif isinstance(w, state.PutAddress):
            self.addresses.add((w.kind, w.address))
        elif isinstance(w, state.DelAddress):
            self.addresses.discard((w.kind, w.address))
        elif isinstance(w, state.PutMember):
            self.members[w.slot] = (w.address, w.service)
        elif isinstance(w, state.ClearMember):
            self.members.pop(w.slot, None)
        elif isinstance(w, state.PutEndpoint):
            self.endpoints[(w.address, w.port)] = (w.service, w.slot)
        elif isinstance(w, state.DelEndpoint):
            self.endpoints.pop((w.address, w.port), None)
        elif isinstance(w, state.PutRing):
            assert 0 <= w.index < 2 * RING_SIZE
            self.ring[w.index] = w.slot
        elif isinstance(w, state.PutMaglev):
            assert 0 <= w.base and w.base + len(w.slots) <= 2 * MAGLEV_ENTRIES
            self.maglev.update((w.base + i, slot) for i, slot in enumerate(w.slots))
        elif isinstance(w, state.PutService):
            self.services[w.id] = (w.vip, w.ring_base, w.ring_len)
            self.tables[w.id] = (w.maglev_base, w.maglev_len)
            self.copies[w.id] = (w.copy_base, w.copy_len)
            if w.flags & (state.SVC_F_MIRROR | state.SVC_F_TELEMETRY):
                self.mirror_of[w.id] = w.mirror
            else:
                assert w.copy_len == 0
                self.mirror_of.pop(w.id, None)
        elif isinstance(w, state.ClearService):
            self.services.pop(w.id, None)
            self.copies.pop(w.id, None)
            self.mirror_of.pop(w.id, None)
        elif isinstance(w, state.PutMirror):
            assert 0 <= w.slot < MIRROR_SLOTS
            self.mirror_entries[w.slot] = max(self.mirror_entries.get(w.slot, 0),
                                              len(w.targets))
        elif isinstance(w, state.TrimMirror):
            self.mirror_entries[w.slot] = min(self.mirror_entries.get(w.slot, 0), w.keep)
        elif isinstance(w, state.PutVipPort):
            self.vip_ports[(w.vip, w.port)] = w.service
        elif isinstance(w, state.DelVipPort):
            self.vip_ports.pop((w.vip, w.port), None)
        else:
            raise AssertionError(f"unknown write {w!r}")

    def check_walkable(self, final: bool = False) -> None:
        """What a packet may find: a VIP:port leads to a described service
        whose whole cycle names filled slots of that service, and a VIP the
        fragment filter knows; an endpoint names a filled slot of its
        service, whose address is a known real server. While a service's
        VIP changes, its old VIP:ports lead to it (with the new VIP) until
        they are removed; once the plan is applied, each leads to its VIP."""
        for (vip, _), service in self.vip_ports.items():
            assert service in self.services, f"VIP:port -> service {service} without descriptor"
            svc_vip, base, length = self.services[service]
            assert ("vip", vip) in self.addresses
            assert svc_vip == vip or not final
            for i in range(length):
                slot = self.ring[base + i]
                assert self.members[slot][1] == service, f"ring names slot {slot} of another"
            table_base, table_len = self.tables[service]
            for i in range(table_len):
                slot = self.maglev[table_base + i]
                assert self.members[slot][1] == service, f"maglev names slot {slot} of another"
            copy_base, copies = self.copies[service]
            for i in range(copies):
                slot = self.ring[copy_base + i]
                assert self.members[slot][1] == service, f"copies name slot {slot} of another"
            if service in self.mirror_of:
                # a copy for each target (more: copies the egress program drops)
                assert self.mirror_entries.get(self.mirror_of[service], 0) >= copies
        slots = [n for sid, n in self.mirror_of.items() if sid in self.vip_ports.values()]
        assert len(slots) == len(set(slots)), "two live mirror services share a broadcast map"
        for (address, _), (service, slot) in self.endpoints.items():
            assert self.members.get(slot) == (address, service)
            assert ("server", address) in self.addresses
            assert service in self.services, f"endpoint -> service {service} without descriptor"

    def pick(self, vip: IPAddress, port: int) -> list[IPAddress]:
        """The cycle a new client of vip:port walks."""
        _, base, length = self.services[self.vip_ports[(vip, port)]]
        return [self.members[self.ring[base + i]][0] for i in range(length)]

    def copy_targets(self, vip: IPAddress, port: int) -> list[IPAddress]:
        """The targets a copy (mirror, telemetry template) of vip:port goes to."""
        base, length = self.copies[self.vip_ports[(vip, port)]]
        return [self.members[self.ring[base + i]][0] for i in range(length)]


def run(maps: Maps, layout: Layout, desired: DesiredState,
        limits: Limits = LIMITS) -> state.Plan:
    """Plan, then apply write by write, checking the maps after each."""
    planned = plan(layout, desired, limits)
    for w in planned.writes:
        maps.write(w)
        maps.check_walkable()
    maps.check_walkable(final=True)
    return planned


def test_two_services_on_one_vip_and_an_ipv6_one() -> None:
    maps = Maps()
    p = run(maps, Layout(), DesiredState((COAP, SYSLOG, DNS6)))
    assert p.added == ("coap", "syslog", "dns") and not p.removed
    assert sorted(p.layout.ids.values()) == [1, 2, 3]
    assert maps.names == {i: n for n, i in p.layout.ids.items()}
    # weights: 1 and 3, the drained one has no ring entry (but a member: egress)
    assert sorted(maps.pick(ip("10.0.0.1"), 5683), key=str) == [ip("10.0.1.1")] + [ip("10.0.1.2")] * 3
    assert maps.pick(ip("10.0.0.1"), 5684) == maps.pick(ip("10.0.0.1"), 5683)
    assert sorted(maps.pick(ip("10.0.0.1"), 514)) == [ip("10.0.2.1"), ip("10.0.2.2")]
    assert sorted(maps.pick(ip("2001:db8::1"), 53)) == [ip("2001:db8:1::1"), ip("2001:db8:1::2")]
    assert (ip("10.0.1.3"), 5684) in maps.endpoints
    assert len(maps.endpoints) == 3 * 2 + 2 + 2


def test_a_change_in_one_service_writes_nothing_of_the_other() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP, SYSLOG)))
    syslog_id = first.layout.ids["syslog"]
    syslog_slots = {m: n for m, n in first.layout.slots.items() if m[0] == "syslog"}
    coap = spec("coap", "10.0.0.1", (5683, 5684), "10.0.1.1=2", "10.0.1.4")
    second = run(maps, first.layout, DesiredState((coap, SYSLOG)))
    touched_syslog = [w for w in second.writes
                      if getattr(w, "service", None) == syslog_id
                      or getattr(w, "slot", None) in syslog_slots.values()
                      and not isinstance(w, state.PutRing)]
    assert touched_syslog == []
    assert {m: n for m, n in second.layout.slots.items() if m[0] == "syslog"} == syslog_slots
    assert second.layout.ids == first.layout.ids
    (change_coap, change_syslog) = sorted(second.changes, key=lambda c: c.name)
    assert change_coap.added == (ip("10.0.1.4"),)
    assert set(change_coap.removed) == {ip("10.0.1.2"), ip("10.0.1.3")}
    assert change_coap.reweighted == (ip("10.0.1.1"),)
    assert not change_syslog.changed
    assert sorted(maps.pick(ip("10.0.0.1"), 514)) == [ip("10.0.2.1"), ip("10.0.2.2")]


def test_the_new_cycle_goes_into_the_other_half_and_the_old_stays_intact() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP,)))
    base, cycle = first.layout.rings["coap"]
    old_half = {i: maps.ring[i] for i in range(base, base + len(cycle))}
    second = run(maps, first.layout, DesiredState((spec("coap", "10.0.0.1", (5683,), "10.0.1.1"),)))
    new_base, _ = second.layout.rings["coap"]
    assert second.layout.half != first.layout.half
    assert (new_base < RING_SIZE) != (base < RING_SIZE)
    assert {i: maps.ring[i] for i in old_half} == old_half


def test_nothing_to_write_when_nothing_changes() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP, SYSLOG)))
    again = run(maps, first.layout, DesiredState((SYSLOG, COAP)))
    assert again.writes == () and not again.changed


def test_a_server_moved_between_services() -> None:
    """10.0.2.1 leaves syslog and joins coap: a new member of coap, its
    syslog member cleared only after nothing leads to it."""
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP, SYSLOG)))
    coap = spec("coap", "10.0.0.1", (5683, 5684), "10.0.1.1", "10.0.2.1")
    syslog = spec("syslog", "10.0.0.1", (514,), "10.0.2.2")
    second = run(maps, first.layout, DesiredState((coap, syslog)))
    assert maps.endpoints[(ip("10.0.2.1"), 5683)][0] == second.layout.ids["coap"]
    assert (ip("10.0.2.1"), 514) not in maps.endpoints
    assert ("server", ip("10.0.2.1")) in maps.addresses  # still a real server
    assert ("server", ip("10.0.1.2")) not in maps.addresses
    assert sorted(maps.pick(ip("10.0.0.1"), 5683)) == [ip("10.0.1.1"), ip("10.0.2.1")]


def test_the_same_server_in_two_services_on_different_ports() -> None:
    a = spec("a", "10.0.0.1", (1000,), "10.0.3.1")
    b = spec("b", "10.0.0.2", (2000,), "10.0.3.1")
    maps = Maps()
    p = run(maps, Layout(), DesiredState((a, b)))
    assert maps.endpoints[(ip("10.0.3.1"), 1000)][0] == p.layout.ids["a"]
    assert maps.endpoints[(ip("10.0.3.1"), 2000)][0] == p.layout.ids["b"]
    assert p.layout.slots[("a", ip("10.0.3.1"))] != p.layout.slots[("b", ip("10.0.3.1"))]


def test_removing_a_service_removes_everything_it_wrote() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP, DNS6)))
    run(maps, first.layout, DesiredState((COAP,)))
    only_coap = Maps()
    run(only_coap, Layout(), DesiredState((COAP,)))
    assert maps.vip_ports == only_coap.vip_ports
    assert maps.endpoints.keys() == only_coap.endpoints.keys()
    assert maps.addresses == only_coap.addresses
    assert len(maps.members) == len(only_coap.members)
    assert set(maps.services) == {first.layout.ids["coap"]}
    assert maps.names == {first.layout.ids["coap"]: "coap"}


def test_removals_come_after_every_addition() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP, SYSLOG)))
    p = plan(first.layout, DesiredState((DNS6, spec("syslog", "10.0.0.2", (514,), "10.0.2.9"))),
             LIMITS)
    kinds = [type(w) for w in p.writes]
    removals = (state.DelVipPort, state.ClearService, state.ForgetService, state.DelEndpoint,
                state.ClearMember, state.DelAddress)
    first_removal = min(i for i, k in enumerate(kinds) if k in removals)
    assert all(k in removals for k in kinds[first_removal:])
    switches = [i for i, w in enumerate(p.writes) if isinstance(w, state.PutService) and w.ring_len]
    assert max(switches) < kinds.index(state.PutVipPort)
    assert max(i for i, k in enumerate(kinds) if k is state.PutRing) < min(switches)
    # a new service is described (VIP, no cycle yet) before its endpoints
    dns = p.layout.ids["dns"]
    first_endpoint = min(i for i, w in enumerate(p.writes)
                         if isinstance(w, state.PutEndpoint) and w.service == dns)
    assert p.writes.index(state.PutService(dns, DNS6.vip, 0, 0)) < first_endpoint


def test_a_vip_change_moves_the_ports_to_the_new_vip() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((SYSLOG,)))
    moved = spec("syslog", "10.0.0.9", (514,), "10.0.2.1", "10.0.2.2")
    second = run(maps, first.layout, DesiredState((moved,)))
    assert list(maps.vip_ports) == [(ip("10.0.0.9"), 514)]
    assert ("vip", ip("10.0.0.1")) not in maps.addresses
    assert second.changes[0].vip_changed
    assert second.layout.ids == first.layout.ids  # same service: its clients stay


def test_a_rename_is_a_new_service_and_is_reported() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((SYSLOG,)))
    renamed = spec("logs", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2")
    second = run(maps, first.layout, DesiredState((renamed,)))
    assert second.renamed == (("syslog", "logs"),)
    assert second.layout.ids["logs"] != first.layout.ids["syslog"]
    assert maps.names == {second.layout.ids["logs"]: "logs"}


def test_ids_come_back_from_the_registry_after_a_restart() -> None:
    """After a restart the maps are empty: an id only the registry holds
    is free at once (renamed there, not forgotten after)."""
    p = plan(Layout.with_ids({"syslog": 3, "gone": 1}), DesiredState((COAP, SYSLOG)), LIMITS)
    assert p.layout.ids == {"syslog": 3, "coap": 1}
    assert state.NameService(1, "coap") in p.writes
    assert not [w for w in p.writes if isinstance(w, state.ForgetService)]


def test_a_full_registry_does_not_stop_a_start() -> None:
    registry = {f"old{i}": i for i in range(1, 2 * LIMITS.max_services + 1)}
    p = plan(Layout.with_ids(registry), DesiredState((COAP, SYSLOG, DNS6)), LIMITS)
    assert sorted(p.layout.ids.values()) == [1, 2, 3]


def test_renaming_every_service_at_the_limit() -> None:
    """The old ids still serve until the end of the plan: the new names
    take others (ids go up to twice --max-services)."""
    full = DesiredState(tuple(spec(f"s{i}", "10.0.0.1", (i + 1,), f"10.0.1.{i + 1}")
                              for i in range(LIMITS.max_services)))
    maps = Maps()
    first = run(maps, Layout(), full)
    renamed = DesiredState(tuple(ServiceSpec("r" + s.name, s.vip, s.ports, s.servers)
                                 for s in full.services))
    second = run(maps, first.layout, renamed)
    assert not set(second.layout.ids.values()) & set(first.layout.ids.values())
    assert maps.names == {i: n for n, i in second.layout.ids.items()}


def test_an_id_beyond_a_smaller_max_services_is_not_kept() -> None:
    p = plan(Layout.with_ids({"syslog": 60}), DesiredState((SYSLOG,)), LIMITS)
    assert 1 <= p.layout.ids["syslog"] <= 2 * LIMITS.max_services
    assert state.ForgetService(60) in p.writes  # or the registry would say 60 again


@pytest.mark.parametrize(
    "desired,reason",
    [
        (DesiredState((COAP, COAP)), "used twice"),
        (DesiredState(tuple(spec(f"s{i}", "10.0.0.1", (i + 1,), "10.0.1.1") for i in range(5))),
         "at most 4"),
        (DesiredState((spec("big", "10.0.0.1", tuple(range(1, 9)),
                            *(f"10.0.1.{i}" for i in range(1, 10))),)),
         "real server:port pairs"),
    ],
)
def test_what_does_not_fit_is_refused_before_any_write(desired: DesiredState, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        plan(Layout(), desired, LIMITS)


def test_rollback_restores_the_running_maps_after_a_partial_apply() -> None:
    """Writes towards a new state fail part way; the rollback plan takes
    the maps back to exactly what a clean start with the old state holds."""
    old_desired = DesiredState((COAP, SYSLOG))
    new_desired = DesiredState((spec("coap", "10.0.0.1", (5683,), "10.0.1.9"), DNS6))
    for cut in range(0, 60):
        maps = Maps()
        first = run(maps, Layout(), old_desired)
        attempted = plan(first.layout, new_desired, LIMITS)
        for w in attempted.writes[:cut]:
            maps.write(w)
        back = state.rollback(first.layout, attempted.layout, old_desired, LIMITS)
        for w in back.writes:
            maps.write(w)
            maps.check_walkable()
        maps.check_walkable(final=True)
        # the rollback's layout is what the maps hold: a later plan from it
        # leaves them as a clean start would
        later = Maps()
        run(later, Layout(), new_desired)
        moved = run(maps, back.layout, new_desired)
        assert maps.vip_ports.keys() == later.vip_ports.keys()
        assert sorted(str(a) for a, _ in maps.members.values()) == sorted(
            str(a) for a, _ in later.members.values())
        assert maps.addresses == later.addresses
        run(maps, moved.layout, old_desired)  # and back again
        assert back.layout.ids == first.layout.ids
        assert maps.names == {i: n for n, i in first.layout.ids.items()}
        clean = Maps()
        run(clean, Layout(), old_desired)
        assert maps.vip_ports == clean.vip_ports
        assert maps.endpoints.keys() == clean.endpoints.keys()
        assert maps.addresses == clean.addresses
        assert sorted(maps.members.values()) == sorted(clean.members.values())
        for vip, port in clean.vip_ports:
            assert sorted(maps.pick(vip, port)) == sorted(clean.pick(vip, port))


def test_legacy_associations_go_to_the_service_of_their_server() -> None:
    default = spec("default", "10.0.0.1", (514,), "10.0.2.1")
    desired = DesiredState((COAP, default, DNS6))
    assert state.legacy_service(ip("10.0.2.1"), desired) == "default"
    assert state.legacy_service(ip("10.0.1.2"), desired) == "coap"
    assert state.legacy_service(ip("10.9.9.9"), desired) == "default"  # picks anew there
    assert state.legacy_service(ip("2001:db8:9::9"), desired) is None
    assert state.legacy_service(ip("2001:db8:1::2"), desired) == "dns"


def test_a_mode_change_rewrites_only_the_descriptor() -> None:
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP, SYSLOG)))
    syslog = ServiceSpec("syslog", SYSLOG.vip, SYSLOG.ports, SYSLOG.servers, "per-packet")
    second = run(maps, first.layout, DesiredState((COAP, syslog)))
    assert [type(w) for w in second.writes] == [state.PutService]
    (w,) = second.writes
    assert w.id == first.layout.ids["syslog"] and w.flags == state.SVC_F_PER_PACKET
    assert [c.name for c in second.changes if c.mode_changed] == ["syslog"]


def test_with_weights_replaces_only_the_members_named() -> None:
    """sbulbctl set-weight / drain: by (service, server); the same address
    in another service, and the other servers, keep the file's weight."""
    base = DesiredState((spec("a", "10.0.0.1", (53,), "10.0.1.1", "10.0.1.2"),
                         spec("b", "10.0.0.1", (54,), "10.0.1.1")))
    changed = base.with_weights({("a", ip("10.0.1.1")): 0, ("a", ip("10.0.9.9")): 5})
    weights = {(s.name, str(rs.address)): rs.weight
               for s in changed.services for rs in s.servers}
    assert weights == {("a", "10.0.1.1"): 0, ("a", "10.0.1.2"): 1, ("b", "10.0.1.1"): 1}
    assert base.with_weights({}) is base


def mirror(name: str, vip: str, ports: tuple[int, ...], *servers: str) -> ServiceSpec:
    return replace(spec(name, vip, ports, *servers), mode="mirror")


def test_a_mirror_cycle_is_each_target_of_weight_above_zero_once() -> None:
    """Mirror: the cycle lists each server of weight > 0 once, in the
    file's order (weights do not repeat it), the first is the primary,
    and the broadcast map has an entry per target before the descriptor
    points at the cycle."""
    maps = Maps()
    logs = mirror("logs", "10.0.0.1", (514,), "10.0.2.1=3", "10.0.2.2=0", "10.0.2.3")
    first = run(maps, Layout(), DesiredState((COAP, logs)))
    assert maps.pick(ip("10.0.0.1"), 514) == [ip("10.0.2.1"), ip("10.0.2.3")]
    (put,) = [w for w in first.writes if isinstance(w, state.PutMirror)]
    assert put.targets == (ip("10.0.2.1"), ip("10.0.2.3"))
    last_descriptor = max(i for i, w in enumerate(first.writes)
                          if isinstance(w, state.PutService) and w.ring_len)
    assert first.writes.index(put) < last_descriptor
    primary = {w.address: w.flags for w in first.writes if isinstance(w, state.PutMember)}
    assert primary[ip("10.0.2.1")] == state.MEMBER_F_PRIMARY
    assert primary[ip("10.0.2.3")] == 0
    assert all(flags == 0 for address, flags in primary.items()
               if address in {s.address for s in COAP.servers})


def test_mirror_targets_grow_before_and_shrink_after_the_descriptor() -> None:
    maps = Maps()
    two = mirror("logs", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2")
    three = mirror("logs", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2", "10.0.2.3")
    first = run(maps, Layout(), DesiredState((two,)))
    grown = run(maps, first.layout, DesiredState((three,)))
    assert maps.mirror_entries[first.layout.mirrors["logs"]] == 3
    assert not any(isinstance(w, state.TrimMirror) for w in grown.writes)
    shrunk = run(maps, grown.layout, DesiredState((two,)))
    (trim,) = [w for w in shrunk.writes if isinstance(w, state.TrimMirror)]
    assert trim.keep == 2 and maps.mirror_entries[trim.slot] == 2
    assert shrunk.writes.index(trim) > max(
        i for i, w in enumerate(shrunk.writes) if isinstance(w, state.PutService))
    # a health-check down target leaves the cycle like a weight of 0
    down = run(maps, shrunk.layout, DesiredState((two,)).with_down(
        {"logs": frozenset({ip("10.0.2.2")})}))
    assert maps.pick(ip("10.0.0.1"), 514) == [ip("10.0.2.1")]
    assert any(isinstance(w, state.TrimMirror) and w.keep == 1 for w in down.writes)


def test_mirror_slots_are_kept_by_name_and_a_rename_takes_a_new_one() -> None:
    maps = Maps()
    logs = mirror("logs", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2")
    stats = mirror("stats", "10.0.0.1", (8125,), "10.0.2.1", "10.0.2.3")
    first = run(maps, Layout(), DesiredState((logs, stats)))
    assert sorted(first.layout.mirrors.values()) == [0, 1]
    again = run(maps, first.layout, DesiredState((logs, replace(stats, ports=(8126,)))))
    assert again.layout.mirrors == first.layout.mirrors
    renamed = run(maps, again.layout, DesiredState((replace(logs, name="syslog"),
                                                    again.layout.services["stats"])))
    assert renamed.layout.mirrors["syslog"] not in first.layout.mirrors.values()
    assert state.TrimMirror(first.layout.mirrors["logs"], 0) in renamed.writes
    sticky = run(maps, renamed.layout, DesiredState((replace(logs, name="syslog", mode="sticky"),
                                                     again.layout.services["stats"])))
    assert "syslog" not in sticky.layout.mirrors
    assert state.TrimMirror(renamed.layout.mirrors["syslog"], 0) in sticky.writes


def test_mirror_limits_are_refused_before_any_write() -> None:
    many = tuple(mirror(f"m{i}", "10.0.0.1", (1000 + i,), "10.0.2.1") for i in range(9))
    with pytest.raises(PlanError, match="9 mirror and telemetry services but at most 8"):
        plan(Layout(), DesiredState(many), Limits(max_services=16))
    wide = mirror("wide", "10.0.0.1", (514,), *(f"10.0.3.{i}" for i in range(1, 34)))
    with pytest.raises(PlanError, match="33 targets but at most 32"):
        plan(Layout(), DesiredState((wide,)), Limits(max_real_servers=64))


def telemetry(name: str, vip: str, ports: tuple[int, ...], *servers: str) -> ServiceSpec:
    return replace(spec(name, vip, ports, *servers), mode="telemetry")


def test_telemetry_is_per_packet_by_weight_with_each_target_once_for_templates() -> None:
    """Telemetry: the cycle is by weight (per packet), the copies of templates
    go to each server of weight > 0 once, as listed, after the cycle in the
    ring; no primary; the broadcast map is filled before the descriptor."""
    maps = Maps()
    flows = telemetry("flows", "10.0.0.1", (2055,), "10.0.2.1=2", "10.0.2.2=0", "10.0.2.3")
    first = run(maps, Layout(), DesiredState((COAP, flows)))
    a, c = ip("10.0.2.1"), ip("10.0.2.3")
    assert sorted(maps.pick(ip("10.0.0.1"), 2055), key=str) == [a, a, c]
    assert maps.copy_targets(ip("10.0.0.1"), 2055) == [a, c]
    (put,) = [w for w in first.writes if isinstance(w, state.PutMirror)]
    assert put.targets == (a, c)
    (desc,) = [w for w in first.writes if isinstance(w, state.PutService) and w.copy_len]
    assert desc.flags == state.SVC_F_PER_PACKET | state.SVC_F_TELEMETRY
    assert desc.copy_base == desc.ring_base + desc.ring_len
    assert first.writes.index(put) < first.writes.index(desc)
    assert all(w.flags == 0 for w in first.writes if isinstance(w, state.PutMember))
    # a target joins (back from weight 0): both the cycle and the copies grow
    joined = run(maps, first.layout, DesiredState((COAP, replace(
        flows, servers=tuple(replace(s, weight=1) for s in flows.servers)))))
    assert maps.copy_targets(ip("10.0.0.1"), 2055) == [a, ip("10.0.2.2"), c]
    assert not any(isinstance(w, state.TrimMirror) for w in joined.writes)
    # to mirror and back: the slot is kept, the copies follow the mode
    mirrored = run(maps, joined.layout, DesiredState((COAP, replace(
        joined.layout.services["flows"], mode="mirror"))))
    assert mirrored.layout.mirrors == joined.layout.mirrors
    assert maps.copy_targets(ip("10.0.0.1"), 2055) == maps.pick(ip("10.0.0.1"), 2055)
    sticky = run(maps, mirrored.layout, DesiredState((COAP, replace(
        joined.layout.services["flows"], mode="sticky"))))
    assert "flows" not in sticky.layout.mirrors
    assert any(isinstance(w, state.TrimMirror) and w.keep == 0 for w in sticky.writes)


def test_a_rollback_fills_the_broadcast_maps_before_the_descriptors() -> None:
    """A rollback writes each descriptor whole at once: the copy targets
    its broadcast map needs go first. A slot new to a service loses the
    entries a failed plan may have left beyond its targets."""
    logs = mirror("logs", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2")
    first = plan(Layout(), DesiredState((logs,)), LIMITS)
    (put,) = [w for w in first.writes if isinstance(w, state.PutMirror)]
    assert state.TrimMirror(put.slot, 2) in first.writes
    assert first.writes.index(state.TrimMirror(put.slot, 2)) == first.writes.index(put) + 1
    wider = mirror("logs", "10.0.0.1", (514,), "10.0.2.1", "10.0.2.2", "10.0.2.3")
    attempted = plan(first.layout, DesiredState((wider,)), LIMITS)
    back = state.rollback(first.layout, attempted.layout, DesiredState((logs,)), LIMITS)
    puts = [i for i, w in enumerate(back.writes) if isinstance(w, state.PutMirror)]
    descriptors = [i for i, w in enumerate(back.writes) if isinstance(w, state.PutService)]
    assert puts and max(puts) < min(descriptors)
    maps = Maps()
    for w in back.writes:
        maps.write(w)
    assert maps.mirror_entries[put.slot] >= 2


def test_maglev_tables_are_written_to_the_half_not_in_use_before_the_descriptor() -> None:
    """scheduler = maglev: the table names the service's member slots
    (weight 0 and down servers none), is written whole into the other
    half of sbulb_maglev before the descriptor points at it, and a plan
    that changes nothing writes no table."""
    from sbulb.config import Scheduler

    maglev_spec = replace(spec("dtls", "10.0.0.1", (5684,), "10.0.2.1", "10.0.2.2=0",
                               "10.0.2.3"), scheduler=Scheduler("maglev", 251, 3))
    maps = Maps()
    first = run(maps, Layout(), DesiredState((COAP, maglev_spec)))
    (put,) = [w for w in first.writes if isinstance(w, state.PutMaglev)]
    (desc,) = [w for w in first.writes if isinstance(w, state.PutService) and w.maglev_len]
    assert (desc.maglev_base, desc.maglev_len) == (put.base, 251)
    assert first.writes.index(put) < first.writes.index(desc)
    named = {first.layout.slots[("dtls", ip(a))] for a in ("10.0.2.1", "10.0.2.3")}
    assert set(put.slots) == named
    again = run(maps, first.layout, DesiredState((COAP, maglev_spec)))
    assert not any(isinstance(w, state.PutMaglev) for w in again.writes)
    down = run(maps, again.layout, DesiredState((COAP, maglev_spec)).with_down(
        {"dtls": frozenset({ip("10.0.2.1")})}))
    (moved,) = [w for w in down.writes if isinstance(w, state.PutMaglev)]
    assert set(moved.slots) == {first.layout.slots[("dtls", ip("10.0.2.3"))]}
    assert (moved.base < MAGLEV_ENTRIES) != (put.base < MAGLEV_ENTRIES)  # the other half
    with pytest.raises(PlanError, match="Maglev tables of all services add up to"):
        plan(Layout(), DesiredState(tuple(
            replace(maglev_spec, name=f"m{i}", ports=(6000 + i,),
                    scheduler=Scheduler("maglev", 65537, 0)) for i in range(5))),
             Limits(max_services=8))
