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
from typing import Sequence

from sbulb.bench import report
from sbulb.bench.costs import path_costs
from sbulb.bench.healthcost import health_cost
from sbulb.bench.measure import Bench
from sbulb.bench.modes import modes
from sbulb.bench.peers import Case, Ceiling, Nftables, Nginx, PythonForwarder, Sbulb
from sbulb.bench.scaling import control_plane, scaling
from sbulb.bench.tools import GENERATOR_CPU, BenchTools
from sbulb.bench.topology import BALANCER_CPU, PORT, BenchLab
from sbulb.lab import raise_interrupt

# in this order; nftables last: its conntrack entries outlive its table
CASES = ["xdp-drop", "xdp-tx-reflector", "sbulb-native", "sbulb-native-mac-swap",
         "sbulb-generic", "python", "nginx", "nftables"]


def make_case(name: str, lab: BenchLab, tools: BenchTools, workdir: Path) -> Case:
    if name == "xdp-drop":
        return Ceiling(lab, tools, workdir, "drop")
    if name == "xdp-tx-reflector":
        return Ceiling(lab, tools, workdir, "reflect")
    if name == "sbulb-native":
        return Sbulb(lab, tools, workdir)
    if name == "sbulb-native-mac-swap":
        return Sbulb(lab, tools, workdir, forward="mac-swap")
    if name == "sbulb-generic":
        return Sbulb(lab, tools, workdir, mode="generic")
    if name == "python":
        return PythonForwarder(lab, tools, workdir)
    if name == "nginx":
        return Nginx(lab, tools, workdir)
    if name == "nftables":
        return Nftables(lab, tools, workdir)
    raise ValueError(name)


PAYLOADS = [64, 1400]

# after the throughput cases, in this order
PHASES = ["scaling", "control-plane", "costs", "health", "modes"]


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
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, of: {', '.join(PHASES)}; empty: none")
    parser.add_argument("--no-scaling", action="store_true",
                        help="no phases (as --phases '')")
    parser.add_argument("--output", type=Path, default=Path("bench-results"),
                        help="directory for bench.json and bench.png (default: bench-results)")
    args = parser.parse_args(argv)
    unknown = set(args.cases.split(",")) - set(CASES) - {""}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    phases = set(args.phases.split(",")) - {""}
    if phases - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    args.phases = [] if args.no_scaling else [p for p in PHASES if p in phases]
    if args.repeats < 1 or not 0.2 <= args.seconds <= 30:
        parser.error("--repeats must be at least 1 and --seconds between 0.2 and 30")
    return args


def missing(cases: list[str]) -> str | None:
    """What the cases (and phases) named need that this machine lacks."""
    if os.geteuid() != 0:
        return "the benchmark needs root (namespaces, XDP): run `make bench`"
    if not {GENERATOR_CPU, BALANCER_CPU} <= os.sched_getaffinity(0):
        return (f"the benchmark needs CPUs {GENERATOR_CPU} and {BALANCER_CPU} "
                "(one generates, one balances)")
    tools = [("nftables", "nft"), ("nginx", "nginx"), ("modes", "socat"), ("modes", "nft")]
    for case, tool in tools:
        if case in cases and not shutil.which(tool):
            return f"{tool} is not installed: run `make bench` (it installs it)"
    if "nginx" in cases and not Nginx.MODULE.exists():
        return f"{Nginx.MODULE} is missing: run `make bench` (it installs libnginx-mod-stream)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM unwinds like Ctrl-C: the lab, its processes and XDP programs
    # are torn down
    signal.signal(signal.SIGTERM, raise_interrupt)
    cases = [name for name in CASES if name in args.cases.split(",")]
    problem = missing(cases + args.phases)
    if problem:
        print(f"sbulb.bench: {problem}", file=sys.stderr)
        return 1

    def say(text: str) -> None:
        print(text, flush=True)

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
            throughput: list[dict[str, object]] = []
            failed: list[dict[str, str]] = []
            startups = []
            for name in cases:
                case = make_case(name, lab, tools, workdir)
                try:
                    case_results = bench.throughput(case, PAYLOADS)
                except Exception as e:  # one case's failure: say it, keep the others
                    say(f"  {name} failed: {' '.join(str(e).split())}")
                    failed.append({"name": name, "error": str(e)})
                    continue
                for result in case_results:
                    throughput.append({"name": result.name, "label": result.label,
                                       "payload": result.payload, "summary": result.summary(),
                                       "sample_check": result.sample_check,
                                       "runs": [asdict(run) for run in result.runs]})
                if isinstance(case, Sbulb):
                    startups.append(case.startup_seconds)
            results["throughput"] = throughput
            results["failed"] = failed
            if "scaling" in args.phases:
                results["scaling"] = scaling(bench)
            if "control-plane" in args.phases:
                results["control_plane"] = control_plane(bench, startups)
            if "costs" in args.phases:
                results["costs"] = [asdict(c) for c in path_costs(bench)]
            if "health" in args.phases:
                results["health"] = health_cost(bench)
        if "modes" in args.phases:  # a lab of its own: four servers
            results["modes"] = modes(tools, workdir, args.seconds, args.repeats, args.clients,
                                     say)
    finally:
        tools.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.monotonic() - started
    report.table(results, sys.stdout)
    json_path, png_path = report.save(results, args.output)
    print(f"\nwritten: {json_path}" + (f", {png_path}" if png_path else
                                       " (no chart: python3-matplotlib missing)"))
    print(f"benchmark time: {results['seconds'] / 60:.1f} min")
    return 1 if results.get("failed") else 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
