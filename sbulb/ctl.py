"""sbulbctl: look at, and act on, a running sbulb daemon.

    sbulbctl status [--sort assoc|pkts|bytes] [--watch [S]]
    sbulbctl associations list [--client IP] [--server IP] [--limit N]
    sbulbctl associations count | get IP:PORT | delete IP:PORT | flush --server IP
    sbulbctl associations flush --all [--yes]
    sbulbctl top [--interval S] [--count N] [--sort assoc|pkts|bytes]
    sbulbctl server disable|enable|drain|reset SERVER
    sbulbctl server set-weight SERVER N
    sbulbctl restart

Every command takes --service NAME to cover one service only (default:
all of them). It talks to the daemon through its control socket
(sbulb/control.py), as root, and waits --timeout seconds (30) for an
answer. Read commands take --json. Exit codes: 0 ok, 1 error (no daemon,
no answer, a refused request: one line on stderr), 2 usage, 141 when the
reader of its output went away (`sbulbctl status | head -1`: quietly).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence, TextIO

from sbulb import control
from sbulb.config import MAX_WEIGHT, ConfigError, parse_address

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for `yes | head -1`'s yes


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbulbctl", description="Look at and act on a running sbulb.")
    parser.add_argument("-i", "--interface",
                        help="the daemon's interface (default: the only sbulb running here)")
    parser.add_argument("--json", action="store_true", help="JSON output (read commands)")
    parser.add_argument("-s", "--service", metavar="NAME",
                        help="only this service (default: every service)")
    parser.add_argument("--timeout", type=_seconds, default=control.CLIENT_TIMEOUT,
                        metavar="S", help="seconds to wait for the daemon's answer "
                        f"(default: {control.CLIENT_TIMEOUT:g})")
    # --json and --service after the command too (they do not reset one
    # given before it)
    json_too = _Parser(add_help=False)
    json_too.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help="JSON output")
    json_too.add_argument("-s", "--service", metavar="NAME", default=argparse.SUPPRESS,
                          help="only this service")
    service_too = _Parser(add_help=False)
    service_too.add_argument("-s", "--service", metavar="NAME", default=argparse.SUPPRESS,
                             help="only this service")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sort_too = _Parser(add_help=False)
    sort_too.add_argument("--sort", choices=SORTS, default=None,
                          help="real servers by associations, packets or bytes, most first "
                               "(default: as the file lists them)")
    status = commands.add_parser("status", parents=[json_too, sort_too],
                                 help="VIP, ports, real servers with their traffic, counters")
    status.add_argument("--watch", type=_seconds, nargs="?", const=2.0, default=None,
                        metavar="S", help="show it again every S seconds (default: 2) "
                                          "until interrupted")
    status.add_argument("--count", type=int, default=0,
                        help="with --watch: stop after N refreshes")
    assoc = commands.add_parser("associations", parents=[json_too],
                                help="client ip:port -> real server")
    actions = assoc.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[json_too], help="list associations")
    listing.add_argument("--client", help="only this client IP")
    listing.add_argument("--server", help="only this real server")
    listing.add_argument("--limit", type=int, default=0, help="at most N (default: all)")
    actions.add_parser("count", parents=[json_too], help="how many associations")
    get = actions.add_parser("get", parents=[json_too], help="the real server of one client")
    get.add_argument("endpoint", metavar="IP:PORT")
    delete = actions.add_parser("delete", parents=[service_too],
                                help="forget one client (its next datagram picks anew)")
    delete.add_argument("endpoint", metavar="IP:PORT")
    flush = actions.add_parser("flush", parents=[service_too],
                               help="forget every client of one real server (or --all)")
    which = flush.add_mutually_exclusive_group(required=True)
    which.add_argument("--server", help="the clients of this real server")
    which.add_argument("--all", action="store_true",
                       help="every client (of --service NAME, or of every service)")
    flush.add_argument("-y", "--yes", action="store_true",
                       help="--all without asking first")
    server = commands.add_parser("server", parents=[service_too],
                                 help="operator override of a real server")
    server_actions = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("disable", "no new client for it (as if down) until enabled again "
                                   "or the daemon restarts"),
                       ("enable", "undo disable"),
                       ("drain", "weight 0 over the file's: keeps its clients, gets no new one"),
                       ("reset", "back to what the file says: undo set-weight, drain and "
                                 "disable"),
                       ("set-weight", "a weight over the file's, until the file changes that "
                                      "server, a reset or a restart")):
        action = server_actions.add_parser(name, parents=[service_too], help=text)
        action.add_argument("server", metavar="SERVER")
        if name == "set-weight":
            action.add_argument("weight", metavar="N", type=_weight, help=f"0 to {MAX_WEIGHT}")
    commands.add_parser("restart", help="restart the daemon in place (new code, same command "
                                        "line): the data path keeps serving throughout")
    top = commands.add_parser("top", parents=[json_too, sort_too],
                              help="per-server rates, refreshed in place")
    top.add_argument("--interval", type=float, default=1.0, help="seconds (default: 1)")
    top.add_argument("--count", type=int, default=0, help="stop after N refreshes")
    return parser


SORTS = ("assoc", "pkts", "bytes")


def _weight(text: str) -> int:
    """A weight as the config file takes it (0 to MAX_WEIGHT)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"'{text}' is not a weight (0 to {MAX_WEIGHT})")
    return value


def sort_key(by: str | None, rate: bool = False) -> Any:
    """A key that puts the busiest real servers first (None: keep the
    file's order)."""
    if by is None:
        return None
    suffix = "_per_s" if rate else ""
    if by == "assoc":
        return lambda s: -s["associations"]
    field = "packets" if by == "pkts" else "bytes"
    return lambda s: -(s[f"{field}_to{suffix}"] + s[f"{field}_from{suffix}"])


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of seconds")
    return value


def parse_endpoint(text: str) -> tuple[str, int]:
    """'10.0.0.1:5683' or '[2001:db8::1]:5683'."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"'{text}' is not IP:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"invalid port in '{text}'") from None
    return str(parse_address(host, "client")), number


def find_daemon(interface: str | None) -> Path:
    running = control.daemons(control.RUN_DIR)
    if interface is not None:
        return control.socket_path(interface, control.RUN_DIR)
    if not running:
        raise control.ControlError(
            f"no sbulb daemon is running in this network namespace (no control socket in "
            f"{control.RUN_DIR})"
        )
    sockets = {path.resolve() for path in running.values()}
    if len({p.stat().st_ino for p in sockets if p.exists()}) > 1:
        raise control.ControlError(
            f"several sbulb daemons run here ({', '.join(sorted(running))}): choose one with -i"
        )
    return next(iter(running.values()))


def print_status(status: dict[str, Any], out: TextIO, sort: str | None = None) -> None:
    modes = ", ".join(f"{name} ({mode})" for name, mode in status["interfaces"].items())
    out.write(f"sbulb {status['version']}, pid {status['pid']}, on {modes}, "
              f"forward {status['forward']}\n")
    if status["config_file"]:
        reloads = status.get("reloads", {})
        counts = (f", {reloads.get('ok', 0)} reload(s) applied, {reloads.get('failed', 0)} failed"
                  if reloads else "")
        out.write(f"config file {status['config_file']}{counts}\n")
        if not status.get("last_reload_ok", True):
            error = status.get("last_reload_error") or "see the log"
            out.write(f"  last reload REJECTED: {error} (the running configuration stays)\n")
    if status.get("pinned"):
        pin = f", pinned in {status['pinned']}"
    elif status.get("pin_requested", False):
        pin = ", NOT pinned: bpffs is missing, a restart loses them"
    else:
        pin = ", not pinned (--no-pin)"
    out.write(f"associations {status['associations']} (at most {status['max_associations']})"
              f"{pin}\n")
    for vip, verdict in status.get("announcements", {}).items():
        out.write(f"VIP {vip}: {'announced' if verdict == 'announced' else 'withdrawn: ' + verdict}"
                  " (BIRD)\n")
    header = ("real server", "weight", "state", "health", "assoc", "pkts to", "bytes to",
              "pkts from", "bytes from")
    for service in status["services"]:
        mode = service["mode"]
        primary = [s["address"] for s in service["real_servers"] if s.get("primary")]
        if primary:
            failed = sum(s.get("copy_failures", 0) for s in service["real_servers"])
            mode = f"mirror (primary {primary[0]}, {failed} copies not made)"
        elif mode == "telemetry":
            failed = sum(s.get("copy_failures", 0) for s in service["real_servers"])
            tm = service.get("templates", {})
            mode = (f"telemetry ({tm.get('exporters', 0)} exporter(s), templates "
                    f"{tm.get('seen', 0)} seen, {tm.get('replayed', 0)} replayed, "
                    f"{failed} copies not made)")
        if service.get("scheduler") == "maglev":
            mode += f" (maglev, {service['maglev_table']} entries, seed {service['maglev_seed']})"
        out.write(f"\nservice {service['name']}: {service['virtual_server']} "
                  f"port(s) {' '.join(map(str, service['ports']))}, {mode}, "
                  f"{service['associations']} association(s)\n")
        servers = service["real_servers"]
        key = sort_key(sort)
        if key is not None:
            servers = sorted(servers, key=key)
        rows = [header] + [
            (s["address"], _weight_text(s), s["state"], _health_text(s), s["associations"],
             s["packets_to"], s["bytes_to"], s["packets_from"], s["bytes_from"])
            for s in servers
        ]
        _table(rows, out)
    out.write("\ncounters\n")
    for name, value in status["counters"].items():
        if value:
            out.write(f"  {name:<20} {value}\n")


def _weight_text(server: dict[str, Any]) -> str:
    """'3', or '0 (file 1)' under sbulbctl set-weight / drain."""
    if server.get("override"):
        return f"{server['weight']} (file {server['file_weight']})"
    return str(server["weight"])


def _health_text(server: dict[str, Any]) -> str:
    """'up 12s rtt 0.3ms', 'down 4s timeout', or '-' (not checked)."""
    if "health" not in server:
        return "-"
    text = f"{server['health']} {server['health_since_s']:g}s"
    if server["health"] == "down" or server.get("rtt_ms") is None:
        return f"{text} {server['health_reason'] or ''}".rstrip()
    return f"{text} rtt {server['rtt_ms']:g}ms"


def _table(rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        out.write("  ".join(cells).rstrip() + "\n")


def _refresh(out: TextIO, frame: int) -> None:
    """Start frame N: the screen cleared at a terminal; elsewhere (a pipe,
    a file) no escapes, a blank line between frames."""
    if out.isatty():
        out.write("\x1b[H\x1b[2J")
    elif frame:
        out.write("\n")


def watch(path: Path, args: argparse.Namespace, out: TextIO) -> None:
    """status --watch S: status, again every S seconds."""
    done = 0
    while True:
        status = control.request(path, "status", _service_query(args), args.timeout)
        if args.json:
            out.write(json.dumps(status) + "\n")
        else:
            _refresh(out, done)
            print_status(status, out, args.sort)
        out.flush()
        done += 1
        if args.count and done >= args.count:
            return
        time.sleep(args.watch)  # the refresh period the operator asked for


def top(path: Path, service: str | None, interval: float, count: int, as_json: bool,
        out: TextIO, timeout: float = control.CLIENT_TIMEOUT, sort: str | None = None) -> None:
    query = {"service": service} if service is not None else None
    previous = control.request(path, "status", query, timeout)
    previous_at = time.monotonic()
    done = 0
    while not count or done < count:
        time.sleep(interval)  # the refresh period the operator asked for
        status = control.request(path, "status", query, timeout)
        now = time.monotonic()
        elapsed = max(now - previous_at, 1e-9)
        before = {(v["name"], s["address"]): s
                  for v in previous["services"] for s in v["real_servers"]}
        rates = []
        for v in status["services"]:
            for s in v["real_servers"]:
                old = before.get((v["name"], s["address"]), {})
                rates.append({
                    "service": v["name"],
                    "address": s["address"],
                    "weight": s["weight"],
                    "associations": s["associations"],
                    **{f"{key}_per_s": round((s[key] - old.get(key, 0)) / elapsed, 1)
                       for key in ("packets_to", "bytes_to", "packets_from", "bytes_from")},
                })
        key = sort_key(sort, rate=True)
        if key is not None:
            rates.sort(key=key)
        if as_json:
            out.write(json.dumps({"interval": round(elapsed, 3), "real_servers": rates}) + "\n")
        else:
            _refresh(out, done)
            services = ", ".join(f"{v['name']} {v['virtual_server']}" for v in status["services"])
            out.write(f"sbulb on {', '.join(status['interfaces'])}: {services}, "
                      f"{status['associations']} associations, every {interval:g}s\n\n")
            _table([("service", "real server", "weight", "assoc", "pkts/s to", "bytes/s to",
                     "pkts/s from", "bytes/s from")] + [
                (r["service"], r["address"], r["weight"], r["associations"],
                 r["packets_to_per_s"], r["bytes_to_per_s"], r["packets_from_per_s"],
                 r["bytes_from_per_s"])
                for r in rates], out)
        out.flush()
        previous, previous_at = status, now
        done += 1


def main(argv: Sequence[str] | None = None) -> int:
    """sbulbctl; its exit code. Whatever goes wrong is one line on stderr,
    never a traceback."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:  # `sbulbctl ... | head`: the reader is gone
        _quiet_stdout()
        return EXIT_PIPE
    return code


def _quiet_stdout() -> None:
    """What is left in stdout's buffer goes nowhere: no second error when
    Python flushes it at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _confirm_flush_all(path: Path, args: argparse.Namespace,
                       parser: argparse.ArgumentParser) -> bool:
    """flush --all without --yes: ask at a terminal, refuse elsewhere."""
    if not sys.stdin.isatty():
        parser.error("flush --all forgets every client: confirm with --yes")
    count = control.request(path, "associations.count", _service_query(args), args.timeout)
    which = f"of service {args.service}" if args.service is not None else "of every service"
    sys.stderr.write(f"forget all {count} association(s) {which}? [y/N] ")
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return False
    return answer.strip().lower() in ("y", "yes")


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "endpoint", None) is not None:
        try:
            args.client, args.port = parse_endpoint(args.endpoint)
        except ConfigError as e:
            parser.error(str(e))
    out = sys.stdout
    try:
        path = find_daemon(args.interface)
        if (args.command == "associations" and args.action == "flush" and args.all
                and not args.yes and not _confirm_flush_all(path, args, parser)):
            print("sbulbctl: nothing flushed", file=sys.stderr)
            return EXIT_ERROR
        if args.command == "status" and args.watch is not None:
            watch(path, args, out)
        elif args.command == "status":
            status = control.request(path, "status", _service_query(args), args.timeout)
            if args.json:
                json.dump(status, out, indent=2)
                out.write("\n")
            else:
                print_status(status, out, args.sort)
        elif args.command == "top":
            top(path, args.service, args.interval, args.count, args.json, out, args.timeout,
                args.sort)
        elif args.command == "restart":
            result = control.request(path, "restart", {}, timeout=args.timeout)
            out.write(f"sbulb (pid {result['pid']}) restarting in place\n")
        elif args.command == "server" and args.action in ("disable", "enable"):
            result = control.request(path, f"server.{args.action}",
                                     {**_service_query(args), "server": args.server},
                                     timeout=args.timeout)
            verb = "disabled" if args.action == "disable" else "enabled"
            out.write(f"{args.server} {verb} in {', '.join(result[verb])}\n")
        elif args.command == "server":
            extra = {"weight": args.weight} if args.action == "set-weight" else {}
            result = control.request(path, f"server.{args.action}",
                                     {**_service_query(args), "server": args.server, **extra},
                                     timeout=args.timeout)
            what = {"set-weight": f"weight {getattr(args, 'weight', '')}", "drain": "drained",
                    "reset": "back to the file"}[args.action]
            out.write(f"{args.server} {what} in {', '.join(result['services'])}\n")
        else:
            result = associations(path, args)
            if args.json:
                out.write(json.dumps(result, indent=2 if isinstance(result, dict) else None) + "\n")
            elif args.action == "list":
                for a in result["associations"]:
                    client = f"[{a['client']}]" if ":" in a["client"] else a["client"]
                    out.write(f"{client}:{a['port']} -> {a['server']} ({a['service']})\n")
                out.write(f"({len(result['associations'])} of {result['total']})\n")
            elif args.action == "flush" and args.all:
                out.write(f"{result} association(s) forgotten\n")
            elif args.action == "flush":
                out.write(f"{result} association(s) of {args.server} forgotten\n")
            elif args.action == "count":
                out.write(f"{result}\n")
            elif result is None or result is False:
                print(f"sbulbctl: {args.endpoint} has no association", file=sys.stderr)
                return EXIT_ERROR
            else:
                out.write("deleted\n" if result is True else f"{result}\n")
    except (control.ControlError, ConfigError) as e:
        print(f"sbulbctl: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        raise  # stdout's reader is gone: main() ends quietly
    except OSError as e:  # the run directory, a socket's file
        print(f"sbulbctl: error: {e.strerror or e}"
              + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # an answer not as expected
        print(f"sbulbctl: error: the daemon's answer is not one this sbulbctl reads "
              f"({type(e).__name__}: {e})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _service_query(args: argparse.Namespace) -> dict[str, Any]:
    return {"service": args.service} if args.service is not None else {}


def associations(path: Path, args: argparse.Namespace) -> Any:
    query = _service_query(args)
    timeout = args.timeout
    if args.action == "list":
        query.update(client=args.client, server=args.server, limit=args.limit)
        return control.request(path, "associations.list", query, timeout)
    if args.action == "count":
        return control.request(path, "associations.count", query, timeout)
    if args.action == "flush" and args.all:
        return control.request(path, "associations.flush", {**query, "all": True}, timeout)
    if args.action == "flush":
        return control.request(path, "associations.flush", {**query, "server": args.server},
                               timeout)
    return control.request(path, f"associations.{args.action}",
                           {**query, "client": args.client, "port": args.port}, timeout)


if __name__ == "__main__":
    sys.exit(main())
