"""The daemon's reload logic: config file changes (in place, by rename,
invalid, deleted), SIGHUP, and the sd_notify sequence around them.

The first tests use a recording stand-in for the data plane (fast, no
compile); the last one runs the real program attached to a veth pair and
checks the maps and the associations themselves."""

from __future__ import annotations

import ipaddress
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from sbulb.config import MAX_FILE_SIZE, Config, IPAddress, Limits, read_file
from sbulb.consts import XdpAction
from sbulb.dataplane import AttachedProgram, Dataplane, DataplaneError
from sbulb import state
from sbulb.service import Service
from tests.conftest import require_root
from tests.packets import NETS, PORT, udp
from tests.test_watcher import LogWaiter

ip = ipaddress.ip_address
WAIT = 10.0  # generous bound for anything but the 1-second reload promise
RELOAD_PROMISE = 1.0  # the issue: a valid change reaches the maps within 1 s


class Recorder:
    """A Notifier that keeps every sd_notify message."""

    def __init__(self) -> None:
        self.messages: queue.Queue[str] = queue.Queue()

    def notify(self, state: str) -> None:
        self.messages.put(state)

    def next(self, timeout: float = WAIT) -> str:
        return self.messages.get(timeout=timeout)

    def expect_reload(self, timeout: float = WAIT) -> str:
        """RELOADING=1 then READY=1; returns the READY message."""
        reloading = self.next(timeout)
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC="), reloading
        ready = self.next(timeout)
        assert ready.startswith("READY=1\nSTATUS="), ready
        return ready


class FakeDataplane:
    """Records what the service asks of the data plane: the member slots
    its map writes fill, as the real maps would hold them."""

    events = 0
    pin = None  # bpffs or not: not the concern of these tests

    def __init__(self) -> None:
        self.members: dict[int, IPAddress] = {}
        self.attached: list[str] = []
        self.closed = False
        self.mirror_interfaces: dict[int, str] = {}

    def expect_interfaces(self, names) -> None:
        pass

    def member_copy_failures(self) -> dict:
        return {}

    @property
    def servers(self) -> set[IPAddress]:
        return set(self.members.values())

    def load(self) -> None:
        pass

    def registered_services(self) -> dict[str, int]:
        return {}

    def migrate_legacy(self, service_of) -> int:
        return 0

    def apply(self, writes: Sequence[state.Write]) -> None:
        for w in writes:
            if isinstance(w, state.PutMember):
                self.members[w.slot] = w.address
            elif isinstance(w, state.ClearMember):
                del self.members[w.slot]

    def attached_programs(self, ifname: str) -> list[AttachedProgram]:
        return []

    def attach(self, ifname: str, mode: str = "auto") -> None:
        self.attached.append(ifname)

    def attached_modes(self) -> dict[str, str]:
        return {name: "native" for name in self.attached}

    def close(self, detach: bool = True) -> None:
        self.closed = True

    def poll_events(self) -> list:
        return []

    def take_templates(self) -> list:
        return []

    def templates_fd(self) -> None:
        return None

    def take_neighbour_misses(self) -> list:
        return []


def write_servers(path: Path, servers: Sequence[str], rename: bool = True) -> None:
    text = "[Real Servers]\n" + "".join(f"{s}\n" for s in servers)
    if rename:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(text)
        os.rename(tmp, path)
    else:
        with path.open("w") as f:
            f.write(text)


class Running:
    """A Service run in a thread (signals stay with pytest)."""

    def __init__(self, service: Service, recorder: Recorder) -> None:
        self.service, self.recorder = service, recorder
        self.result: list[object] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result.append(self.service.run(handle_signals=False))
        except BaseException as e:  # reported by stop()
            self.result.append(e)

    def __enter__(self) -> "Running":
        self.thread.start()
        ready = self.recorder.next(timeout=120)
        assert ready.startswith("READY=1\nSTATUS="), (ready, self.result)
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.request_stop()
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive()
        assert self.result == [0]
        assert self.recorder.next() == "STOPPING=1"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sbulb.conf"
    write_servers(path, ["10.0.0.2", "10.0.0.3"])
    return path


def make_config(conf: Path, interface: str = "lo") -> Config:
    return Config(
        interfaces=(interface,),
        virtual_server=ip("10.0.0.1"),
        ports=(PORT,),
        real_servers=read_file(conf).real_servers,
        config_file=conf,
        limits=Limits(max_real_servers=4),
    )


@pytest.fixture
def fake_service(conf: Path, tmp_path: Path) -> Iterator[tuple[Service, FakeDataplane, Recorder]]:
    require_root()  # interface and privilege checks are real
    fake, recorder = FakeDataplane(), Recorder()
    service = Service(make_config(conf), fake, recorder, lock_dir=tmp_path / "run")  # type: ignore[arg-type]
    yield service, fake, recorder
    assert fake.closed or not fake.attached


def test_ready_status_and_stopping(fake_service) -> None:
    service, fake, recorder = fake_service
    with Running(service, recorder):
        assert fake.attached == ["lo"]
        assert fake.servers == {ip("10.0.0.2"), ip("10.0.0.3")}
    assert fake.closed


def test_valid_changes_applied_within_a_second(fake_service, conf: Path) -> None:
    service, fake, recorder = fake_service
    with Running(service, recorder):
        write_servers(conf, ["10.0.0.3", "10.0.0.4"], rename=True)
        ready = recorder.expect_reload(timeout=RELOAD_PROMISE)
        assert fake.servers == {ip("10.0.0.3"), ip("10.0.0.4")}
        assert "over 2 real server(s)" in ready

        write_servers(conf, ["10.0.0.4"], rename=False)
        recorder.expect_reload(timeout=RELOAD_PROMISE)
        assert fake.servers == {ip("10.0.0.4")}


@pytest.mark.parametrize(
    "content,reason",
    [
        ("[Real Servers]\nnot-an-ip\n", "invalid real server address 'not-an-ip'"),
        ("[Real Servers\n", "no section headers"),
        ("[Real Servers]\n2001:db8::2\n", "is IPv6 but the virtual server"),
        ("[Real Servers]\n", "no real server"),
        ("[Real Servers]\n" + "".join(f"10.0.1.{i}\n" for i in range(1, 6)), "at most 4"),
        (None, "file not found (deleted?)"),
        ("[Real Servers]\n10.0.0.9\n" + "#" * MAX_FILE_SIZE + "\n", "larger than 1 MiB"),
    ],
)
def test_invalid_file_keeps_the_running_config(
    fake_service, conf: Path, caplog: pytest.LogCaptureFixture, content: str | None, reason: str
) -> None:
    service, fake, recorder = fake_service
    with Running(service, recorder):
        before = set(fake.servers)
        caplog.clear()
        if content is None:
            conf.unlink()
        else:
            conf.write_text(content)
        ready = recorder.expect_reload()
        assert "(last reload rejected)" in ready
        assert fake.servers == before
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
        message = errors[0].getMessage()
        assert str(conf) in message and reason in message and "\n" not in message
        # a good file later is taken
        write_servers(conf, ["10.0.0.9"])
        recorder.expect_reload()
        assert fake.servers == {ip("10.0.0.9")}


def test_failing_map_write_is_rolled_back(fake_service, conf: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A reload whose map writes fail part way (the kernel refuses one) is
    logged in one line and undone: the maps hold the running configuration
    again, not a mix; the daemon keeps running and takes the next one."""
    service, fake, recorder = fake_service
    with Running(service, recorder):
        before = set(fake.servers)
        real_apply = fake.apply
        calls: list[int] = []

        def broken(writes):
            calls.append(len(writes))
            if len(calls) == 1:  # the reload: fail after its members are written
                members = [w for w in writes if isinstance(w, state.PutMember)]
                assert members, writes
                real_apply(members)
                raise DataplaneError("cannot apply PutEndpoint(...): Cannot allocate memory")
            real_apply(writes)

        fake.apply = broken  # type: ignore[method-assign]
        write_servers(conf, ["10.0.0.7"])
        assert "(last reload rejected)" in recorder.expect_reload()
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "Cannot allocate memory" in errors[0]
        assert len(calls) == 2 and fake.servers == before
        fake.apply = real_apply  # type: ignore[method-assign]
        write_servers(conf, ["10.0.0.8"])
        recorder.expect_reload()
        assert fake.servers == {ip("10.0.0.8")}


def test_reload_request_rereads_the_file(fake_service, conf: Path) -> None:
    """SIGHUP's path: request_reload() re-reads even without a file event."""
    service, fake, recorder = fake_service
    with Running(service, recorder):
        service.request_reload()
        recorder.expect_reload()
        assert fake.servers == {ip("10.0.0.2"), ip("10.0.0.3")}


def test_directory_removed_and_created_again(tmp_path: Path) -> None:
    """A configuration tool replaces the file's directory: the daemon says it
    waits for the file, and a save made once the directory is back is
    applied (not only after a SIGHUP)."""
    require_root()
    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "sbulb.conf"
    write_servers(conf, ["10.0.0.2", "10.0.0.3"])
    fake, recorder = FakeDataplane(), Recorder()
    service = Service(make_config(conf), fake, recorder, lock_dir=tmp_path / "run")  # type: ignore[arg-type]
    with LogWaiter() as logs, Running(service, recorder):
        shutil.rmtree(etc)
        waiting = logs.wait("config.waiting")
        assert waiting.levelname == "WARNING"
        assert f"file={conf}" in waiting.getMessage()
        assert "reason=directory removed" in waiting.getMessage()
        assert "(last reload rejected)" in recorder.expect_reload()  # the file went too
        assert fake.servers == {ip("10.0.0.2"), ip("10.0.0.3")}
        etc.mkdir()
        logs.wait("config.watching_resumed")
        write_servers(conf, ["10.0.0.7"])
        ready = recorder.expect_reload()
        assert "rejected" not in ready
        assert fake.servers == {ip("10.0.0.7")}
        assert len(logs.messages("config.waiting")) == 1


def test_foreign_xdp_program_is_refused(conf: Path, tmp_path: Path) -> None:
    require_root()

    class Occupied(FakeDataplane):
        def attached_programs(self, ifname: str) -> list[AttachedProgram]:
            return [AttachedProgram(7, "firewall", 4)]

    from sbulb.service import StartError

    fake = Occupied()
    service = Service(make_config(conf), fake, Recorder(), lock_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(StartError, match="already runs XDP program 'firewall' .*will not replace"):
        service.run(handle_signals=False)
    assert fake.attached == [] and fake.closed


# ---- with the real program


@pytest.fixture
def veth() -> Iterator[str]:
    """A veth pair in this namespace, only as an attachment point (no traffic)."""
    require_root()
    name = f"sbr{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_real_maps_follow_the_file_and_keep_associations(conf: Path, tmp_path: Path, veth: str) -> None:
    net = NETS[4]
    dp = Dataplane(Limits(max_real_servers=4, max_associations=1024), forward="mac-swap")
    recorder = Recorder()
    write_servers(conf, net.real_servers[:3])
    service = Service(make_config(conf, veth), dp, recorder, lock_dir=tmp_path / "run")

    def send(port: int) -> IPAddress:
        result = dp.test_run(bytes(udp(net, net.clients[0], net.vip, port, PORT)))
        assert result.action == XdpAction.TX
        return dp.associations()[(ip(net.clients[0]), port)]

    with Running(service, recorder):
        assert dp.real_servers() == net.rs_ips(0, 1, 2)
        assert [send(port) for port in (1, 2, 3)] == net.rs_ips(0, 1, 2)

        started = time.monotonic()
        write_servers(conf, [net.real_servers[i] for i in (1, 2, 3)])
        recorder.expect_reload(timeout=RELOAD_PROMISE)
        assert time.monotonic() - started < RELOAD_PROMISE
        assert dp.real_servers() == net.rs_ips(1, 2, 3)
        # clients of servers that stay, stay; rs0's client moves on its next packet
        assert send(2) == ip(net.real_servers[1])
        assert send(3) == ip(net.real_servers[2])
        assert send(1) != ip(net.real_servers[0])

        conf.write_text("[Real Servers]\n10.0.0.300\n")
        assert "rejected" in recorder.expect_reload()
        assert dp.real_servers() == net.rs_ips(1, 2, 3)
        conf.unlink()
        assert "rejected" in recorder.expect_reload()
        assert dp.real_servers() == net.rs_ips(1, 2, 3)
        assert send(2) == ip(net.real_servers[1])

        programs = dp.attached_programs(veth)
        assert [p.name for p in programs] == ["sbulb_xdp"]
    assert dp.attached_programs(veth) == []
