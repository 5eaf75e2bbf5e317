"""What health checks cost the daemon: 64 services x 32 real servers probed
every second (issue target: under 2% of one CPU).

The same daemon configuration is run twice, without checks and with them;
the cost is the difference in the daemon's CPU time (every thread: the
prober's, and the main loop's share that takes the verdicts) over the same
window. The real servers are 32 addresses on the bench's far end, each
with a UDP echo socket per service port (`python3 -m sbulb.bench.healthcost
echo`, in the far end's namespace); the probes go out of the balancer
host's own stack, as they do in production.

A veth delivers what a process sends on the sender's CPU: in softirq
within its send call (the real servers' whole receive path, IP, UDP and the
echo socket's wake-up, is then charged to the daemon's sends), or, with the
far end's NAPI in a thread, by waking that thread, which on the same CPU
preempts the daemon once per probe. On a real link that work happens on
other machines. So the checks are measured in two placements:
- apart (the goal's): the daemon on one CPU; the far end (its NAPI thread,
  the echo servers) and the balancer interface's NAPI on the other, as
  real servers on other machines would be;
- shared: as the other phases run (far end in softirq, nothing pinned), the
  servers' receive path included: an upper bound.
"""

from __future__ import annotations

import os
from collections import Counter
import resource
import selectors
import socket
import subprocess
import sys
import time
import uuid
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Sequence

from sbulb.bench.measure import Bench
from sbulb.bench.report import health_met
from sbulb.bench.peers import Sbulb, cpu_seconds
from sbulb.bench.scaling import ctl
from sbulb.bench.tools import GENERATOR_CPU
from sbulb.bench.topology import BALANCER_CPU, NET_IF, PREFIX_LEN, VIP, napi_threads
from sbulb.lab import in_ns, sh

SERVICES = 64
SERVERS = 32
FIRST_PORT = 6000  # not the bench's port: the far end's counter lets these through
INTERVAL = 1.0
TIMEOUT = 0.5
WINDOW = 10.0  # seconds of CPU time measured per configuration
GOAL = 0.02  # of one CPU
UP_TIMEOUT = 30.0


def addresses() -> list[IPv4Address]:
    # the bench lab's real servers are 10.98.1.1 and .2; these extend them
    return [IPv4Address(f"10.98.1.{i + 1}") for i in range(SERVERS)]


def config_text(checks: bool) -> str:
    servers = " ".join(map(str, addresses()))
    # the -vs/-p service the bench's sbulb case always has, unchecked
    sections = ["[Real Servers]\n" + "".join(f"{a} = 1\n" for a in addresses()[:2])]
    for i in range(SERVICES):
        text = (f"[Service s{i}]\naddress = {VIP}\nports = {FIRST_PORT + i}\n"
                f"servers = {servers}\n")
        if checks:
            text += (f"check = udp\ncheck_send = 70 69 6e 67\ncheck_expect = ^ping$\n"
                     f"check_interval = {INTERVAL:g}s\ncheck_timeout = {TIMEOUT:g}s\n")
        sections.append(text)
    return "\n".join(sections)


def _servers(status: Any) -> list[dict[str, Any]]:
    return [rs for service in status["services"] if service["name"] != "default"
            for rs in service["real_servers"]]


def _far_end_apart(bench: Bench, apart: bool) -> None:
    """The far end's NAPI in a thread of its own on the balancer's CPU
    (apart), or back in softirq."""
    in_ns(bench.lab.net_ns, "sh", "-c",
          f"echo {1 if apart else 0} > /sys/class/net/{NET_IF}/threaded")
    if apart:
        for tid in napi_threads(NET_IF):
            os.sched_setaffinity(tid, {BALANCER_CPU})


def _pin(pid: int, cpus: set[int]) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (OSError, ValueError):
            pass  # a thread that has just exited


def _run(bench: Bench, checks: bool, apart: bool) -> dict[str, float]:
    config = bench.workdir / f"sbulb-health-{uuid.uuid4().hex[:6]}.conf"
    config.write_text(config_text(checks))
    case = Sbulb(bench.lab, bench.tools, bench.workdir, config_file=config,
                 max_associations=65536, extra=["--max-services", str(SERVICES + 1),
                        "--max_ports", str(SERVICES + 1)])
    bench.start(case)
    try:
        process = case.process
        assert process is not None
        if apart:
            # every thread the daemon has once it is ready (the prober's included)
            _pin(process.pid, {GENERATOR_CPU})
        probes_before = failures_before = 0
        if checks:
            deadline = time.monotonic() + UP_TIMEOUT
            while True:
                servers = _servers(ctl(bench, "status"))
                up = sum(1 for rs in servers if rs.get("health") == "up")
                if up == SERVICES * SERVERS:
                    break
                if time.monotonic() > deadline:
                    states = Counter((rs.get("health"), rs.get("health_reason"))
                                     for rs in servers)
                    raise RuntimeError(f"health cost: {up} of {SERVICES * SERVERS} "
                                       f"servers up after {UP_TIMEOUT:g}s: "
                                       f"{dict(states.most_common(4))}, probes "
                                       f"{sum(rs['probes'] for rs in servers)}, failed "
                                       f"{sum(rs['probe_failures'] for rs in servers)}")
                time.sleep(0.5)  # polling the daemon's status, not a synchronisation
            probes_before = sum(rs["probes"] for rs in servers)
            failures_before = sum(rs["probe_failures"] for rs in servers)
        prober = [t for t in Path(f"/proc/{process.pid}/task").iterdir()
                  if (t / "comm").read_text().strip() == "sbulb-health"]
        before = cpu_seconds([process.pid])
        thread_before = _task_cpu(prober)
        started = time.monotonic()
        time.sleep(WINDOW)  # the measurement window: the daemon runs on its own
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds([process.pid]) - before) / elapsed
        thread = (_task_cpu(prober) - thread_before) / elapsed
        result = {"cpu": cpu, "prober_thread_cpu": thread, "probes_per_second": 0.0,
                  "probe_failures": 0}
        if checks:
            servers = _servers(ctl(bench, "status"))
            # the first probes of each server may wait on ARP and time out;
            # in the window none should
            result["probe_failures"] = sum(rs["probe_failures"] for rs in servers) - failures_before
            probes = sum(rs["probes"] for rs in servers) - probes_before
            # the status is refreshed once a second: the rate is +-1 s worth
            result["probes_per_second"] = probes / (time.monotonic() - started)
        return result
    finally:
        case.__exit__(None, None, None)


def _task_cpu(tasks: list[Path]) -> float:
    total = 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def health_cost(bench: Bench) -> dict[str, object]:
    lab = bench.lab
    extra = [a for a in addresses() if a not in lab.servers]
    for address in extra:
        sh("ip", "-n", lab.net_ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", NET_IF)
    echo = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.net_ns}", sys.executable, "-m",
         "sbulb.bench.healthcost", "echo", *map(str, addresses())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != "ready":
            raise RuntimeError("health cost: the echo servers did not start")
        with_softirq = _run(bench, checks=True, apart=False)
        _pin(echo.pid, {BALANCER_CPU})
        _far_end_apart(bench, True)
        try:
            without = _run(bench, checks=False, apart=True)
            with_checks = _run(bench, checks=True, apart=True)
        finally:
            _far_end_apart(bench, False)
    finally:
        assert echo.stdin is not None
        echo.stdin.close()  # its end of input: it exits
        try:
            echo.wait(5)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait()
        for address in extra:
            sh("ip", "-n", lab.net_ns, "addr", "del", f"{address}/{PREFIX_LEN}", "dev", NET_IF,
               check=False)
    cost = with_checks["cpu"] - without["cpu"]
    cost_softirq = with_softirq["cpu"] - without["cpu"]  # "without" barely depends on it
    result = {"services": SERVICES, "servers": SERVERS, "interval": INTERVAL,
              "without": without, "with": with_checks, "with_softirq": with_softirq,
              "cost": cost, "cost_softirq": cost_softirq, "goal": GOAL}
    bench.say(f"health checks: {SERVICES} services x {SERVERS} servers every {INTERVAL:g}s, "
              f"{with_checks['probes_per_second']:.0f} probes/s "
              f"({with_checks['probe_failures']} failed): daemon CPU "
              f"{without['cpu'] * 100:.2f}% without, {with_checks['cpu'] * 100:.2f}% with "
              f"(prober thread {with_checks['prober_thread_cpu'] * 100:.2f}%): cost "
              f"{cost * 100:.2f}% of one CPU, goal < {GOAL * 100:g}%: "
              f"{'PASS' if health_met(result) else 'FAIL'}; with the servers' receive path "
              f"charged to it (far end in softirq) {cost_softirq * 100:.2f}%")
    return result


def echo(argv: Sequence[str]) -> int:
    """UDP echo on every address given, on each service port; until stdin closes."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    selector = selectors.DefaultSelector()
    for address in argv:
        for port in range(FIRST_PORT, FIRST_PORT + SERVICES):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((address, port))
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ, s)
    os.set_blocking(sys.stdin.fileno(), False)
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select(5.0):
            if key.data is None:
                try:
                    if not os.read(sys.stdin.fileno(), 4096):
                        return 0  # closed: the bench is done
                except BlockingIOError:
                    pass
                continue
            for _ in range(64):
                try:
                    data, peer = key.data.recvfrom(2048)
                except BlockingIOError:
                    break
                key.data.sendto(data, peer)


if __name__ == "__main__":
    if sys.argv[1:2] != ["echo"]:
        print("usage: python3 -m sbulb.bench.healthcost echo ADDRESS...", file=sys.stderr)
        sys.exit(2)
    sys.exit(echo(sys.argv[2:]))
