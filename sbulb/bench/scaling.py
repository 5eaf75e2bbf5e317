"""sbulb alone: throughput against live associations (and LRU churn), the
maps' memory, start-up time, reload latency, idle CPU."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from sbulb.bench.measure import Bench, spread, udp_frame
from sbulb.bench.peers import Sbulb, cpu_seconds, fdinfo
from sbulb.bench.topology import CLIENT_BASE, NET_IF

PREFILL_RATE = 300_000.0  # new associations per second while filling the map
IDLE_SECONDS = 5.0
RELOADS = 5
BPF_MAP_TYPE_LRU_HASH = 9


def scale_points(max_associations: int) -> list[tuple[str, int, int]]:
    """(label, clients, -ma): live associations, then more clients than
    the map holds (each packet's client was evicted: every packet is a new
    association)."""
    churn_map = 65_536
    return [("1k", 1_000, max_associations), ("100k", 100_000, max_associations),
            ("1M", 1_000_000, max_associations), ("churn", 2 * churn_map, churn_map)]


def ctl(bench: Bench, *args: str) -> object:
    """sbulbctl --json ARGS against the lab's sbulb; the decoded answer."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{bench.lab.lb_ns}", sys.executable, "-m", "sbulb.ctl",
         "-i", bench.lab.lb_if, "--json", *args],
        capture_output=True, text=True, timeout=300, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).stdout
    return json.loads(out)


def associations(bench: Bench) -> int:
    return int(ctl(bench, "associations", "count"))  # type: ignore[arg-type]


def map_memory(pid: int, max_associations: int) -> dict[str, int]:
    """Bytes the kernel charges for a process's BPF maps (fdinfo's memlock):
    all of them, and the association map (the LRU hash of -ma entries)."""
    total = assoc = 0
    for fields in fdinfo(pid):
        if "map_type" not in fields:
            continue
        memlock = int(fields.get("memlock", "0"))
        total += memlock
        if (int(fields["map_type"]) == BPF_MAP_TYPE_LRU_HASH
                and int(fields.get("max_entries", "0")) == max_associations):
            assoc += memlock
    return {"maps_bytes": total, "associations_bytes": assoc}


def scaling(bench: Bench, max_associations: int = 1 << 20) -> list[dict[str, object]]:
    lab, tools = bench.lab, bench.tools
    frame = udp_frame(lab, 64)
    results = []
    bench.say("scaling: sbulb native XDP, 64-byte payloads, against live associations")
    for label, clients, map_size in scale_points(max_associations):
        case = Sbulb(lab, tools, bench.workdir, max_associations=map_size)
        bench.start(case)
        try:
            bench.warm_up(case, frame)
            tools.generate(lab.net_ns, NET_IF, frame, clients / PREFILL_RATE * 1.5 + 1.0,
                           PREFILL_RATE, clients, CLIENT_BASE, count=clients)
            bench.settle(case)
            samples = [bench.measure(case, frame, clients=clients) for _ in range(bench.repeats)]
            live = associations(bench)
            memory = map_memory(case.sbulb_pid(), map_size)
        finally:
            case.__exit__(None, None, None)
        result = {
            "label": label, "clients": clients, "max_associations": map_size,
            "associations": live, "delivered_pps": spread([s.delivered for s in samples]),
            "offered_pps": spread([s.offered for s in samples]),
            "cpu": spread([s.cpu for s in samples]), **memory,
            "samples": [asdict(s) for s in samples],
        }
        results.append(result)
        bench.say(f"  {label:>5}: {clients} clients, {live} associations (-ma {map_size}): "
                  f"{result['delivered_pps']['median'] / 1e6:.3f} Mpps; "  # type: ignore[index]
                  f"maps {memory['maps_bytes'] / 2**20:.1f} MiB")
    return results


def control_plane(bench: Bench, startups: list[float]) -> dict[str, object]:
    """Start-up (process start -> READY=1: compile, load, attach), reload
    latency (config file renamed into place -> READY=1, which the daemon
    sends once the maps hold the new servers; the watcher's 100 ms debounce
    included), idle CPU."""
    lab = bench.lab
    config = bench.workdir / f"sbulb-{uuid.uuid4().hex[:6]}.conf"
    servers = lab.servers

    def write(weights: list[int]) -> None:
        text = "[Real Servers]\n" + "".join(f"{a} = {w}\n" for a, w in zip(servers, weights))
        tmp = config.with_name(f".{config.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, config)

    write([1] * len(servers))
    case = Sbulb(lab, bench.tools, bench.workdir, config_file=config)
    bench.start(case)
    try:
        startups = [*startups, case.startup_seconds]
        process = case.process
        assert process is not None
        before = cpu_seconds([process.pid])
        started = time.monotonic()
        time.sleep(IDLE_SECONDS)  # the measurement window: nothing happens in it
        idle = (cpu_seconds([process.pid]) - before) / (time.monotonic() - started)
        latencies = []
        for i in range(RELOADS):
            weights = [1 + (i + 1) % 3] + [1] * (len(servers) - 1)
            written = time.monotonic()
            write(weights)
            process.notify.wait_for("RELOADING=1", 30.0)
            process.notify.wait_for("READY=1", 30.0)
            latencies.append(time.monotonic() - written)
    finally:
        case.__exit__(None, None, None)
    result = {"startup_seconds": spread(startups), "reload_seconds": spread(latencies),
              "idle_cpu": idle}
    bench.say(f"control plane: start-up {statistics.median(startups):.2f} s (compile + attach), "
              f"reload {statistics.median(latencies) * 1000:.0f} ms (file -> maps, "
              f"100 ms debounce included), idle CPU {idle * 100:.3f}%")
    return result
