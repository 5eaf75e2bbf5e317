"""What the benchmark runs the load through, each set up on the lab's
load balancer namespace and torn down again: sbulb, the alternatives a user
would pick (nftables DNAT, nginx's UDP proxy, a Python forwarder), and the
ceilings (a bare XDP_TX reflector, an XDP drop)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import sbulb
from sbulb.bench.tools import BenchTools
from sbulb.bench.topology import LB_ADDRESS, PORT, VIP, BenchLab
from sbulb.lab import SbulbProcess, in_ns, netns, sh

STOP_TIMEOUT = 30.0
READY_TIMEOUT = 30.0


class Case:
    """One way through the load balancer."""

    name = ""
    label = ""
    generic = False  # sbulb in generic XDP mode: the link needs GRO for NAPI
    needs_neighbours = False  # learns the servers' MACs from traffic (sbulb, fib)
    forwards_to_servers = True  # the ceilings do not: no sample through sockets
    copies = 1  # datagrams the servers get for each one sent (a tee: one per target)

    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path) -> None:
        self.lab, self.tools, self.workdir = lab, tools, workdir

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def processes(self) -> list[int]:
        """Processes whose CPU time is the balancer's, besides lbwire's NAPI
        thread (which every case has)."""
        return []

    def cpu_used(self) -> float:
        """CPU seconds its processes have used so far (the NAPI thread's
        aside)."""
        return cpu_seconds(self.processes())

    def check(self) -> None:
        """Raise if what the case started has died (a run would count
        nothing and say so quietly)."""

    def delivered(self) -> int:
        """Frames that reached the real servers."""
        counted = self.tools.counted()
        return sum(counted.get(server, 0) for server in self.lab.servers)

    def __enter__(self) -> "Case":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Ceiling(Case):
    """A bare XDP program on lbwire: what the link and the balancer's CPU
    give at best."""

    forwards_to_servers = False

    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path, program: str) -> None:
        super().__init__(lab, tools, workdir)
        self.program = program
        self.name = {"reflect": "xdp-tx-reflector", "drop": "xdp-drop"}[program]
        self.label = {"reflect": "XDP_TX reflector (ceiling)",
                      "drop": "XDP drop (ceiling, received)"}[program]

    def start(self) -> None:
        self.tools.attach(self.lab.lb_ns, self.lab.lb_if, self.program)

    def stop(self) -> None:
        self.tools.detach(self.lab.lb_ns, self.lab.lb_if)

    def delivered(self) -> int:
        if self.program == "drop":
            return self.tools.ceiling_count()
        return self.tools.counted().get(VIP, 0)


class Sbulb(Case):
    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path, mode: str = "native",
                 forward: str = "fib", max_associations: int = 1 << 20,
                 config_file: Path | None = None, extra: Sequence[str] = ()) -> None:
        super().__init__(lab, tools, workdir)
        self.extra = list(extra)
        self.mode, self.forward = mode, forward
        self.generic = mode == "generic"
        self.needs_neighbours = forward == "fib"
        self.max_associations = max_associations
        self.config_file = config_file
        self.name = f"sbulb-{mode}" + ("" if forward == "fib" else f"-{forward}")
        self.label = f"sbulb, {mode} XDP" + ("" if forward == "fib" else f", {forward}")
        self.process: SbulbProcess | None = None
        self.startup_seconds = 0.0

    def args(self) -> list[str]:
        servers = (["-cfg", str(self.config_file)] if self.config_file
                   else ["-rs", *map(str, self.lab.servers)])
        return ["-vs", str(VIP), "-p", str(PORT), *servers, "--xdp-mode", self.mode,
                "--forward", self.forward, "-ma", str(self.max_associations), "--no-pin",
                *self.extra, self.lab.lb_if]

    def start(self) -> None:
        if self.generic:
            self.lab.set_gro(True)
        started = time.monotonic()
        self.process = SbulbProcess(self.lab.lb_ns, self.args(), self.workdir)
        self.process.wait_ready()
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None
        if self.generic:
            self.lab.set_gro(False)

    # processes(): none, the daemon is the control plane; the data path is
    # all in the NAPI thread

    def check(self) -> None:
        if self.process is not None and self.process.proc.poll() is not None:
            raise RuntimeError(f"sbulb exited ({self.process.proc.returncode}): "
                               f"{self.process.stderr.strip()}")

    def sbulb_pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class KernelPeer(Case):
    """A case that leaves the packets to the kernel: lbwire gets an XDP_PASS
    program, which is what makes a veth deliver what the generator sends."""

    def start(self) -> None:
        from sbulb.dataplane import attach_pass_program

        with netns(self.lab.lb_ns):
            attach_pass_program(self.lab.lb_if)

    def stop(self) -> None:
        sh("ip", "-n", self.lab.lb_ns, "link", "set", "dev", self.lab.lb_if, "xdpdrv", "off", check=False)


class Nftables(KernelPeer):
    """DNAT to the real servers in turn (numgen inc) and SNAT to the
    balancer's address, so replies come back through it. Conntrack keeps a
    client on its server. Run it last: its conntrack entries outlive the
    table."""

    name = "nftables"
    label = "nftables DNAT (numgen inc)"
    TABLE = "sbulb_bench"

    def ruleset(self) -> str:
        servers = self.lab.servers
        mapping = ", ".join(f"{i} : {address}" for i, address in enumerate(servers))
        return f"""table ip {self.TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} udp dport {PORT} dnat to numgen inc mod {len(servers)} map {{ {mapping} }}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip daddr {{ {", ".join(map(str, servers))} }} udp dport {PORT} snat to {LB_ADDRESS}
    }}
}}
"""

    def start(self) -> None:
        super().start()
        path = self.workdir / "nftables.conf"
        path.write_text(self.ruleset())
        in_ns(self.lab.lb_ns, "nft", "-f", str(path))

    def stop(self) -> None:
        in_ns(self.lab.lb_ns, "nft", "delete", "table", "ip", self.TABLE, check=False)
        super().stop()


class Proxy(KernelPeer):
    """A userspace proxy, started in the balancer's namespace, ready when
    its socket on the VIP is bound."""

    process: subprocess.Popen[bytes] | None = None
    new_session = False  # its own session: stop() ends the whole process group

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        super().start()
        log = (self.workdir / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.lab.lb_ns}", *self.command()],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            env={**os.environ, "PYTHONPATH": str(Path(sbulb.__file__).resolve().parents[1])},
            start_new_session=self.new_session,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._bound():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.workdir / f"{self.name}.log").read_text(errors="replace")
                raise RuntimeError(f"{self.name} did not start: {output.strip()}")
            # poll the namespace's sockets: bounded, no event to wait on
            select.select([], [], [], 0.05)

    def _bound(self) -> bool:
        sockets = in_ns(self.lab.lb_ns, "ss", "-Huln", "src", f"{VIP}:{PORT}").stdout
        return bool(sockets.strip())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        super().stop()

    def processes(self) -> list[int]:
        if self.process is None:
            return []
        return [self.process.pid, *children(self.process.pid)]

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            output = (self.workdir / f"{self.name}.log").read_text(errors="replace")
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}): "
                               f"{output.strip()[-500:]}")


class Nginx(Proxy):
    """Debian's nginx, stream module, UDP: two workers (one per CPU), each
    with its own socket (reuseport), the real servers as one upstream."""

    name = "nginx"
    label = "nginx UDP proxy (stream)"
    MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

    def command(self) -> list[str]:
        if not self.MODULE.exists():
            raise RuntimeError(f"{self.MODULE} missing: install libnginx-mod-stream "
                               "(`make bench` does)")
        upstreams = "".join(f"        server {a}:{PORT};\n" for a in self.lab.servers)
        conf = self.workdir / "nginx.conf"
        conf.write_text(f"""load_module {self.MODULE};
worker_processes 2;
worker_rlimit_nofile 65536;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/nginx.error.log warn;
events {{ worker_connections 65536; }}
stream {{
    upstream real_servers {{
{upstreams}    }}
    server {{
        listen {VIP}:{PORT} udp reuseport;
        proxy_pass real_servers;
        proxy_timeout 60s;
    }}
}}
""")
        return ["nginx", "-p", str(self.workdir), "-e", f"{self.workdir}/nginx.error.log",
                "-c", str(conf), "-g", "daemon off;"]


class PythonForwarder(Proxy):
    name = "python"
    label = "Python forwarder (userspace)"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sbulb.bench.forwarder", f"{VIP}:{PORT}",
                *(str(a) for a in self.lab.servers)]


def children(pid: int) -> list[int]:
    """Direct children of `pid` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time these processes' threads (or kernel threads) have run, from
    schedstat (ns; /proc/PID/stat counts 10 ms ticks)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def fdinfo(pid: int, fd: int | None = None) -> Iterator[dict[str, str]]:
    """The fields of /proc/PID/fdinfo for each of a process's fds (or one):
    BPF maps and programs show their type, size, memory, run statistics."""
    paths = [Path(f"/proc/{pid}/fdinfo/{fd}")] if fd is not None else \
        list(Path(f"/proc/{pid}/fdinfo").iterdir())
    for path in paths:
        try:
            text = path.read_text()
        except OSError:  # closed meanwhile
            continue
        yield dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
