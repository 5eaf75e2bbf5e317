"""Several services in one sbulb, end to end through the lab: the real
`python3 -m sbulb` with a file of [Service NAME] sections, real sockets,
sbulbctl. And the upgrade: associations pinned by the previous release's
layout (one virtual server, no service in the key) are kept."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from sbulb.config import IPAddress
from sbulb.dataplane import (
    ASSOC_PIN,
    BPF_MAP_TYPE_LRU_HASH,
    LEGACY_ASSOC_PIN,
    addr_to_bytes,
    libbpf,
    pin_dir,
)
from sbulb.lab import PORT, SECOND_PORT, Lab, LabError, SbulbProcess, in_ns, netns, xdp_programs
from tests.conftest import require_root
from tests.proc import REPO, ctl_json, sbulbctl, wait_until

RELOAD = 10.0
ip_of = ipaddress.ip_address


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(servers=4) as built:
        yield built


def services_file(lab: Lab, path: Path, other: tuple[int, ...] = (2, 3)) -> None:
    """coap (IPv4 VIP, port 5683: rs0 rs1), other (same VIP, port 5684: the
    given servers), coap6 (IPv6 VIP, 5683: rs0 rs1 weight 1:2)."""
    v4, v6 = lab.v4, lab.v6
    text = (
        f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
        f"servers = {v4.real_servers[0]} {v4.real_servers[1]}\n\n"
        f"[Service other]\naddress = {v4.vip}\nports = {SECOND_PORT}\n"
        f"servers = {' '.join(str(v4.real_servers[i]) for i in other)}\n\n"
        f"[Service coap6]\naddress = {v6.vip}\nports = {PORT}\n"
        f"servers = {v6.real_servers[0]} {v6.real_servers[1]}=2\n"
    )
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.fixture
def balancer(lab: Lab, tmp_path: Path) -> Iterator[SbulbProcess]:
    conf = tmp_path / "services.conf"
    services_file(lab, conf)
    lab.forget_associations()
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], tmp_path)
    process.config = conf  # type: ignore[attr-defined]
    process.wait_ready()
    yield process
    process.close()


def test_each_service_balances_its_own_pool(lab: Lab, balancer: SbulbProcess) -> None:
    v4, v6 = lab.v4, lab.v6
    clients = [lab.client(4, index=i % 2) for i in range(4)]
    # one client ip:port, a client of two services: a server from each pool
    assert [c.exchange(v4.vip, PORT, b"a").server for c in clients] == ["rs0", "rs1"] * 2
    assert [c.exchange(v4.vip, SECOND_PORT, b"b").server for c in clients] == ["rs2", "rs3"] * 2
    # and each keeps its server in each service
    for _ in range(3):
        assert [c.exchange(v4.vip, PORT, b"c").server for c in clients] == ["rs0", "rs1"] * 2
        assert [c.exchange(v4.vip, SECOND_PORT, b"d").server for c in clients] == [
            "rs2", "rs3"] * 2
    # the IPv6 service beside them, weights 1:2
    six = [lab.client(6).exchange(v6.vip, PORT, b"e").server for _ in range(6)]
    assert sorted(six) == ["rs0", "rs0", "rs1", "rs1", "rs1", "rs1"]
    # replies come from the VIP and the port the client sent to
    reply = clients[0].exchange(v4.vip, SECOND_PORT, b"f")
    assert (reply.source, reply.source_port) == (v4.vip, SECOND_PORT)

    status = ctl_json(lab, "status")
    by_name = {s["name"]: s for s in status["services"]}
    assert sorted(by_name) == ["coap", "coap6", "other"]
    assert by_name["coap"]["associations"] == 4 and by_name["other"]["associations"] == 4
    assert by_name["coap6"]["associations"] == 6
    assert by_name["other"]["packets_to"] == 4 + 12 + 1
    assert [s["address"] for s in by_name["other"]["real_servers"]] == [
        str(v4.real_servers[2]), str(v4.real_servers[3])]
    one = ctl_json(lab, "status", "--service", "other")
    assert [s["name"] for s in one["services"]] == ["other"]
    assert ctl_json(lab, "associations", "count", "--service", "coap") == 4
    # a client of two services: get asks which one
    both = sbulbctl(lab, "associations", "get", f"{clients[0].address}:{clients[0].port}")
    assert both.returncode == 1 and "several services" in both.stderr
    got = sbulbctl(lab, "associations", "get", "--service", "other",
                   f"{clients[0].address}:{clients[0].port}")
    assert got.returncode == 0 and got.stdout.strip() == str(v4.real_servers[2])
    unknown = sbulbctl(lab, "status", "--service", "nope")
    assert unknown.returncode == 1 and "no service 'nope'" in unknown.stderr


def test_egress_from_a_server_of_one_service_to_a_client_of_another(
        lab: Lab, balancer: SbulbProcess) -> None:
    """rs2 (of `other`) may not speak to coap's client as coap: it speaks
    from its own port, 5684, so it is `other`'s server, and the client
    gets it from the VIP:5684 (a server-initiated association)."""
    v4 = lab.v4
    client = lab.client(4)
    assert client.exchange(v4.vip, PORT, b"coap").server == "rs0"
    lab.service("rs2").send(4, SECOND_PORT, client.address, client.port, b"first")
    reply = client.receive(timeout=5)
    assert reply is not None and reply.server == "rs2"
    assert (reply.source, reply.source_port) == (v4.vip, SECOND_PORT)
    # rs3, also of `other`, is not this client's server there: dropped
    lab.service("rs3").send(4, SECOND_PORT, client.address, client.port, b"second")
    assert client.receive(timeout=1.0) is None
    # the coap association is untouched
    assert client.exchange(v4.vip, PORT, b"again").server == "rs0"


def test_reloading_one_service_moves_and_loses_nothing_of_another(
        lab: Lab, balancer: SbulbProcess) -> None:
    """`other` changes its pool while coap's clients send: every coap
    datagram is answered, by the server it had before."""
    v4 = lab.v4
    coap = [lab.client(4, index=i % 2) for i in range(6)]
    before = [c.exchange(v4.vip, PORT, b"x").server for c in coap]
    moved = lab.client(4)
    assert moved.exchange(v4.vip, SECOND_PORT, b"y").server == "rs2"

    answered: list[tuple[int, str]] = []
    lost: list[int] = []
    stop = threading.Event()
    progress = threading.Condition()

    def traffic() -> None:
        n = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and n < 20000 and time.monotonic() < deadline:  # bounded
            i = n % len(coap)
            coap[i].send(v4.vip, PORT, b"n%d" % n)
            reply = coap[i].receive(timeout=1.0)
            with progress:
                if reply is None or reply.payload != b"n%d" % n:
                    lost.append(n)
                else:
                    answered.append((i, reply.server))
                progress.notify_all()
            n += 1

    def answered_at_least(count: int) -> None:
        with progress:
            assert progress.wait_for(lambda: len(answered) >= count, timeout=20), (answered, lost)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        answered_at_least(50)
        services_file(lab, balancer.config, other=(3,))  # type: ignore[attr-defined]
        balancer.notify.wait_for("RELOADING=1", RELOAD)
        ready = balancer.notify.wait_for("READY=1", RELOAD)
        assert sender.is_alive(), "the traffic ended before the reload did"
        with progress:
            count = len(answered)
        answered_at_least(count + 50)
    finally:
        stop.set()
        sender.join(timeout=30)
    assert "rejected" not in ready
    assert lost == [] and len(answered) >= 100
    assert all(server == before[i] for i, server in answered)
    # rs2 left `other`: its client picks anew there, from rs3
    assert moved.exchange(v4.vip, SECOND_PORT, b"z").server == "rs3"
    assert "config.applied" in balancer.stderr and "service=other" in balancer.stderr


def test_a_broken_services_file_keeps_every_service(
        lab: Lab, balancer: SbulbProcess) -> None:
    v4 = lab.v4
    client = lab.client(4)
    assert client.exchange(v4.vip, SECOND_PORT, b"1").server == "rs2"
    conf: Path = balancer.config  # type: ignore[attr-defined]
    good = conf.read_text()
    conf.write_text(good + f"\n[Service dup]\naddress = {v4.vip}\nports = {PORT}\n"
                    f"servers = {v4.real_servers[3]}\n")
    balancer.notify.wait_for("RELOADING=1", RELOAD)
    assert "(last reload rejected)" in balancer.notify.wait_for("READY=1", RELOAD)
    errors = [line for line in balancer.stderr.splitlines() if "config.rejected" in line]
    assert len(errors) == 1 and "[Service dup]" in errors[0] and str(conf) in errors[0]
    assert client.exchange(v4.vip, SECOND_PORT, b"2").server == "rs2"
    assert ctl_json(lab, "status")["last_reload_ok"] is False


# ---- the upgrade from the previous layout


def make_v1_pin(path: Path, entries: dict[tuple[IPAddress, int], IPAddress]) -> None:
    """The previous release's association map, as it pinned it: an LRU
    hash, key struct sbulb_assoc_key {addr client; be16 port; u16 pad}, value
    struct sbulb_assoc {addr server}."""
    lib = libbpf()
    fd = lib.bpf_map_create(BPF_MAP_TYPE_LRU_HASH, b"sbulb_assoc", 20, 16, 4096, None)
    assert fd >= 0, ct.get_errno()
    try:
        for (client, port), server in entries.items():
            key = ct.create_string_buffer(addr_to_bytes(client) + port.to_bytes(2, "big")
                                          + b"\0\0", 20)
            value = ct.create_string_buffer(addr_to_bytes(server), 16)
            assert lib.bpf_map_update_elem(fd, key, value, 0) == 0
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        assert lib.bpf_obj_pin(fd, str(path).encode()) == 0
    finally:
        os.close(fd)


PREVIOUS_RELEASE = "67bc86d"  # the last commit with the v1 association layout


def previous_release(directory: Path) -> Path | None:
    """The previous release's package, from this repository's history (None
    in a checkout without it)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "sbulb"],
                             capture_output=True)
    if archive.returncode != 0:
        return None
    directory.mkdir()
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def test_upgrade_keeps_the_clients_of_the_previous_layout(lab: Lab, tmp_path: Path) -> None:
    """The previous release runs and associates three clients; the new one
    starts on its pin: every client keeps its server (the clients come back
    in the other order, so a fresh round robin would give each another)."""
    v4 = lab.v4
    lab.forget_associations()
    with netns(lab.lb_ns):
        directory = pin_dir(lab.lb_interface)
    clients = [lab.client(4, index=i % 2) for i in range(3)]
    conf = tmp_path / "sbulb.conf"
    lab.write_config(conf, 4, [0, 1, 2])
    old_root = previous_release(tmp_path / "previous")
    if old_root is not None:
        old = lab.start_sbulb(lab.sbulb_args(4, conf, "-l", "INFO"), tmp_path,
                              env={"PYTHONPATH": str(old_root)})
        old.wait_ready()
        assert [c.exchange(v4.vip, PORT, b"old").server for c in clients] == ["rs0", "rs1", "rs2"]
        assert old.stop() == 0
    else:  # no history here: the same pin, made as the previous release made it
        make_v1_pin(directory / LEGACY_ASSOC_PIN, {
            (c.address, c.port): v4.real_servers[i] for i, c in enumerate(clients)})
    assert (directory / LEGACY_ASSOC_PIN).exists()
    process = lab.start_sbulb(lab.sbulb_args(4, conf, "-l", "INFO"), tmp_path)
    try:
        process.wait_ready()
        try:
            servers = [c.exchange(v4.vip, PORT, b"still").server for c in reversed(clients)]
        except LabError:
            raise AssertionError(process.stderr) from None
        assert servers == ["rs2", "rs1", "rs0"]  # 0 clients moved
        assert not (directory / LEGACY_ASSOC_PIN).exists() and (directory / ASSOC_PIN).exists()
        assert "pin.migrated" in process.stderr and "copied=3" in process.stderr
        # a restart keeps them again, now from the new pin
        assert process.stop() == 0
    finally:
        process.close()
    again = lab.start_sbulb(lab.sbulb_args(4, conf, "-l", "INFO"), tmp_path)
    try:
        again.wait_ready()
        assert [c.exchange(v4.vip, PORT, b"after").server for c in clients] == [
            "rs0", "rs1", "rs2"]
        assert "pin.migrated" not in again.stderr
    finally:
        again.close()


def test_upgrade_places_each_client_in_the_service_of_its_server(
        lab: Lab, tmp_path: Path) -> None:
    """A v1 pin (made as the previous release made it) read by a
    two-service file: a client of a server of `other` goes there, one of a
    server no pool holds any more picks anew in `default`."""
    v4 = lab.v4
    lab.forget_associations()
    with netns(lab.lb_ns):
        directory = pin_dir(lab.lb_interface)
    a, b, c = (lab.client(4, index=i % 2) for i in range(3))
    make_v1_pin(directory / LEGACY_ASSOC_PIN, {
        (a.address, a.port): v4.real_servers[1],
        (b.address, b.port): v4.real_servers[3],  # of `other` only
        (c.address, c.port): ip_of("10.77.99.9"),  # in no pool
    })
    conf = tmp_path / "sbulb.conf"
    conf.write_text(f"[Virtual Server]\naddress = {v4.vip}\nports = {PORT}\n\n"
                    f"[Real Servers]\n{v4.real_servers[0]}\n{v4.real_servers[1]}\n\n"
                    f"[Service other]\naddress = {v4.vip}\nports = {SECOND_PORT}\n"
                    f"servers = {v4.real_servers[2]} {v4.real_servers[3]}\n")
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], tmp_path)
    try:
        process.wait_ready()
        served = (a.exchange(v4.vip, PORT, b"1").server,
                  b.exchange(v4.vip, SECOND_PORT, b"2").server,
                  c.exchange(v4.vip, PORT, b"3").server)
        assert "copied=3" in process.stderr
    finally:
        process.close()
    assert served == ("rs1", "rs3", "rs0")  # c's server is in no pool: it picked anew
    # a migration cut short leaves both pins: the next start copies what is
    # missing, keeps what is there, and removes the old pin
    d = lab.client(4)
    make_v1_pin(directory / LEGACY_ASSOC_PIN, {(a.address, a.port): v4.real_servers[0],
                                               (d.address, d.port): v4.real_servers[1]})
    again = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], tmp_path)
    try:
        again.wait_ready()
        served = (a.exchange(v4.vip, PORT, b"4").server, d.exchange(v4.vip, PORT, b"5").server)
        assert "copied=1" in again.stderr
    finally:
        again.close()
    assert served == ("rs1", "rs1")  # a kept its newer association; d was copied
    assert not (directory / LEGACY_ASSOC_PIN).exists()



def test_per_packet_mode_spreads_one_client_port(lab: Lab, tmp_path: Path) -> None:
    """mode = per-packet through the real CLI: one client ip:port, every
    datagram to the next server by weight (2:1:1), answers from the VIP,
    no association; sbulbctl shows the mode."""
    v4 = lab.v4
    lab.forget_associations()
    conf = tmp_path / "sbulb.conf"
    conf.write_text(f"[Service stats]\nmode = per-packet\naddress = {v4.vip}\n"
                    f"ports = {SECOND_PORT}\nservers = {v4.real_servers[0]}=2 "
                    f"{v4.real_servers[1]} {v4.real_servers[2]}\n")
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], tmp_path)
    try:
        process.wait_ready()
        client = lab.client(4)
        counts: dict[str, int] = {}
        for n in range(400):
            reply = client.exchange(v4.vip, SECOND_PORT, b"p%d" % n)
            assert (reply.source, reply.source_port) == (v4.vip, SECOND_PORT)
            counts[reply.server] = counts.get(reply.server, 0) + 1
        status = ctl_json(lab, "status")
        assert "mode=per-packet" in process.stderr
    finally:
        process.close()
    assert counts == {"rs0": 200, "rs1": 100, "rs2": 100}
    assert [s["mode"] for s in status["services"]] == ["per-packet"]
    assert status["associations"] == 0


def _received(lab: Lab) -> dict[str, int]:
    return {s.name: s.received for s in lab.services}


@pytest.mark.parametrize("family", [4, 6])
def test_mirror_mode_copies_every_datagram_to_every_target(lab: Lab, tmp_path: Path,
                                                           family: int) -> None:
    """mode = mirror through the real CLI: each datagram reaches every
    server of weight > 0, with the client's own source address; only the
    first server's (the primary's) answers reach the client, from the VIP;
    the others' are dropped and counted. A target no host answers for
    costs the others nothing."""
    net = lab.addresses(family)
    rs = net.real_servers
    ghost = ip_of("10.77.10.99" if family == 4 else "fd77:10::99")  # rs0's link, no host
    conf = tmp_path / "sbulb.conf"
    conf.write_text(f"[Service logs]\nmode = mirror\naddress = {net.vip}\n"
                    f"ports = {SECOND_PORT}\n"
                    f"servers = {rs[0]} {rs[1]} {ghost} {rs[2]} {rs[3]}=0\n")
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO"], tmp_path)
    try:
        process.wait_ready()
        client = lab.client(family)
        before = _received(lab)
        reply = client.exchange(net.vip, SECOND_PORT, b"first")  # paths and neighbours
        assert (reply.server, reply.source, reply.source_port) == ("rs0", net.vip, SECOND_PORT)
        for n in range(200):
            client.send(net.vip, SECOND_PORT, b"m%d" % n)
        targets = ("rs0", "rs1", "rs2")
        assert wait_until(lambda: all(_received(lab)[t] - before[t] >= 201 for t in targets))
        replies = [client.receive(2.0) for _ in range(200)]
        status = ctl_json(lab, "status")
        text = sbulbctl(lab, "status").stdout
        assert "mode=mirror" in process.stderr
    finally:
        process.close()
    counters = status["counters"]
    mirrored = counters["TX_MIRROR"]  # 201, or more if "first" was sent again
    after = _received(lab)
    assert {t: after[t] - before[t] for t in targets} == {t: mirrored for t in targets}
    assert after["rs3"] == before["rs3"]  # weight 0: no copy
    assert counters["MIRROR_SENT"] == 4 * mirrored  # the ghost's copies left too
    assert counters["DROP_MIRROR_REPLY"] == 2 * mirrored  # rs1's and rs2's answers
    assert counters["MIRROR_FAILED"] == 0
    assert all(r is not None and (r.server, r.source) == ("rs0", net.vip) for r in replies), (
        sum(r is None for r in replies), {(r.server, str(r.source)) for r in replies if r})
    assert sorted(r.payload for r in replies if r) == sorted(b"m%d" % n for n in range(200))
    assert [s["mode"] for s in status["services"]] == ["mirror"]
    servers = status["services"][0]["real_servers"]
    assert [s["primary"] for s in servers] == [True, False, False, False, False]
    assert [s["packets_to"] for s in servers] == [mirrored] * 4 + [0]
    assert all(s["copy_failures"] == 0 for s in servers)
    assert f"mirror (primary {rs[0]}, 0 copies not made)" in text


def test_mirror_mode_refuses_generic_xdp(lab: Lab, tmp_path: Path) -> None:
    """--check says how mirror copies are made. Generic XDP keeps no
    metadata across a redirect (mirror.h): a mirror service with
    --xdp-mode generic is refused at start, with one line, and nothing
    stays attached."""
    v4 = lab.v4
    conf = tmp_path / "sbulb.conf"
    conf.write_text(f"[Service logs]\nmode = mirror\naddress = {v4.vip}\n"
                    f"ports = {SECOND_PORT}\nservers = {v4.real_servers[0]}\n")
    checked = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.lb_ns}", "/usr/bin/python3", "-m", "sbulb",
         *lab.lb_interfaces, "-cfg", str(conf), "--check"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert ("sbulb: mirror service logs: copies made by an XDP devmap broadcast, out of eth0 "
            "(needs native XDP)") in checked.stdout
    refusal = "mirror service logs needs native XDP, and eth0 would run generic XDP"
    checked = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.lb_ns}", "/usr/bin/python3", "-m", "sbulb",
         *lab.lb_interfaces, "-cfg", str(conf), "--check", "--xdp-mode", "generic"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert checked.returncode != 0 and refusal in checked.stderr
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "--xdp-mode", "generic"],
                              tmp_path)
    try:
        assert process.wait() != 0
    finally:
        process.close()
    assert refusal in process.stderr
    assert lab.xdp_programs() == []
    # a killed sbulb left a generic XDP program: a restart with a mirror
    # service is refused before the swap, and the old program keeps serving
    plain = tmp_path / "plain.conf"
    plain.write_text(f"[Service logs]\naddress = {v4.vip}\nports = {SECOND_PORT}\n"
                     f"servers = {v4.real_servers[0]}\n")
    old = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(plain), "--xdp-mode", "generic"],
                          tmp_path)
    try:
        old.wait_ready()
        old.proc.kill()
        old.wait()
        left = xdp_programs(lab.lb_ns, lab.lb_interface)
        assert len(left) == 1
        restarted = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf)], tmp_path)
        try:
            assert restarted.wait() != 0
        finally:
            restarted.close()
        assert refusal in restarted.stderr
        assert xdp_programs(lab.lb_ns, lab.lb_interface) == left
    finally:
        old.close()
        in_ns(lab.lb_ns, "ip", "link", "set", "dev", lab.lb_interface, "xdpgeneric", "off")
    assert lab.xdp_programs() == []


def test_a_maglev_service_through_the_cli(lab: Lab, tmp_path: Path) -> None:
    """scheduler = maglev in the file: each new client gets the server the
    table built from the config alone names (what another balancer would
    pick), and sbulbctl status says so."""
    from sbulb import maglev

    v4 = lab.v4
    pool = v4.real_servers[:3]
    conf = tmp_path / "sbulb.conf"
    conf.write_text(f"[Service dtls]\naddress = {v4.vip}\nports = {PORT}\n"
                    f"servers = {' '.join(map(str, pool))}\nscheduler = maglev\n"
                    "maglev_table = 4093\nmaglev_seed = 42\n")
    table = maglev.table(tuple((a, 1) for a in pool), 4093, 42)
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf)], tmp_path)
    try:
        process.wait_ready()
        for _ in range(12):
            client = lab.client(4)
            want = pool[table[maglev.client_hash(client.address, client.port) % 4093]]
            assert client.exchange(v4.vip, PORT, b"hello").server == lab.server_name(4, want)
        text = sbulbctl(lab, "status").stdout
        status = ctl_json(lab, "status")
    finally:
        process.close()
    assert "sticky (maglev, 4093 entries, seed 42)" in text
    (dtls,) = status["services"]
    assert (dtls["scheduler"], dtls["maglev_table"], dtls["maglev_seed"]) == ("maglev", 4093, 42)


class Bird:
    """BIRD 2 in a namespace, including the file sbulb writes."""

    def __init__(self, ns: str, directory: Path, include: Path) -> None:
        self.socket = str(directory / "bird.ctl")
        include.write_text("# sbulb writes this\n")
        conf = directory / "bird.conf"
        conf.write_text(f'router id 10.77.0.1;\nprotocol device {{}}\ninclude "{include}";\n')
        self.ns = ns
        self.process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", "bird", "-f", "-c", str(conf), "-s",
             self.socket, "-P", str(directory / "bird.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not wait_until(lambda: self.birdc("show status").returncode == 0, 20.0):
            self.close()
            raise AssertionError("bird did not start")

    def birdc(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["birdc", "-s", self.socket, *command], capture_output=True,
                              text=True, timeout=10)

    def routes(self, protocol: str) -> str:
        return self.birdc("show", "route", "protocol", protocol).stdout

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()


def test_vips_are_announced_through_bird(lab: Lab, tmp_path: Path) -> None:
    """--announce-bird: BIRD (the real daemon) gets a static route for each
    VIP while sbulb is attached and a server of the VIP's services takes new
    clients; it loses it when they are all drained, and when sbulb stops.
    sbulbctl status says which."""
    v4, v6 = lab.v4, lab.v6
    include = tmp_path / "sbulb-vips.conf"
    bird = Bird(lab.lb_ns, tmp_path, include)
    conf = tmp_path / "sbulb.conf"

    def write(weight: int) -> None:
        conf.write_text(f"[Service coap]\naddress = {v4.vip}\nports = {PORT}\n"
                        f"servers = {v4.real_servers[0]}={weight}\n\n"
                        f"[Service six]\naddress = {v6.vip}\nports = {PORT}\n"
                        f"servers = {v6.real_servers[0]}\n")

    write(1)
    process = lab.start_sbulb([*lab.lb_interfaces, "-cfg", str(conf), "-l", "INFO",
                               "--announce-bird", str(include), "--bird-socket", bird.socket],
                              tmp_path)
    try:
        process.wait_ready()
        assert f"{v4.vip}/32" in bird.routes("sbulb_vips4")
        assert f"{v6.vip}/128" in bird.routes("sbulb_vips6")
        text = sbulbctl(lab, "status").stdout
        assert f"VIP {v4.vip}: announced (BIRD)" in text
        write(0)  # coap drained: its VIP goes, the IPv6 one stays
        process.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: f"{v4.vip}/32" not in bird.routes("sbulb_vips4"), 10.0)
        assert f"{v6.vip}/128" in bird.routes("sbulb_vips6")
        status = ctl_json(lab, "status")
        assert status["announcements"] == {str(v4.vip): "no server takes new clients",
                                           str(v6.vip): "announced"}
        # a restart in place keeps the announcement: no withdraw while the
        # next sbulb compiles (the old program serves on)
        process.proc.send_signal(signal.SIGUSR2)
        process.notify.wait_for("RELOADING=1", 10)
        # (not READY=1: the reload above sent one too)
        process.wait_log("event=start.ready", 120, count=2)
        assert f"withdrawn={v6.vip}" not in process.stderr
        assert f"{v6.vip}/128" in bird.routes("sbulb_vips6")
        assert process.stop() == 0
        assert f"{v6.vip}/128" not in bird.routes("sbulb_vips6")
        assert "route" not in include.read_text()
    finally:
        process.close()
        bird.close()
