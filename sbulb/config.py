"""Configuration: what sbulb balances, parsed and validated (pure Python).

A Config is built once from the command line. The real servers can also
come from sbulb's INI file, which is read again on every change:

    [Real Servers]
    10.0.0.4
    10.0.0.2

Every error is a ConfigError whose text is one line meant for the operator.
"""

from __future__ import annotations

import configparser
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

REAL_SERVERS_SECTION = "Real Servers"

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
class Config:
    """Everything one sbulb instance needs to run."""

    interfaces: tuple[str, ...]
    virtual_server: IPAddress
    ports: tuple[int, ...]
    real_servers: tuple[IPAddress, ...]
    config_file: Path | None = None
    debug: int = 0
    log_level: str = "ERROR"
    limits: Limits = field(default_factory=Limits)
    forward: str = "fib"
    xdp_mode: str = "auto"

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


def check_real_servers(servers: Sequence[IPAddress], vip: IPAddress, limits: Limits) -> None:
    if not servers:
        raise ConfigError("no real server")
    seen: set[IPAddress] = set()
    for server in servers:
        _check_unicast(server, "real server")
        if server.version != vip.version:
            raise ConfigError(
                f"real server {server} is IPv{server.version} but the virtual server "
                f"{vip} is IPv{vip.version}"
            )
        if server == vip:
            raise ConfigError(f"real server {server} is the virtual server itself")
        if server in seen:
            raise ConfigError(f"real server {server} is listed twice")
        seen.add(server)
    if len(servers) > limits.max_real_servers:
        raise ConfigError(
            f"{len(servers)} real servers but at most {limits.max_real_servers} "
            "(raise --max_realservers)"
        )


def parse_real_servers(text: str) -> tuple[IPAddress, ...]:
    """Real server addresses from the text of an sbulb INI file."""
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
        raise ConfigError(f"real server {e.option} is listed twice (line {e.lineno})") from None
    except configparser.Error as e:
        raise ConfigError(_one_line(e.message)) from None
    if not parser.has_section(REAL_SERVERS_SECTION):
        raise ConfigError(f"no [{REAL_SERVERS_SECTION}] section")
    servers = []
    for key, value in parser.items(REAL_SERVERS_SECTION):
        if value is not None:
            raise ConfigError(f"unexpected value after real server '{key}': '{value}'")
        servers.append(parse_address(key, "real server"))
    return tuple(servers)


def read_real_servers(path: Path, vip: IPAddress, limits: Limits) -> tuple[IPAddress, ...]:
    """Read and validate the real servers of an INI file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found (deleted?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the file: {_one_line(str(e))}") from None
    servers = parse_real_servers(text)
    check_real_servers(servers, vip, limits)
    return servers


def endpoint(address: IPAddress, port: int) -> str:
    """ip:port, with brackets for IPv6."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _one_line(text: str) -> str:
    return " ".join(text.split())

