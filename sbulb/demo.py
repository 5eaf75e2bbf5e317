"""`make demo`: sbulb at work in a lab of network namespaces (sbulb.lab).

Builds the lab, starts `python3 -m sbulb` in the load balancer's namespace
with a config file, exactly as an operator would, and shows what crosses the
wire: clients spread over the real servers and sticking to them, answers
from the virtual IP, a server speaking first, a server added while traffic
runs, IPv6, several services in one instance, health checks, a mirror
service copying `logger`'s messages to two receivers, a telemetry service
spreading softflowd's NetFlow over three nfcapd that all decode it, then
a clean stop and teardown. Bounded in time and packets.
"""

from __future__ import annotations

import collections
import shlex
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from sbulb import netflow_lab
from sbulb.config import endpoint
from sbulb.lab import (PORT, SECOND_PORT, Client, Lab, LabError, SbulbProcess, UdpService,
                       in_ns, netns)

CLIENTS = 9
ROUNDS = 10
TRAFFIC_PERIOD = 0.02  # seconds between datagrams of the background traffic
TRAFFIC_MAX = 8.0  # the background traffic never runs longer than this


def say(text: str = "") -> None:
    print(text, flush=True)


def start(lab: Lab, family: int, conf: Path, workdir: Path) -> SbulbProcess:
    args = lab.sbulb_args(family, conf, "-l", "INFO")
    say(f"$ ip netns exec {lab.lb_ns} python3 -m sbulb {shlex.join(args)}")
    say("  (bcc compiles the XDP program: a few seconds)")
    began = time.monotonic()
    process = lab.start_sbulb(args, workdir)
    ready = process.wait_ready()
    status = ready.partition("STATUS=")[2]
    say(f"  READY=1 after {time.monotonic() - began:.1f}s: {status}")
    return process


def spread(lab: Lab, family: int, clients: list[Client]) -> dict[int, str]:
    vip = lab.addresses(family).vip
    owner = {}
    for client in clients:
        owner[client.port] = client.exchange(vip, PORT, b"hello").server
        say(f"  {endpoint(client.address, client.port):<22} -> {owner[client.port]}")
    counts = collections.Counter(owner.values())
    say("  spread: " + ", ".join(f"{name} {counts[name]}" for name in sorted(counts)))
    return owner


class Traffic(threading.Thread):
    """Clients keep sending (one datagram each per period) until stopped, at
    most TRAFFIC_MAX seconds; counts answers and server changes."""

    def __init__(self, lab: Lab, family: int, clients: list[Client], owner: dict[int, str]):
        super().__init__(daemon=True)
        self.vip = lab.addresses(family).vip
        self.clients, self.owner = clients, owner
        self.sent = self.answered = self.moved = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + TRAFFIC_MAX
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            for client in self.clients:
                payload = b"tick %d" % self.sent
                client.send(self.vip, PORT, payload)
                self.sent += 1
                reply = client.receive(timeout=1.0)
                if reply is not None and reply.payload == payload:
                    self.answered += 1
                    self.moved += reply.server != self.owner[client.port]
            self.stop_event.wait(TRAFFIC_PERIOD)


def story(lab: Lab, workdir: Path) -> None:
    v4 = lab.addresses(4)
    conf = workdir / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1, 2])
    say(f"config file {conf}:")
    for line in conf.read_text().splitlines():
        say(f"  {line}")
    say()
    lb = start(lab, 4, conf, workdir)

    say()
    say(f"1. {CLIENTS} clients (two addresses, many source ports) each send a datagram "
        f"to {v4.vip}:{PORT}")
    clients = [lab.client(4, index=i % 2) for i in range(CLIENTS)]
    owner = spread(lab, 4, clients)

    say()
    say(f"2. each client sends {ROUNDS} more datagrams")
    sticky = answers = from_vip = 0
    for round_ in range(ROUNDS):
        for client in clients:
            reply = client.exchange(v4.vip, PORT, b"again %d" % round_)
            answers += 1
            sticky += reply.server == owner[client.port]
            from_vip += (reply.source, reply.source_port) == (v4.vip, PORT)
    say(f"  {sticky}/{answers} answered by the client's own server")
    say()
    say(f"3. answers come from the virtual IP: {from_vip}/{answers} from {v4.vip}:{PORT}")

    say()
    pushed_to = lab.client(4, index=1)
    say(f"4. rs1 speaks first, from port {PORT}, to a new client "
        f"{endpoint(pushed_to.address, pushed_to.port)}")
    lab.service("rs1").send(4, PORT, pushed_to.address, pushed_to.port, b"observe notification")
    pushed = pushed_to.receive(timeout=5)
    if pushed is None:
        raise LabError("the server-initiated datagram did not arrive")
    say(f"  the client receives '{pushed.payload.decode()}' from "
        f"{endpoint(pushed.source, pushed.source_port)} (sent by {pushed.server})")
    follow = [pushed_to.exchange(v4.vip, PORT, b"ack %d" % i).server for i in range(5)]
    say(f"  its datagrams to the VIP then reach: {' '.join(follow)}")
    lab.service("rs2").send(4, PORT, pushed_to.address, pushed_to.port, b"intrusion")
    intruder = pushed_to.receive(timeout=0.5)
    say("  rs2 tries to speak to rs1's client: "
        + ("dropped by sbulb" if intruder is None else f"DELIVERED ({intruder})"))

    say()
    say(f"5. while the {CLIENTS} clients keep sending, rs3 is added to the config file")
    traffic = Traffic(lab, 4, clients, owner)
    traffic.start()
    time.sleep(0.3)  # let traffic flow before the change (demo pacing only)
    changed = time.monotonic()
    lab.write_config(conf, 4, [0, 1, 2, 3])
    lb.notify.wait_for("RELOADING=1", 10)
    status = lb.notify.wait_for("READY=1", 10).partition("STATUS=")[2]
    say(f"  sbulb reloaded {1000 * (time.monotonic() - changed):.0f} ms after the save: {status}")
    time.sleep(0.3)
    traffic.stop_event.set()
    traffic.join()
    say(f"  during the change: {traffic.sent} datagrams, {traffic.answered} answered, "
        f"{traffic.moved} by another server than before")
    newcomers = [lab.client(4).exchange(v4.vip, PORT, b"new").server for _ in range(4)]
    say(f"  4 new clients go to: {' '.join(newcomers)}")

    say()
    say("6. stop: SIGTERM")
    code = lb.stop()
    lb.notify.wait_for("STOPPING=1", 5)
    programs = lab.xdp_programs()
    say(f"  sbulb exited with {code}; XDP programs left on the interface: {programs or 'none'}")

    say()
    v6 = lab.addresses(6)
    conf6 = workdir / "sbulb6.conf"
    lab.write_config(conf6, 6, [0, 1, 2])
    say(f"7. IPv6 in the same lab: real servers {', '.join(map(str, v6.real_servers[:3]))}")
    lb6 = start(lab, 6, conf6, workdir)
    clients6 = [lab.client(6) for _ in range(4)]
    owner6 = spread(lab, 6, clients6)
    replies = [c.exchange(v6.vip, PORT, b"v6 again") for c in clients6]
    say(f"  again: {sum(r.server == owner6[c.port] for r, c in zip(replies, clients6))}/4 sticky, "
        f"{sum(r.source == v6.vip for r in replies)}/4 from {endpoint(v6.vip, PORT)}")
    code = lb6.stop()
    say(f"  SIGTERM: sbulb exited with {code}, XDP programs left: {lab.xdp_programs() or 'none'}")

    say()
    services(lab, workdir)
    say()
    health_checks(lab, workdir)
    say()
    mirror(lab, workdir)
    say()
    telemetry(lab, workdir)


def health_checks(lab: Lab, workdir: Path) -> None:
    """check = udp: a server whose service stops is down, then back."""
    v4 = lab.addresses(4)
    conf = workdir / "health.conf"
    conf.write_text(f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
                    f"servers = {' '.join(str(a) for a in v4.real_servers[:3])}\n"
                    "check = udp\ncheck_interval = 500ms\ncheck_timeout = 300ms\n"
                    "check_rise = 2\ncheck_fall = 2\n")
    say(f"9. health checks: {conf} probes each server every 500 ms (check = udp)")
    args = [*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"]
    lab.forget_associations()
    lb = lab.start_sbulb(args, workdir)
    lb.wait_ready()
    rs1 = v4.real_servers[1]
    lb.wait_log(f"health.up service=coap server={rs1}", 10)
    service = lab.service("rs1")
    service.close()
    lab.services.remove(service)
    took = lb.wait_log(f"health.down service=coap server={rs1}", 10)
    say(f"  rs1's UDP service stopped: sbulb marked it down {took:.1f}s later (reason: its "
        "probes got ICMP port unreachable)")
    newcomers = [lab.client(4).exchange(v4.vip, PORT, b"new").server for _ in range(4)]
    say(f"  4 new clients go to: {' '.join(newcomers)}")
    index = lab.server_names.index("rs1")
    lab.services.append(UdpService(lab.server_ns[index], "rs1", [PORT, SECOND_PORT]))
    took = lb.wait_log(f"health.up service=coap server={rs1} reason=ok", 10, count=2)
    say(f"  rs1's service started again: up {took:.1f}s later (2 good probes)")
    code = lb.stop()
    say(f"  SIGTERM: sbulb exited with {code}, XDP programs left: {lab.xdp_programs() or 'none'}")


SYSLOG_PORT = 5514
MIRROR_SIZES = (100, 3000, 8000)  # bytes; the last two are fragmented over the lab's MTU


def mirror(lab: Lab, workdir: Path) -> None:
    """mode = mirror: `logger` sends three messages to the VIP, and each of
    two receivers gets every one, whole, from the client's address."""
    v4 = lab.addresses(4)
    conf = workdir / "mirror.conf"
    conf.write_text(f"[Service syslog]\nmode = mirror\naddress = {v4.vip}\n"
                    f"ports = {SYSLOG_PORT}\nservers = {v4.real_servers[0]} {v4.real_servers[1]}\n")
    say(f"10. a UDP tee: {conf} has mode = mirror, servers rs0 rs1 (rs0 the primary)")
    receivers = []
    for ns in lab.server_ns[:2]:
        with netns(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", SYSLOG_PORT))
        sock.settimeout(5.0)
        receivers.append(sock)
    lb = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], workdir)
    try:
        lb.wait_ready()
        messages = [(f"demo-{size} " + "x" * size)[:size].encode() for size in MIRROR_SIZES]
        for message in messages:
            in_ns(lab.client_ns, "logger", "-d", "-n", str(v4.vip), "-P", str(SYSLOG_PORT),
                  "--size", "9000", "-t", "demo", message.decode())
        say(f"  $ logger -d -n {v4.vip} -P {SYSLOG_PORT} ... (messages of "
            f"{', '.join(map(str, MIRROR_SIZES))} bytes)")
        for name, sock in zip(lab.server_names, receivers):
            got = []
            try:
                for _ in MIRROR_SIZES:
                    data, peer = sock.recvfrom(65535)
                    # the message after logger's RFC 5424 header, whole or not
                    size = next((len(m) for m in messages if data.endswith(m)), None)
                    got.append(f"{size} B whole" if size else f"{len(data)} B CUT")
                    got[-1] += f" from {peer[0]}"
            except TimeoutError:
                got.append("(nothing more)")
            say(f"  {name} received: {', '.join(got)}")
        code = lb.stop()
    finally:
        lb.close()
        for sock in receivers:
            sock.close()
    say(f"  each copy made in the kernel (XDP devmap broadcast); SIGTERM: sbulb exited "
        f"with {code}")


FLOWS_PORT = 2055
FLOWS = 5000


def telemetry(lab: Lab, workdir: Path) -> None:
    """mode = telemetry: softflowd exports 5000 flows (NetFlow v9) to the
    VIP, and three nfcapd collectors decode them all between them."""
    v4 = lab.addresses(4)
    conf = workdir / "telemetry.conf"
    conf.write_text(f"[Service flows]\nmode = telemetry\naddress = {v4.vip}\n"
                    f"ports = {FLOWS_PORT}\n"
                    f"servers = {' '.join(str(a) for a in v4.real_servers[:3])}\n")
    say(f"11. NetFlow: {conf} has mode = telemetry, servers rs0 rs1 rs2 (each an nfcapd)")
    capture = workdir / "flows.pcap"
    netflow_lab.write_capture(capture, FLOWS)
    collectors = [netflow_lab.Collector(ns, str(a), FLOWS_PORT, workdir / f"nfcapd-{name}")
                  for ns, a, name in zip(lab.server_ns, v4.real_servers, lab.server_names[:3])]
    lb = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], workdir)
    try:
        lb.wait_ready()
        exported = netflow_lab.run_softflowd(lab.client_ns, capture, str(v4.vip), FLOWS_PORT, 9)
        say(f"  $ softflowd -r flows.pcap -n {v4.vip}:{FLOWS_PORT} -v 9: {exported} flows "
            "exported, templates in every 16th datagram")
        decoded = [c.flows() for c in collectors]
        say("  " + ", ".join(f"{name} decoded {n}" for name, n in zip(lab.server_names, decoded))
            + f": {sum(decoded)} of {exported}")
        code = lb.stop()
    finally:
        lb.close()
        for c in collectors:
            c.close()
    say("  datagrams spread per packet; those with templates copied to all three (cut after "
        f"the templates but for one), so each collector decodes its share; SIGTERM: sbulb "
        f"exited with {code}")


def services_text(lab: Lab, telemetry: tuple[int, ...]) -> str:
    v4, v6 = lab.addresses(4), lab.addresses(6)
    return (
        f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
        f"servers = {v4.real_servers[0]} {v4.real_servers[1]}\n\n"
        f"[Service telemetry]\naddress = {v4.vip}\nports = {SECOND_PORT}\n"
        f"servers = {' '.join(str(v4.real_servers[i]) for i in telemetry)}\n\n"
        f"[Service coap6]\naddress = {v6.vip}\nports = {PORT}\n"
        f"servers = {v6.real_servers[2]} {v6.real_servers[3]}\n"
    )


def services(lab: Lab, workdir: Path) -> None:
    """Several services in one sbulb: a VIP with two, an IPv6 one beside."""
    v4, v6 = lab.addresses(4), lab.addresses(6)
    conf = workdir / "services.conf"
    conf.write_text(services_text(lab, (2, 3)))
    say(f"8. several services in one sbulb, {conf}:")
    for line in conf.read_text().splitlines():
        say(f"  {line}")
    args = [*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"]
    say(f"$ ip netns exec {lab.lb_ns} python3 -m sbulb {shlex.join(args)}")
    lb = lab.start_sbulb(args, workdir)
    say(f"  READY=1: {lb.wait_ready().partition('STATUS=')[2]}")
    clients = [lab.client(4, index=i % 2) for i in range(4)]
    coap = [c.exchange(v4.vip, PORT, b"coap").server for c in clients]
    telemetry = [c.exchange(v4.vip, SECOND_PORT, b"telemetry").server for c in clients]
    say(f"  the same 4 clients ip:port, to {endpoint(v4.vip, PORT)}: {' '.join(coap)}; "
        f"to {endpoint(v4.vip, SECOND_PORT)}: {' '.join(telemetry)}")
    six = [lab.client(6).exchange(v6.vip, PORT, b"coap6").server for _ in range(2)]
    say(f"  and to {endpoint(v6.vip, PORT)}: {' '.join(six)}")
    conf.write_text(services_text(lab, (3,)))
    lb.notify.wait_for("RELOADING=1", 10)
    lb.notify.wait_for("READY=1", 10)
    again = [c.exchange(v4.vip, PORT, b"coap again").server for c in clients]
    moved = [c.exchange(v4.vip, SECOND_PORT, b"telemetry again").server for c in clients]
    stayed = sum(a == b for a, b in zip(again, coap))
    say(f"  rs2 removed from telemetry: coap's clients stay ({stayed}/4 on their server), "
        f"telemetry's go to: {' '.join(moved)}")
    code = lb.stop()
    say(f"  SIGTERM: sbulb exited with {code}, XDP programs left: {lab.xdp_programs() or 'none'}")


def main() -> int:
    say("sbulb demo: an XDP UDP load balancer, in a lab of network namespaces")
    say()
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="sbulb-demo-") as tmp, Lab(servers=4, say=say) as lab:
            say("  clients -> router -> load balancer (one interface); the router sends the")
            say("  real servers' answers to clients through the load balancer")
            say()
            story(lab, Path(tmp))
            say()
            say("tearing the lab down")
    except (LabError, TimeoutError) as e:
        say(f"demo failed: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted: lab torn down")
        return 130
    say(f"done in {time.monotonic() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
