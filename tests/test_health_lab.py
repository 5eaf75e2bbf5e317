"""Health checks end to end, through the lab: the real `python3 -m sbulb`
with `check = udp` in the file, real UDP services on the real servers
stopped and started again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from sbulb.lab import PORT, SECOND_PORT, Lab, SbulbProcess, UdpService
from tests.conftest import require_root
from tests.proc import ctl_json

INTERVAL, TIMEOUT, RISE, FALL = 0.5, 0.3, 2, 2
# a verdict needs fall (or rise) probes: that many intervals, one more for
# where the first falls, and slack for a loaded machine
VERDICT = (FALL + 1) * INTERVAL + 2.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(servers=3) as built:
        yield built


def config(lab: Lab, path: Path, on_down: str = "keep", extra: str = "",
           servers: tuple[int, ...] = (0, 1, 2)) -> None:
    v4 = lab.v4
    path.write_text(
        f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
        f"servers = {' '.join(str(v4.real_servers[i]) for i in servers)}\n"
        f"check = udp\ncheck_interval = {INTERVAL}s\ncheck_timeout = {TIMEOUT}s\n"
        f"check_rise = {RISE}\ncheck_fall = {FALL}\non_down = {on_down}\n{extra}")


def start(lab: Lab, tmp_path: Path, conf: Path, level: str = "INFO") -> SbulbProcess:
    lab.forget_associations()
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", level], tmp_path)
    process.wait_ready()
    return process


def status_with(process: SbulbProcess, text: str, timeout: float = 5.0) -> str:
    """The first sd_notify STATUS= that says `text` (earlier ones skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        message = process.notify.wait_for("STATUS=", max(0.0, deadline - time.monotonic()))
        if text in message:
            return message


def stop_service(lab: Lab, name: str) -> None:
    service = lab.service(name)
    service.close()
    lab.services.remove(service)


def start_service(lab: Lab, name: str) -> None:
    index = lab.server_names.index(name)
    lab.services.append(UdpService(lab.server_ns[index], name, [PORT, SECOND_PORT]))


@pytest.mark.parametrize("on_down", ["keep", "move"])
def test_a_stopped_server_is_down_then_back(lab: Lab, tmp_path: Path, on_down: str) -> None:
    v4 = lab.v4
    conf = tmp_path / "sbulb.conf"
    config(lab, conf, on_down)
    process = start(lab, tmp_path, conf)
    rs1 = str(v4.real_servers[1])
    try:
        process.wait_log(f"health.up service=coap server={rs1}", VERDICT)
        clients = [lab.client(4) for _ in range(3)]
        assert [c.exchange(v4.vip, PORT, b"a").server for c in clients] == ["rs0", "rs1", "rs2"]
        stop_service(lab, "rs1")
        took = process.wait_log(f"health.down service=coap server={rs1} reason=icmp", VERDICT)
        assert took <= VERDICT
        status = ctl_json(lab, "status")
        (server,) = [s for s in status["services"][0]["real_servers"] if s["address"] == rs1]
        assert (server["state"], server["health"], server["health_reason"]) == (
            "down", "down", "icmp")
        # no new client goes to it
        newcomers = [lab.client(4).exchange(v4.vip, PORT, b"n").server for _ in range(6)]
        assert set(newcomers) == {"rs0", "rs2"}
        if on_down == "keep":  # its client stays (and waits for it)
            assert ctl_json(lab, "associations", "get",
                            f"{clients[1].address}:{clients[1].port}") == rs1
        else:  # its client moves on its next datagram
            assert clients[1].exchange(v4.vip, PORT, b"b").server in ("rs0", "rs2")
        assert "1 down (health checks)" in status_with(process, "down")
        start_service(lab, "rs1")
        process.wait_log(f"health.up service=coap server={rs1} reason=ok",
                 (RISE + 1) * INTERVAL + 2.0, count=2)
        back = [lab.client(4).exchange(v4.vip, PORT, b"m").server for _ in range(3)]
        assert "rs1" in back
        if on_down == "keep":  # and its client is served by it again
            assert clients[1].exchange(v4.vip, PORT, b"c").server == "rs1"
    finally:
        process.close()
        if not any(s.name == "rs1" for s in lab.services):
            start_service(lab, "rs1")


def test_a_wrong_answer_is_down_all_down_drops_and_a_reload_keeps_health(
        lab: Lab, tmp_path: Path) -> None:
    v4 = lab.v4
    rs = [str(a) for a in v4.real_servers]
    conf = tmp_path / "sbulb.conf"
    # the services answer "rsN <payload>": rs1's answer does not match
    config(lab, conf, extra="check_send = 70 69 6e 67\ncheck_expect = ^rs[02] ping\n")
    process = start(lab, tmp_path, conf)
    try:
        process.wait_log(f"health.down service=coap server={rs[1]} reason=mismatch", VERDICT)
        # a reload that keeps rs1 keeps it down (no new verdict needed)
        config(lab, conf, extra="check_send = 70 69 6e 67\ncheck_expect = ^rs[02] ping\n"
                                "# touched\n")
        process.notify.wait_for("RELOADING=1", 10)
        process.notify.wait_for("READY=1", 10)
        status = ctl_json(lab, "status")
        states = {s["address"]: s["state"] for s in status["services"][0]["real_servers"]}
        assert states == {rs[0]: "active", rs[1]: "down", rs[2]: "active"}
        # every server down: new clients are dropped, and the log says so
        stop_service(lab, "rs0")
        stop_service(lab, "rs2")
        process.wait_log("health.all_down service=coap", VERDICT)
        before = ctl_json(lab, "status")["counters"]["DROP_NO_REAL_SERVER"]
        client = lab.client(4)
        client.send(v4.vip, PORT, b"anyone?")
        assert client.receive(timeout=1.0) is None
        assert ctl_json(lab, "status")["counters"]["DROP_NO_REAL_SERVER"] == before + 1
    finally:
        process.close()
        for name in ("rs0", "rs2"):
            if not any(s.name == name for s in lab.services):
                start_service(lab, name)


def test_probes_create_no_association_and_show_in_metrics(lab: Lab, tmp_path: Path) -> None:
    from tests.test_ctl import scrape

    conf = tmp_path / "sbulb.conf"
    config(lab, conf, servers=(0, 1))
    lab.forget_associations()
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO",
                               "--metrics", "9643"], tmp_path)
    rs0, rs1 = (str(a) for a in lab.v4.real_servers[:2])
    try:
        process.wait_ready()
        process.wait_log(f"health.up service=coap server={rs1}", VERDICT)
        assert ctl_json(lab, "associations", "count") == 0
        stop_service(lab, "rs1")
        process.wait_log(f"health.down service=coap server={rs1}", VERDICT)
        status = ctl_json(lab, "status")
        probes = [s["probes"] for s in status["services"][0]["real_servers"]]
        assert all(n >= RISE for n in probes)
        m = scrape(lab, 9643)
        assert m[f"sbulb_real_server_up{{server={rs0},service=coap}}"] == 1
        assert m[f"sbulb_real_server_up{{server={rs1},service=coap}}"] == 0
        assert m[f"sbulb_health_probes_total{{result=failed,server={rs1},service=coap}}"] >= FALL
        ok = m[f"sbulb_health_probes_total{{result=ok,server={rs0},service=coap}}"]
        assert ok >= RISE
        assert m[f"sbulb_health_probe_rtt_seconds_count{{server={rs0},service=coap}}"] == ok
        assert m[f"sbulb_health_probe_rtt_seconds_bucket{{le=1.0,server={rs0},service=coap}}"] == ok
    finally:
        process.close()
        if not any(s.name == "rs1" for s in lab.services):
            start_service(lab, "rs1")


def test_passive_fall_marks_a_server_down_between_probes(lab: Lab, tmp_path: Path) -> None:
    """Probes every 30 s; passive_fall = 3: three of its clients' datagrams
    refused (ICMP port unreachable, translated by sbulb) mark it down at
    once."""
    v4 = lab.v4
    conf = tmp_path / "sbulb.conf"
    conf.write_text(
        f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
        f"servers = {v4.real_servers[0]} {v4.real_servers[1]}\n"
        "check = udp\ncheck_interval = 30s\ncheck_timeout = 1s\npassive_fall = 3\n")
    process = start(lab, tmp_path, conf)
    rs1 = str(v4.real_servers[1])
    try:
        a, b = lab.client(4), lab.client(4)
        assert [a.exchange(v4.vip, PORT, b"x").server, b.exchange(v4.vip, PORT, b"y").server] == [
            "rs0", "rs1"]
        stop_service(lab, "rs1")
        for n in range(3):  # refused: ICMP port unreachable back to the client
            b.send(v4.vip, PORT, b"refused %d" % n)
        took = process.wait_log(f"health.down service=coap server={rs1} reason=icmp passive=yes",
                        5.0)
        assert took < 5.0  # long before the next probe (30 s)
        assert lab.client(4).exchange(v4.vip, PORT, b"z").server == "rs0"
    finally:
        process.close()
        if not any(s.name == "rs1" for s in lab.services):
            start_service(lab, "rs1")


def test_sbulbctl_server_disable_and_enable(lab: Lab, tmp_path: Path) -> None:
    """An operator override, beside what the file says: no new client for
    the server (as if down), shown as disabled, until enabled again."""
    from tests.proc import sbulbctl

    v4 = lab.v4
    conf = tmp_path / "sbulb.conf"
    conf.write_text(f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
                    f"servers = {' '.join(str(a) for a in v4.real_servers[:3])}\n")
    process = start(lab, tmp_path, conf)
    rs1 = str(v4.real_servers[1])
    try:
        clients = [lab.client(4) for _ in range(3)]
        assert [c.exchange(v4.vip, PORT, b"a").server for c in clients] == ["rs0", "rs1", "rs2"]
        done = sbulbctl(lab, "server", "disable", rs1, "--service", "coap")
        assert done.returncode == 0 and done.stdout.strip() == f"{rs1} disabled in coap"
        states = {s["address"]: s["state"]
                  for s in ctl_json(lab, "status")["services"][0]["real_servers"]}
        assert states[rs1] == "disabled"
        newcomers = {lab.client(4).exchange(v4.vip, PORT, b"n").server for _ in range(6)}
        assert newcomers == {"rs0", "rs2"}
        assert clients[1].exchange(v4.vip, PORT, b"b").server == "rs1"  # on_down = keep
        assert "server.disabled server=" + rs1 in process.stderr
        assert sbulbctl(lab, "server", "enable", rs1).returncode == 0
        assert "rs1" in {lab.client(4).exchange(v4.vip, PORT, b"m").server for _ in range(3)}
        unknown = sbulbctl(lab, "server", "disable", "10.77.99.9")
        assert unknown.returncode == 1 and "is not a real server" in unknown.stderr
    finally:
        process.close()


def test_sbulbctl_set_weight_drain_and_reset(lab: Lab, tmp_path: Path) -> None:
    """Runtime weights over the file's: new clients follow them at once,
    status shows them as overrides, an edit of that server in the file
    ends them (an edit of another server does not), reset undoes them."""
    from tests.proc import sbulbctl

    v4 = lab.v4
    rs0, rs1, rs2 = (str(a) for a in v4.real_servers[:3])
    conf = tmp_path / "sbulb.conf"

    def write(servers: str) -> None:
        conf.write_text(f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
                        f"servers = {servers}\n")

    def servers() -> dict[str, dict]:
        return {s["address"]: s for s in ctl_json(lab, "status")["services"][0]["real_servers"]}

    def newcomers(n: int) -> list[str]:
        return [lab.client(4).exchange(v4.vip, PORT, b"n").server for _ in range(n)]

    def reload_with(servers_line: str) -> None:
        write(servers_line)
        process.notify.wait_for("RELOADING=1", 10)
        process.notify.wait_for("READY=1", 10)

    write(f"{rs0} {rs1} {rs2}")
    process = start(lab, tmp_path, conf)
    try:
        first = lab.client(4)
        assert first.exchange(v4.vip, PORT, b"a").server == "rs0"
        done = sbulbctl(lab, "server", "set-weight", rs0, "3")
        assert done.returncode == 0 and done.stdout.strip() == f"{rs0} weight 3 in coap"
        shown = servers()[rs0]
        assert (shown["weight"], shown["file_weight"], shown["override"]) == (3, 1, True)
        line = next(line for line in sbulbctl(lab, "status").stdout.splitlines()
                    if line.startswith(rs0 + " "))
        assert "3 (file 1)" in line
        assert sorted(newcomers(10)).count("rs0") == 6  # 3:1:1
        drained = sbulbctl(lab, "server", "drain", rs0)
        assert drained.returncode == 0 and drained.stdout.strip() == f"{rs0} drained in coap"
        assert servers()[rs0]["state"] == "drained"
        assert "rs0" not in newcomers(6)
        assert first.exchange(v4.vip, PORT, b"b").server == "rs0"  # keeps its clients
        # the file changes another server: the override stays
        reload_with(f"{rs0} {rs1}=2 {rs2}")
        assert (servers()[rs0]["weight"], servers()[rs1]["weight"]) == (0, 2)
        assert "rs0" not in newcomers(4)
        # the file changes this one: the file wins
        reload_with(f"{rs0}=2 {rs1}=2 {rs2}")
        assert servers()[rs0]["override"] is False and servers()[rs0]["weight"] == 2
        assert "server.override_dropped service=coap server=" + rs0 in process.stderr
        # reset: set-weight and disable undone
        assert sbulbctl(lab, "server", "set-weight", rs2, "0").returncode == 0
        assert sbulbctl(lab, "server", "disable", rs1).returncode == 0
        assert set(newcomers(4)) == {"rs0"}
        assert sbulbctl(lab, "server", "reset", rs2).stdout.strip() == f"{rs2} back to the file in coap"
        assert sbulbctl(lab, "server", "reset", rs1).returncode == 0
        after = servers()
        assert [after[a]["state"] for a in (rs0, rs1, rs2)] == ["active"] * 3
        assert set(newcomers(10)) == {"rs0", "rs1", "rs2"}
        assert "server.weight_set server=" + rs0 in process.stderr
        bad = sbulbctl(lab, "server", "set-weight", rs0, "1001")
        assert bad.returncode == 2 and "is not a weight" in bad.stderr
        unknown = sbulbctl(lab, "server", "drain", "10.77.99.9")
        assert unknown.returncode == 1 and "is not a real server" in unknown.stderr
    finally:
        process.close()
