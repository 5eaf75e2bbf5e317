"""sbulbctl against the real daemon in the lab: its numbers against the
packets sent, its actions against what the data path then does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from sbulb import __version__
from sbulb.lab import PORT, Client, Lab, SbulbProcess
from tests.conftest import require_root
from tests.proc import REPO, ctl_json, sbulbctl


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(servers=3) as built:
        yield built


@pytest.fixture
def balancer(lab: Lab, tmp_path: Path) -> Iterator[SbulbProcess]:
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1, 2])
    lab.forget_associations()  # each test starts from a fresh map
    process = lab.start_sbulb(lab.sbulb_args(4, conf), tmp_path)
    process.wait_ready()
    yield process
    process.close()


def ping(client: Client, lab: Lab, payload: bytes) -> str:
    """One datagram, one answer, no retry: counters must match exactly."""
    client.send(lab.v4.vip, PORT, payload)
    reply = client.receive(timeout=5)
    assert reply is not None and reply.payload == payload, "a datagram was lost"
    return reply.server


def test_status_counts_what_was_sent(lab: Lab, balancer: SbulbProcess) -> None:
    clients = [lab.client(4) for _ in range(5)]  # rs0, rs1, rs2, rs0, rs1
    sent = {"rs0": 0, "rs1": 0, "rs2": 0}
    for n, client in enumerate(clients):
        for _ in range(n + 1):
            sent[ping(client, lab, b"12345678")] += 1
    frame = 14 + 20 + 8 + 8
    status = ctl_json(lab, "status")
    by_name = {s["address"]: s for s in status["real_servers"]}
    for name, count in sent.items():
        address = str(lab.v4.real_servers[int(name[2:])])
        server = by_name[address]
        assert (server["packets_to"], server["packets_from"]) == (count, count), name
        # the answer is longer: "rsN " + payload
        assert (server["bytes_to"], server["bytes_from"]) == (count * frame, count * (frame + 4))
        assert (server["weight"], server["state"]) == (1, "active")
    assert [s["associations"] for s in status["real_servers"]] == [2, 2, 1]
    assert status["associations"] == 5
    total = sum(sent.values())
    assert status["counters"]["TX_INGRESS"] == total and status["counters"]["TX_EGRESS"] == total
    assert status["counters"]["ASSOC_CLIENT"] == 5
    assert status["virtual_server"] == str(lab.v4.vip) and status["ports"] == [PORT]
    assert status["interfaces"] == {"eth0": "native"}
    human = sbulbctl(lab, "status")
    assert human.returncode == 0 and str(lab.v4.real_servers[0]) in human.stdout


def control_socket(lab: Lab) -> Path:
    netns = subprocess.run(["ip", "netns", "exec", lab.lb_ns, "stat", "-L", "-c", "%i",
                            "/proc/self/ns/net"], capture_output=True, text=True).stdout.strip()
    return Path(f"/run/sbulb/eth0.{netns}.sock")


def test_control_socket_is_owner_only(lab: Lab, balancer: SbulbProcess) -> None:
    path = control_socket(lab)
    assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600


def test_a_slow_control_client_delays_nothing(lab: Lab, tmp_path: Path) -> None:
    """A client that sends its request a byte at a time: the daemon still
    reloads a changed config at once, and answers sbulbctl meanwhile."""
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1, 2])
    process = lab.start_sbulb(lab.sbulb_args(4, conf), tmp_path)
    try:
        process.wait_ready()
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.connect(str(control_socket(lab)))
        stop = threading.Event()

        def trickle() -> None:  # 30 s of request, without its end
            for byte in b'{"command": "status", "args": {"service": "default"}}' * 2:
                try:
                    slow.send(bytes([byte]))
                except OSError:  # cut off by its deadline
                    return
                if stop.wait(0.3):  # a slow client's pace, not a synchronisation
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            lab.write_config(conf, 4, [0, 1])
            process.notify.wait_for("READY=1", timeout=3.0)  # reloaded (1 s promise)
            started = time.monotonic()
            status = ctl_json(lab, "status")
            assert time.monotonic() - started < 5.0  # a python start, not the slow client
            assert [s["address"] for s in status["real_servers"]] == [
                str(a) for a in lab.v4.real_servers[:2]]
        finally:
            stop.set()
            sender.join(10)
            slow.close()
        assert process.stop() == 0
    finally:
        process.close()


def test_association_commands(lab: Lab, balancer: SbulbProcess) -> None:
    a, b, c = (lab.client(4) for _ in range(3))  # rs0, rs1, rs2
    assert [ping(x, lab, b"hi") for x in (a, b, c)] == ["rs0", "rs1", "rs2"]
    rs0, rs1 = (str(s) for s in lab.v4.real_servers[:2])
    assert ctl_json(lab, "associations", "count") == 3
    listed = ctl_json(lab, "associations", "list", "--server", rs0)
    assert listed["associations"] == [{"service": "default", "client": str(a.address),
                                       "port": a.port, "server": rs0}]
    got = sbulbctl(lab, "associations", "get", f"{b.address}:{b.port}")
    assert got.returncode == 0 and got.stdout.strip() == rs1
    # delete a's association: its next datagram is a new client (cursor: rs0)
    deleted = sbulbctl(lab, "associations", "delete", f"{a.address}:{a.port}")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "deleted"
    missing = sbulbctl(lab, "associations", "get", f"{a.address}:{a.port}")
    assert missing.returncode == 1 and "has no association" in missing.stderr
    assert ping(a, lab, b"again") == "rs0"
    # flush rs1's clients: b picks anew (cursor: rs1 again)
    flushed = sbulbctl(lab, "associations", "flush", "--server", rs1)
    assert flushed.returncode == 0 and flushed.stdout.startswith("1 association")
    assert ctl_json(lab, "associations", "list", "--server", rs1)["total"] == 0
    assert ping(b, lab, b"again") == "rs1"
    assert ping(c, lab, b"again") == "rs2"


def test_top_refreshes(lab: Lab, balancer: SbulbProcess) -> None:
    client = lab.client(4)
    ping(client, lab, b"x")
    result = sbulbctl(lab, "top", "--count", "2", "--interval", "0.1", "--json")
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(frames) == 2 and len(frames[0]["real_servers"]) == 3
    # into a pipe: no terminal escapes, frames apart by a blank line
    human = sbulbctl(lab, "top", "--count", "2", "--interval", "0.1")
    assert human.returncode == 0 and "\x1b" not in human.stdout, human.stderr
    assert human.stdout.count("pkts/s to") == 2 and "\n\nsbulb on" in human.stdout
    # at a terminal: each frame clears the screen
    at_tty = on_a_terminal(lab, "top", "--count", "1", "--interval", "0.1")
    assert at_tty.startswith("\x1b[H\x1b[2J") and "pkts/s to" in at_tty


def on_a_terminal(lab: Lab, *args: str) -> str:
    """sbulbctl ARGS with a pseudo-terminal as stdout: what it wrote."""
    import os
    import pty

    main, child = pty.openpty()
    try:
        result = subprocess.run(["ip", "netns", "exec", lab.lb_ns, sys.executable, "-m",
                                 "sbulb.ctl", *args], stdout=child, stderr=subprocess.PIPE,
                                cwd=REPO, timeout=60)
        os.close(child)
        child = -1
        assert result.returncode == 0, result.stderr
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other end is closed, all read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)


def test_status_sorted_and_watched(lab: Lab, balancer: SbulbProcess) -> None:
    """--sort puts the busiest servers first; --watch shows status again
    every S seconds (--count frames), without escapes into a pipe."""
    clients = [lab.client(4) for _ in range(4)]  # rs0, rs1, rs2, rs0
    assert [ping(c, lab, b"s") for c in clients] == ["rs0", "rs1", "rs2", "rs0"]
    for _ in range(3):
        ping(clients[2], lab, b"more to rs2")  # rs2: most packets, most bytes
    ping(clients[1], lab, b"rs1")  # rs1: 2 packets, rs0: 2 (fewer bytes)
    rs0, rs1, rs2 = (str(a) for a in lab.v4.real_servers[:3])

    def text_order(*args: str) -> list[str]:
        result = sbulbctl(lab, "status", *args)
        assert result.returncode == 0, result.stderr
        return [line.split()[0] for line in result.stdout.splitlines()
                if line.startswith("10.")]

    assert text_order() == [rs0, rs1, rs2]  # the file's order
    assert text_order("--sort", "assoc") == [rs0, rs1, rs2]  # 2, 1, 1 (ties as listed)
    assert text_order("--sort", "pkts") == [rs2, rs0, rs1]  # 4, 2, 2
    assert text_order("--sort", "bytes") == [rs2, rs1, rs0]
    sbulbctl(lab, "associations", "flush", "--server", rs0)
    assert text_order("--sort", "assoc") == [rs1, rs2, rs0]  # 1, 1, 0
    watched = sbulbctl(lab, "status", "--watch", "0.1", "--count", "3")
    assert watched.returncode == 0 and "\x1b" not in watched.stdout, watched.stderr
    assert watched.stdout.count("associations 2 (at most") == 3
    frames = sbulbctl(lab, "status", "--watch", "0.1", "--count", "2", "--json")
    assert [json.loads(line)["associations"] for line in frames.stdout.splitlines()] == [2, 2]
    bad = sbulbctl(lab, "status", "--sort", "age")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_no_daemon_is_one_clear_line(lab: Lab) -> None:
    result = sbulbctl(lab, "status")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no sbulb daemon is running" in result.stderr
    bad = sbulbctl(lab, "associations", "get", "10.0.0.1")
    assert bad.returncode == 2 and "is not IP:PORT" in bad.stderr


def scrape(lab: Lab, port: int) -> dict:
    """name{labels} -> value, from the endpoint in the load balancer's netns."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from sbulb.lab import netns

    with netns(lab.lb_ns):  # the HTTP socket is made in there
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_prometheus_metrics(lab: Lab, tmp_path: Path) -> None:
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1, 2])
    rs0, rs1, rs2 = (str(a) for a in lab.v4.real_servers[:3])
    conf.write_text(f"[Real Servers]\n{rs0} = 2\n{rs1}\n{rs2} = 0\n")
    lab.forget_associations()
    started = time.time()
    process = lab.start_sbulb(lab.sbulb_args(4, conf, "--metrics", "9642"), tmp_path)
    process.wait_ready()
    clients = [lab.client(4) for _ in range(3)]  # rs0, rs1, rs0 (2:1, rs2 drained)
    assert [ping(c, lab, b"m") for c in clients] == ["rs0", "rs1", "rs0"]
    ping(clients[0], lab, b"again")
    m = scrape(lab, 9642)
    # per server, labelled by its service (here sbulb's one: `default`)
    assert m[f"sbulb_packets_total{{direction=to_server,server={rs0},service=default}}"] == 3
    assert m[f"sbulb_packets_total{{direction=from_server,server={rs0},service=default}}"] == 3
    assert m[f"sbulb_packets_total{{direction=to_server,server={rs1},service=default}}"] == 1
    assert m[f"sbulb_bytes_total{{direction=to_server,server={rs1},service=default}}"] == (
        14 + 20 + 8 + 1)
    assert m[f"sbulb_real_server_weight{{server={rs2},service=default}}"] == 0
    assert m["sbulb_service_packets_total{direction=to_server,service=default}"] == 4
    assert m["sbulb_service_associations{service=default}"] == 3
    assert m["sbulb_xdp_actions_total{action=tx}"] == 8
    assert m["sbulb_associations_refused_total{reason=rate_limited}"] == 0
    assert m["sbulb_associations{}"] == 3 and m["sbulb_associations_max{}"] == 1048576
    assert m["sbulb_associations_fill_ratio{}"] == 3 / 1048576
    assert m["sbulb_associations_created_total{by=client}"] == 3
    assert m["sbulb_forwarded_total{kind=ingress}"] == 4
    assert m["sbulb_drops_total{reason=not_associated}"] == 0
    assert "sbulb_passed_total{reason=not_balanced}" in m
    assert any(key.startswith("sbulb_info{") for key in m)
    # the clients of each real server, the pin, the reloads, the process
    assert [m[f"sbulb_real_server_associations{{server={rs},service=default}}"]
            for rs in (rs0, rs1, rs2)] == [2, 1, 0]
    assert 0 <= m["sbulb_associations_count_age_seconds{}"] < 60
    assert m["sbulb_associations_pinned{}"] == 1
    assert m["sbulb_config_last_reload_successful{}"] == 1
    assert m["sbulb_config_reloads_total{result=success}"] == 0
    assert m["sbulb_config_reloads_total{result=failure}"] == 0
    assert started - 1 <= m["sbulb_config_last_reload_success_timestamp_seconds{}"] <= time.time()
    assert any(key.startswith("sbulb_build_info{") and f"version={__version__}" in key for key in m)
    assert m["process_resident_memory_bytes{}"] > 0 and m["process_open_fds{}"] > 0
    # a rejected reload shows, and so does the good one after it
    conf.write_text("[Real Servers]\nnot-an-address\n")
    wait_reload(process)
    m = scrape_until(lab, 9642, "sbulb_config_reloads_total{result=failure}", 1)
    assert m["sbulb_config_last_reload_successful{}"] == 0
    conf.write_text(f"[Real Servers]\n{rs0} = 2\n{rs1}\n")
    wait_reload(process)
    m = scrape_until(lab, 9642, "sbulb_config_reloads_total{result=success}", 1)
    assert m["sbulb_config_last_reload_successful{}"] == 1
    assert process.stop() == 0


RELOAD = 10.0  # seconds a reload may take


def wait_reload(process: SbulbProcess) -> str:
    process.notify.wait_for("RELOADING=1", RELOAD)
    return process.notify.wait_for("READY=1", RELOAD)


def scrape_until(lab: Lab, port: int, key: str, value: float, timeout: float = 10.0) -> dict:
    """A scrape in which `key` has `value` (the exposition is rendered at
    most once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(lab, port)
        if m.get(key) == value or time.monotonic() > deadline:
            assert m.get(key) == value, (key, m.get(key))
            return m
        time.sleep(0.1)  # polling the endpoint, bounded by the deadline


def test_metrics_pass_promtool_check(lab: Lab, tmp_path: Path) -> None:
    """Prometheus's own linter finds nothing to say about the exposition,
    with health checks, several services and traffic in it."""
    import urllib.request

    from sbulb.lab import netns

    conf = tmp_path / "sbulb.conf"
    rs0, rs1 = (str(a) for a in lab.v4.real_servers[:2])
    conf.write_text(f"[Service coap]\naddress = {lab.v4.vip}\nports = {PORT}\n"
                    f"servers = {rs0} {rs1}\ncheck = udp\ncheck_interval = 1s\n"
                    f"check_timeout = 500ms\n"
                    f"[Service other]\naddress = {lab.v4.vip}\nports = {PORT + 1}\n"
                    f"servers = {rs1}\n")
    lab.forget_associations()
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "--metrics", "9643"],
                              tmp_path)
    process.wait_ready()
    ping(lab.client(4), lab, b"m")
    with netns(lab.lb_ns):
        text = urllib.request.urlopen("http://127.0.0.1:9643/metrics", timeout=10).read()
    assert b"sbulb_health_probes_total" in text and b'service="other"' in text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                             timeout=60)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr).decode()
    assert process.stop() == 0


def test_metrics_port_taken_is_a_one_line_start_failure(lab: Lab, tmp_path: Path) -> None:
    import socket

    from sbulb.lab import netns

    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0])
    with netns(lab.lb_ns):
        taken = socket.socket()
    with taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = lab.start_sbulb(lab.sbulb_args(4, conf, "--metrics", str(port)), tmp_path)
        assert process.wait() == 1
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in lines[0]
    assert lab.xdp_programs() == []
