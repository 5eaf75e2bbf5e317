"""The control socket (sbulb/control.py) with stand-in handlers, the
daemon's answers to malformed requests (Service.handle_control over a
stand-in data plane), and sbulbctl against stand-in daemons. No root, no
BPF: each server lives in a temporary run directory."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from sbulb import control, ctl
from sbulb.config import Config, Limits, RealServer
from sbulb.control import REQUEST_TIMEOUT, ControlError, ControlServer
from sbulb.dataplane import Traffic
from sbulb.service import Service
from tests.proc import REPO

ip = ipaddress.ip_address
BOUND = 10.0  # generous bound for what must merely end
PROMPT = 1.0  # what "at once" means here: well under the 2 s request deadline


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where control sockets live, for ControlServer and sbulbctl alike."""
    directory = tmp_path / "run"
    monkeypatch.setattr(control, "RUN_DIR", directory)
    return directory


class Handler:
    """A stand-in for Service.handle_control: records, answers, can block."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.result: Any = {"hello": "world"}

    def __call__(self, command: str, args: dict) -> Any:
        self.calls.append((command, args))
        if command == "block":
            self.entered.release()
            assert self.gate.wait(BOUND)
            return "released"
        if command in ("status", "associations.list", "associations.count",
                       "associations.flush"):
            return self.result
        if command == "bug":
            raise KeyError("oops")
        raise ControlError(f"unknown command '{command}'")


@contextmanager
def serving(run_dir: Path, handler: Handler | None = None,
            **kw: Any) -> Iterator[tuple[ControlServer, Path]]:
    server = ControlServer(("sbt0",), handler or Handler(), run_dir, **kw)
    try:
        yield server, server.paths[0]
    finally:
        server.close()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.connect(str(path))
    return sock


def read_reply(sock: socket.socket) -> dict:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # the server closed with some of ours unread
            assert data, "a reset before any answer"
            break
        if not chunk:
            break
        data += chunk
    return json.loads(data)


def exchange(path: Path, raw: bytes) -> dict:
    """Send raw bytes (then end our side), return the answer."""
    with connect(path) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        return read_reply(sock)


# -- the server


def test_socket_is_owner_only_and_gone_after_close(run_dir: Path) -> None:
    with serving(run_dir) as (server, path):
        assert path == control.socket_path("sbt0", run_dir)
        assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600
        assert control.request(path, "status") == {"hello": "world"}
    assert not path.exists()


def test_a_slow_client_holds_nobody_and_gets_its_deadline(run_dir: Path) -> None:
    """A byte every half second: each recv is quick, the request never
    ends. Others are answered at once; the slow one is cut REQUEST_TIMEOUT
    after it connected, whatever it keeps sending."""
    with serving(run_dir) as (_, path):
        slow = connect(path)
        connected = time.monotonic()
        stop = threading.Event()

        def trickle() -> None:
            for byte in b'{"command": "status", "args": {}}\n':
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    return
                if stop.wait(0.5):  # the pace of a slow client, not a synchronisation
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            for _ in range(3):
                started = time.monotonic()
                assert control.request(path, "status") == {"hello": "world"}
                assert time.monotonic() - started < PROMPT
            reply = read_reply(slow)
            elapsed = time.monotonic() - connected
        finally:
            stop.set()
            sender.join(BOUND)
            slow.close()
        assert reply == {"ok": False,
                         "error": f"no complete request within {REQUEST_TIMEOUT:g}s"}
        assert REQUEST_TIMEOUT - 0.05 <= elapsed < REQUEST_TIMEOUT + PROMPT


def test_idle_clients_do_not_shut_others_out(run_dir: Path) -> None:
    with serving(run_dir) as (_, path):
        idle = [connect(path) for _ in range(20)]
        try:
            started = time.monotonic()
            assert control.request(path, "status") == {"hello": "world"}
            assert time.monotonic() - started < PROMPT
        finally:
            for sock in idle:
                sock.close()


def test_too_many_clients_are_told_busy(run_dir: Path) -> None:
    with serving(run_dir, max_pending=4) as (_, path):
        idle = [connect(path) for _ in range(4)]
        try:
            started = time.monotonic()
            with pytest.raises(ControlError, match="^busy: too many control clients"):
                control.request(path, "status")
            assert time.monotonic() - started < PROMPT
        finally:
            for sock in idle:
                sock.close()  # they leave without a word: their places are free
        deadline = time.monotonic() + BOUND
        while True:  # the server sees them go in its own time
            try:
                assert control.request(path, "status") == {"hello": "world"}
                break
            except ControlError:
                assert time.monotonic() < deadline


def test_requests_answered_at_once_are_bounded(run_dir: Path) -> None:
    handler = Handler()
    with serving(run_dir, handler, max_clients=2) as (_, path):
        results: list[Any] = []
        blocked = [threading.Thread(target=lambda: results.append(control.request(path, "block")))
                   for _ in range(2)]
        for thread in blocked:
            thread.start()
        try:
            for _ in blocked:
                assert handler.entered.acquire(timeout=BOUND)
            with pytest.raises(ControlError, match="^busy: too many control requests"):
                control.request(path, "status")
        finally:
            handler.gate.set()
            for thread in blocked:
                thread.join(BOUND)
        assert results == ["released", "released"]
        assert control.request(path, "status") == {"hello": "world"}


MALFORMED = [
    (b"\xff\xfe{}\n", "request is not UTF-8"),
    (b"status please\n", "request is not JSON"),
    (b"[1, 2]\n", "request is not a JSON object"),
    (b'"status"\n', "request is not a JSON object"),
    (b'{"args": {}}\n', "request has no command"),
    (b'{"command": 5}\n', "request has no command"),
    (b'{"command": "status", "args": [1]}\n', "request args is not a JSON object"),
    (b'{"command": "status", "args": "x"}\n', "request args is not a JSON object"),
    (b"\n", "empty request"),
    (b"", "empty request"),
    (b'{"command": "status"', "request is not JSON"),  # cut short, then EOF
    (b'{"command": "status", "args": {"limit": ' + b"9" * 5000 + b"}}\n",
     "request is not JSON"),
    (b"[" * 100000 + b"\n", "request too long"),
    (b"[" * 60000 + b"\n", "request is nested too deeply"),
    (b'{"command": "status", "args": {"a": ' + b"{\"b\": " * 10000 + b"\n",
     "request is nested too deeply"),
    (b'{"command": "nope"}\n', "unknown command 'nope'"),
    (b'{"command": "bug"}\n', "internal error: 'oops'"),
]


@pytest.mark.parametrize("raw,error", MALFORMED, ids=[e for _, e in MALFORMED])
def test_every_malformed_request_gets_an_error_reply(run_dir: Path, raw: bytes, error: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with serving(run_dir) as (_, path):
        with caplog.at_level(logging.DEBUG, logger="sbulb.control"):
            reply = exchange(path, raw)
            assert reply["ok"] is False and reply["error"].startswith(error), reply
            assert set(reply) == {"ok", "error"} and "\n" not in reply["error"]
            assert control.request(path, "status") == {"hello": "world"}  # still serving
    records = [r for r in caplog.records if r.name == "sbulb.control"]
    if error.startswith("internal error"):  # a bug in the handler: the one traceback
        assert [r.levelno for r in records] == [logging.ERROR]
        return
    assert all(r.exc_info is None for r in records)
    assert sum(r.levelno >= logging.WARNING for r in records) <= 1
    assert all(r.levelno <= logging.WARNING for r in records)


def test_close_does_not_wait_for_slow_clients(run_dir: Path) -> None:
    handler = Handler()
    handler.result = "x" * (32 * 1024 * 1024)  # more than any socket buffer holds
    server = ControlServer(("sbt0",), handler, run_dir)
    path = server.paths[0]
    sending = connect(path)  # a request begun, never ended
    sending.send(b'{"comm')
    reading = connect(path)  # a request made, its answer never read
    reading.sendall(b'{"command": "status"}\n')
    try:
        deadline = time.monotonic() + BOUND
        while not handler.calls:  # the answer is on its way
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < PROMPT
        assert not path.exists()
        assert not [t for t in threading.enumerate() if t.name.startswith("sbulb-control")]
    finally:
        server.close()
        sending.close()
        reading.close()


# -- the daemon's handler: mistyped arguments are refused, in one line


class StubDataplane:
    """What handle_control reads and deletes: associations of service 1."""

    events = 0

    def __init__(self) -> None:
        self.assoc = {
            (1, ip("10.0.0.9"), 40000): ip("10.0.0.2"),
            (1, ip("10.0.0.9"), 40001): ip("10.0.0.3"),
            (1, ip("10.0.0.8"), 40000): ip("10.0.0.2"),
        }

    def service_associations(self) -> dict:
        return dict(self.assoc)

    def association_counts(self) -> dict:
        counts: dict = {}
        for (i, _, _), server in self.assoc.items():
            counts[(i, server)] = counts.get((i, server), 0) + 1
        return counts

    def association(self, client: Any, port: int, service: int) -> Any:
        return self.assoc.get((service, client, port))

    def delete_association(self, client: Any, port: int, service: int) -> bool:
        return self.assoc.pop((service, client, port), None) is not None

    def member_traffic(self) -> dict:
        return {}

    def member_copy_failures(self) -> dict:
        return {}

    def service_traffic(self, ids: Any) -> dict:
        return {i: Traffic() for i in ids}

    def attached_modes(self) -> dict:
        return {"sbt0": "native"}

    def stats(self) -> dict:
        return {}


@pytest.fixture
def daemon(tmp_path: Path) -> tuple[Service, StubDataplane]:
    config = Config(interfaces=("lo",), virtual_server=ip("10.0.0.1"), ports=(5683,),
                    real_servers=(RealServer(ip("10.0.0.2")), RealServer(ip("10.0.0.3"))),
                    limits=Limits())
    dataplane = StubDataplane()
    service = Service(config, dataplane, notifier=None, lock_dir=tmp_path)  # type: ignore[arg-type]
    service.snapshot = dataclasses.replace(service.snapshot, ids={"default": 1})
    return service, dataplane


MISTYPED = [
    ("associations.list", {"limit": "abc"}, "limit must be a whole number, not 'abc'"),
    ("associations.list", {"limit": True}, "limit must be a whole number"),
    ("associations.list", {"limit": -1}, "limit must be a whole number"),
    ("associations.list", {"limit": 1.5}, "limit must be a whole number"),
    ("associations.list", {"limit": [1]}, "limit must be a whole number, not a JSON list"),
    ("associations.list", {"client": 5}, "client must be an IP address (a string), not 5"),
    ("associations.list", {"server": {"a": 1}}, "server must be an IP address"),
    ("associations.list", {"server": "10.0.0.x"}, "invalid server address"),
    ("associations.list", {"service": ["default"]}, "service must be a name"),
    ("associations.list", {"service": "nope"}, "no service 'nope' (services: default)"),
    ("associations.get", {"client": "10.0.0.9", "port": "x"}, "port must be a number"),
    ("associations.get", {"client": "10.0.0.9", "port": [1]}, "port must be a number"),
    ("associations.get", {"client": "10.0.0.9", "port": True}, "port must be a number"),
    ("associations.get", {"client": "10.0.0.9", "port": 70000}, "port 70000 is not between"),
    ("associations.get", {"client": "10.0.0.9"}, "a client port is required"),
    ("associations.delete", {"port": 40000}, "client is required"),
    ("associations.flush", {}, "server is required"),
    ("associations.flush", {"all": "yes"}, "all must be true or false"),
    ("associations.flush", {"all": False}, "server is required"),
    ("associations.flush", {"all": True, "server": "10.0.0.2"}, "flush one server's clients"),
    ("nope", {}, "unknown command 'nope'"),
]


@pytest.mark.parametrize("command,args,error", MISTYPED, ids=[e for _, _, e in MISTYPED])
def test_mistyped_arguments_are_refused(daemon, run_dir: Path, command: str, args: dict,
                                        error: str, caplog: pytest.LogCaptureFixture) -> None:
    service, dataplane = daemon
    with serving(run_dir, service.handle_control) as (_, path):  # type: ignore[arg-type]
        with caplog.at_level(logging.DEBUG):
            reply = exchange(path, json.dumps({"command": command, "args": args}).encode()
                             + b"\n")
    assert reply["ok"] is False and reply["error"].startswith(error), reply
    assert len(dataplane.assoc) == 3  # nothing deleted
    assert all(r.exc_info is None and r.levelno < logging.ERROR for r in caplog.records)


def test_flush_needs_a_server_or_all(daemon) -> None:
    service, dataplane = daemon
    with pytest.raises(ControlError, match="server is required"):
        service.handle_control("associations.flush", {})
    assert service.handle_control("associations.flush", {"server": "10.0.0.2"}) == 2
    assert list(dataplane.assoc) == [(1, ip("10.0.0.9"), 40001)]
    with pytest.raises(ControlError, match="no service 'coap'"):
        service.handle_control("associations.flush", {"all": True, "service": "coap"})
    assert service.handle_control("associations.flush",
                                  {"all": True, "service": "default"}) == 1
    assert dataplane.assoc == {}


def test_status_reads_one_snapshot(daemon) -> None:
    service, _ = daemon
    report = service.handle_control("status", {})
    assert report["associations"] == 3 and report["services"][0]["name"] == "default"


# -- sbulbctl against stand-in daemons


def sbulbctl(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """sbulbctl -i sbt0 ARGS, in this process: (exit code, stdout, stderr)."""
    try:
        code = ctl.main(["-i", "sbt0", *args])
    except SystemExit as e:  # usage errors
        code = e.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    return code, out, err


@contextmanager
def fake_daemon(run_dir: Path, answer: Any) -> Iterator[Path]:
    """A socket that accepts one client and answer(conn)s it; None: one
    that never even accepts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = control.socket_path("sbt0", run_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    thread = None
    if answer is not None:
        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                answer(conn)
        thread = threading.Thread(target=serve)
        thread.start()
    try:
        yield path
    finally:
        if thread is not None:
            thread.join(BOUND)
        listener.close()
        path.unlink(missing_ok=True)


def test_default_timeout_stays() -> None:
    assert ctl.build_parser().parse_args(["status"]).timeout == 30.0


def test_a_daemon_that_does_not_answer(run_dir: Path, capsys) -> None:
    with fake_daemon(run_dir, None):
        started = time.monotonic()
        code, out, err = sbulbctl(capsys, "--timeout", "0.5", "status")
        assert time.monotonic() - started < 0.5 + PROMPT
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "the daemon did not answer within 0.5s" in err


def test_a_daemon_that_answers_too_slowly(run_dir: Path, capsys) -> None:
    """The timeout covers the whole answer, not each piece of it."""
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        for byte in b'{"ok": true, "result": 1}\n':
            if stop.wait(0.2):
                return
            conn.send(bytes([byte]))

    with fake_daemon(run_dir, trickle):
        code, _, err = sbulbctl(capsys, "--timeout", "1", "associations", "count")
        stop.set()
    assert code == 1 and err.count("\n") == 1 and "did not answer within 1s" in err


@pytest.mark.parametrize("answer,error", [
    (lambda conn: None, "closed the connection without an answer"),
    (lambda conn: (conn.recv(4096), conn.sendall(b"\xff\xfe\n")), "answer is not one"),
    (lambda conn: (conn.recv(4096), conn.sendall(b"[1]\n")), "answer is not one"),
    (lambda conn: (conn.recv(4096), conn.sendall(b'{"ok": false, "error": "no"}\n')),
     "sbulbctl: error: no\n"),
    (lambda conn: (conn.recv(4096), conn.sendall(b'{"ok": true, "result": {"x": 1}}\n')),
     "the daemon's answer is not one this sbulbctl reads"),
])
def test_bad_answers_are_one_line(run_dir: Path, capsys, answer, error: str) -> None:
    with fake_daemon(run_dir, answer):
        code, out, err = sbulbctl(capsys, "status")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and error in err and "Traceback" not in err


def test_a_stale_socket(run_dir: Path, capsys) -> None:
    run_dir.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(control.socket_path("sbt0", run_dir)))
    code, _, err = sbulbctl(capsys, "status")
    assert code == 1 and err.count("\n") == 1 and "no sbulb daemon answers" in err


def test_an_error_reply(run_dir: Path, capsys) -> None:
    with serving(run_dir):
        code, out, err = sbulbctl(capsys, "associations", "get", "10.0.0.9:4000")
    assert (code, out) == (1, "")
    assert err == "sbulbctl: error: unknown command 'associations.get'\n"


def test_flush_by_server_as_before(run_dir: Path, capsys) -> None:
    handler = Handler()
    handler.result = 2
    with serving(run_dir, handler):
        assert sbulbctl(capsys, "associations", "flush", "--server", "10.0.0.4") == (
            0, "2 association(s) of 10.0.0.4 forgotten\n", "")
        assert sbulbctl(capsys, "associations", "flush", "--server", "10.0.0.4",
                        "--service", "coap")[0] == 0
        assert sbulbctl(capsys, "--service", "coap", "associations", "flush",
                        "--server", "10.0.0.4")[0] == 0
    assert handler.calls == [
        ("associations.flush", {"server": "10.0.0.4"}),
        ("associations.flush", {"service": "coap", "server": "10.0.0.4"}),
        ("associations.flush", {"service": "coap", "server": "10.0.0.4"}),
    ]


class Terminal:
    """stdin at a terminal, where the operator types `answer`."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self.answer


def test_flush_all_must_be_confirmed(run_dir: Path, capsys,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    handler = Handler()
    handler.result = 5
    with serving(run_dir, handler):
        # no filter, no --all: a usage error, as before
        code, _, err = sbulbctl(capsys, "associations", "flush")
        assert code == 2 and "one of the arguments --server --all is required" in err
        code, _, err = sbulbctl(capsys, "associations", "flush", "--all", "--server", "10.0.0.4")
        assert code == 2 and "not allowed with argument" in err
        # --all, and no terminal to ask: --yes or nothing
        monkeypatch.setattr(sys, "stdin", open(os.devnull))
        code, _, err = sbulbctl(capsys, "associations", "flush", "--all")
        assert code == 2 and "confirm with --yes" in err
        assert handler.calls == []
        assert sbulbctl(capsys, "associations", "flush", "--all", "--yes") == (
            0, "5 association(s) forgotten\n", "")
        assert sbulbctl(capsys, "associations", "flush", "--all", "-y", "-s", "coap")[0] == 0
        assert handler.calls == [("associations.flush", {"all": True}),
                                 ("associations.flush", {"service": "coap", "all": True})]
        # at a terminal: asked, with the count
        handler.calls.clear()
        monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
        code, out, err = sbulbctl(capsys, "associations", "flush", "--all")
        assert (code, out) == (1, "")
        assert err == ("forget all 5 association(s) of every service? [y/N] "
                       "sbulbctl: nothing flushed\n")
        assert handler.calls == [("associations.count", {})]
        monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
        code, out, _ = sbulbctl(capsys, "associations", "flush", "--all", "--service", "coap")
        assert (code, out) == (0, "5 association(s) forgotten\n")
        assert handler.calls[1:] == [("associations.count", {"service": "coap"}),
                                     ("associations.flush", {"service": "coap", "all": True})]


def big_status(servers: int) -> dict:
    return {
        "version": "0", "pid": 1, "interfaces": {"sbt0": "native"}, "forward": "fib",
        "config_file": None, "last_reload_ok": True, "associations": 0,
        "max_associations": 1, "counters": {},
        "services": [{
            "name": "default", "virtual_server": "10.0.0.1", "ports": [5683],
            "mode": "sticky", "associations": 0,
            "real_servers": [
                {"address": f"10.1.{i // 250}.{i % 250 + 1}", "weight": 1, "state": "active",
                 "associations": 0, "packets_to": 0, "bytes_to": 0, "packets_from": 0,
                 "bytes_from": 0}
                for i in range(servers)],
        }],
    }


CTL_IN = (  # sbulbctl's main() with this test's run directory
    "import sys; from pathlib import Path; import sbulb.control as c; "
    "c.RUN_DIR = Path(sys.argv[1]); from sbulb.ctl import main; sys.exit(main(sys.argv[2:]))"
)


@pytest.mark.parametrize("args", [["status"], ["status", "--json"],
                                  ["associations", "list"]])
def test_output_into_a_closed_pipe_ends_quietly(run_dir: Path, args: list[str]) -> None:
    """`sbulbctl status | head -1`: no traceback, the exit code of a
    command killed by SIGPIPE (as a shell shows it)."""
    handler = Handler()
    if args[0] == "status":
        handler.result = big_status(5000)  # far more than a pipe buffer holds
    else:
        handler.result = {"total": 20000, "associations": [
            {"service": "default", "client": f"10.2.{i // 250}.{i % 250 + 1}", "port": 40000,
             "server": "10.0.0.2"} for i in range(20000)]}
    with serving(run_dir, handler):
        proc = subprocess.Popen([sys.executable, "-c", CTL_IN, str(run_dir), "-i", "sbt0",
                                 *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline()
            proc.stdout.close()  # what head does after its first line
            code = proc.wait(timeout=BOUND)
            err = proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (code, err) == (ctl.EXIT_PIPE, "")
    assert ctl.EXIT_PIPE == 141


def test_a_killed_daemons_socket_is_not_listed(tmp_path: Path) -> None:
    """kill -9 leaves the control socket behind, but not the interface
    lock's flock: only the daemons that hold theirs are listed."""
    import fcntl

    for name in ("live0", "dead0", "old0"):
        (tmp_path / control.socket_path(name, tmp_path).name).touch()
    held = os.open(tmp_path / control.socket_path("live0", tmp_path).name.replace(
        ".sock", ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    (tmp_path / control.socket_path("dead0", tmp_path).name.replace(".sock", ".lock")).touch()
    try:
        # old0 has no lock file (an older sbulb's): listed, as before
        assert sorted(control.daemons(tmp_path)) == ["live0", "old0"]
    finally:
        os.close(held)
    assert sorted(control.daemons(tmp_path)) == ["old0"]


def test_an_effect_that_waits_for_the_answer(run_dir: Path) -> None:
    """sbulbctl restart: the daemon stops serving the socket right after
    it acts, so the act comes once the answer is out (AfterAnswer). Here
    the act waits for the client to have its answer: run before the
    answer, it would hold it back and the request would time out."""
    answered, acted = threading.Event(), threading.Event()

    def act() -> None:
        assert answered.wait(BOUND)
        acted.set()

    def handler(command: str, args: dict) -> object:
        return control.AfterAnswer({"pid": 1}, act)

    with serving(run_dir, handler) as (_, path):  # type: ignore[arg-type]
        assert control.request(path, "restart", {}, 2.0) == {"pid": 1}
        answered.set()
        assert acted.wait(BOUND)
