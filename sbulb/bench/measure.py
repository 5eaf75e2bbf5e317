"""Load through one case: saturated runs, then the highest paced rate with
under 0.1% lost, and a sample through real sockets."""

from __future__ import annotations

import select
import socket
import statistics
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Callable

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from sbulb.bench.peers import Case, cpu_seconds
from sbulb.bench.tools import BenchTools
from sbulb.bench.topology import (CLIENT_BASE, NET_IF, PORT, SOCKET_CLIENT, VIP,
                                  BenchLab)
from sbulb.lab import in_ns, netns

LOSS_TARGET = 0.001  # "sustained": under 0.1% lost
LADDER = (0.95, 0.8, 0.6, 0.4, 0.2)  # paced rates tried, as fractions of the saturated rate
WARM_UP_RATE = 100_000.0
SAMPLE_RATE = 5000.0  # the sample check's frames per second: any case keeps up
SETTLED_POLLS = 5  # the count unchanged over 5 polls 20 ms apart: landed
SO_RCVBUFFORCE = 33  # root may exceed net.core.rmem_max (socket(7))


def udp_frame(lab: BenchLab, payload: int | bytes, src: IPv4Address = CLIENT_BASE,
              dst: IPv4Address = VIP, sport: int = 1024, dport: int = PORT) -> bytes:
    """A frame from the far end into the balancer: by default a client's
    datagram to the VIP; `payload` is a size or the bytes."""
    data = b"s" * payload if isinstance(payload, int) else payload
    return bytes(Ether(src=lab.net_mac, dst=lab.lb_mac)
                 / IP(src=str(src), dst=str(dst), ttl=64, id=1)
                 / UDP(sport=sport, dport=dport) / data)


@dataclass
class Sample:
    """One run of the generator through a case."""

    rate: float  # asked for, frames/s (0: as fast as the generator goes)
    offered: float  # frames/s sent
    delivered: float  # frames/s that reached the real servers
    loss: float  # fraction of what was sent that never arrived
    cpu: float  # the balancer's CPU (NAPI thread + proxy processes), in CPUs
    seconds: float


@dataclass
class Run:
    """One repeat: saturated, then the sustained rate."""

    saturated: Sample
    sustained: Sample | None  # None: loss above target at every rate tried
    ladder: list[Sample] = field(default_factory=list)


@dataclass
class CaseResult:
    name: str
    label: str
    payload: int
    runs: list[Run]
    sample_check: dict[str, int] | None = None

    def delivered(self) -> list[float]:
        return [run.saturated.delivered for run in self.runs]

    def sustained(self) -> list[float]:
        return [run.sustained.delivered if run.sustained else 0.0 for run in self.runs]

    def summary(self) -> dict[str, object]:
        sat = [run.saturated for run in self.runs]
        sus = [run.sustained for run in self.runs if run.sustained]
        return {
            "offered_pps": spread([s.offered for s in sat]),
            "delivered_pps": spread([s.delivered for s in sat]),
            "loss_saturated": spread([s.loss for s in sat]),
            "cpu": spread([s.cpu for s in sat]),
            "sustained_pps": spread(self.sustained()),
            "sustained_loss": spread([s.loss for s in sus]) if sus else None,
            # the lowest loss any paced rate gave: the floor when no rate
            # met the target
            "least_loss": spread([min((s.loss for s in run.ladder), default=1.0)
                                  for run in self.runs]),
        }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


class Bench:
    def __init__(self, lab: BenchLab, tools: BenchTools, workdir: Path, seconds: float,
                 repeats: int, clients: int, say: Callable[[str], None]) -> None:
        self.lab, self.tools, self.workdir = lab, tools, workdir
        self.seconds, self.repeats, self.clients, self.say = seconds, repeats, clients, say
        self.napi_thread = 0
        # the counter on the far end; native XDP, which also gives netwire
        # the NAPI that XDP_TX'd frames need to be delivered
        tools.attach(lab.net_ns, NET_IF, "count")

    # -- one run

    def settle(self, case: Case) -> int:
        """What the case delivered, once in-flight frames have landed: the
        count, read until it stops moving (bounded)."""
        last = case.delivered()
        steady = 0
        deadline = time.monotonic() + 3.0
        while steady < SETTLED_POLLS and time.monotonic() < deadline:
            select.select([], [], [], 0.02)
            now = case.delivered()
            steady = steady + 1 if now == last else 0
            last = now
        return last

    def measure(self, case: Case, frame: bytes, rate: float = 0.0, clients: int | None = None,
                seconds: float | None = None) -> Sample:
        self.tools.reset_counted()
        self.tools.reset_ceiling()
        cpu_before = cpu_seconds([self.napi_thread]) + case.cpu_used()
        generated = self.tools.generate(self.lab.net_ns, NET_IF, frame, seconds or self.seconds,
                                        rate, clients or self.clients, CLIENT_BASE)
        cpu = (cpu_seconds([self.napi_thread]) + case.cpu_used() - cpu_before) / generated.seconds
        delivered = self.settle(case)
        case.check()
        # a tee's servers get `copies` datagrams for each one sent: delivered
        # counts copies, the loss is that of copies
        expected = generated.sent * case.copies
        fraction = min(1.0, delivered / expected) if expected else 0.0
        return Sample(rate, generated.rate, generated.rate * case.copies * fraction,
                      1 - fraction, cpu, generated.sending_seconds)

    def warm_up(self, case: Case, frame: bytes, clients: int | None = None) -> None:
        """Associations, neighbours, conntrack entries, proxy sessions: made
        before anything is measured. sbulb learns a real server's MAC when
        its daemon sees the first miss: traffic goes on until the balancer
        knows them all (bounded)."""
        clients = clients or self.clients
        count = max(clients, 20_000)
        for _ in range(25):
            self.tools.generate(self.lab.net_ns, NET_IF, frame, count / WARM_UP_RATE * 1.5 + 0.5,
                                WARM_UP_RATE, clients, CLIENT_BASE, count=count)
            self.settle(case)
            if not case.needs_neighbours or self.lab.servers_resolved():
                break

    def start(self, case: Case) -> None:
        """Start a case and give its NAPI thread the balancer's CPU; the case
        is stopped again if that fails."""
        known = self.lab.napi_threads()
        case.__enter__()
        try:
            self.napi_thread = self.lab.pin_napi(known)
        except BaseException:
            case.__exit__(None, None, None)
            raise

    # -- a case, every payload size

    def throughput(self, case: Case, payloads: list[int]) -> list[CaseResult]:
        results = []
        self.say(f"case {case.label}")
        self.start(case)
        try:
            for payload in payloads:
                frame = udp_frame(self.lab, payload)
                self.warm_up(case, frame)
                runs = []
                for _ in range(self.repeats):
                    saturated = self.measure(case, frame)
                    ladder = []
                    sustained = None
                    for fraction in LADDER if saturated.delivered > 0 else ():
                        # a rate of datagrams in (a tee delivers `copies` each)
                        paced = self.measure(case, frame,
                                             saturated.delivered / case.copies * fraction)
                        ladder.append(paced)
                        if paced.loss < LOSS_TARGET:
                            sustained = paced
                            break
                    runs.append(Run(saturated, sustained, ladder))
                result = CaseResult(case.name, case.label, payload, runs)
                if case.forwards_to_servers and payload == payloads[0]:
                    result.sample_check = self.sample_check(case)
                results.append(result)
                s = result.summary()
                self.say(f"  {payload:5d} B: delivered {mpps(s['delivered_pps'])} Mpps "  # type: ignore[arg-type]
                         f"(offered {mpps(s['offered_pps'])}), sustained "  # type: ignore[arg-type]
                         f"{mpps(s['sustained_pps'])} Mpps, CPU "  # type: ignore[arg-type]
                         f"{s['cpu']['median']:.2f}")  # type: ignore[index]
        finally:
            case.__exit__(None, None, None)
        return results

    # -- real sockets see what the counter counts

    def sample_check(self, case: Case, generated: int = 1000, sent: int = 200) -> dict[str, int]:
        """Let the counter pass what it counts on to the real servers'
        sockets: `sent` datagrams from a socket client and `generated` frames
        from the generator (100 clients, at a rate every case keeps up with)
        should all arrive, intact, and the far end's stack see no checksum
        error; what did is reported."""
        self.tools.let_counted_through(True)
        servers: list[socket.socket] = []
        clients: list[socket.socket] = []
        try:
            with netns(self.lab.net_ns):
                for address in self.lab.servers:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
                    sock.bind((str(address), PORT))
                    sock.setblocking(False)
                    servers.append(sock)
                before = udp_errors(self.lab.net_ns)
                for i in range(20):
                    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    client.bind((str(SOCKET_CLIENT), 0))
                    clients.append(client)
                for i in range(sent):
                    clients[i % len(clients)].sendto(f"sample {i}".encode(), (str(VIP), PORT))
            frame = udp_frame(self.lab, 64)
            self.tools.reset_counted()
            self.tools.generate(self.lab.net_ns, NET_IF, frame, generated / SAMPLE_RATE + 1.0,
                                SAMPLE_RATE, 100, CLIENT_BASE, count=generated)
            self.settle(case)
            received, intact = 0, 0
            expected = {f"sample {i}".encode() for i in range(sent)} | {b"s" * 64}
            for sock in servers:
                while True:
                    try:
                        data = sock.recv(65535)
                    except BlockingIOError:
                        break
                    received += 1
                    intact += data in expected
            errors = udp_errors(self.lab.net_ns) - before
        finally:
            # the counter drops again before the servers' sockets go: a
            # late datagram to a closed port would draw an ICMP error
            self.tools.let_counted_through(False)
            for sock in servers + clients:
                sock.close()
        check = {"sent": sent + generated, "received": received, "intact": intact,
                 "checksum_errors": errors}
        self.say(f"  sample through real sockets: {received}/{sent + generated} received, "
                 f"{intact} intact, {errors} checksum errors")
        return check


def udp_errors(ns: str) -> int:
    """Udp InCsumErrors + InErrors in a namespace's /proc/net/snmp."""
    lines = [line.split() for line in in_ns(ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Udp:")]
    values = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return values.get("InCsumErrors", 0) + values.get("InErrors", 0)


def mpps(s: dict[str, float]) -> str:
    return f"{s['median'] / 1e6:.3f}"
