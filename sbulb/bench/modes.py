"""The modes phase: sbulb's mirror mode (to 2 and to 4 targets) and
per-packet mode, side by side with what a user picks instead for a UDP tee:
the seed's socat broadcast chain, a Python tee and nftables `dup`.

Each case takes the same load (64-byte datagrams from 1000 clients to the
VIP) in a lab of its own with four real server addresses; the far end's
counter counts the copies each target gets. A mirror case's loss is the
copies that did not arrive out of datagrams in x targets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from sbulb.bench.measure import Bench
from sbulb.bench.peers import Case, KernelPeer, Proxy, Sbulb, cpu_seconds
from sbulb.bench.tools import BenchTools
from sbulb.bench.topology import PORT, VIP, BenchLab
from sbulb.lab import in_ns, sh

SERVERS = 4
PAYLOAD = 64
BROADCAST_PORT = 9999  # the socat chain's local broadcast (the seed's)
# what `make bench` prints, in this order
CASES = ["sbulb-mirror-2", "sbulb-mirror-4", "sbulb-per-packet", "socat-chain-2",
         "python-tee-2", "nftables-dup-2"]


class SbulbMode(Sbulb):
    """sbulb with one service of the given mode over the first `targets`
    servers."""

    forwards_to_servers = False  # the sample check expects one copy per datagram

    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path, mode: str,
                 targets: int) -> None:
        conf = workdir / f"sbulb-{mode}-{targets}.conf"
        conf.write_text(f"[Service bench]\nmode = {mode}\naddress = {VIP}\nports = {PORT}\n"
                        f"servers = {' '.join(map(str, lab.servers[:targets]))}\n")
        super().__init__(lab, tools, workdir, config_file=conf)
        self.copies = targets if mode == "mirror" else 1
        self.name = f"sbulb-{mode}-{targets}" if mode == "mirror" else f"sbulb-{mode}"
        self.label = (f"sbulb mirror, {targets} targets" if mode == "mirror"
                      else f"sbulb {mode}, {targets} servers")

    def args(self) -> list[str]:
        return ["-cfg", str(self.config_file), "--xdp-mode", self.mode, "--forward",
                self.forward, "-ma", str(self.max_associations), "--no-pin", self.lab.lb_if]


class CpuGroup:
    """A cgroup whose CPU time covers every process that was in it, those
    that exited too (the socat chain forks a child per datagram). cgroup v2
    (cpu.stat) or v1 (cpuacct); None of either: 0."""

    def __init__(self, name: str) -> None:
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/cpuacct")
        if (v2 / "cgroup.controllers").exists():
            self.path: Path | None = v2 / name
        elif (v1 / "cpuacct.usage").exists():
            self.path = v1 / name
        else:
            self.path = None
        if self.path is not None:
            self.path.mkdir(exist_ok=True)

    @property
    def procs(self) -> str:
        return str(self.path / "cgroup.procs") if self.path else "/dev/null"

    def seconds(self) -> float:
        if self.path is None:
            return 0.0
        stat = self.path / "cpu.stat"
        if stat.exists():
            fields = dict(line.split() for line in stat.read_text().splitlines())
            return int(fields["usage_usec"]) / 1e6
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass  # a process is still in it: the next run's mkdir reuses it


class SocatChain(Proxy):
    """The seed's UDP tee: socat reads the VIP (forking a child per
    datagram) and sends each to the local broadcast address; one socat
    per target reads the broadcast and sends it on."""

    forwards_to_servers = False

    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path, targets: int) -> None:
        super().__init__(lab, tools, workdir)
        self.targets = targets
        self.copies = targets
        self.name = f"socat-chain-{targets}"
        self.label = f"socat broadcast chain, {targets} targets"
        self.group = CpuGroup(f"sbulb-bench-{os.getpid()}-socat")

    def command(self) -> list[str]:
        relays = "".join(
            f"socat -u udp-recvfrom:{BROADCAST_PORT},reuseaddr,fork "
            f"udp-sendto:{server}:{PORT} &\n" for server in self.lab.servers[:self.targets])
        script = (f"echo $$ > {self.group.procs}\n{relays}"
                  f"socat -u udp-recvfrom:{PORT},bind={VIP},fork "
                  f"udp-sendto:127.255.255.255:{BROADCAST_PORT},broadcast &\nwait\n")
        return ["sh", "-c", script]

    def start(self) -> None:
        self.new_session = True
        super().start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # the shell's session: ours
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        super().stop()
        self.group.remove()

    def cpu_used(self) -> float:
        return self.group.seconds()


class PythonTee(Proxy):
    forwards_to_servers = False

    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path, targets: int) -> None:
        super().__init__(lab, tools, workdir)
        self.targets = targets
        self.copies = targets
        self.name = f"python-tee-{targets}"
        self.label = f"Python tee, {targets} targets"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sbulb.bench.tee", f"{VIP}:{PORT}",
                *(str(a) for a in self.lab.servers[:self.targets])]


class NftablesDup(KernelPeer):
    """nftables in the kernel: rewrite the destination and `dup` the
    datagram once per target, then drop the original (before conntrack)."""

    forwards_to_servers = False
    TABLE = "sbulb_bench_dup"

    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path, targets: int) -> None:
        super().__init__(lab, tools, workdir)
        self.targets = targets
        self.copies = targets
        self.name = f"nftables-dup-{targets}"
        self.label = f"nftables dup, {targets} targets"

    def start(self) -> None:
        super().start()
        copies = " ".join(f"ip daddr set {a} dup to {a}"
                          for a in self.lab.servers[:self.targets])
        path = self.workdir / "nftables-dup.conf"
        path.write_text(f"""table ip {self.TABLE} {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        ip daddr {VIP} udp dport {PORT} {copies} drop
    }}
}}
""")
        in_ns(self.lab.lb_ns, "nft", "-f", str(path))

    def stop(self) -> None:
        in_ns(self.lab.lb_ns, "nft", "delete", "table", "ip", self.TABLE, check=False)
        super().stop()


def make_case(name: str, lab: BenchLab, tools: BenchTools, workdir: Path) -> Case:
    kind, _, count = name.rpartition("-")
    if name == "sbulb-per-packet":
        return SbulbMode(lab, tools, workdir, "per-packet", 2)
    targets = int(count)
    if kind == "sbulb-mirror":
        return SbulbMode(lab, tools, workdir, "mirror", targets)
    if kind == "socat-chain":
        return SocatChain(lab, tools, workdir, targets)
    if kind == "python-tee":
        return PythonTee(lab, tools, workdir, targets)
    if kind == "nftables-dup":
        return NftablesDup(lab, tools, workdir, targets)
    raise ValueError(name)


def modes(tools: BenchTools, workdir: Path, seconds: float, repeats: int, clients: int,
          say: Callable[[str], None], cases: list[str] = CASES) -> dict[str, object]:
    """Every case of CASES (or `cases`) through a lab with four servers."""
    results: list[dict[str, object]] = []
    failed: list[dict[str, str]] = []
    say("modes: mirror and per-packet beside a socat chain, a Python tee, nftables dup")
    with BenchLab(servers=SERVERS, say=say) as lab:
        # the servers' MACs known from the start: the copies take the FIB's
        # path from the first datagram
        for server in lab.servers:
            sh("ip", "-n", lab.lb_ns, "neigh", "replace", str(server), "lladdr", lab.net_mac,
               "dev", lab.lb_if, "nud", "permanent")
        bench = Bench(lab, tools, workdir, seconds, repeats, clients, say)
        for name in cases:
            case = make_case(name, lab, tools, workdir)
            try:
                (result,) = bench.throughput(case, [PAYLOAD])
            except Exception as e:  # one case's failure: say it, keep the others
                say(f"  {name} failed: {' '.join(str(e).split())}")
                failed.append({"name": name, "error": str(e)})
                continue
            results.append({"name": result.name, "label": result.label,
                            "copies": case.copies, "summary": result.summary()})
    return {"cases": results, "failed": failed}


__all__ = ["CASES", "modes", "cpu_seconds"]
