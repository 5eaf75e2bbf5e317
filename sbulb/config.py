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

Values given on the command line win over the file's. Every error is a
ConfigError whose text is one line meant for the operator.
"""

from __future__ import annotations

import configparser
import ipaddress
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

REAL_SERVERS_SECTION = "Real Servers"
VIRTUAL_SERVER_SECTION = "Virtual Server"

MAX_WEIGHT = 1000
# Entries of the data path's round-robin ring (sbulb/bpf/consts.h): the sum
# of the weights, divided by their greatest common divisor, must fit.
RING_SIZE = 65536

# sbulb's defaults.
DEFAULT_MAX_PORTS = 16
DEFAULT_MAX_REAL_SERVERS = 32
DEFAULT_MAX_ASSOCIATIONS = 1048576

FORWARD_MODES = ("fib", "mac-swap")
XDP_MODES = ("native", "generic", "auto")
MAX_INTERFACES = 64

# Upper bounds: a u16 port count, a real-server table that stays cheap to
# rewrite, and an association map that fits in the kernel's u32 sizes.
LIMIT_MAX_PORTS = 65535
LIMIT_MAX_REAL_SERVERS = 65535
LIMIT_MAX_ASSOCIATIONS = 2**31 - 1


class ConfigError(ValueError):
    """An invalid configuration. str() is a single line for the operator."""


@dataclass(frozen=True)
class Limits:
    """Map sizes, fixed when the program is loaded (-mp, -mrs, -ma)."""

    max_ports: int = DEFAULT_MAX_PORTS
    max_real_servers: int = DEFAULT_MAX_REAL_SERVERS
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS

    def __post_init__(self) -> None:
        _check_range("--max_ports", self.max_ports, 1, LIMIT_MAX_PORTS)
        _check_range("--max_realservers", self.max_real_servers, 1, LIMIT_MAX_REAL_SERVERS)
        _check_range("--max_associations", self.max_associations, 1, LIMIT_MAX_ASSOCIATIONS)


@dataclass(frozen=True)
class RealServer:
    """A real server and its weight: its share of new clients (0: drained,
    it keeps its clients but gets no new one)."""

    address: IPAddress
    weight: int = 1

    def __str__(self) -> str:
        return str(self.address) if self.weight == 1 else f"{self.address}={self.weight}"


@dataclass(frozen=True)
class FileConfig:
    """What a config file says (None: the file does not say)."""

    real_servers: tuple[RealServer, ...]
    virtual_server: IPAddress | None = None
    ports: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Config:
    """Everything one sbulb instance needs to run."""

    interfaces: tuple[str, ...]
    virtual_server: IPAddress
    ports: tuple[int, ...]
    real_servers: tuple[RealServer, ...]
    config_file: Path | None = None
    debug: int = 0
    log_level: str = "ERROR"
    limits: Limits = field(default_factory=Limits)
    forward: str = "fib"
    xdp_mode: str = "auto"
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint
    pin: bool = True  # keep the associations in bpffs across restarts
    # what the command line said (it wins over the config file at reload)
    cli_virtual_server: IPAddress | None = None
    cli_ports: tuple[int, ...] | None = None

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
        check_virtual_server(self.virtual_server)
        check_ports(self.ports, self.limits)
        check_real_servers(self.real_servers, self.virtual_server, self.limits)

    @property
    def family(self) -> int:
        """4 or 6: the address family, which follows the virtual server."""
        return self.virtual_server.version

    def with_file(self, file: FileConfig) -> "Config":
        """This config with what a (re-read) config file says: the command
        line still wins, and what the file no longer says stays as it is.
        Raises ConfigError."""
        vip = self.cli_virtual_server or file.virtual_server or self.virtual_server
        ports = self.cli_ports or file.ports or self.ports
        return replace(self, virtual_server=vip, ports=ports, real_servers=file.real_servers)


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
    for section in parser.sections():
        if section not in (REAL_SERVERS_SECTION, VIRTUAL_SERVER_SECTION):
            raise ConfigError(
                f"unknown section [{section}] (expected [{REAL_SERVERS_SECTION}] and "
                f"optionally [{VIRTUAL_SERVER_SECTION}])"
            )
    if not parser.has_section(REAL_SERVERS_SECTION):
        raise ConfigError(f"no [{REAL_SERVERS_SECTION}] section")
    servers = []
    for key, value in parser.items(REAL_SERVERS_SECTION):
        address = parse_address(key, "real server")
        servers.append(RealServer(address, 1 if value is None else _weight(value, key)))
    vip: IPAddress | None = None
    ports: tuple[int, ...] | None = None
    if parser.has_section(VIRTUAL_SERVER_SECTION):
        for key, value in parser.items(VIRTUAL_SERVER_SECTION):
            name = key.lower()
            if value is None:
                raise ConfigError(f"no value for '{key}' in [{VIRTUAL_SERVER_SECTION}]")
            if name == "address":
                vip = parse_address(value, "virtual server")
            elif name == "ports":
                ports = parse_ports(value)
            else:
                raise ConfigError(
                    f"unknown key '{key}' in [{VIRTUAL_SERVER_SECTION}] (address, ports)"
                )
    return FileConfig(tuple(servers), vip, ports)


def read_file(path: Path) -> FileConfig:
    """Read and parse a config file."""
    try:
        text = path.read_text(encoding="utf-8")
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

