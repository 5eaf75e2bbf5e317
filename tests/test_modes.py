"""Service modes end to end with the real programs users run them for
(issue "Modes"): a syslog migration through mirror mode with rsyslog
receivers and `logger`, through the lab and the real CLI."""

from __future__ import annotations

import random
import struct
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from sbulb.lab import Lab, in_ns
from tests.conftest import require_root
from tests.proc import ctl_json, wait_until

SYSLOG_PORT = 5514  # the lab's UdpService does not listen here: rsyslog does
MESSAGES = 500
START_TIMEOUT = 20.0
DELIVERY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(servers=3) as built:
        yield built


class Rsyslog:
    """rsyslogd in a namespace: imudp on SYSLOG_PORT (IPv4 and IPv6), every
    message written as "<sender address> <message>" to one file."""

    def __init__(self, ns: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ns = ns
        self.out = directory / "messages.log"
        conf = directory / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{directory}" maxMessageSize="64k")\n'
            'module(load="imudp")\n'
            f'input(type="imudp" port="{SYSLOG_PORT}" rcvbufSize="16m")\n'
            'template(name="line" type="string" string="%fromhost-ip% %msg%\\n")\n'
            f'*.* action(type="omfile" file="{self.out}" template="line")\n')
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "rsyslogd", "-n", "-f", str(conf),
             "-i", str(directory / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not wait_until(self._listening, START_TIMEOUT):
            self.close()
            raise AssertionError(f"rsyslogd in {ns} did not open UDP port {SYSLOG_PORT}")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"rsyslogd in {self.ns} exited: {self.process.stderr.read()}")
        ss = in_ns(self.ns, "ss", "-Hnlu", f"sport = :{SYSLOG_PORT}")
        return ss.stdout.count(f":{SYSLOG_PORT}") >= 2  # IPv4 and IPv6

    def lines(self) -> list[str]:
        if not self.out.exists():
            return []
        return self.out.read_text(errors="replace").splitlines()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


def _messages(seed: int) -> list[str]:
    """MESSAGES distinct messages of 100 to 8000 bytes: the longest are
    fragmented over the lab's 1500-byte MTU."""
    rng = random.Random(seed)
    sizes = [100, 8000] + [rng.randint(100, 8000) for _ in range(MESSAGES - 2)]
    return [(f"mirror-{i:03d}-{size:04d} " + "x" * size)[:size] for i, size in enumerate(sizes)]


@pytest.mark.parametrize("family", [4, 6])
def test_syslog_migration_through_mirror_mode(lab: Lab, tmp_path: Path, family: int) -> None:
    """The seed's log migration: `logger` sends 500 messages of 100 to 8000
    bytes to the VIP, and each of three rsyslog receivers behind a mirror
    service writes all 500, whole, with the client as their sender."""
    net = lab.addresses(family)
    receivers: list[Rsyslog] = []
    try:
        for i, ns in enumerate(lab.server_ns):
            receivers.append(Rsyslog(ns, tmp_path / f"rs{i}"))
        conf = tmp_path / "sbulb.conf"
        conf.write_text(f"[Service syslog]\nmode = mirror\naddress = {net.vip}\n"
                        f"ports = {SYSLOG_PORT}\n"
                        f"servers = {' '.join(str(a) for a in net.real_servers)}\n")
        process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"],
                                  tmp_path)
        try:
            process.wait_ready()
            messages = _messages(family)
            source = tmp_path / "messages.txt"
            source.write_text("".join(m + "\n" for m in messages))
            sent = in_ns(lab.client_ns, "logger", "-d", "-n", str(net.vip), "-P",
                         str(SYSLOG_PORT), "--size", "9000", "-t", "sbulb-test", "-f",
                         str(source))
            assert sent.returncode == 0, sent.stderr
            complete = wait_until(lambda: all(len(r.lines()) >= MESSAGES for r in receivers),
                                   DELIVERY_TIMEOUT)
            status = ctl_json(lab, "status")
        finally:
            process.close()
    finally:
        for receiver in receivers:
            receiver.close()
    got = [r.lines() for r in receivers]
    assert complete, f"received {[len(lines) for lines in got]} of {MESSAGES} messages"
    # the sender rsyslog saw is the client (the kernel picks which of the
    # client's addresses), not the balancer
    sender = got[0][0].split(" ", 1)[0]
    assert sender in {str(c) for c in net.clients}
    wanted = sorted(f"{sender} {m}" for m in messages)
    for i, lines in enumerate(got):
        assert sorted(lines) == wanted, f"rs{i}"
    counters = status["counters"]
    assert counters["MIRROR_FAILED"] == 0
    # fragments were mirrored: more frames than messages, three copies each
    assert counters["TX_MIRROR"] > MESSAGES
    assert counters["MIRROR_SENT"] == 3 * counters["TX_MIRROR"]


# ---- telemetry: softflowd -> sbulb -> three nfcapd (tests/netflow.py)

FLOWS_PORT, PER_PACKET_PORT = 2055, 2056
EXPORTED = 5000


def _flows_config(net, path: Path, weights: tuple[int, ...] = (1, 1, 1)) -> None:
    servers = " ".join(f"{a}={w}" for a, w in zip(net.real_servers, weights))
    path.write_text(
        f"[Service flows]\nmode = telemetry\naddress = {net.vip}\nports = {FLOWS_PORT}\n"
        f"servers = {servers}\n\n"
        f"[Service flows-per-packet]\nmode = per-packet\naddress = {net.vip}\n"
        f"ports = {PER_PACKET_PORT}\nservers = {servers}\n")


@pytest.mark.parametrize("family", [4, 6])
def test_netflow_and_ipfix_through_telemetry_mode(lab: Lab, tmp_path: Path, family: int) -> None:
    """softflowd exports 5000 flows (NetFlow v9, then IPFIX) from a capture to
    the VIP; behind a telemetry service three nfcapd collectors decode them
    all between them (templates reach each, data once), each at least a
    quarter. The same export to a per-packet service loses flows: two
    collectors in three lack the templates until their turn comes."""
    from sbulb import netflow_lab as netflow

    net = lab.addresses(family)
    capture = tmp_path / "flows.pcap"
    netflow.write_capture(capture, EXPORTED, family=family)
    conf = tmp_path / "sbulb.conf"
    _flows_config(net, conf)
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], tmp_path)
    results = {}
    try:
        process.wait_ready()
        for version in (9, 10):
            decoded = {}
            for port in (FLOWS_PORT, PER_PACKET_PORT):
                collectors = [netflow.Collector(ns, str(a), port, tmp_path / f"v{version}-{port}-{i}")
                              for i, (ns, a) in enumerate(zip(lab.server_ns, net.real_servers))]
                try:
                    exported = netflow.run_softflowd(lab.client_ns, capture, str(net.vip), port,
                                                     version)
                    assert exported == EXPORTED
                    decoded[port] = [c.flows() for c in collectors]
                    assert all(c.drops == 0 for c in collectors)
                finally:
                    for c in collectors:
                        c.close()
            results[version] = decoded
        # the daemon keeps what the data path handed over (for replays)
        assert wait_until(lambda: _templates(lab)["exporters"] == 2, DELIVERY_TIMEOUT)
        status = ctl_json(lab, "status")
    finally:
        process.close()
    for version, decoded in results.items():
        spread, per_packet = decoded[FLOWS_PORT], decoded[PER_PACKET_PORT]
        assert sum(spread) == EXPORTED, f"v{version}: decoded {spread} of {EXPORTED}"
        assert min(spread) >= EXPORTED // 4, f"v{version}: {spread}"
        lost = EXPORTED - sum(per_packet)
        # the mode exists for this: per packet, data reaches collectors
        # that have not seen its template yet, and they drop it
        assert lost > 0, f"v{version}: per-packet decoded {per_packet}, lost none"
        print(f"v{version}: telemetry decoded {spread}; per-packet {per_packet}, "
              f"{lost} flows lost for want of templates")
    counters = status["counters"]
    assert counters["TX_TEMPLATE"] > 0 and counters["MIRROR_FAILED"] == 0
    assert counters["TEMPLATE_COPIED"] == 3 * counters["TX_TEMPLATE"]
    (flows,) = [s for s in status["services"] if s["name"] == "flows"]
    # one exporter per version (v9 and IPFIX templates are apart)
    assert flows["templates"]["seen"] == counters["TX_TEMPLATE"]
    assert flows["templates"]["exporters"] == 2


def test_a_collector_that_joins_gets_the_templates_at_once(lab: Lab, tmp_path: Path) -> None:
    """An exporter sends its template once, then data. A third collector
    joins (weight 0 -> 1 by a reload): the daemon replays the template to
    it, from the exporter's address, so its share of the next data decodes
    although the exporter sent no template since."""
    from sbulb.lab import Client
    from sbulb import netflow_lab as netflow
    from tests.packets import netflow9

    net = lab.addresses(4)
    conf = tmp_path / "sbulb.conf"
    _flows_config(net, conf, weights=(1, 1, 0))
    # template 256: IPv4 source, destination, packets, bytes (4 bytes each)
    fields = ((8, 4), (12, 4), (2, 4), (1, 4))
    template = struct.pack("!HH", 256, len(fields)) + b"".join(
        struct.pack("!HH", *f) for f in fields)

    def data(seq: int, records: int = 4) -> bytes:
        body = b"".join(struct.pack("!4s4sII", bytes([10, 9, seq % 250, r]),
                                    bytes([10, 8, 0, 1]), 1, 100) for r in range(records))
        return netflow9((256, body), sequence=seq, source_id=3)

    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], tmp_path)
    collectors = [netflow.Collector(ns, str(a), FLOWS_PORT, tmp_path / f"c{i}")
                  for i, (ns, a) in enumerate(zip(lab.server_ns, net.real_servers))]
    exporter = Client(lab.client_ns, net.clients[0])
    try:
        process.wait_ready()
        exporter.send(net.vip, FLOWS_PORT, netflow9((0, template), source_id=3))
        assert wait_until(lambda: _templates(lab)["seen"] == 1, DELIVERY_TIMEOUT)
        for seq in range(1, 7):  # to the two collectors
            exporter.send(net.vip, FLOWS_PORT, data(seq))
        _flows_config(net, conf, weights=(1, 1, 1))
        process.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _templates(lab)["replayed"] == 1, DELIVERY_TIMEOUT)
        for seq in range(7, 19):  # 12 datagrams: 4 to each of the three
            exporter.send(net.vip, FLOWS_PORT, data(seq))
        decoded = [c.flows() for c in collectors]
    finally:
        exporter.close()
        for c in collectors:
            c.close()
        process.close()
    assert decoded[2] == 4 * 4, f"the joining collector decoded {decoded[2]} of 16 flows"
    assert sum(decoded) == 18 * 4, decoded


def _templates(lab: Lab) -> dict:
    (flows,) = [s for s in ctl_json(lab, "status")["services"] if s["name"] == "flows"]
    return flows["templates"]
