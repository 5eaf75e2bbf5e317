"""A lab: sbulb's deployment, built on one machine with network namespaces.

    clients ── router ── load balancer (one interface, XDP)
                 │
                 ├── rs0
                 ├── rs1   real servers, each on its own link
                 └── ...

Every box is a network namespace and every link a veth pair, dual-stack
(IPv4 and IPv6 at once). The load balancer is one-armed behind the router,
as sbulb documents: datagrams to the VIP reach it through the router, and
whatever it rewrites goes back to the router (MAC swap, XDP_TX), which
routes it on. The real servers' return traffic to clients is routed through
the load balancer by a policy rule on the router.

Real servers run a UDP service that answers each datagram with
"<server name> <payload>", and can send a datagram first. The load
balancer's own stack runs the same service under the name "lb-local" on
the balanced and an unbalanced port, so traffic that sbulb passes to the
kernel is visible too.

Namespace names carry a unique prefix (sblab-<pid>-<hex>); a lab is torn
down on exit, on SIGTERM, and, if its process was killed, by the next lab.
Test traffic goes only to these namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from pyroute2.netns import popns, pushns

import sbulb
from sbulb.config import IPAddress

PREFIX = "sblab"
PORT = 5683  # balanced by the lab's sbulb
SECOND_PORT = 5684  # the real servers listen here too (a second service)
CLOSED_PORT = 5699  # may be balanced too, but no real server listens there
UNBALANCED_PORT = 7777
START_TIMEOUT = 120.0  # compile + load on a slow machine
STOP_TIMEOUT = 30.0
SO_RCVBUFFORCE = 33  # socket(7): root may exceed net.core.rmem_max

ip = ipaddress.ip_address


class LabError(Exception):
    pass


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


@contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the enclosed code (this thread only) in a network namespace;
    sockets created there stay there."""
    pushns(name)
    try:
        yield
    finally:
        popns()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_pins(ns: str) -> None:
    """Remove what sbulb pinned in bpffs from inside a network namespace
    (it outlives the namespace: bpffs is shared)."""
    import shutil

    from sbulb.dataplane import PIN_ROOT

    for directory in PIN_ROOT.glob(f"*@{ns}") if PIN_ROOT.is_dir() else []:
        shutil.rmtree(directory, ignore_errors=True)


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone, and the pins
    of lab namespaces that are gone."""
    from sbulb.dataplane import PIN_ROOT

    names = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    removed = []
    for name in names:
        match = re.match(rf"{PREFIX}-(\d+)-", name)
        if match and not _pid_alive(int(match.group(1))):
            forget_pins(name)
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    for directory in PIN_ROOT.glob(f"*@{PREFIX}-*") if PIN_ROOT.is_dir() else []:
        ns = directory.name.partition("@")[2]
        if ns not in names or ns in removed:
            forget_pins(ns)
    return removed


@dataclass(frozen=True)
class Addresses:
    """The lab's address plan, one family."""

    family: int
    vip: IPAddress
    clients: tuple[IPAddress, ...]
    router_client_side: IPAddress
    router_lb_side: IPAddress
    lb: IPAddress
    real_servers: tuple[IPAddress, ...]
    routers_for_servers: tuple[IPAddress, ...]
    client_net: str
    prefix: int


def plan(family: int, servers: int) -> Addresses:
    if family == 4:
        return Addresses(
            4,
            ip("10.77.100.1"),
            (ip("10.77.1.10"), ip("10.77.1.11")),
            ip("10.77.1.1"),
            ip("10.77.2.1"),
            ip("10.77.2.2"),
            tuple(ip(f"10.77.{10 + i}.2") for i in range(servers)),
            tuple(ip(f"10.77.{10 + i}.1") for i in range(servers)),
            "10.77.1.0/24",
            24,
        )
    return Addresses(
        6,
        ip("fd77:100::1"),
        (ip("fd77:1::10"), ip("fd77:1::11")),
        ip("fd77:1::1"),
        ip("fd77:2::1"),
        ip("fd77:2::2"),
        tuple(ip(f"fd77:{10 + i}::2") for i in range(servers)),
        tuple(ip(f"fd77:{10 + i}::1") for i in range(servers)),
        "fd77:1::/64",
        64,
    )


class UdpService:
    """A UDP service in a namespace, IPv4 and IPv6: answers every datagram
    with "<name> <payload>" from the port it reached (wildcard sockets: the
    kernel picks the source address), and can send first. Runs in a thread
    of this process."""

    def __init__(self, ns: str, name: str, ports: Sequence[int]) -> None:
        self.name = name
        self.received = 0
        self._sockets: dict[tuple[int, int], socket.socket] = {}
        with netns(ns):
            for port in ports:
                v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                v4.bind(("0.0.0.0", port))
                v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::", port))
                for sock in (v4, v6):
                    # room for bursts: a mirror copy is built in a page of
                    # its own (4 KiB of buffer, whatever its size), and the
                    # lab's veths carry it to the socket as it is
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                self._sockets[(4, port)] = v4
                self._sockets[(6, port)] = v6
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=f"udp-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self._sockets.values():
            selector.register(sock, selectors.EVENT_READ)
        selector.register(self._stop_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj == self._stop_r:
                    selector.close()
                    return
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data, peer = sock.recvfrom(65535)
                self.received += 1
                sock.sendto(self.name.encode() + b" " + data, peer)

    def send(self, family: int, port: int, to: IPAddress, to_port: int, payload: bytes) -> None:
        """Send first, from our `port`, to a client: "<name> <payload>"."""
        self._sockets[(family, port)].sendto(self.name.encode() + b" " + payload, (str(to), to_port))

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for sock in self._sockets.values():
            sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


@dataclass(frozen=True)
class Reply:
    server: str  # the name the service tagged its answer with
    payload: bytes
    source: IPAddress
    source_port: int


class Client:
    """A UDP socket on a client of the lab (one source ip:port)."""

    def __init__(self, ns: str, address: IPAddress, port: int = 0) -> None:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        with netns(ns):
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        # room for bursts of answers: what XDP sent reaches the socket in a
        # page of its own (see UdpService)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        self.sock.bind((str(address), port))
        self.address = address
        self.port: int = self.sock.getsockname()[1]

    def send(self, to: IPAddress, port: int, payload: bytes) -> None:
        self.sock.sendto(payload, (str(to), port))

    def receive(self, timeout: float) -> Reply | None:
        """The next datagram, or None after `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            data, peer = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        name, _, payload = data.partition(b" ")
        return Reply(name.decode(errors="replace"), payload, ip(peer[0]), peer[1])

    def exchange(self, to: IPAddress, port: int, payload: bytes, timeout: float = 2.0,
                 attempts: int = 3) -> Reply:
        """Send and wait for the answer to this payload; the first datagrams
        of a path may wait for ARP / neighbour discovery, so retry a few
        times (UDP gives no other guarantee)."""
        for _ in range(attempts):
            self.send(to, port, payload)
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                reply = self.receive(remaining)
                if reply is not None and reply.payload == payload:
                    return reply
        raise LabError(f"no answer from {to}:{port} to client {self.address}:{self.port}")

    def close(self) -> None:
        self.sock.close()


class NotifySocket:
    """The socket systemd would give a Type=notify service."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"notify-{uuid.uuid4().hex[:8]}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.received: list[str] = []

    def wait_for(self, prefix: str, timeout: float,
                 alive: Callable[[], bool] = lambda: True) -> str:
        """The first message (already received or to come) with a line that
        starts with `prefix`; TimeoutError after `timeout` seconds, or as
        soon as alive() (checked every half second) says the sender is gone."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.received:
                if any(line.startswith(prefix) for line in message.splitlines()):
                    self.received.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not alive():
                raise TimeoutError(f"no {prefix!r} within {timeout}s; got {self.received}")
            self.sock.settimeout(min(remaining, 0.5))
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class SbulbProcess:
    """`python3 -m sbulb ARGS` started in a namespace, as an operator would,
    with a NOTIFY_SOCKET of ours."""

    def __init__(
        self,
        ns: str,
        args: Sequence[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.args = list(args)
        self.notify = NotifySocket(workdir)
        self.stderr_path = workdir / f"sbulb-{uuid.uuid4().hex[:8]}.stderr"
        package_root = str(Path(sbulb.__file__).resolve().parent.parent)
        pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        environ = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "NOTIFY_SOCKET": str(self.notify.path),
            **(env or {}),
        }
        # nsenter --net, not `ip netns exec`: the latter also remounts /sys,
        # which hides bpffs (/sys/fs/bpf) and with it sbulb's pinned maps
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", *prefix, sys.executable, "-m", "sbulb",
                 *args],
                cwd=workdir,
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """READY=1's message; fails with sbulb's stderr if it never comes."""
        try:
            return self.notify.wait_for("READY=1", timeout,
                                        alive=lambda: self.proc.poll() is None)
        except TimeoutError:
            raise LabError(
                f"sbulb not ready after {timeout}s (exit code {self.proc.poll()}): {self.stderr}"
            ) from None

    def wait_log(self, text: str, timeout: float, count: int = 1) -> float:
        """Seconds until `text` is `count` times in sbulb's log (polled with
        a deadline); LabError if it never is or sbulb exits."""
        began = time.monotonic()
        while self.stderr.count(text) < count:
            if time.monotonic() - began > timeout:
                raise LabError(f"no {text!r} in sbulb's log within {timeout:g}s: {self.stderr}")
            if self.proc.poll() is not None:
                raise LabError(f"sbulb exited ({self.proc.returncode}): {self.stderr}")
            time.sleep(0.05)  # polling the log file for a line
        return time.monotonic() - began

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Stop the process we started if it still runs (SIGTERM, then
        SIGKILL); release the socket."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.notify.close()


class Lab:
    """The topology above, built on enter and torn down on exit."""

    def __init__(self, servers: int = 3, say: Callable[[str], None] | None = None) -> None:
        self.id = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.server_count = servers
        self.say = say or (lambda text: None)
        self.v4 = plan(4, servers)
        self.v6 = plan(6, servers)
        self.client_ns = f"{self.id}-client"
        self.router_ns = f"{self.id}-router"
        self.lb_ns = f"{self.id}-lb"
        self.server_ns = [f"{self.id}-rs{i}" for i in range(servers)]
        self.server_names = [f"rs{i}" for i in range(servers)]
        self.lb_interface = "eth0"
        self.lb_interfaces = ["eth0"]  # what sbulb is started on
        self.services: list[UdpService] = []
        self._namespaces: list[str] = []
        self._processes: list[SbulbProcess] = []
        self._clients: list[Client] = []
        self._previous_sigterm: object = None

    def addresses(self, family: int) -> Addresses:
        return self.v4 if family == 4 else self.v6

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    # -- build / tear down

    def __enter__(self) -> "Lab":
        if threading.current_thread() is threading.main_thread():
            # SIGTERM unwinds like Ctrl-C, so that __exit__ tears the lab down
            self._previous_sigterm = signal.signal(signal.SIGTERM, raise_interrupt)
        try:
            stale = cleanup_stale()
            if stale:
                self.say(f"lab: removed {len(stale)} namespaces left by a killed lab")
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self._processes:
            process.close()
        for client in self._clients:
            client.close()
        for service in self.services:
            service.close()
        for ns in reversed(self._namespaces):
            forget_pins(ns)
            sh("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)  # type: ignore[arg-type]
            self._previous_sigterm = None

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._namespaces.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            in_ns(name, "sysctl", "-qw", f"{key}=0")

    def _link(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair between two namespaces, up, with transmit checksum
        offload off: a partial UDP checksum left by the sender would be
        corrupted by any NAT that updates it incrementally."""
        sh("ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b,
           "netns", ns_b)
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            in_ns(ns, "ethtool", "-K", ifname, "tx", "off")
            sh("ip", "-n", ns, "link", "set", ifname, "up")

    def _addr(self, ns: str, ifname: str, address: IPAddress, prefix: int) -> None:
        extra = ["nodad"] if address.version == 6 else []
        sh("ip", "-n", ns, "addr", "add", f"{address}/{prefix}", "dev", ifname, *extra)

    def _route(self, ns: str, *args: str) -> None:
        sh("ip", "-n", ns, *args)

    def _make_router(self, ns: str) -> None:
        """IP forwarding on, reverse-path filter off, and accept_local: a
        router may get its own packets back through sbulb (its "fragmentation
        needed" to the VIP, handed on to a real server; or, when it is the
        load balancer, answers from the VIP it forwards until it knows a
        client's MAC), which Linux drops as martians without it."""
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv4.conf.all.accept_local=1", "net.ipv4.conf.default.accept_local=1"):
            in_ns(ns, "sysctl", "-qw", key)

    def _start_services(self) -> None:
        """The UDP service on each real server, and 'lb-local' on the load
        balancer's own stack (balanced and unbalanced ports)."""
        for name, ns in zip(self.server_names, self.server_ns):
            self.services.append(UdpService(ns, name, [PORT, SECOND_PORT]))
        self.services.append(UdpService(self.lb_ns, "lb-local", [PORT, UNBALANCED_PORT]))

    def _build(self) -> None:
        self.say(f"lab: building namespaces {self.id}-{{client,router,lb,rs0..rs{self.server_count - 1}}}")
        for ns in [self.client_ns, self.router_ns, self.lb_ns, *self.server_ns]:
            self._add_ns(ns)
        r = self.router_ns
        self._make_router(r)

        self._link(self.client_ns, "eth0", r, "to-clients")
        self._link(self.lb_ns, self.lb_interface, r, "to-lb")
        for i, ns in enumerate(self.server_ns):
            self._link(ns, "eth0", r, f"to-rs{i}")

        table = "100"  # the router's table for real servers' traffic to clients
        for a, any_net in ((self.v4, "default"), (self.v6, "default")):
            fam = f"-{a.family}"
            for client in a.clients:
                self._addr(self.client_ns, "eth0", client, a.prefix)
            self._addr(r, "to-clients", a.router_client_side, a.prefix)
            self._route(self.client_ns, fam, "route", "add", any_net, "via", str(a.router_client_side))

            self._addr(r, "to-lb", a.router_lb_side, a.prefix)
            self._addr(self.lb_ns, self.lb_interface, a.lb, a.prefix)
            self._route(self.lb_ns, fam, "route", "add", any_net, "via", str(a.router_lb_side))
            # the VIP is the load balancer's (so its own stack answers what
            # sbulb passes), reached through it
            vip_len = "32" if a.family == 4 else "128"
            sh("ip", "-n", self.lb_ns, "addr", "add", f"{a.vip}/{vip_len}", "dev", "lo")
            self._route(r, fam, "route", "add", f"{a.vip}/{vip_len}", "via", str(a.lb))
            self._route(r, fam, "route", "add", a.client_net, "via", str(a.lb), "table", table)

            for i, ns in enumerate(self.server_ns):
                self._addr(ns, "eth0", a.real_servers[i], a.prefix)
                self._addr(r, f"to-rs{i}", a.routers_for_servers[i], a.prefix)
                self._route(ns, fam, "route", "add", any_net, "via", str(a.routers_for_servers[i]))
                # replies to clients go through the load balancer
                self._route(r, fam, "rule", "add", "iif", f"to-rs{i}", "to", a.client_net,
                            "lookup", table)

        # XDP_TX on a veth only delivers if the receiving end runs XDP
        from sbulb.dataplane import attach_pass_program

        with netns(r):
            attach_pass_program("to-lb")
        self.say("lab: a veth delivers XDP_TX frames only to a peer running XDP: "
                 "attached a pass-through XDP program to the router's side of the "
                 "load balancer's link")

        self._start_services()
        self.say(f"lab: UDP services on ports {PORT} and {SECOND_PORT} of "
                 f"{', '.join(self.server_names)} "
                 f"(and 'lb-local' on the load balancer's own stack)")

    # -- use

    def service(self, name: str) -> UdpService:
        return next(s for s in self.services if s.name == name)

    def client(self, family: int, index: int = 0, port: int = 0) -> Client:
        client = Client(self.client_ns, self.addresses(family).clients[index], port)
        self._clients.append(client)
        return client

    def server_name(self, family: int, address: IPAddress) -> str:
        return self.server_names[self.addresses(family).real_servers.index(address)]

    def write_config(self, path: Path, family: int, servers: Sequence[int]) -> None:
        """An sbulb INI file listing some of the lab's servers, saved by
        rename as editors do."""
        addresses = self.addresses(family).real_servers
        text = "[Real Servers]\n" + "".join(f"{addresses[i]}\n" for i in servers)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
        tmp.write_text(text)
        os.replace(tmp, path)

    def forget_associations(self) -> None:
        """Remove the load balancer's pinned associations: the next sbulb
        starts afresh."""
        forget_pins(self.lb_ns)

    def start_sbulb(self, args: Sequence[str], workdir: Path, **kw: object) -> SbulbProcess:
        process = SbulbProcess(self.lb_ns, args, workdir, **kw)  # type: ignore[arg-type]
        self._processes.append(process)
        return process

    def sbulb_args(self, family: int, config: Path, *extra: str,
                   ports: Sequence[int] = (PORT,)) -> list[str]:
        return [*self.lb_interfaces, "-vs", str(self.addresses(family).vip), "-cfg",
                str(config), "-p", *map(str, ports), *extra]

    def forwarded_by_kernel(self, family: int, ns: str | None = None) -> int:
        """Datagrams the kernel of a namespace (default: the load
        balancer's) has forwarded: what XDP did not."""
        if family == 4:
            lines = in_ns(ns or self.lb_ns, "cat", "/proc/net/snmp").stdout.splitlines()
            ip_lines = [line.split() for line in lines if line.startswith("Ip:")]
            return int(dict(zip(ip_lines[0], ip_lines[1]))["ForwDatagrams"])
        for line in in_ns(ns or self.lb_ns, "cat", "/proc/net/snmp6").stdout.splitlines():
            if line.startswith("Ip6OutForwDatagrams"):
                return int(line.split()[1])
        raise LabError("no Ip6OutForwDatagrams in /proc/net/snmp6")

    def set_mtu(self, ns: str, ifname: str, mtu: int) -> None:
        sh("ip", "-n", ns, "link", "set", "dev", ifname, "mtu", str(mtu))

    def xdp_programs(self, ns: str | None = None, ifname: str | None = None) -> list[str]:
        """Names of the XDP programs on an interface (default: the LB's)."""
        return [name for _, name in xdp_programs(ns or self.lb_ns, ifname or self.lb_interface)]


def xdp_programs(ns: str, ifname: str) -> list[tuple[int, str]]:
    """(id, name) of the XDP programs attached to an interface of a namespace."""
    out = sh("ip", "-n", ns, "-j", "-d", "link", "show", "dev", ifname).stdout
    xdp = json.loads(out)[0].get("xdp", {})
    attached = xdp.get("attached") or ([{"prog": xdp["prog"]}] if "prog" in xdp else [])
    return [(a["prog"]["id"], a["prog"]["name"]) for a in attached]


def plan_routed(family: int, servers: int) -> Addresses:
    """Addresses of RoutedLab: the load balancer is the clients' gateway
    (router_client_side) and the servers' (routers_for_servers)."""
    if family == 4:
        lb_client, lb_server = ip("10.79.1.1"), ip("10.79.2.1")
        return Addresses(4, ip("10.79.100.1"), (ip("10.79.1.10"), ip("10.79.1.11")),
                         lb_client, lb_server, lb_client,
                         tuple(ip(f"10.79.2.{10 + i}") for i in range(servers)),
                         (lb_server,) * servers, "10.79.1.0/24", 24)
    lb_client, lb_server = ip("fd79:1::1"), ip("fd79:2::1")
    return Addresses(6, ip("fd79:100::1"), (ip("fd79:1::10"), ip("fd79:1::11")),
                     lb_client, lb_server, lb_client,
                     tuple(ip(f"fd79:2::{10 + i:x}") for i in range(servers)),
                     (lb_server,) * servers, "fd79:1::/64", 64)


class RoutedLab(Lab):
    """The load balancer as a two-interface router, for --forward fib:

        clients ── eth0 [load balancer] eth1 ── switch (bridge) ─┬─ rs0
                                                                  ├─ rs1
                                                                  └─ ...

    It routes (IP forwarding on) and is the gateway of both sides; sbulb
    runs on eth0 and eth1, and what it rewrites leaves by the interface the
    kernel's FIB names (XDP_REDIRECT between them)."""

    def __init__(self, servers: int = 3, say: Callable[[str], None] | None = None) -> None:
        super().__init__(servers, say)
        self.v4 = plan_routed(4, servers)
        self.v6 = plan_routed(6, servers)
        self.switch_ns = f"{self.id}-switch"
        self.router_ns = self.lb_ns  # the load balancer routes
        self.lb_interfaces = ["eth0", "eth1"]

    def _build(self) -> None:
        self.say(f"lab: building namespaces {self.id}-{{client,lb,switch,rs0..rs"
                 f"{self.server_count - 1}}} (the load balancer routes)")
        for ns in [self.client_ns, self.lb_ns, self.switch_ns, *self.server_ns]:
            self._add_ns(ns)
        lb = self.lb_ns
        self._make_router(lb)
        self._link(self.client_ns, "eth0", lb, "eth0")
        self._link(lb, "eth1", self.switch_ns, "to-lb")
        sh("ip", "-n", self.switch_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch_ns, "link", "set", "br0", "up")
        sh("ip", "-n", self.switch_ns, "link", "set", "to-lb", "master", "br0")
        for i, ns in enumerate(self.server_ns):
            self._link(ns, "eth0", self.switch_ns, f"to-rs{i}")
            sh("ip", "-n", self.switch_ns, "link", "set", f"to-rs{i}", "master", "br0")

        for a in (self.v4, self.v6):
            fam = f"-{a.family}"
            for client in a.clients:
                self._addr(self.client_ns, "eth0", client, a.prefix)
            self._route(self.client_ns, fam, "route", "add", "default", "via",
                        str(a.router_client_side))
            self._addr(lb, "eth0", a.router_client_side, a.prefix)
            self._addr(lb, "eth1", a.routers_for_servers[0], a.prefix)
            vip_len = "32" if a.family == 4 else "128"
            sh("ip", "-n", lb, "addr", "add", f"{a.vip}/{vip_len}", "dev", "lo")
            for i, ns in enumerate(self.server_ns):
                self._addr(ns, "eth0", a.real_servers[i], a.prefix)
                self._route(ns, fam, "route", "add", "default", "via",
                            str(a.routers_for_servers[i]))

        # what sbulb redirects into a veth is only delivered if its peer runs XDP
        from sbulb.dataplane import attach_pass_program

        with netns(self.client_ns):
            attach_pass_program("eth0")
        with netns(self.switch_ns):
            attach_pass_program("to-lb")
        self.say("lab: attached pass-through XDP programs to the peers of the load "
                 "balancer's two interfaces (veth delivers XDP frames only to XDP peers)")
        self._start_services()


def raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python3 -m sbulb.lab cleanup`: remove namespaces of killed labs."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["cleanup"]:
        print("usage: python3 -m sbulb.lab cleanup", file=sys.stderr)
        return 2
    removed = cleanup_stale()
    print(f"removed {len(removed)} stale lab namespaces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
