"""Command line: sbulb's flags, flag for flag, turned into a Config.

Nothing here touches the kernel; main() hands the Config to the service.
Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error. Every
error is one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence, TypeVar

from sbulb import __version__
from sbulb.config import (
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_MAX_PORTS,
    DEFAULT_MAX_REAL_SERVERS,
    DEFAULT_MAX_SERVICES,
    FORWARD_MODES,
    XDP_MODES,
    Config,
    ConfigError,
    IPAddress,
    FileConfig,
    Limits,
    parse_address,
    parse_listen,
    parse_mode,
    parse_real_server,
    default_new_association_rate,
    read_file,
)
from sbulb.log import LEVELS

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2

EPILOG = """\
A config file lists the real servers (an optional weight after '=': 0
drains a server) and may describe the virtual server; it is reloaded when it
changes (or on SIGHUP). Command-line values win over the file's.

  [Virtual Server]
  address = 10.0.0.1
  ports = 5683 5684

  [Real Servers]
  10.0.0.4
  10.0.0.2 = 3
  10.0.0.6

It may instead (or as well) describe several virtual services, each with its
VIP, ports and real servers (a real server may be in two services only on
different ports); a file with only [Service NAME] sections needs no -vs/-p.
The sections above are the service named 'default'.

  [Service coap]
  address = 10.0.0.1
  ports = 5683 5684
  servers = 10.0.1.1 10.0.1.2=3 10.0.1.3=0

  [Service syslog]
  address = 10.0.0.1
  ports = 514
  servers = 10.0.2.1 10.0.2.2

examples:
  sbulb eth0 -vs 10.188.7.99 -rs 10.188.100.163 10.188.100.230 -p 5683 5684
  sbulb eth0 eth1 -vs 10.188.7.99 -cfg /etc/sbulb/sbulb.conf -p 5683 --forward fib
  sbulb eth0 -vs 10.188.7.99 -cfg /etc/sbulb/sbulb.conf -p 5683 -l INFO
  sbulb eth0 -vs 2001:db8::99 -rs 2001:db8::2 2001:db8::3 -p 5683
  sbulb eth0 -cfg /etc/sbulb/services.conf --max-services 8
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _address(text: str) -> IPAddress:
    try:
        return parse_address(text, "IP")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


T = TypeVar("T")


def _argtype(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from one of config's parsers (ConfigError -> the
    usage error argparse prints)."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__  # argparse names the type in some errors
    return convert


_real_server = _argtype(parse_real_server)
_listen = _argtype(parse_listen)
_mode = _argtype(parse_mode)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid UDP port '{text}'") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"UDP port {port} is not between 1 and 65535")
    return port


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sbulb",
        description="UDP load balancer with an XDP data path (layer-4 NAT, "
        "long-lived client ip:port -> real server associations).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "ifnet",
        nargs="+",
        help="network interface(s) to load balance (e.g. eth0); with --forward fib, "
        "traffic may leave through any of them",
    )
    parser.add_argument(
        "-vs",
        "--virtual_server",
        type=_address,
        help="<Required> Virtual server address (e.g. 10.40.0.1); may come from the "
        "config file's [Virtual Server] section instead",
    )
    servers = parser.add_mutually_exclusive_group(required=True)
    servers.add_argument(
        "-rs",
        "--real_server",
        type=_real_server,
        nargs="+",
        help="<Required> Real server address(es) (e.g. 10.40.0.2 10.40.0.3), each "
        "optionally with a weight (10.40.0.2=3; 0 drains)",
    )
    servers.add_argument(
        "-cfg",
        "--config_file",
        type=Path,
        help="<Required> a path to a file containing real server address(es). "
        "The file is watched and the configuration updated when it changes; "
        "see the example below.",
    )
    parser.add_argument(
        "-p",
        "--port",
        type=_port,
        nargs="+",
        help="<Required> UDP port(s) to load balance; may come from the config file's "
        "[Virtual Server] section instead",
    )
    parser.add_argument(
        "-d",
        "--debug",
        type=int,
        choices=[0, 1, 2, 3, 4],
        default=0,
        help="Use to set bpf verbosity, 0 is minimal. (default: %(default)s)",
    )
    parser.add_argument(
        "-l",
        "--loglevel",
        choices=LEVELS,
        default="ERROR",
        help="Use to set logging verbosity. (default: %(default)s)",
    )
    parser.add_argument(
        "-mp",
        "--max_ports",
        type=_positive,
        default=DEFAULT_MAX_PORTS,
        help="Set the maximum number of port to load balance. (default: %(default)s)",
    )
    parser.add_argument(
        "-mrs",
        "--max_realservers",
        type=_positive,
        default=DEFAULT_MAX_REAL_SERVERS,
        help="Set the maximum number of real servers. (default: %(default)s)",
    )
    parser.add_argument(
        "-ma",
        "--max_associations",
        type=_positive,
        default=DEFAULT_MAX_ASSOCIATIONS,
        help="Set the maximum number of associations. (default: %(default)s) "
        "This defined the maximum number of foreign peers supported at the same time.",
    )
    parser.add_argument(
        "--max-services",
        type=_positive,
        default=DEFAULT_MAX_SERVICES,
        help="Set the maximum number of virtual services ([Service NAME] sections, plus "
        "'default'). (default: %(default)s)",
    )
    parser.add_argument(
        "--mode",
        type=_mode,
        default=None,
        metavar="MODE",
        help="what the service of -vs does with a datagram: 'sticky' (a client keeps its "
        "server: sbulb's behaviour), 'per-packet' (each datagram to the next server, no "
        "association) or 'mirror' (a copy to every server of weight > 0; the first "
        "server's replies reach the client). (default: sticky, or the config file's "
        "[Virtual Server] mode)",
    )
    parser.add_argument(
        "--max-new-associations-per-second",
        type=_whole,
        default=None,
        metavar="N",
        help="new associations per second at most, shared evenly among the CPUs (each "
        "allows its share); above it a new client is still balanced (by a hash of its "
        "ip:port) but not remembered, so a flood of new sources cannot evict established "
        "clients. 0: no limit. (default: a sixtieth of -ma, at least 100)",
    )
    parser.add_argument(
        "--forward",
        choices=FORWARD_MODES,
        default="fib",
        help="how rewritten packets leave: 'fib' asks the kernel's routing table and "
        "neighbours for the next hop (out of the same interface, or another one sbulb "
        "is attached to), falling back to 'mac-swap' when the host does not forward "
        "(IP forwarding off); 'mac-swap' sends every packet back to the neighbour it "
        "came from, as sbulb does. (default: %(default)s)",
    )
    parser.add_argument(
        "--xdp-mode",
        choices=XDP_MODES,
        default="auto",
        help="'native' (in the driver), 'generic' (in the kernel's stack, slower, works "
        "everywhere) or 'auto': native, else generic with a warning. (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        type=_listen,
        help="serve Prometheus metrics over HTTP on this address (HOST defaults to "
        "127.0.0.1; off unless given)",
    )
    parser.add_argument(
        "--announce-bird",
        metavar="FILE",
        type=Path,
        help="announce the VIPs through BIRD: write the static routes of the VIPs this "
        "balancer should announce to FILE (which bird.conf includes) and run `birdc "
        "configure` when they change (README, Scale-out)",
    )
    parser.add_argument(
        "--bird-socket",
        metavar="PATH",
        default="/run/bird/bird.ctl",
        help="BIRD's control socket, for --announce-bird (default: %(default)s)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the association map in bpffs: a restart then forgets which "
        "client goes to which server",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, compile and load the XDP program "
        "without attaching it, then exit",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config; raises ConfigError (one line)."""
    limits = Limits(
        max_ports=args.max_ports,
        max_real_servers=args.max_realservers,
        max_associations=args.max_associations,
        max_services=args.max_services,
        new_associations_per_second=(
            default_new_association_rate(args.max_associations)
            if args.max_new_associations_per_second is None
            else args.max_new_associations_per_second),
    )
    cli_ports = tuple(args.port) if args.port else None
    config_file: Path | None = args.config_file
    if config_file is not None:
        config_file = config_file.absolute()
        try:
            file = read_file(config_file)
        except ConfigError as e:
            raise ConfigError(f"config file {config_file}: {e}") from None
    else:
        file = FileConfig(tuple(args.real_server))
    # the service `default`: -rs, [Real Servers] or [Service default] (with -vs/-p or
    # the file's address and ports); a file with only [Service NAME] sections has none
    vip: IPAddress | None = None
    ports: tuple[int, ...] = ()
    if not file.has_default and (args.virtual_server or cli_ports):
        raise ConfigError(
            f"config file {config_file}: no real server for -vs/-p (the file has no "
            "[Real Servers] or [Service default] section)"
        )
    if file.has_default:
        vip = args.virtual_server or file.virtual_server
        if vip is None:
            raise ConfigError(
                "the following arguments are required: -vs/--virtual_server (or an address in "
                "the config file's [Virtual Server])"
            )
        chosen = cli_ports or file.ports
        if chosen is None:
            raise ConfigError(
                "the following arguments are required: -p/--port (or ports in the config "
                "file's [Virtual Server])"
            )
        ports = chosen
    try:
        config = Config(
            interfaces=tuple(args.ifnet),
            virtual_server=vip,
            ports=ports,
            real_servers=file.real_servers,
            config_file=config_file,
            debug=args.debug,
            log_level=args.loglevel,
            limits=limits,
            forward=args.forward,
            xdp_mode=args.xdp_mode,
            metrics=args.metrics,
            pin=not args.no_pin,
            announce_bird=args.announce_bird,
            bird_socket=args.bird_socket,
            cli_virtual_server=args.virtual_server,
            cli_ports=cli_ports,
            services=file.services,
            mode=args.mode or file.mode or "sticky",
            cli_mode=args.mode,
            checks=file.checks,
            scheduler=file.scheduler,
        )
        file.check(limits)  # the file whole, even what -vs/-p override
        return config
    except ConfigError as e:
        if config_file is not None:
            raise ConfigError(f"config file {config_file}: {e}") from None
        raise


def parse(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse and validate a command line; exits 2 with one line on error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args), args
    except ConfigError as e:
        parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse(argv)

    from sbulb import log

    try:
        from sbulb.service import RESTART, TAKEOVER_ENV, Service, StartError
    except ImportError as e:
        print(f"sbulb: error: Python module {e.name} is missing: run `make setup`", file=sys.stderr)
        return EXIT_RUNTIME

    log.setup(config.log_level)
    try:
        service = Service(config)
        if args.check:
            for note in service.check():
                print(f"sbulb: warning: {note}", file=sys.stderr)
            for line in service.check_report:
                print(f"sbulb: {line}")
            print(f"sbulb: configuration OK, program verified for {', '.join(config.interfaces)}")
            return EXIT_OK
        code = service.run()
    except StartError as e:
        print(f"sbulb: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    if code != RESTART:
        return code
    # a restart in place: the same process (systemd's main PID), new code,
    # the same command line; the program left attached keeps serving until
    # the new one is compiled, loaded with the pinned maps and swapped in
    command = [sys.executable, "-m", "sbulb", *(sys.argv[1:] if argv is None else argv)]
    logging.shutdown()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, command, {**os.environ, TAKEOVER_ENV: str(os.getpid())})
    except OSError as e:
        print(f"sbulb: error: cannot restart ({e.strerror}): the program stays attached, "
              "the next start takes it over", file=sys.stderr)
    return EXIT_RUNTIME
