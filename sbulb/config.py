"""Configuration: what sbulb balances, parsed and validated (pure Python).

A Config is built from the command line and, with -cfg, an INI file, which is
read again on every change. sbulb's file works unchanged; a weight may follow
an address, and an optional section describes the virtual server:

    [Virtual Server]
    address = 10.0.0.1
    ports = 5683 5684

    [Real Servers]
    10.0.0.4        # weight 1
    10.0.0.2 = 3    # three times as many new clients
    10.0.0.6 = 0    # drained: no new clients, existing ones stay

The file may also describe several virtual services, each in its own
section; sbulb's sections above are the service named `default`:

    [Service coap]
    address = 10.0.0.1          # the VIP, IPv4 or IPv6
    ports = 5683 5684
    servers = 10.0.1.1 10.0.1.2=3 10.0.1.3=0

    [Service syslog]
    address = 10.0.0.1          # a VIP may carry several services (other ports)
    ports = 514
    servers = 10.0.2.1 10.0.2.2

Values given on the command line win over the file's (for `default`). Every
error is a ConfigError whose text is one line meant for the operator.
"""

from __future__ import annotations

import configparser
import io
import ipaddress
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

REAL_SERVERS_SECTION = "Real Servers"
VIRTUAL_SERVER_SECTION = "Virtual Server"
SERVICE_SECTION = "Service"  # [Service NAME]
SERVICE_KEYS = ("address", "ports", "servers")  # required
CHECK_KEYS = ("check", "check_port", "check_send", "check_expect", "check_interval",
              "check_timeout", "check_rise", "check_fall", "check_start", "on_down",
              "passive_fall")
SCHEDULER_KEYS = ("scheduler", "maglev_table", "maglev_seed")
SERVICE_OPTIONAL_KEYS = ("mode", *SCHEDULER_KEYS, *CHECK_KEYS)
ON_DOWN = ("keep", "move")

if TYPE_CHECKING:
    from sbulb.health import CheckSpec


@dataclass(frozen=True)
class Checks:
    """A service's health checks (sbulb/health.py runs them): `spec` None
    means none (check = none)."""

    spec: "CheckSpec | None" = None
    on_down: str = "keep"  # keep | move: what happens to a down server's clients
    passive_fall: int = 0  # ICMP unreachable errors in one interval that mark it down


# how a sticky service picks a new client's server: round robin, or a Maglev
# table (sbulb/maglev.py) every balancer with the same config builds alike
SCHEDULERS = ("rr", "maglev")
MAGLEV_TABLE = 65537  # entries (a prime): the default, and the most
MAGLEV_MIN_TABLE = 7
# Maglev entries the data path holds (sbulb/bpf/consts.h
# SBULB_MAGLEV_ENTRIES), in each of two halves: four default-sized tables
MAGLEV_ENTRIES = 4 * MAGLEV_TABLE


@dataclass(frozen=True)
class Scheduler:
    """How a service picks new clients' servers."""

    kind: str = "rr"  # rr | maglev
    table: int = MAGLEV_TABLE  # maglev: entries, a prime
    seed: int = 0  # maglev: the same on every balancer, the same table


def parse_scheduler(values: Mapping[str, str], mode: str) -> Scheduler:
    """The scheduler and maglev_* keys of a section, or ConfigError."""
    from sbulb.maglev import is_prime  # (maglev imports this module)

    kind = values.get("scheduler", "rr").strip().lower()
    if kind not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler '{values['scheduler'].strip()}' (rr, maglev)")
    if kind == "rr":
        extra = sorted(k for k in ("maglev_table", "maglev_seed") if k in values)
        if extra:
            raise ConfigError(f"'{extra[0]}' needs scheduler = maglev")
        return Scheduler()
    if mode != "sticky":
        raise ConfigError(f"scheduler = maglev picks a server per client: it needs mode = sticky, "
                          f"not {mode}")
    size = _int_value(values.get("maglev_table", str(MAGLEV_TABLE)), "maglev_table")
    if not MAGLEV_MIN_TABLE <= size <= MAGLEV_TABLE or not is_prime(size):
        raise ConfigError(f"maglev_table must be a prime between {MAGLEV_MIN_TABLE} and "
                          f"{MAGLEV_TABLE}, not {size}")
    seed = _int_value(values.get("maglev_seed", "0"), "maglev_seed")
    _check_range("maglev_seed", seed, 0, 2**32 - 1)
    return Scheduler("maglev", size, seed)


def _int_value(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"invalid {name} '{text.strip()}'") from None


def parse_checks(values: Mapping[str, str]) -> Checks:
    """The check_* keys of a section (lower-case keys -> values), or
    ConfigError. check_port 0 (not given): the service's first port."""
    given = {k: v for k, v in values.items() if k in CHECK_KEYS}
    kind = given.get("check", "none").strip().lower()
    if kind not in ("udp", "none"):
        raise ConfigError(f"unknown check '{given['check'].strip()}' (udp, none)")
    on_down = given.get("on_down", "keep").strip().lower()
    if on_down not in ON_DOWN:
        raise ConfigError(f"on_down must be keep or move, not '{given['on_down'].strip()}'")
    if kind == "none":
        extra = sorted(set(given) - {"check", "on_down"})
        if extra:
            raise ConfigError(f"'{extra[0]}' needs check = udp")
        return Checks(None, on_down, 0)
    from sbulb import health  # (health imports this module)

    port = 0
    if "check_port" in given:
        port = _port_value(given["check_port"], "check_port")
    start = given.get("check_start", "unknown").strip().lower()
    if start not in ("unknown", "down"):
        raise ConfigError(f"check_start must be unknown or down, not '{start}'")
    spec = health.CheckSpec(
        port=port,
        send=health.parse_hex(given.get("check_send", "")),
        expect=health.parse_expect(given.get("check_expect", "")),
        interval=health.parse_duration(given.get("check_interval", "2s")),
        timeout=health.parse_duration(given.get("check_timeout", "1s")),
        rise=health.parse_count(given.get("check_rise", "2"), "check_rise"),
        fall=health.parse_count(given.get("check_fall", "3"), "check_fall"),
        start_down=start == "down",
    )
    replace(spec, port=spec.port or 1).check()  # port 0: the service's first, known later
    passive = 0
    if "passive_fall" in given:
        passive = health.parse_count(given["passive_fall"], "passive_fall")
    return Checks(spec, on_down, passive)


def _port_value(text: str, name: str) -> int:
    try:
        port = int(text.strip())
    except ValueError:
        raise ConfigError(f"invalid {name} '{text.strip()}'") from None
    _check_range(name, port, 1, 65535)
    return port
# what a service does with a datagram to it (sbulb/bpf/consts.h SBULB_SVC_F_*)
MODES = ("sticky", "per-packet", "mirror", "telemetry")
# modes that copy datagrams to every target (all of them for mirror, the
# templates for telemetry)
COPY_MODES = ("mirror", "telemetry")
# services of those modes at once (sbulb/bpf/consts.h SBULB_MIRROR_SLOTS:
# one broadcast map each; a reload that renames them all needs twice as
# many) and targets of one (SBULB_MIRROR_TARGETS)
MIRROR_SLOTS = 16
MAX_MIRROR_SERVICES = MIRROR_SLOTS // 2
MAX_MIRROR_TARGETS = 32


def parse_mode(text: str) -> str:
    """A service's mode, or ConfigError."""
    mode = text.strip().lower()
    if mode in MODES:
        return mode
    raise ConfigError(f"unknown mode '{text.strip()}' (modes: {', '.join(MODES)})")

# sbulb's one virtual server (-vs/-rs/-p, [Virtual Server], [Real Servers]).
DEFAULT_SERVICE = "default"
SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")

MAX_WEIGHT = 1000
# Entries of the data path's round-robin ring (sbulb/bpf/consts.h): the sum
# of the weights, divided by their greatest common divisor, must fit.
RING_SIZE = 65536

# sbulb's defaults.
DEFAULT_MAX_PORTS = 16
DEFAULT_MAX_REAL_SERVERS = 32
DEFAULT_MAX_ASSOCIATIONS = 1048576
DEFAULT_MAX_SERVICES = 64

FORWARD_MODES = ("fib", "mac-swap")
XDP_MODES = ("native", "generic", "auto")
MAX_INTERFACES = 64

# Upper bounds: a u16 port count, a real-server table that stays cheap to
# rewrite, and an association map that fits in the kernel's u32 sizes.
LIMIT_MAX_PORTS = 65535
LIMIT_MAX_REAL_SERVERS = 65535
LIMIT_MAX_ASSOCIATIONS = 2**31 - 1
LIMIT_MAX_SERVICES = 4096
LIMIT_NEW_ASSOCIATIONS = 100_000_000  # per second

# The most of a config file that is read: a larger one is rejected (a real
# one is a few kilobytes; this keeps a runaway file from filling memory).
MAX_FILE_SIZE = 1024 * 1024


class ConfigError(ValueError):
    """An invalid configuration. str() is a single line for the operator."""


@dataclass(frozen=True)
class Limits:
    """Map sizes, fixed when the program is loaded (-mp, -mrs, -ma,
    --max-services). Ports and real servers count over all services."""

    max_ports: int = DEFAULT_MAX_PORTS
    max_real_servers: int = DEFAULT_MAX_REAL_SERVERS
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    max_services: int = DEFAULT_MAX_SERVICES
    # new associations made by clients per second, over all CPUs; 0: no
    # limit (the command line's default is default_new_association_rate())
    new_associations_per_second: int = 0

    def __post_init__(self) -> None:
        _check_range("--max_ports", self.max_ports, 1, LIMIT_MAX_PORTS)
        _check_range("--max_realservers", self.max_real_servers, 1, LIMIT_MAX_REAL_SERVERS)
        _check_range("--max_associations", self.max_associations, 1, LIMIT_MAX_ASSOCIATIONS)
        _check_range("--max-services", self.max_services, 1, LIMIT_MAX_SERVICES)
        _check_range("--max-new-associations-per-second", self.new_associations_per_second, 0,
                     LIMIT_NEW_ASSOCIATIONS)

    @property
    def max_members(self) -> int:
        """(service, real server) pairs: a valid Config has at most this many
        (every service has a port, and there are -mp ports at most)."""
        return min(self.max_services, self.max_ports) * self.max_real_servers

    @property
    def max_endpoints(self) -> int:
        """real server:port pairs: a valid Config has at most this many (no
        two services share a real server:port)."""
        return self.max_ports * self.max_real_servers


def default_new_association_rate(max_associations: int) -> int:
    """New clients per second that may be remembered, by default: a
    sixtieth of the map, so that a flood of new sources takes at least a
    minute to turn the map over (established clients, which keep sending,
    stay the most recently used); at least 100."""
    return max(100, max_associations // 60)


@dataclass(frozen=True)
class RealServer:
    """A real server and its weight: its share of new clients (0: drained,
    it keeps its clients but gets no new one)."""

    address: IPAddress
    weight: int = 1

    def __str__(self) -> str:
        return str(self.address) if self.weight == 1 else f"{self.address}={self.weight}"


@dataclass(frozen=True)
class ServiceConfig:
    """One virtual service: a VIP, its UDP ports and its real servers."""

    name: str
    virtual_server: IPAddress
    ports: tuple[int, ...]
    real_servers: tuple[RealServer, ...]
    mode: str = "sticky"
    checks: Checks = Checks()
    scheduler: Scheduler = Scheduler()

    @property
    def family(self) -> int:
        """4 or 6: the address family, which follows the virtual server."""
        return self.virtual_server.version


@dataclass(frozen=True)
class FileConfig:
    """What a config file says (None: the file does not say). The service
    `default` ([Real Servers], [Virtual Server] or [Service default]) is in
    real_servers, virtual_server and ports; the other [Service NAME]
    sections are in services, in file order. default_section names where
    the file describes `default`, for error messages."""

    real_servers: tuple[RealServer, ...] = ()
    virtual_server: IPAddress | None = None
    ports: tuple[int, ...] | None = None
    services: tuple[ServiceConfig, ...] = ()
    default_section: str = field(default=VIRTUAL_SERVER_SECTION, compare=False)
    mode: str | None = None  # of the service `default`
    checks: Checks = Checks()  # of the service `default`
    scheduler: Scheduler = Scheduler()  # of the service `default`

    @property
    def has_default(self) -> bool:
        """Whether the file describes the service `default` (a file without
        any [Service NAME] section always does: sbulb's format)."""
        return (
            bool(self.real_servers)
            or self.virtual_server is not None
            or self.ports is not None
            or not self.services
        )

    def check(self, limits: Limits) -> None:
        """The file on its own, whatever the command line overrides: the
        address and ports it gives the service `default` are checked (range,
        family, not one of its own real servers, not another service's...)
        as if they were used. Config checks what runs; this rejects a file
        that would be invalid without -vs/-p. Raises ConfigError."""
        vip, ports, servers = self.virtual_server, self.ports, self.real_servers
        try:
            if vip is not None:
                check_virtual_server(vip)
                check_real_servers(servers, vip, limits)
            if ports is not None:
                check_ports(ports, limits)
        except ConfigError as e:
            raise ConfigError(f"[{self.default_section}]: {e}{_CHECKED_WHOLE}") from None
        if vip is not None and ports is not None:
            default = ServiceConfig(DEFAULT_SERVICE, vip, ports, servers)
            try:
                check_services((default, *self.services), limits)
            except ConfigError as e:
                raise ConfigError(f"{e}{_CHECKED_WHOLE}") from None


_CHECKED_WHOLE = " (the file is checked whole, even where -vs/-p override it)"


@dataclass(frozen=True)
class Config:
    """Everything one sbulb instance needs to run."""

    interfaces: tuple[str, ...]
    # the service `default` (none if virtual_server is None)
    virtual_server: IPAddress | None = None
    ports: tuple[int, ...] = ()
    real_servers: tuple[RealServer, ...] = ()
    config_file: Path | None = None
    debug: int = 0
    log_level: str = "ERROR"
    limits: Limits = field(default_factory=Limits)
    forward: str = "fib"
    xdp_mode: str = "auto"
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint
    pin: bool = True  # keep the associations in bpffs across restarts
    announce_bird: Path | None = None  # --announce-bird: the file BIRD includes
    bird_socket: str = "/run/bird/bird.ctl"
    # what the command line said (it wins over the config file at reload)
    cli_virtual_server: IPAddress | None = None
    cli_ports: tuple[int, ...] | None = None
    # the mode of the service `default`; --mode (cli_mode) wins over the file
    mode: str = "sticky"
    cli_mode: str | None = None
    checks: Checks = Checks()  # of the service `default` (the file's)
    scheduler: Scheduler = Scheduler()  # of the service `default` (the file's)
    # the named services ([Service NAME]) other than `default`, in file order
    services: tuple[ServiceConfig, ...] = ()

    def __post_init__(self) -> None:
        if not self.interfaces or not all(self.interfaces):
            raise ConfigError("no network interface")
        if len(set(self.interfaces)) != len(self.interfaces):
            raise ConfigError("a network interface is listed twice")
        if len(self.interfaces) > MAX_INTERFACES:
            raise ConfigError(f"more than {MAX_INTERFACES} network interfaces")
        if self.forward not in FORWARD_MODES:
            raise ConfigError(f"unknown forwarding mode '{self.forward}'")
        if self.xdp_mode not in XDP_MODES:
            raise ConfigError(f"unknown XDP mode '{self.xdp_mode}'")
        if self.virtual_server is not None:
            # sbulb's own checks and messages for its one virtual server
            check_virtual_server(self.virtual_server)
            check_ports(self.ports, self.limits)
            check_real_servers(self.real_servers, self.virtual_server, self.limits)
            if self.scheduler.kind == "maglev" and self.mode != "sticky":
                raise ConfigError(f"the service {DEFAULT_SERVICE}: scheduler = maglev picks a "
                                  f"server per client: it needs mode = sticky, not {self.mode}")
        elif self.real_servers or self.ports:
            raise ConfigError(
                f"the service {DEFAULT_SERVICE} has real servers or ports but no virtual "
                f"server (-vs/--virtual_server or an address in [{VIRTUAL_SERVER_SECTION}])"
            )
        for service in self.services:
            if service.name == DEFAULT_SERVICE:
                raise ConfigError(
                    f"the service {DEFAULT_SERVICE} is given twice ([{SERVICE_SECTION} "
                    f"{DEFAULT_SERVICE}] and the command line or sbulb's sections)"
                )
            check_service(service, self.limits)
        check_services(self.all_services, self.limits)

    @property
    def default_service(self) -> ServiceConfig | None:
        """sbulb's one virtual server, as the service `default` (if any)."""
        if self.virtual_server is None:
            return None
        return ServiceConfig(DEFAULT_SERVICE, self.virtual_server, self.ports, self.real_servers,
                             self.mode, self.checks, self.scheduler)

    @property
    def all_services(self) -> tuple[ServiceConfig, ...]:
        """Every service: `default` first (if any), then the named ones."""
        default = self.default_service
        return self.services if default is None else (default, *self.services)

    def service(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.all_services if s.name == name), None)

    @property
    def family(self) -> int:
        """4 or 6: the family of the service `default`, else of the first
        service (IPv4 and IPv6 services may run side by side)."""
        return self.all_services[0].family

    def with_file(self, file: FileConfig) -> "Config":
        """This config with what a (re-read) config file says: the command
        line still wins for the service `default`, and what the file no
        longer says of it stays as it is; the named services are the
        file's. The file must be valid on its own too (FileConfig.check),
        even where the command line overrides it. Raises ConfigError."""
        if file.has_default or self.cli_virtual_server or self.cli_ports:
            vip = self.cli_virtual_server or file.virtual_server or self.virtual_server
            ports = self.cli_ports or file.ports or self.ports
            servers = file.real_servers
        else:  # the file dropped the service `default` (or never had it)
            vip, ports, servers = None, (), ()
        config = replace(
            self, virtual_server=vip, ports=ports, real_servers=servers, services=file.services,
            mode=self.cli_mode or file.mode or "sticky", checks=file.checks,
            scheduler=file.scheduler,
        )
        file.check(self.limits)
        return config


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {value}")


def parse_address(text: str, what: str) -> IPAddress:
    """An IPv4 or IPv6 address from text, or a ConfigError naming `what`."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ConfigError(f"invalid {what} address '{text.strip()}'") from None


def _check_unicast(address: IPAddress, what: str) -> None:
    if address.is_unspecified or address.is_multicast:
        raise ConfigError(f"{what} address {address} is not a unicast address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ConfigError(
            f"{what} address {address} is IPv4-mapped: write it as {address.ipv4_mapped}"
        )
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        raise ConfigError(f"{what} address {address} is the broadcast address")


def check_virtual_server(vip: IPAddress) -> None:
    _check_unicast(vip, "virtual server")


def check_ports(ports: Sequence[int], limits: Limits) -> None:
    if not ports:
        raise ConfigError("no UDP port to load balance")
    for port in ports:
        _check_range("a UDP port", port, 1, 65535)
    if len(set(ports)) != len(ports):
        raise ConfigError("a UDP port is listed twice")
    if len(ports) > limits.max_ports:
        raise ConfigError(
            f"{len(ports)} ports but at most {limits.max_ports} (raise --max_ports)"
        )


def check_real_servers(servers: Sequence[RealServer], vip: IPAddress, limits: Limits) -> None:
    if not servers:
        raise ConfigError("no real server")
    seen: set[IPAddress] = set()
    for server in servers:
        address = server.address
        _check_unicast(address, "real server")
        if address.version != vip.version:
            raise ConfigError(
                f"real server {address} is IPv{address.version} but the virtual server "
                f"{vip} is IPv{vip.version}"
            )
        if address == vip:
            raise ConfigError(f"real server {address} is the virtual server itself")
        if address in seen:
            raise ConfigError(f"real server {address} is listed twice")
        _check_range(f"the weight of real server {address}", server.weight, 0, MAX_WEIGHT)
        seen.add(address)
    if len(servers) > limits.max_real_servers:
        raise ConfigError(
            f"{len(servers)} real servers but at most {limits.max_real_servers} "
            "(raise --max_realservers)"
        )
    if ring_length(servers) > RING_SIZE:
        raise ConfigError(
            f"the weights add up to {ring_length(servers)} (divided by their greatest common "
            f"divisor); at most {RING_SIZE}"
        )


def check_service(service: ServiceConfig, limits: Limits) -> None:
    """One named service alone; the messages name its section."""
    try:
        if not SERVICE_NAME_RE.fullmatch(service.name):
            raise ConfigError(f"invalid service name (expected {_NAME_RULE})")
        check_virtual_server(service.virtual_server)
        check_ports(service.ports, limits)
        check_real_servers(service.real_servers, service.virtual_server, limits)
    except ConfigError as e:
        raise ConfigError(f"[{SERVICE_SECTION} {service.name}]: {e}") from None


def _where(name: str) -> str:
    """A service as the operator wrote it."""
    if name == DEFAULT_SERVICE:
        return f"the service {DEFAULT_SERVICE} (-vs/-p, [{VIRTUAL_SERVER_SECTION}])"
    return f"[{SERVICE_SECTION} {name}]"


def check_services(services: Sequence[ServiceConfig], limits: Limits) -> None:
    """What the services must agree on together, and the instance's limits
    (each service alone is check_service's business)."""
    if not services:
        raise ConfigError(
            f"no virtual service (give -vs/-rs/-p, or [{REAL_SERVERS_SECTION}] or "
            f"[{SERVICE_SECTION} NAME] sections in the config file)"
        )
    if len(services) > limits.max_services:
        raise ConfigError(
            f"{len(services)} services but at most {limits.max_services} (raise --max-services)"
        )
    names: set[str] = set()
    for service in services:
        if service.name in names:
            raise ConfigError(f"the service {service.name} is defined twice")
        names.add(service.name)
    vips: dict[IPAddress, str] = {}
    for service in services:
        vips.setdefault(service.virtual_server, service.name)
    ingress: dict[tuple[IPAddress, int], str] = {}
    egress: dict[tuple[IPAddress, int], str] = {}
    for service in services:
        for port in service.ports:
            other = ingress.setdefault((service.virtual_server, port), service.name)
            if other != service.name:
                raise ConfigError(
                    f"{_where(service.name)}: {endpoint(service.virtual_server, port)} is "
                    f"already in {_where(other)}"
                )
        for server in service.real_servers:
            owner = vips.get(server.address)
            if owner is not None and server.address != service.virtual_server:
                raise ConfigError(
                    f"{_where(service.name)}: real server {server.address} is the virtual "
                    f"server of {_where(owner)}"
                )
            for port in service.ports:
                other = egress.setdefault((server.address, port), service.name)
                if other != service.name:
                    raise ConfigError(
                        f"{_where(service.name)}: real server {endpoint(server.address, port)} "
                        f"is already in {_where(other)}: its replies from port {port} could "
                        "not be told apart (one port per service on a shared real server)"
                    )
    ports = sum(len(service.ports) for service in services)
    if ports > limits.max_ports:
        raise ConfigError(
            f"{ports} ports over all services but at most {limits.max_ports} "
            "(raise --max_ports)"
        )
    servers = len({s.address for service in services for s in service.real_servers})
    if servers > limits.max_real_servers:
        raise ConfigError(
            f"{servers} distinct real servers over all services but at most "
            f"{limits.max_real_servers} (raise --max_realservers)"
        )
    ring = sum(ring_length(service.real_servers) for service in services)
    if ring > RING_SIZE:
        raise ConfigError(
            f"the round-robin cycles of all services add up to {ring} entries (each service's "
            f"weights divided by their greatest common divisor); the data path's shared ring "
            f"holds at most {RING_SIZE}"
        )


def ring_length(servers: Sequence[RealServer]) -> int:
    """Length of one smooth weighted round-robin cycle."""
    weights = [s.weight for s in servers if s.weight > 0]
    return sum(weights) // math.gcd(*weights) if weights else 0


def smooth_weighted_order(servers: Sequence[RealServer]) -> list[IPAddress]:
    """One cycle of smooth weighted round robin (nginx's): every step, each
    server gains its weight, the one with the most credit is picked and pays
    the total. Weights 3:1 give a b a a, not a a a b. Ties go to the lighter
    server, then to the earlier one. Drained servers (weight 0) are absent."""
    active = [s for s in servers if s.weight > 0]
    if not active:
        return []
    divisor = math.gcd(*(s.weight for s in active))
    weights = [s.weight // divisor for s in active]
    total = sum(weights)
    credit = [0] * len(active)
    order = []
    for _ in range(total):
        for i, weight in enumerate(weights):
            credit[i] += weight
        best = max(range(len(active)), key=lambda i: (credit[i], -weights[i], -i))
        credit[best] -= total
        order.append(active[best].address)
    return order


def parse_real_server(text: str) -> RealServer:
    """A real server from the command line: an address, or address=weight."""
    address, sep, weight = text.partition("=")
    return RealServer(parse_address(address, "real server"), _weight(weight, address) if sep else 1)


def _weight(text: str, address: str) -> int:
    try:
        weight = int(text.strip())
    except ValueError:
        raise ConfigError(f"invalid weight '{text.strip()}' for real server {address.strip()}") from None
    _check_range(f"the weight of real server {address.strip()}", weight, 0, MAX_WEIGHT)
    return weight


_NAME_RULE = "1 to 32 letters, digits, '_', '.' or '-'"


def parse_ports(text: str) -> tuple[int, ...]:
    """Ports from a config file: separated by spaces or commas."""
    ports = []
    for word in text.replace(",", " ").split():
        try:
            ports.append(int(word))
        except ValueError:
            raise ConfigError(f"invalid UDP port '{word}'") from None
    return tuple(ports)


def parse_file(text: str) -> FileConfig:
    """What the text of a config file says (syntax and values; the
    consistency of the whole is Config's business)."""
    # '=' only: IPv6 addresses contain ':'; keys keep their case; a comment
    # may also end a line ("10.0.0.4  # web1").
    parser = configparser.ConfigParser(
        allow_no_value=True,
        delimiters=("=",),
        interpolation=None,
        strict=True,
        inline_comment_prefixes=("#", ";"),
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.DuplicateOptionError as e:
        raise ConfigError(f"{e.option} is listed twice in [{e.section}] (line {e.lineno})") from None
    except configparser.Error as e:
        raise ConfigError(_one_line(e.message)) from None
    services: list[ServiceConfig] = []
    default: ServiceConfig | None = None
    for section in parser.sections():
        if section in (REAL_SERVERS_SECTION, VIRTUAL_SERVER_SECTION):
            continue
        if not section.startswith(SERVICE_SECTION + " "):
            raise ConfigError(
                f"unknown section [{section}] (expected [{REAL_SERVERS_SECTION}], "
                f"[{VIRTUAL_SERVER_SECTION}] or [{SERVICE_SECTION} NAME])"
            )
        service = _parse_service(section, parser.items(section))
        if service.name == DEFAULT_SERVICE:
            default = service
        else:
            services.append(service)
    legacy = [
        name for name in (REAL_SERVERS_SECTION, VIRTUAL_SERVER_SECTION) if parser.has_section(name)
    ]
    if default is not None:
        if legacy:
            raise ConfigError(
                f"[{SERVICE_SECTION} {DEFAULT_SERVICE}] and [{legacy[0]}] both describe the "
                f"service {DEFAULT_SERVICE}: keep one"
            )
        return FileConfig(default.real_servers, default.virtual_server, default.ports,
                          tuple(services), f"{SERVICE_SECTION} {DEFAULT_SERVICE}",
                          None if default.mode == "sticky" else default.mode, default.checks,
                          default.scheduler)
    if not parser.has_section(REAL_SERVERS_SECTION) and (legacy or not services):
        raise ConfigError(f"no [{REAL_SERVERS_SECTION}] section")
    servers = []
    if parser.has_section(REAL_SERVERS_SECTION):
        for key, value in parser.items(REAL_SERVERS_SECTION):
            address = parse_address(key, "real server")
            servers.append(RealServer(address, 1 if value is None else _weight(value, key)))
        if not servers and services:
            raise ConfigError(
                f"no real server in [{REAL_SERVERS_SECTION}] (remove the section to run only "
                f"the [{SERVICE_SECTION} NAME] sections)"
            )
    vip: IPAddress | None = None
    ports: tuple[int, ...] | None = None
    mode: str | None = None
    check_values: dict[str, str] = {}
    if parser.has_section(VIRTUAL_SERVER_SECTION):
        for key, value in parser.items(VIRTUAL_SERVER_SECTION):
            name = key.lower()
            if value is None:
                raise ConfigError(f"no value for '{key}' in [{VIRTUAL_SERVER_SECTION}]")
            if name == "address":
                vip = parse_address(value, "virtual server")
            elif name == "ports":
                ports = parse_ports(value)
            elif name == "mode":
                try:
                    mode = parse_mode(value)
                except ConfigError as e:
                    raise ConfigError(f"[{VIRTUAL_SERVER_SECTION}]: {e}") from None
            elif name in CHECK_KEYS or name in SCHEDULER_KEYS:
                check_values[name] = value
            else:
                raise ConfigError(
                    f"unknown key '{key}' in [{VIRTUAL_SERVER_SECTION}] (address, ports, mode, "
                    "scheduler, maglev_*, check_*)"
                )
    try:
        checks = parse_checks(check_values)
        scheduler = parse_scheduler(check_values, mode or "sticky")
    except ConfigError as e:
        raise ConfigError(f"[{VIRTUAL_SERVER_SECTION}]: {e}") from None
    return FileConfig(tuple(servers), vip, ports, tuple(services), mode=mode, checks=checks,
                      scheduler=scheduler)


def _parse_service(section: str, items: Sequence[tuple[str, str | None]]) -> ServiceConfig:
    """A [Service NAME] section; errors name it. The checks that need no
    other service and no limit are made here (the others in Config)."""
    name = section[len(SERVICE_SECTION) + 1 :]
    if not SERVICE_NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid service name in [{section}] (expected {_NAME_RULE})")
    try:
        values: dict[str, str] = {}
        for key, value in items:
            lower = key.lower()
            if lower not in SERVICE_KEYS + SERVICE_OPTIONAL_KEYS:
                raise ConfigError(
                    f"unknown key '{key}' (valid keys: "
                    f"{', '.join(SERVICE_KEYS + ('mode', 'scheduler'))}, maglev_*, check_*, "
                    "on_down, passive_fall)"
                )
            if lower in values:
                raise ConfigError(f"'{key}' is given twice")
            if value is None or not value.strip():
                raise ConfigError(f"no value for '{key}'")
            values[lower] = value
        for key in SERVICE_KEYS:
            if key not in values:
                raise ConfigError(f"no '{key}' (required: {', '.join(SERVICE_KEYS)})")
        vip = parse_address(values["address"], "virtual server")
        ports = parse_ports(values["ports"])
        if not ports:
            raise ConfigError("no UDP port to load balance")
        for port in ports:
            _check_range("a UDP port", port, 1, 65535)
        if len(set(ports)) != len(ports):
            raise ConfigError("a UDP port is listed twice")
        servers = tuple(parse_real_server(word) for word in values["servers"].split())
        seen: set[IPAddress] = set()
        for server in servers:
            _check_unicast(server.address, "real server")
            if server.address in seen:
                raise ConfigError(f"real server {server.address} is listed twice")
            seen.add(server.address)
        mode = parse_mode(values["mode"]) if "mode" in values else "sticky"
        checks = parse_checks(values)
        scheduler = parse_scheduler(values, mode)
    except ConfigError as e:
        raise ConfigError(f"[{section}]: {e}") from None
    return ServiceConfig(name, vip, ports, servers, mode, checks, scheduler)


def read_file(path: Path) -> FileConfig:
    """Read and parse a config file: at most MAX_FILE_SIZE bytes, a larger
    file is rejected (read with a bound, not sized first: it may grow)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            raise ConfigError(
                f"the file is larger than {MAX_FILE_SIZE // (1024 * 1024)} MiB "
                f"({MAX_FILE_SIZE} bytes), the most sbulb reads"
            )
        # as Path.read_text() decodes: UTF-8, universal newlines
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
    except FileNotFoundError:
        raise ConfigError("file not found (deleted?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the file: {_one_line(str(e))}") from None
    return parse_file(text)


METRICS_HOST = "127.0.0.1"


def parse_listen(text: str) -> tuple[str, int]:
    """'9642', 'HOST:9642' or '[IPv6]:9642'; the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = METRICS_HOST, text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"invalid metrics port in '{text}'") from None
    if not host:
        raise ConfigError(f"no metrics address in '{text}'")
    return host, number


def endpoint(address: IPAddress, port: int) -> str:
    """ip:port, with brackets for IPv6."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _one_line(text: str) -> str:
    return " ".join(text.split())

