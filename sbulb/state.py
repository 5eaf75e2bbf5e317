"""Desired state and the planner (pure Python: no bcc, no root).

Everything that changes what sbulb balances (the config file at start and
reload, the command line, sbulbctl; later health checks) produces a
DesiredState. plan() compares it with the Layout the maps hold now and
returns the new Layout and the ordered list of map writes that takes the
data path there. The dataplane only applies writes; it decides nothing.

Order is what keeps packets safe while the writes happen one by one:

  1. names of new services (the id registry; no packet reads it)
  2. new VIP and real-server addresses (the fragment filters)
  3. new members (service, real server) in their slots
  4. new or changed real server:port endpoints (egress)
  5. every service's round-robin cycle into the ring half not in use
  6. service descriptors (VIP, ring half): the switch for each service
  7. new or changed VIP:port entries (ingress)
  8. then removals, in the reverse order: VIP:ports, descriptors and
     names, endpoints, members, addresses.

So a packet finds either the old service or the new one: a VIP:port leads
to a descriptor whose cycle is complete and whose slots are filled, and a
member is removed only after nothing leads to it. Slots and ids of what
stays are kept: a client keeps its server unless that server leaves its
service.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, NamedTuple, Sequence, Union

from sbulb import maglev
from sbulb.config import (
    COPY_MODES,
    DEFAULT_SERVICE,
    MAGLEV_ENTRIES,
    MAX_MIRROR_SERVICES,
    MAX_MIRROR_TARGETS,
    MIRROR_SLOTS,
    RING_SIZE,
    Checks,
    Config,
    IPAddress,
    Limits,
    RealServer,
    Scheduler,
    smooth_weighted_order,
)


SVC_F_PER_PACKET = 1  # every datagram to the next server, no association
SVC_F_MIRROR = 2  # every datagram to every server of the cycle
SVC_F_TELEMETRY = 4  # with SVC_F_PER_PACKET: templates to every target
MEMBER_F_MOVE = 1  # down, on_down = move: its clients pick anew
MEMBER_F_PRIMARY = 2  # mirror: the server whose replies reach clients


class PlanError(ValueError):
    """The desired state does not fit the maps. str() is one line."""


# ---- desired state


@dataclass(frozen=True)
class ServiceSpec:
    """One service as it should run."""

    name: str
    vip: IPAddress
    ports: tuple[int, ...]
    servers: tuple[RealServer, ...]
    mode: str = "sticky"
    checks: Checks = Checks()
    # servers the health checks say are down: out of the cycle (no new
    # client); with on_down = move their clients also pick anew
    down: frozenset[IPAddress] = frozenset()
    scheduler: Scheduler = Scheduler()

    @property
    def maglev(self) -> tuple[int, ...]:
        """scheduler = maglev: its lookup table, each entry the index in
        `servers` of the server a new client hashed there gets (weight 0
        and down servers hold none); () otherwise."""
        if self.scheduler.kind != "maglev":
            return ()
        weights = tuple((s.address, 0 if s.address in self.down else s.weight)
                        for s in self.servers)
        return maglev.table(weights, self.scheduler.table, self.scheduler.seed)

    @property
    def serving(self) -> tuple[RealServer, ...]:
        """The servers that take new clients (by weight): those not down."""
        return tuple(s for s in self.servers if s.address not in self.down)

    def member_flags(self, address: IPAddress) -> int:
        """A member's flags (sbulb/bpf/consts.h SBULB_MEMBER_F_*)."""
        moves = address in self.down and self.checks.on_down == "move"
        primary = self.mode == "mirror" and self.servers[0].address == address
        return (MEMBER_F_MOVE if moves else 0) | (MEMBER_F_PRIMARY if primary else 0)

    @property
    def flags(self) -> int:
        """The descriptor's flags (sbulb/bpf/consts.h SBULB_SVC_F_*)."""
        return {"per-packet": SVC_F_PER_PACKET, "mirror": SVC_F_MIRROR,
                "telemetry": SVC_F_PER_PACKET | SVC_F_TELEMETRY}.get(self.mode, 0)

    @property
    def copies(self) -> tuple[IPAddress, ...]:
        """The targets that each get a copy (mirror: of every datagram,
        telemetry: of templates), as listed: every server with weight > 0
        and not down. None for the other modes."""
        if self.mode not in COPY_MODES:
            return ()
        return tuple(s.address for s in self.serving if s.weight > 0)

    @property
    def cycle(self) -> tuple[IPAddress, ...]:
        """Its servers in the data path's cycle: by weight (smooth weighted
        round robin), or for mirror each target once, as listed."""
        if self.mode == "mirror":
            return self.copies
        return tuple(smooth_weighted_order(self.serving))

    @property
    def ring(self) -> tuple[IPAddress, ...]:
        """What it holds in the ring: its cycle, and for telemetry its copy
        targets after it (mirror's copies are its cycle)."""
        return self.cycle + (self.copies if self.mode == "telemetry" else ())

    def server(self, address: IPAddress) -> RealServer | None:
        return next((s for s in self.servers if s.address == address), None)


@dataclass(frozen=True)
class DesiredState:
    """What the data path should do: every service, by name."""

    services: tuple[ServiceSpec, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> "DesiredState":
        return cls(tuple(
            ServiceSpec(s.name, s.virtual_server, tuple(s.ports), tuple(s.real_servers), s.mode,
                        s.checks, scheduler=s.scheduler)
            for s in config.all_services
        ))

    @classmethod
    def single(cls, vip: IPAddress, ports: Sequence[int],
               servers: Sequence[RealServer | IPAddress]) -> "DesiredState":
        """sbulb's one virtual server, as the service `default`."""
        rs = tuple(s if isinstance(s, RealServer) else RealServer(s) for s in servers)
        return cls((ServiceSpec(DEFAULT_SERVICE, vip, tuple(ports), rs),))

    def service(self, name: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.name == name), None)

    def with_down(self, down: Mapping[str, frozenset[IPAddress]]) -> "DesiredState":
        """This state with the servers the health checks say are down (by
        service name; a server not in its service's pool is ignored)."""
        return DesiredState(tuple(
            replace(s, down=frozenset(a for a in down.get(s.name, ()) if s.server(a)))
            for s in self.services))

    def with_weights(self, weights: Mapping["Member", int]) -> "DesiredState":
        """This state with some servers' weights replaced (sbulbctl server
        set-weight / drain), by (service name, address); others as they are."""
        if not weights:
            return self
        return DesiredState(tuple(
            replace(s, servers=tuple(
                replace(rs, weight=weights.get((s.name, rs.address), rs.weight))
                for rs in s.servers))
            for s in self.services))

    def with_service(self, spec: ServiceSpec) -> "DesiredState":
        """This state with one service replaced (or added)."""
        others = tuple(s for s in self.services if s.name != spec.name)
        if self.service(spec.name) is None:
            return DesiredState(others + (spec,))
        return DesiredState(tuple(spec if s.name == spec.name else s for s in self.services))


# ---- what the maps hold


Member = tuple[str, IPAddress]  # (service name, real server)


@dataclass(frozen=True)
class Layout:
    """The running state as the planner placed it in the maps."""

    ids: Mapping[str, int] = field(default_factory=dict)  # service name -> id
    services: Mapping[str, ServiceSpec] = field(default_factory=dict)
    slots: Mapping[Member, int] = field(default_factory=dict)  # member -> slot
    rings: Mapping[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    half: int = 1  # ring half in use; the first plan writes half 0
    mirrors: Mapping[str, int] = field(default_factory=dict)  # mirror service -> its slot
    # maglev services' tables (first entry, member slot per entry), in
    # sbulb_maglev's half in use
    maglevs: Mapping[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    maglev_half: int = 1

    @classmethod
    def with_ids(cls, ids: Mapping[str, int]) -> "Layout":
        """An empty data path with service ids kept from before (the pinned
        registry: the associations are keyed by them)."""
        return cls(ids=dict(ids))

    def endpoints(self) -> dict[tuple[IPAddress, int], tuple[int, int]]:
        """(real server, port) -> (service id, slot)."""
        return _endpoints(self.services, self.ids, self.slots)

    def vip_ports(self) -> dict[tuple[IPAddress, int], int]:
        return _vip_ports(self.services, self.ids)


def _endpoints(services: Mapping[str, ServiceSpec], ids: Mapping[str, int],
               slots: Mapping[Member, int]) -> dict[tuple[IPAddress, int], tuple[int, int]]:
    return {(s.address, port): (ids[spec.name], slots[(spec.name, s.address)])
            for spec in services.values() for s in spec.servers for port in spec.ports}


def _vip_ports(services: Mapping[str, ServiceSpec],
               ids: Mapping[str, int]) -> dict[tuple[IPAddress, int], int]:
    return {(spec.vip, port): ids[spec.name] for spec in services.values() for port in spec.ports}


# ---- writes (the dataplane's vocabulary)


@dataclass(frozen=True)
class NameService:
    id: int
    name: str


@dataclass(frozen=True)
class ForgetService:
    id: int


@dataclass(frozen=True)
class PutAddress:
    kind: str  # "vip" or "server"
    address: IPAddress


@dataclass(frozen=True)
class DelAddress:
    kind: str
    address: IPAddress


@dataclass(frozen=True)
class PutMember:
    slot: int
    address: IPAddress
    service: int
    flags: int = 0


@dataclass(frozen=True)
class ClearMember:
    """Empty a slot and zero its counters (the next member there starts at 0)."""

    slot: int


@dataclass(frozen=True)
class PutEndpoint:
    address: IPAddress
    port: int
    service: int
    slot: int


@dataclass(frozen=True)
class DelEndpoint:
    address: IPAddress
    port: int


@dataclass(frozen=True)
class PutRing:
    index: int
    slot: int


@dataclass(frozen=True)
class PutMaglev:
    """A Maglev table into sbulb_maglev from `base`: a member slot per entry."""

    base: int
    slots: tuple[int, ...]

    def __repr__(self) -> str:  # (errors name a write: not its 65537 entries)
        return f"PutMaglev(base={self.base}, {len(self.slots)} entries)"


@dataclass(frozen=True)
class PutService:
    id: int
    vip: IPAddress
    ring_base: int
    ring_len: int
    flags: int = 0
    mirror: int = 0  # mirror slot (mirror, telemetry) ...
    copy_base: int = 0  # ... and where the targets of its copies are in the ring
    copy_len: int = 0
    maglev_base: int = 0  # scheduler = maglev: its table in sbulb_maglev (len 0: rr)
    maglev_len: int = 0


@dataclass(frozen=True)
class ClearService:
    """Empty a descriptor, zero its counters and its round-robin cursor."""

    id: int


@dataclass(frozen=True)
class PutMirror:
    """A mirror or telemetry service's broadcast map: entry i for the i-th
    target of its copies (the dataplane finds the interface they are
    reached through)."""

    slot: int
    targets: tuple[IPAddress, ...]


@dataclass(frozen=True)
class TrimMirror:
    """Remove a mirror slot's entries from `keep` on."""

    slot: int
    keep: int


@dataclass(frozen=True)
class PutVipPort:
    vip: IPAddress
    port: int
    service: int


@dataclass(frozen=True)
class DelVipPort:
    vip: IPAddress
    port: int


Write = Union[NameService, ForgetService, PutAddress, DelAddress, PutMember, ClearMember,
              PutEndpoint, DelEndpoint, PutRing, PutMaglev, PutService, ClearService,
              PutMirror, TrimMirror, PutVipPort, DelVipPort]


# ---- the plan


@dataclass(frozen=True)
class ServiceChange:
    """What a plan changes in one service (for the log)."""

    name: str
    added: tuple[IPAddress, ...] = ()
    removed: tuple[IPAddress, ...] = ()
    reweighted: tuple[IPAddress, ...] = ()
    vip_changed: bool = False
    ports_changed: bool = False
    mode_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.reweighted or self.vip_changed
                    or self.ports_changed or self.mode_changed)


@dataclass(frozen=True)
class Plan:
    layout: Layout  # what the maps hold once every write is applied
    writes: tuple[Write, ...]
    added: tuple[str, ...] = ()  # services
    removed: tuple[str, ...] = ()
    changes: tuple[ServiceChange, ...] = ()  # services kept, changed or not
    # (old, new) names that look like a rename: a removed and an added service
    # with the same VIP and ports. A service is known by its name: the
    # renamed one's clients pick their servers anew.
    renamed: tuple[tuple[str, str], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or any(c.changed for c in self.changes))


def check_fits(desired: DesiredState, limits: Limits) -> None:
    """Raise PlanError if the desired state does not fit the maps."""
    members = sum(len(s.servers) for s in desired.services)
    endpoints = sum(len(s.servers) * len(s.ports) for s in desired.services)
    ring = sum(len(s.ring) for s in desired.services)
    mirrors = [s for s in desired.services if s.mode in COPY_MODES]
    names = [s.name for s in desired.services]
    if len(set(names)) != len(names):
        raise PlanError("a service name is used twice")
    if len(names) > limits.max_services:
        raise PlanError(f"{len(names)} services but at most {limits.max_services} "
                        "(raise --max-services)")
    if members > limits.max_members:
        raise PlanError(f"{members} (service, real server) pairs but at most "
                        f"{limits.max_members}")
    if endpoints > limits.max_endpoints:
        raise PlanError(f"{endpoints} real server:port pairs but at most "
                        f"{limits.max_endpoints} (raise --max_ports or --max_realservers)")
    if len(mirrors) > MAX_MIRROR_SERVICES:
        raise PlanError(f"{len(mirrors)} mirror and telemetry services but at most "
                        f"{MAX_MIRROR_SERVICES}")
    for spec in mirrors:
        if len(spec.copies) > MAX_MIRROR_TARGETS:
            raise PlanError(f"{spec.mode} service '{spec.name}' has {len(spec.copies)} targets "
                            f"but at most {MAX_MIRROR_TARGETS}")
    tables = sum(s.scheduler.table for s in desired.services if s.scheduler.kind == "maglev")
    if tables > MAGLEV_ENTRIES:
        raise PlanError(f"the Maglev tables of all services add up to {tables} entries; at most "
                        f"{MAGLEV_ENTRIES} (smaller maglev_table values fit more)")
    if ring > RING_SIZE:
        raise PlanError(f"the round-robin cycles of all services add up to {ring} entries; "
                        f"at most {RING_SIZE}")


def _lowest_free(used: Iterable[int], low: int, high: int, count: int) -> list[int]:
    taken = set(used)
    free: list[int] = []
    n = low
    while len(free) < count:
        if n > high:
            raise PlanError(f"no free entry between {low} and {high}")
        if n not in taken:
            free.append(n)
        n += 1
    return free


def max_service_id(limits: Limits) -> int:
    """Service ids are 1..2 * --max-services: a plan that replaces every
    service (renames) needs new ids while the old ones still serve."""
    return 2 * limits.max_services


def plan(running: Layout, desired: DesiredState, limits: Limits,
         force: bool = False) -> Plan:
    """The writes that take the maps from `running` to `desired`, in a safe
    order, and the layout they leave. Raises PlanError (nothing to apply).
    With `force`, every entry of the desired state is written again, also
    those `running` says are there (see rollback())."""
    check_fits(desired, limits)
    old = running
    wanted = {s.name: s for s in desired.services}
    top = max_service_id(limits)

    # service ids: kept by name (if they fit); new names get the lowest
    # free ids. An id only the registry holds (no descriptor in the maps:
    # a restart) is free at once; one whose service still serves is freed
    # at the end of this plan, so it is not reused by it.
    ids = {name: i for name, i in old.ids.items() if name in wanted and i <= top}
    new_names = [s.name for s in desired.services if s.name not in ids]
    busy = set(ids.values()) | {i for name, i in old.ids.items() if name in old.services}
    for name, i in zip(new_names, _lowest_free(busy, 1, top, len(new_names))):
        ids[name] = i
    reused = set(ids.values())
    forgotten = {name: i for name, i in old.ids.items()
                 if ids.get(name) != i and i not in reused}

    # member slots: kept for members that stay
    members = [(spec.name, s.address) for spec in desired.services for s in spec.servers]
    slots = {m: old.slots[m] for m in members if m in old.slots}
    fresh = [m for m in members if m not in slots]
    for m, n in zip(fresh, _lowest_free(old.slots.values(), 1, 2 * limits.max_members,
                                        len(fresh))):
        slots[m] = n

    # rings: each service's cycle, by slot; all into the other half if any differs
    cycles = {spec.name: tuple(slots[(spec.name, a)] for a in spec.ring)
              for spec in desired.services}
    old_cycles = {name: ring for name, (_, ring) in old.rings.items()}
    if cycles == {n: c for n, c in old_cycles.items() if n in cycles} and set(cycles) <= set(
            old_cycles):
        half = old.half
        rings = {name: old.rings[name] for name in cycles}
        ring_writes: list[Write] = []
    else:
        half = 1 - old.half
        rings, ring_writes, offset = {}, [], half * RING_SIZE
        for spec in sorted(desired.services, key=lambda s: ids[s.name]):
            cycle = cycles[spec.name]
            rings[spec.name] = (offset, cycle)
            ring_writes.extend(PutRing(offset + i, slot) for i, slot in enumerate(cycle))
            offset += len(cycle)

    # maglev tables: all into the other half of sbulb_maglev if any differs
    tables = {spec.name: tuple(slots[(spec.name, spec.servers[i].address)] for i in spec.maglev)
              for spec in desired.services if spec.scheduler.kind == "maglev"}
    maglev_writes: list[Write] = []
    if tables == {n: t for n, (_, t) in old.maglevs.items()}:
        maglev_half, maglevs = old.maglev_half, dict(old.maglevs)
    else:
        maglev_half, maglevs, offset = 1 - old.maglev_half, {}, (1 - old.maglev_half) * MAGLEV_ENTRIES
        for spec in sorted(desired.services, key=lambda s: ids[s.name]):
            if spec.name in tables:
                maglevs[spec.name] = (offset, tables[spec.name])
                maglev_writes.append(PutMaglev(offset, tables[spec.name]))
                offset += len(tables[spec.name])

    # mirror slots: kept by name; a new mirror service takes the lowest
    # slot no service uses now (the old ones serve until this plan ends)
    mirrors = {name: n for name, n in old.mirrors.items()
               if name in wanted and wanted[name].mode in COPY_MODES}
    new_mirrors = [s.name for s in desired.services
                   if s.mode in COPY_MODES and s.name not in mirrors]
    for name, n in zip(new_mirrors, _lowest_free(old.mirrors.values(), 0, MIRROR_SLOTS - 1,
                                                  len(new_mirrors))):
        mirrors[name] = n

    new = Layout(ids=ids, services=dict(wanted), slots=slots, rings=rings, half=half,
                 mirrors=mirrors, maglevs=maglevs, maglev_half=maglev_half)
    writes: list[Write] = []
    live = {name: ids[name] for name in old.services if name in ids}  # described now

    # 1. names
    writes.extend(NameService(ids[name], name) for name in wanted
                  if force or name in new_names)
    # 2. addresses
    old_addrs = set() if force else _addresses(old.services.values())
    new_addrs = _addresses(wanted.values())
    writes.extend(PutAddress(kind, a) for kind, a in sorted(new_addrs - old_addrs, key=_addr_key))
    # 3. members
    old_members = {} if force else {
        m: (old.slots[m], old.ids[m[0]], old.services[m[0]].member_flags(m[1]))
        for m in old.slots if m[0] in old.services}
    writes.extend(PutMember(slots[m], m[1], ids[m[0]], wanted[m[0]].member_flags(m[1]))
                  for m in members
                  if old_members.get(m) != (slots[m], ids[m[0]], wanted[m[0]].member_flags(m[1])))
    # each mirror and telemetry service's broadcast map: entry i for its
    # i-th copy target (entries beyond make copies the egress program
    # drops until the descriptor says how many there are). A slot new to
    # its service may hold entries from a failed plan: those beyond go.
    old_targets = {old.mirrors[name]: old.services[name].copies for name in old.mirrors
                   if name in old.services}
    mirror_writes: list[Write] = []
    for name, n in sorted(mirrors.items(), key=lambda item: item[1]):
        targets = wanted[name].copies
        if force or old_targets.get(n) != targets:
            mirror_writes.append(PutMirror(n, targets))
        if n not in old_targets:
            mirror_writes.append(TrimMirror(n, len(targets)))
    # 3b. a descriptor (VIP, no cycle yet) for each new service, before
    # anything leads to it: its endpoints may take over a server's replies
    # (a server that moves to it) before its cycle is written
    if force:
        # (a rollback: the cycles are where they were, in the half in use,
        # so each descriptor is whole at once, its copy targets first)
        if ring_writes or maglev_writes:
            raise PlanError("nothing to roll back to (the cycles were never written)")
        writes.extend(mirror_writes)
        writes.extend(_descriptor(spec, ids, rings, mirrors, maglevs)
                      for spec in desired.services)
    else:
        writes.extend(PutService(ids[name], wanted[name].vip, 0, 0, wanted[name].flags,
                                 mirrors.get(name, 0))
                      for name in wanted if live.get(name) != ids[name])
    # 4. endpoints
    old_ep, new_ep = ({} if force else old.endpoints()), new.endpoints()
    writes.extend(PutEndpoint(a, p, svc, slot) for (a, p), (svc, slot) in new_ep.items()
                  if old_ep.get((a, p)) != (svc, slot))
    # 5. rings, Maglev tables, and the broadcast maps (above)
    writes.extend(ring_writes)
    writes.extend(maglev_writes)
    if not force:
        writes.extend(mirror_writes)
    # 6. descriptors
    for spec in desired.services:
        base, cycle = rings[spec.name]
        before = old.services.get(spec.name)
        if force:
            break  # written above
        if (before is None or before.vip != spec.vip or before.mode != spec.mode
                or old.rings.get(spec.name) != (base, cycle)
                or old.ids.get(spec.name) != ids[spec.name]
                or old.mirrors.get(spec.name) != mirrors.get(spec.name)
                or old.maglevs.get(spec.name) != maglevs.get(spec.name)):
            writes.append(_descriptor(spec, ids, rings, mirrors, maglevs))
    # 7. ingress
    old_vp, new_vp = ({} if force else old.vip_ports()), new.vip_ports()
    writes.extend(PutVipPort(v, p, svc) for (v, p), svc in new_vp.items()
                  if old_vp.get((v, p)) != svc)
    # 8. removals: nothing leads to what is removed any more, in the
    # reverse order (an endpoint before its service's descriptor)
    old_vp, old_ep = old.vip_ports(), old.endpoints()
    old_addrs = _addresses(old.services.values())
    writes.extend(DelVipPort(v, p) for (v, p) in old_vp if (v, p) not in new_vp)
    writes.extend(DelEndpoint(a, p) for (a, p) in old_ep if (a, p) not in new_ep)
    for name, i in forgotten.items():
        if name in old.services:
            writes.append(ClearService(i))
        writes.append(ForgetService(i))
    # (a mirror slot keeps the entries of its cycle; one no service keeps, none)
    kept = {n: len(wanted[name].copies) for name, n in mirrors.items()}
    writes.extend(TrimMirror(n, kept.get(n, 0)) for n, targets in sorted(old_targets.items())
                  if len(targets) > kept.get(n, 0))
    writes.extend(ClearMember(n) for m, n in old.slots.items() if m not in slots)
    writes.extend(DelAddress(kind, a) for kind, a in sorted(old_addrs - new_addrs, key=_addr_key))

    changes = tuple(_service_change(old.services[name], spec)
                    for name, spec in wanted.items() if name in old.services)
    removed = tuple(name for name in old.services if name not in wanted)
    added = tuple(name for name in wanted if name not in old.services)
    by_key = {(wanted[n].vip, wanted[n].ports): n for n in added}
    renamed = tuple((name, by_key[(old.services[name].vip, old.services[name].ports)])
                    for name in removed
                    if (old.services[name].vip, old.services[name].ports) in by_key)
    return Plan(layout=new, writes=tuple(writes), added=added, removed=removed,
                changes=changes, renamed=renamed)


def _descriptor(spec: ServiceSpec, ids: Mapping[str, int],
                rings: Mapping[str, tuple[int, tuple[int, ...]]],
                mirrors: Mapping[str, int],
                maglevs: Mapping[str, tuple[int, tuple[int, ...]]]) -> PutService:
    """A service's whole descriptor: its cycle starts its ring entries,
    the targets of its copies are the cycle (mirror) or follow it; its
    Maglev table, if any."""
    base, _ = rings[spec.name]
    cycle, copies = len(spec.cycle), len(spec.copies)
    copy_base = base if spec.mode == "mirror" else base + cycle
    table_base, table = maglevs.get(spec.name, (0, ()))
    return PutService(ids[spec.name], spec.vip, base, cycle, spec.flags,
                      mirrors.get(spec.name, 0), copy_base if copies else 0, copies,
                      table_base if table else 0, len(table))


def rollback(old: Layout, attempted: Layout, desired: DesiredState, limits: Limits) -> Plan:
    """The writes that take the maps back to `desired` (what `old` holds)
    after the writes towards `attempted` failed part way, when the maps
    hold some of each. Every entry of `desired` is written again where
    `old` had it (same ids, same slots; the old ring half, which a plan
    never writes while it is in use, still holds the old cycles), and
    whatever `attempted` may have added is removed. Every write is the put
    of a whole entry or the delete of one, so doing one twice is harmless."""
    running = Layout(ids={**attempted.ids, **old.ids}, services=attempted.services,
                     slots={**attempted.slots, **old.slots}, rings=old.rings, half=old.half,
                     mirrors={**attempted.mirrors, **old.mirrors}, maglevs=old.maglevs,
                     maglev_half=old.maglev_half)
    return plan(running, desired, limits, force=True)


def _addresses(services: Iterable[ServiceSpec]) -> set[tuple[str, IPAddress]]:
    found: set[tuple[str, IPAddress]] = set()
    for spec in services:
        found.add(("vip", spec.vip))
        found.update(("server", s.address) for s in spec.servers)
    return found


def _addr_key(item: tuple[str, IPAddress]) -> tuple:
    return (item[0], item[1].version, item[1].packed)


def _service_change(old: ServiceSpec, new: ServiceSpec) -> ServiceChange:
    old_w = {s.address: s.weight for s in old.servers}
    new_w = {s.address: s.weight for s in new.servers}
    return ServiceChange(
        name=new.name,
        added=tuple(a for a in new_w if a not in old_w),
        removed=tuple(a for a in old_w if a not in new_w),
        reweighted=tuple(a for a in new_w if a in old_w and old_w[a] != new_w[a]),
        vip_changed=old.vip != new.vip,
        ports_changed=old.ports != new.ports,
        mode_changed=old.mode != new.mode,
    )


def legacy_service(server: IPAddress, desired: DesiredState) -> str | None:
    """Which service an association of the previous layout (one VIP, no
    service in its key) belongs to: `default` if its server is in the
    default pool, else the first service (by name) whose pool holds the
    server (it has the VIP's family, as its server does), else `default` if
    it exists and has that family (the client picks anew there), else
    none."""
    holders = sorted(s.name for s in desired.services if s.server(server) is not None)
    if DEFAULT_SERVICE in holders:
        return DEFAULT_SERVICE
    if holders:
        return holders[0]
    default = desired.service(DEFAULT_SERVICE)
    if default is not None and default.vip.version == server.version:
        return DEFAULT_SERVICE
    return None



RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class HealthView(NamedTuple):
    """A real server's health as status and metrics show it (a tuple: one
    per checked server is made every second)."""

    state: str  # unknown | up | down
    since: float  # monotonic time of the last change
    reason: str  # of the last verdict: ok, timeout, icmp, mismatch, error ("": none yet)
    rtt: float | None  # seconds, of the last good probe
    probes: int
    probe_failures: int
    rtt_counts: tuple[int, ...] = ()  # good probes per RTT_BUCKETS (cumulative), then all
    rtt_sum: float = 0.0


class TemplateCounts(NamedTuple):
    """What status and metrics show of one telemetry service's templates
    (sbulb/telemetry.py)."""

    exporters: int = 0  # exporters whose templates are kept
    seen: int = 0  # template datagrams the data path handed over
    replayed: int = 0  # datagrams sent to joining collectors
    not_kept: int = 0  # handed over but not kept (a fragment, unreadable)


@dataclass(frozen=True)
class Snapshot:
    """What metrics and the control socket show of the running state:
    frozen, and replaced whole by the main loop after each change, so a
    reader in another thread never sees it half updated."""

    services: tuple[ServiceSpec, ...]
    ids: Mapping[str, int]  # service name -> id (counters and associations are by id)
    interfaces: tuple[str, ...]
    forward: str
    max_associations: int
    config_file: str | None = None
    last_reload_ok: bool = True
    reloads_ok: int = 0  # reloads applied since start
    reloads_failed: int = 0  # reloads rejected (a broken file) or not applied
    last_reload_at: float = 0.0  # unix time of the last reload, or of the start
    last_reload_success_at: float = 0.0  # unix time of the last good one, or of the start
    last_reload_error: str = ""  # why the last reload failed ("" when it did not)
    pinned: str | None = None  # where the associations are pinned (None: a restart loses them)
    pin_requested: bool = True  # False: --no-pin
    # (service, real server) -> its health, for the checked services
    health: Mapping[Member, HealthView] = field(default_factory=dict)
    disabled: frozenset[Member] = frozenset()  # sbulbctl server disable
    # sbulbctl server set-weight / drain: the weight the file gives each
    # overridden member (the services above carry the override)
    file_weights: Mapping[Member, int] = field(default_factory=dict)
    templates: Mapping[str, TemplateCounts] = field(default_factory=dict)  # telemetry services
    # --announce-bird: VIP -> "announced" or why not (sbulb/announce.py)
    announcements: Mapping[str, str] = field(default_factory=dict)

    def service(self, name: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.name == name), None)

    def names(self) -> dict[int, str]:
        """Service id -> name."""
        return {i: name for name, i in self.ids.items()}
