"""What packaging/ gives Prometheus and Grafana: alert rules that
promtool accepts and that fire when they should (promtool's own rule unit
tests), a dashboard whose every query parses, and no rule or panel that
names a metric sbulb does not export. No root: the exposition is rendered
from a fake data path."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest

from sbulb.metrics import make_registry
from tests.proc import REPO
from tests.test_metrics_server import SNAPSHOT, FakeDataplane

PROMETHEUS = REPO / "packaging" / "prometheus"
DASHBOARD = REPO / "packaging" / "grafana" / "sbulb-dashboard.json"
METRIC = re.compile(r"\b((?:sbulb|process)_[a-z0-9_]+)")


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "sbulb-alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_alert_rules_fire_when_they_should() -> None:
    """sbulb-alerts.test.yml: a server down, every server of a service
    down (and not when one is left), a rejected reload (and resolved), a
    nearly full map, drops rising (and not below the threshold), unpinned."""
    result = promtool("test", "rules", "sbulb-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each panel's query, Grafana's variables given values, as a recording
    rule: promtool parses it."""
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = [{"record": f"sbulb:panel{i}",
              "expr": q.replace("$__rate_interval", "5m").replace("$instance", ".*")}
             for i, q in enumerate(queries)]
    (tmp_path / "panels.yml").write_text(json.dumps({"groups": [{"name": "panels",
                                                                 "rules": rules}]}))
    result = promtool("check", "rules", "panels.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def exported() -> set[str]:
    """The metric names of sbulb's exposition, with the sample suffixes."""
    text = generate_latest(make_registry(lambda: SNAPSHOT, FakeDataplane())).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            names.update({"counter": [f"{name}_total"],
                          "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"]
                          }.get(kind, []))
    return names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_named_is_exported(source: str) -> None:
    text = ("\n".join(dashboard_queries()) if source == "dashboard"
            else (PROMETHEUS / "sbulb-alerts.yml").read_text())
    named = set(METRIC.findall(text))
    assert len(named) >= 5
    assert named - exported() == set()
