"""The benchmark's report: the table it prints and the verdicts on the
issue's targets, from results of a known shape (pure Python)."""

from __future__ import annotations

import io
import json

from sbulb.bench import report


def summary(delivered: float, sustained: float = 0.0) -> dict:
    def s(value: float) -> dict:
        return {"median": value, "min": value * 0.9, "max": value * 1.1, "n": 3}

    return {"offered_pps": s(4e6), "delivered_pps": s(delivered), "loss_saturated": s(0.5),
            "cpu": s(0.97), "sustained_pps": s(sustained),
            "sustained_loss": s(0.0005) if sustained else None, "least_loss": s(0.002)}


def results(sbulb: float) -> dict:
    cases = [("xdp-tx-reflector", "XDP_TX reflector", 2.0e6), ("sbulb-native", "sbulb", sbulb),
             ("sbulb-generic", "sbulb generic", 1.0e6), ("nftables", "nftables", 0.4e6),
             ("nginx", "nginx", 0.1e6)]
    return {
        "settings": {"repeats": 3, "seconds": 1.0},
        "throughput": [{"name": n, "label": label, "payload": 64,
                        "summary": summary(d, d / 2 if n == "nftables" else 0.0),
                        "sample_check": None} for n, label, d in cases],
        "failed": [{"name": "python", "error": "it died"}],
        "scaling": [{"label": "1k", "clients": 1000, "max_associations": 1 << 20,
                     "associations": 1000, "delivered_pps": summary(1.5e6)["delivered_pps"],
                     "maps_bytes": 100 << 20},
                    {"label": "1M", "clients": 10**6, "max_associations": 1 << 20,
                     "associations": 999_000, "delivered_pps": summary(1.4e6)["delivered_pps"],
                     "maps_bytes": 100 << 20}],
    }


def test_targets_are_ratios_of_delivered_medians():
    verdicts = {what: (round(value, 3), met)
                for what, value, _goal, met in report.targets(results(1.8e6))}
    assert verdicts["sbulb / bare XDP_TX reflector"] == (0.9, True)
    assert verdicts["sbulb / nftables DNAT"] == (4.5, False)
    assert verdicts["sbulb / nginx"] == (18.0, True)
    assert verdicts["sbulb generic XDP / nftables DNAT"] == (2.5, True)
    assert verdicts["1M associations / 1k associations"] == (0.933, True)


def test_table_shows_every_case_its_ratio_failures_and_targets():
    out = io.StringIO()
    report.table(results(1.0e6), out)
    text = out.getvalue()
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "2.000" in lines["XDP_TX reflector"] and lines["XDP_TX reflector"].endswith("2.00")
    assert lines["nginx"].endswith("0.10")
    assert "0.200" in lines["nftables"]  # its sustained rate, under 0.1% loss
    assert "(0.20%)" in lines["sbulb"]  # no sustained rate: the least loss seen
    assert "FAILED: python: it died" in text
    assert "sbulb / bare XDP_TX reflector" in text and "NOT met" in text


def test_saved_json_is_the_results(tmp_path):
    data = results(1.0e6)
    path, _chart = report.save(data, tmp_path / "out")
    assert json.loads(path.read_text()) == data


def health(cost: float) -> dict:
    run = {"cpu": 0.001 + cost, "prober_thread_cpu": cost / 2, "probes_per_second": 2048.0,
           "probe_failures": 0}
    return {"services": 64, "servers": 32, "interval": 1.0,
            "without": {"cpu": 0.001, "prober_thread_cpu": 0.0, "probes_per_second": 0.0,
                        "probe_failures": 0},
            "with": run, "with_softirq": run, "cost": cost, "cost_softirq": cost * 1.1,
            "goal": 0.02}


def test_health_cost_is_judged_against_its_goal():
    assert report.health_met(health(0.015))
    assert not report.health_met(health(0.02))
    for cost, verdict in ((0.015, "PASS"), (0.035, "FAIL")):
        out = io.StringIO()
        report.table({**results(1.0e6), "health": health(cost)}, out)
        (line,) = [line for line in out.getvalue().splitlines()
                   if line.startswith("Health checks")]
        assert f"cost {cost * 100:.2f}%" in line and line.split(": ")[-1].startswith(verdict)


def modes(mirror_sustained: float) -> dict:
    return {"cases": [
        {"name": "sbulb-mirror-2", "label": "sbulb mirror, 2 targets", "copies": 2,
         "summary": summary(2.4e6, mirror_sustained)},
        {"name": "socat-chain-2", "label": "socat broadcast chain, 2 targets", "copies": 2,
         "summary": summary(0.1e6)},
    ], "failed": [{"name": "nftables-dup-2", "error": "no nft"}]}


def test_mirror_goals_count_datagrams_in_not_copies_out():
    """A tee's rate in is its copies delivered over its targets: 2.4 M
    copies to 2 targets is 1.2 M datagrams in, 24 times the chain's 0.05."""
    verdicts = {what: (round(value, 3), met)
                for what, value, _goal, met in report.mode_targets(modes(2.2e6))}
    assert verdicts["mirror-2: M datagrams/s in at <0.1% loss"] == (1.1, True)
    assert verdicts["mirror-2 / socat chain (datagrams in)"] == (24.0, True)
    slow = {what: met for what, _v, _g, met in report.mode_targets(modes(1.8e6))}
    assert slow["mirror-2: M datagrams/s in at <0.1% loss"] is False


def test_modes_table_shows_rates_in_and_copies_out():
    out = io.StringIO()
    report.table({**results(1.0e6), "modes": modes(0.0)}, out)
    text = out.getvalue()
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    mirror = lines["sbulb mirror, 2 targets"].split()
    assert mirror[4:6] == ["1.200", "2.400"]  # in, copies out
    assert "(0.20%)" in lines["sbulb mirror, 2 targets"]  # no sustained rate
    assert "FAILED: nftables-dup-2: no nft" in text
    assert "mirror-2 / socat chain (datagrams in)" in text and "FAIL" in text
