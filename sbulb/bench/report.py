"""The benchmark's results: a table on stdout, JSON, and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

REFERENCE = "sbulb-native"

# (what, numerator, denominator, at least): ratios of saturated throughput
# at 64-byte payloads
TARGETS = [
    ("sbulb / bare XDP_TX reflector", "sbulb-native", "xdp-tx-reflector", 0.85),
    ("sbulb / nftables DNAT", "sbulb-native", "nftables", 5.0),
    ("sbulb / nginx", "sbulb-native", "nginx", 15.0),
    ("sbulb generic XDP / nftables DNAT", "sbulb-generic", "nftables", 2.0),
]


def _m(value: float) -> str:
    return f"{value / 1e6:.3f}"


def _range(s: dict[str, float], scale: float = 1e6, digits: int = 3) -> str:
    return f"{s['min'] / scale:.{digits}f}-{s['max'] / scale:.{digits}f}"


def table(results: dict, out: TextIO) -> None:
    cases = results["throughput"]
    by = {(c["name"], c["payload"]): c for c in cases}
    payloads = sorted({c["payload"] for c in cases})
    out.write("\nThroughput (median of {} runs of {:.1f} s; Mpps = million packets per second)\n"
              .format(results["settings"]["repeats"], results["settings"]["seconds"]))
    header = (f"{'case':34} {'payload':>7} {'offered':>8} {'delivered':>9} {'(min-max)':>13} "
              f"{'loss':>6} {'CPU':>5} {'sustained':>9} {'its loss':>8} {'/ sbulb':>7}\n")
    out.write(header)
    out.write("-" * (len(header) - 1) + "\n")
    for payload in payloads:
        reference = by.get((REFERENCE, payload))
        for case in cases:
            if case["payload"] != payload:
                continue
            s = case["summary"]
            ratio = (f"{s['delivered_pps']['median'] / reference['summary']['delivered_pps']['median']:.2f}"
                     if reference and reference["summary"]["delivered_pps"]["median"] else "-")
            sustained = s["sustained_pps"]["median"]
            its_loss = (f"{s['sustained_loss']['median'] * 100:.2f}%"
                        if s["sustained_loss"] and sustained
                        else f"({s['least_loss']['median'] * 100:.2f}%)")
            out.write(f"{case['label']:34} {payload:>5} B {_m(s['offered_pps']['median']):>8} "
                      f"{_m(s['delivered_pps']['median']):>9} {_range(s['delivered_pps']):>13} "
                      f"{s['loss_saturated']['median'] * 100:>5.1f}% {s['cpu']['median']:>5.2f} "
                      f"{_m(sustained) if sustained else '-':>9} {its_loss:>8} {ratio:>7}\n")
        out.write("\n")
    out.write("offered: what the generator sent (as fast as it could); delivered: what reached\n"
              "the real servers; CPU: the balancer's data path (NAPI thread + proxy processes),\n"
              "in CPUs; sustained: the highest paced rate tried (95% of delivered down to\n"
              "20%) with under 0.1% lost; '-' (n%): no rate did, n% was the least loss seen.\n")

    for failure in results.get("failed", []):
        out.write(f"FAILED: {failure['name']}: {' '.join(failure['error'].split())}\n")

    checks = [c for c in cases if c.get("sample_check")]
    if checks:
        out.write("\nSample through real sockets (counter lets it through, the far end's stack\n"
                  "checks checksums):\n")
        for c in checks:
            k = c["sample_check"]
            out.write(f"  {c['label']:34} {k['received']}/{k['sent']} received, {k['intact']} "
                      f"intact, {k['checksum_errors']} UDP errors\n")

    if results.get("scaling"):
        out.write("\nScaling (sbulb native XDP, 64-byte payloads)\n")
        out.write(f"{'point':>6} {'clients':>9} {'-ma':>9} {'assoc':>9} {'delivered':>9} "
                  f"{'(min-max)':>13} {'maps MiB':>8}\n")
        for p in results["scaling"]:
            out.write(f"{p['label']:>6} {p['clients']:>9} {p['max_associations']:>9} "
                      f"{p['associations']:>9} {_m(p['delivered_pps']['median']):>9} "
                      f"{_range(p['delivered_pps']):>13} {p['maps_bytes'] / 2**20:>8.1f}\n")
    cp = results.get("control_plane")
    if cp:
        out.write(f"\nControl plane: start-up {cp['startup_seconds']['median']:.2f} s "
                  f"(compile + load + attach; {_range(cp['startup_seconds'], 1, 2)}), reload "
                  f"{cp['reload_seconds']['median'] * 1000:.0f} ms (file -> maps; "
                  f"{_range(cp['reload_seconds'], 1e-3, 0)} ms; 100 ms of it the watcher's "
                  f"debounce), idle CPU {cp['idle_cpu'] * 100:.3f}%\n")
    if results.get("costs"):
        out.write("\nPer packet in the data path (kernel BPF statistics, at "
                  "0.3 Mpps; includes two clock reads)\n")
        for c in results["costs"]:
            out.write(f"  {c['path']:42} {c['ns']:>6.0f} ns\n")
    health = results.get("health")
    if health:
        out.write(f"\nHealth checks: {health['services']} services x {health['servers']} servers "
                  f"every {health['interval']:g} s ({health['with']['probes_per_second']:.0f} "
                  f"probes/s): daemon CPU {health['without']['cpu'] * 100:.2f}% without, "
                  f"{health['with']['cpu'] * 100:.2f}% with: cost {health['cost'] * 100:.2f}% "
                  f"of one CPU (goal < {health['goal'] * 100:g}%): "
                  f"{'PASS' if health_met(health) else 'FAIL'}; "
                  f"{health['cost_softirq'] * 100:.2f}% with the servers' receive path "
                  "charged to the daemon's sends (veth, far end in softirq)\n")
    if results.get("modes"):
        modes_table(results["modes"], out)
    verdicts = targets(results)
    if verdicts:
        out.write("\nTargets (64-byte payloads, this run)\n")
        for what, value, goal, met in verdicts:
            out.write(f"  {what:38} {value:>7.2f}  (at least {goal:g})  "
                      f"{'met' if met else 'NOT met'}\n")


MIRROR_IN_GOAL = 1e6  # mirror to 2 targets: datagrams in per second, at 0.1% loss or less
MIRROR_OVER_SOCAT_GOAL = 20.0


def datagrams_in(case: dict, key: str = "delivered_pps") -> float:
    """Datagrams in per second a case took whole (every copy delivered):
    its copies delivered divided by the copies each datagram makes."""
    return case["summary"][key]["median"] / case["copies"]


def modes_table(modes: dict, out: TextIO) -> None:
    out.write("\nModes (64-byte datagrams, 1000 clients; a tee's loss is that of copies)\n")
    header = (f"{'case':38} {'in Mpps':>8} {'copies out':>10} {'loss':>6} {'CPU':>5} "
              f"{'sustained in':>12} {'its loss':>8}\n")
    out.write(header)
    out.write("-" * (len(header) - 1) + "\n")
    for case in modes["cases"]:
        s = case["summary"]
        sustained = datagrams_in(case, "sustained_pps")
        its_loss = (f"{s['sustained_loss']['median'] * 100:.2f}%" if s["sustained_loss"]
                    and sustained else f"({s['least_loss']['median'] * 100:.2f}%)")
        out.write(f"{case['label']:38} {_m(datagrams_in(case)):>8} "
                  f"{_m(s['delivered_pps']['median']):>10} "
                  f"{s['loss_saturated']['median'] * 100:>5.1f}% {s['cpu']['median']:>5.2f} "
                  f"{_m(sustained) if sustained else '-':>12} {its_loss:>8}\n")
    for failure in modes.get("failed", []):
        out.write(f"FAILED: {failure['name']}: {' '.join(failure['error'].split())}\n")
    out.write("in: datagrams per second the case took whole (copies delivered / targets), as\n"
              "fast as the generator sent; sustained in: the highest paced rate with under 0.1%\n"
              "of copies lost ('-' (n%): none, n% the least loss seen).\n")
    for what, value, goal, met in mode_targets(modes):
        out.write(f"  {what:46} {value:>9.2f}  (at least {goal:g})  "
                  f"{'PASS' if met else 'FAIL'}\n")


def mode_targets(modes: dict) -> list[tuple[str, float, float, bool]]:
    """The modes issue's goals: mirror to 2 targets takes 1 M datagrams/s in
    at 0.1% loss or less, and 20 times what the socat chain takes."""
    by = {c["name"]: c for c in modes.get("cases", [])}
    verdicts = []
    mirror = by.get("sbulb-mirror-2")
    if mirror:
        value = datagrams_in(mirror, "sustained_pps")
        verdicts.append(("mirror-2: M datagrams/s in at <0.1% loss", value / 1e6,
                         MIRROR_IN_GOAL / 1e6, value >= MIRROR_IN_GOAL))
        socat = by.get("socat-chain-2")
        if socat and datagrams_in(socat):
            ratio = datagrams_in(mirror) / datagrams_in(socat)
            verdicts.append(("mirror-2 / socat chain (datagrams in)", ratio,
                             MIRROR_OVER_SOCAT_GOAL, ratio >= MIRROR_OVER_SOCAT_GOAL))
    return verdicts


def health_met(health: dict) -> bool:
    """Whether the checks' cost (apart placement) is under the goal."""
    return health["cost"] < health["goal"]


def targets(results: dict) -> list[tuple[str, float, float, bool]]:
    by = {c["name"]: c["summary"]["delivered_pps"]["median"]
          for c in results["throughput"] if c["payload"] == 64}
    verdicts = []
    for what, a, b, goal in TARGETS:
        if by.get(a) and by.get(b):
            value = by[a] / by[b]
            verdicts.append((what, value, goal, value >= goal))
    scale = {p["label"]: p["delivered_pps"]["median"] for p in results.get("scaling", [])}
    if scale.get("1M") and scale.get("1k"):
        value = scale["1M"] / scale["1k"]
        verdicts.append(("1M associations / 1k associations", value, 0.85, value >= 0.85))
    return verdicts


def save(results: dict, directory: Path) -> tuple[Path, Path | None]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path, chart(results, directory / "bench.png")


def chart(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = results["throughput"]
    if not cases:
        return None  # no throughput case run (--cases ''): nothing to draw
    names = list(dict.fromkeys(c["name"] for c in cases))
    labels = {c["name"]: c["label"] for c in cases}
    payloads = sorted({c["payload"] for c in cases})
    by = {(c["name"], c["payload"]): c["summary"]["delivered_pps"] for c in cases}
    figure, axes = plt.subplots(1, 2 if results.get("scaling") else 1, figsize=(14, 6),
                                squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(payloads)
    for i, payload in enumerate(payloads):
        xs, ys, lo, hi = [], [], [], []
        for j, name in enumerate(names):
            s = by.get((name, payload))
            if s:
                xs.append(j + i * width)
                ys.append(s["median"] / 1e6)
                lo.append((s["median"] - s["min"]) / 1e6)
                hi.append((s["max"] - s["median"]) / 1e6)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"{payload}-byte payload")
    ax.set_xticks([j + width * (len(payloads) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels([labels[n] for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("delivered, million packets/s (median, min-max)")
    ax.set_title("UDP load balancing through one veth, 2 CPUs")
    ax.legend()
    if results.get("scaling"):
        ax = axes[0][1]
        points = results["scaling"]
        ys = [p["delivered_pps"]["median"] / 1e6 for p in points]
        ax.bar(range(len(points)), ys, 0.6, color="tab:green")
        ax.set_xticks(range(len(points)))
        ax.set_xticklabels([f"{p['label']}\n{p['associations']} assoc." for p in points],
                           fontsize=8)
        ax.set_ylabel("delivered, million packets/s")
        ax.set_title("sbulb against live associations (64 B)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
