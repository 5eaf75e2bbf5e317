"""Nanoseconds per packet for each way through sbulb's data path, read from
the kernel's own BPF statistics (kernel.bpf_stats_enabled: run time and run
count of each program) while the generator sends traffic that takes only
that way, at a rate the balancer keeps up with.

Why not BPF_PROG_TEST_RUN with a repeat count: the kernel runs the program
again on the frame it just rewrote, so every repeat after the first takes
the "not for the VIP" path. And why under load: a frame comes from another
CPU and the maps are touched by other clients; a hot loop on one frame
hides both. The statistics add two clock reads to each run: the bare
reflector's figure, taken the same way, is the floor."""

from __future__ import annotations

import contextlib
import os
import statistics
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Iterator

from sbulb.bench.measure import Bench, udp_frame
from sbulb.bench.peers import Ceiling, Sbulb, fdinfo
from sbulb.bench.scaling import ctl
from sbulb.bench.topology import CLIENT_BASE, LB_ADDRESS, NET_IF, PORT

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
RATE = 300_000.0
SECONDS = 0.5
RUNS = 3  # per path; the median: this figure is noisy on a VM
BPF_PROG_TYPE_XDP = 6


@dataclass(frozen=True)
class Cost:
    path: str
    ns: float
    runs: int


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    previous = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        yield
    finally:
        STATS.write_text(previous)


def program_stats(pid: int, fd: int | None = None) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over a process's XDP program fds (or
    one fd)."""
    time_ns = runs = 0
    for fields in fdinfo(pid, fd):
        if fields.get("prog_type") == str(BPF_PROG_TYPE_XDP):
            time_ns += int(fields.get("run_time_ns", 0))
            runs += int(fields.get("run_cnt", 0))
    return time_ns, runs


def path_costs(bench: Bench) -> list[Cost]:
    lab, tools = bench.lab, bench.tools
    costs = []

    def measure(path: str, pid: int, fd: int | None, frame: bytes, **generate: object) -> None:
        figures, total = [], 0
        for _ in range(RUNS):
            before = program_stats(pid, fd)
            tools.generate(lab.net_ns, NET_IF, frame, SECONDS, RATE, **generate)  # type: ignore[arg-type]
            after = program_stats(pid, fd)
            runs = after[1] - before[1]
            total += runs
            if runs:
                figures.append((after[0] - before[0]) / runs)
        costs.append(Cost(path, statistics.median(figures) if figures else 0.0, total))
        bench.say(f"  {path:40} {costs[-1].ns:6.0f} ns/packet (median of {RUNS} runs, "
                  f"{total} packets)")

    bench.say("per-packet cost in the data path (kernel BPF statistics, under load)")
    with bpf_stats():
        ceiling = Ceiling(lab, tools, bench.workdir, "reflect")
        bench.start(ceiling)
        try:
            measure("bare XDP_TX reflector (floor)", os.getpid(),
                    tools.functions["reflect"].fd, udp_frame(lab, 64), clients=1000)
        finally:
            ceiling.__exit__(None, None, None)
        for forward in ("fib", "mac-swap"):
            case = Sbulb(lab, tools, bench.workdir, forward=forward)
            bench.start(case)
            try:
                pid = case.sbulb_pid()
                warm = udp_frame(lab, 64)
                bench.warm_up(case, warm)
                measure(f"{forward}: existing association", pid, None, warm, clients=1000)
                server = association_of(bench, CLIENT_BASE, 1024)
                measure(f"{forward}: egress (server -> client)", pid, None,
                        udp_frame(lab, 64, server, CLIENT_BASE, PORT, 1024), clients=1,
                        base=server, base_port=PORT)
                # a client never seen before in every packet (the map is far
                # from full: no eviction)
                measure(f"{forward}: new association", pid, None, warm,
                        clients=1 << 22, base=IPv4Address("10.99.64.0"))
                measure(f"{forward}: pass (not for the VIP)", pid, None,
                        udp_frame(lab, 64, CLIENT_BASE, LB_ADDRESS, 1024, 9), clients=1000)
            finally:
                case.__exit__(None, None, None)
    return costs


def association_of(bench: Bench, client: IPv4Address, port: int) -> IPv4Address:
    """The client's real server (sbulbctl fails when there is none)."""
    return IPv4Address(str(ctl(bench, "associations", "get", f"{client}:{port}")))
