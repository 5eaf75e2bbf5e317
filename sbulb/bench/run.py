"""`python3 -m sbulb.bench` / `make bench`: the whole benchmark, one run."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from sbulb.bench import report
from sbulb.bench.costs import path_costs
from sbulb.bench.measure import Bench
from sbulb.bench.peers import Case, Ceiling, Nftables, Nginx, PythonForwarder, Sbulb
from sbulb.bench.scaling import control_plane, scaling
from sbulb.bench.topology import PORT, BenchLab
from sbulb.lab import raise_interrupt

# nftables last: its conntrack entries outlive its table
CASES: dict[str, Callable[[BenchLab, object, Path], Case]] = {
    "xdp-drop": lambda lab, tools, wd: Ceiling(lab, tools, wd, "drop"),  # type: ignore[arg-type]
    "xdp-tx-reflector": lambda lab, tools, wd: Ceiling(lab, tools, wd, "reflect"),  # type: ignore[arg-type]
    "sbulb-native": lambda lab, tools, wd: Sbulb(lab, tools, wd),  # type: ignore[arg-type]
    "sbulb-native-mac-swap": lambda lab, tools, wd: Sbulb(lab, tools, wd, forward="mac-swap"),  # type: ignore[arg-type]
    "sbulb-generic": lambda lab, tools, wd: Sbulb(lab, tools, wd, mode="generic"),  # type: ignore[arg-type]
    "python": lambda lab, tools, wd: PythonForwarder(lab, tools, wd),  # type: ignore[arg-type]
    "nginx": lambda lab, tools, wd: Nginx(lab, tools, wd),  # type: ignore[arg-type]
    "nftables": lambda lab, tools, wd: Nftables(lab, tools, wd),  # type: ignore[arg-type]
}
PAYLOADS = [64, 1400]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m sbulb.bench",
        description="sbulb side by side with nftables, nginx and a Python forwarder, "
                    "under the same UDP load, in a lab of network namespaces.")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (default: 3)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="length of one run (default: 1.0)")
    parser.add_argument("--clients", type=int, default=1000,
                        help="distinct clients in the throughput runs (default: 1000)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip scaling, control plane and per-packet costs")
    parser.add_argument("--output", type=Path, default=Path("bench-results"),
                        help="directory for bench.json and bench.png (default: bench-results)")
    args = parser.parse_args(argv)
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if args.repeats < 1 or not 0.2 <= args.seconds <= 30:
        parser.error("--repeats must be at least 1 and --seconds between 0.2 and 30")
    return args


def missing(cases: list[str]) -> str | None:
    if os.geteuid() != 0:
        return "the benchmark needs root (namespaces, XDP): run `make bench`"
    if (os.cpu_count() or 1) < 2:
        return "the benchmark needs 2 CPUs (one generates, one balances)"
    tools = {"nftables": "nft", "nginx": "nginx"}
    for case, tool in tools.items():
        if case in cases and not shutil.which(tool):
            return f"{tool} is not installed: run `make bench` (it installs it)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM unwinds like Ctrl-C: the lab, its processes and XDP programs
    # are torn down
    signal.signal(signal.SIGTERM, raise_interrupt)
    cases = [name for name in CASES if name in args.cases.split(",")]
    problem = missing(cases)
    if problem:
        print(f"sbulb.bench: {problem}", file=sys.stderr)
        return 1

    def say(text: str) -> None:
        print(text, flush=True)

    from sbulb.bench.tools import BenchTools  # bcc: only once the checks passed

    started = time.monotonic()
    results: dict[str, object] = {
        "settings": {"repeats": args.repeats, "seconds": args.seconds, "clients": args.clients,
                     "payloads": PAYLOADS},
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "cpu": _cpu_model()},
    }
    tools = BenchTools(PORT)
    workdir = Path(tempfile.mkdtemp(prefix="sbulb-bench-"))
    try:
        with BenchLab(say=say) as lab:
            bench = Bench(lab, tools, workdir, args.seconds, args.repeats, args.clients, say)
            throughput = []
            startups = []
            for name in cases:
                case = CASES[name](lab, tools, workdir)
                for result in bench.throughput(case, PAYLOADS):
                    throughput.append({"name": result.name, "label": result.label,
                                       "payload": result.payload, "summary": result.summary(),
                                       "sample_check": result.sample_check,
                                       "runs": [asdict(run) for run in result.runs]})
                if isinstance(case, Sbulb):
                    startups.append(case.startup_seconds)
            results["throughput"] = throughput
            if not args.no_scaling:
                results["scaling"] = scaling(bench)
                results["control_plane"] = control_plane(bench, startups)
                results["costs"] = [asdict(c) for c in path_costs(bench)]
    finally:
        tools.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.monotonic() - started
    report.table(results, sys.stdout)
    json_path, png_path = report.save(results, args.output)
    print(f"\nwritten: {json_path}" + (f", {png_path}" if png_path else
                                       " (no chart: python3-matplotlib missing)"))
    print(f"benchmark time: {results['seconds'] / 60:.1f} min")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
