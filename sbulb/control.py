"""The daemon's control socket, and the client side of it.

A Unix stream socket per interface, /run/sbulb/<interface>.<netns>.sock
(the netns inode keeps daemons of different network namespaces apart),
owner-only (0600: root). One request per connection, one JSON line each
way:

    -> {"command": "status", "args": {}}
    <- {"ok": true, "result": {...}}   or   {"ok": false, "error": "..."}

The server runs on threads of its own, never in the daemon's main loop: a
selector thread accepts and reads the requests of every client at once,
each with a deadline for the whole request (REQUEST_TIMEOUT from accept to
the end of the line, however slowly it trickles in), and hands each
complete request to a thread of its own that calls the handler and writes
the answer. At most MAX_PENDING clients may be sending their request and
MAX_CLIENTS be answered at once; any more get an error reply ("busy").
Every malformed request gets an error reply too.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/sbulb")
REQUEST_TIMEOUT = 2.0  # seconds from accept to the whole request line
REPLY_TIMEOUT = 10.0  # seconds a client has to take its answer
MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 8  # requests answered at once (each on a thread)
MAX_PENDING = 64  # connections still sending their request
CLOSE_TIMEOUT = 5.0  # seconds close() waits for requests being answered
CLIENT_TIMEOUT = 30.0  # seconds sbulbctl waits for an answer


class ControlError(Exception):
    """A control request failed. str() is one line for the operator."""


def netns_id() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def socket_path(interface: str, run_dir: Path = RUN_DIR) -> Path:
    return run_dir / f"{interface}.{netns_id()}.sock"


def daemons(run_dir: Path = RUN_DIR) -> dict[str, Path]:
    """interface -> control socket of the daemons of this network namespace.
    A socket whose interface lock nobody holds is left behind by a daemon
    that was killed (kill -9): not listed (a namespace made later may even
    have the same id)."""
    suffix = f".{netns_id()}.sock"
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return {}
    return {name[: -len(suffix)]: run_dir / name for name in names
            if name.endswith(suffix) and _held(run_dir / (name[: -len("sock")] + "lock"))}


def _held(lock: Path) -> bool:
    """Whether a daemon holds this lock file's flock (True when it cannot
    be told: no file, not readable)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # the daemon's exclusive lock
    except OSError:
        return True
    else:
        return False  # nobody holds it (our shared lock goes with the fd)
    finally:
        os.close(fd)


Handler = Callable[[str, dict[str, Any]], Any]


class AfterAnswer(NamedTuple):
    """A handler's result whose effect must wait until the answer is sent
    (sbulbctl restart: the daemon stops serving the socket right after)."""

    result: Any
    then: Callable[[], None]


class BadRequest(ControlError):
    """A request that cannot be parsed: answered, and logged once."""


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(command, args) of one request line, or BadRequest."""
    if not line.strip():
        raise BadRequest("empty request")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8") from None
    try:
        request = json.loads(text)
    except RecursionError:
        raise BadRequest("request is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer too long
        raise BadRequest(f"request is not JSON ({e})") from None
    if not isinstance(request, dict):
        raise BadRequest("request is not a JSON object")
    command = request.get("command")
    args = request.get("args")
    if not isinstance(command, str):
        raise BadRequest("request has no command (a string)")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest("request args is not a JSON object")
    return command, args


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response).encode() + b"\n"


def _error(message: str) -> bytes:
    return _encode({"ok": False, "error": message})


@dataclass
class _Pending:
    """A client still sending its request."""

    deadline: float
    data: bytearray = field(default_factory=bytearray)


class ControlServer:
    """The listening side: serves on threads of its own from creation until
    close(). The handler is called on those threads (several at once)."""

    def __init__(self, interfaces: tuple[str, ...], handler: Handler,
                 run_dir: Path = RUN_DIR, *, request_timeout: float = REQUEST_TIMEOUT,
                 reply_timeout: float = REPLY_TIMEOUT, max_clients: int = MAX_CLIENTS,
                 max_pending: int = MAX_PENDING) -> None:
        self.paths = [socket_path(name, run_dir) for name in interfaces]
        self._handler = handler
        self._request_timeout = request_timeout
        self._reply_timeout = reply_timeout
        self._max_clients = max_clients
        self._max_pending = max_pending
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        for path in self.paths:
            path.unlink(missing_ok=True)  # a killed daemon's (we hold the lock)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # created 0600: root only
            try:
                self._sock.bind(str(self.paths[0]))
            finally:
                os.umask(old_umask)
            for path in self.paths[1:]:
                os.link(self.paths[0], path)  # the same socket, under each name
            self._sock.listen(64)
            self._sock.setblocking(False)
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self._sock.close()
            for path in self.paths:
                path.unlink(missing_ok=True)
            raise
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, _Pending] = {}
        self._lock = threading.Lock()  # guards the two below
        self._answering: dict[socket.socket, threading.Thread] = {}
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="sbulb-control", daemon=True)
        self._thread.start()

    # -- the selector thread: accept, read requests, enforce deadlines

    def _serve(self) -> None:
        selector = self._selector
        selector.register(self._sock, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing:
                try:
                    self._turn()
                except Exception:  # a bug: say so, keep serving
                    log.exception("control.failed")
                    time.sleep(0.1)  # back off, do not spin on a lasting failure
        finally:
            for conn in list(self._pending):
                self._drop(conn)

    def _turn(self) -> None:
        timeout = None
        if self._pending:
            first = min(p.deadline for p in self._pending.values())
            timeout = max(0.0, first - time.monotonic())
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._sock:
                self._accept()
            elif key.fileobj == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            else:
                self._receive(key.fileobj)  # type: ignore[arg-type]
        now = time.monotonic()
        for conn, pending in list(self._pending.items()):
            if now >= pending.deadline:
                self._refuse(conn, f"no complete request within {self._request_timeout:g}s")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors: the next turn retries
                log.warning("control.accept_failed error=%s", e.strerror or e)
                time.sleep(0.1)
                return
            conn.setblocking(False)
            if len(self._pending) >= self._max_pending:
                self._refuse(conn, "busy: too many control clients, try again", pending=False)
                continue
            self._pending[conn] = _Pending(time.monotonic() + self._request_timeout)
            self._selector.register(conn, selectors.EVENT_READ)

    def _receive(self, conn: socket.socket) -> None:
        pending = self._pending.get(conn)
        if pending is None:
            return
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("control.receive_failed error=%s", e)
            self._drop(conn)
            return
        pending.data += chunk
        end = pending.data.find(b"\n")
        if end < 0 and chunk and len(pending.data) <= MAX_REQUEST:
            return  # more to come
        line = bytes(pending.data if end < 0 else pending.data[:end])
        if len(line) > MAX_REQUEST:
            self._refuse(conn, f"request too long (at most {MAX_REQUEST} bytes)")
            return
        self._forget(conn)
        try:
            command, args = parse_request(line)
        except BadRequest as e:
            # a client that connects and goes without a word (a probe): not worth a warning
            quiet = not chunk and not pending.data
            self._refuse(conn, str(e), pending=False,
                         level=logging.DEBUG if quiet else logging.WARNING)
            return
        self._dispatch(conn, command, args)

    def _dispatch(self, conn: socket.socket, command: str, args: dict[str, Any]) -> None:
        with self._lock:
            if self._closing:
                busy = "the daemon is stopping"
            elif len(self._answering) >= self._max_clients:
                busy = "busy: too many control requests at once, try again"
            else:
                busy = None
                thread = threading.Thread(target=self._answer, args=(conn, command, args),
                                          name="sbulb-control-request", daemon=True)
                self._answering[conn] = thread
        if busy is not None:
            self._refuse(conn, busy, pending=False)
            return
        try:
            thread.start()
        except RuntimeError:  # no more threads
            with self._lock:
                self._answering.pop(conn, None)
            self._refuse(conn, "busy: cannot start a thread, try again", pending=False)

    def _forget(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: socket.socket) -> None:
        self._forget(conn)
        conn.close()

    def _refuse(self, conn: socket.socket, message: str, pending: bool = True,
                level: int = logging.WARNING) -> None:
        """An error reply (best effort, never blocks) and close."""
        log.log(level, "control.refused reason=%s", message)
        if pending:
            self._forget(conn)
        try:
            conn.send(_error(message))  # a few bytes into an empty buffer
            conn.shutdown(socket.SHUT_WR)
            # what it sent and we did not read would turn our close into a
            # reset, which may reach the client before our answer: read it
            for _ in range(16):
                if not conn.recv(65536):
                    break
        except OSError:  # BlockingIOError: nothing more to read now
            pass
        conn.close()

    # -- request threads: the handler, then the answer

    def _answer(self, conn: socket.socket, command: str, args: dict[str, Any]) -> None:
        after: Callable[[], None] | None = None
        try:
            try:
                result = self._handler(command, args)
                if isinstance(result, AfterAnswer):
                    result, after = result.result, result.then
                response = {"ok": True, "result": result}
            except ControlError as e:
                response = {"ok": False, "error": str(e)}
            except RecursionError:
                log.warning("control.refused command=%s reason=nested too deeply", command)
                response = {"ok": False, "error": "request is nested too deeply"}
            except Exception as e:  # a bug: say so, keep serving
                log.exception("control.failed command=%s", command)
                response = {"ok": False, "error": f"internal error: {e}"}
            try:
                payload = _encode(response)
            except (TypeError, ValueError) as e:
                log.error("control.failed command=%s reason=unencodable result: %s", command, e)
                payload = _error(f"internal error: {e}")
            conn.settimeout(self._reply_timeout)  # for the whole sendall
            conn.sendall(payload)
        except OSError as e:
            log.debug("control.reply_failed command=%s error=%s", command, e)
        finally:
            with self._lock:
                self._answering.pop(conn, None)
                conn.close()
            if after is not None:
                after()

    # -- stop

    def close(self) -> None:
        """Stop serving: refuse new clients, cut those still sending or
        waiting for their answer, wait (a bounded time) for the handler
        calls in progress. Then the handler's resources may go."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._closing = True
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass
        self._thread.join(timeout=CLOSE_TIMEOUT)
        self._sock.close()
        for path in self.paths:
            path.unlink(missing_ok=True)
        with self._lock:
            threads = list(self._answering.values())
            for conn in self._answering:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # a slow reader: its sendall ends now
                except OSError:
                    pass
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("control.close: a request is still being answered")
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def request(path: Path, command: str, args: dict[str, Any] | None = None,
            timeout: float = CLIENT_TIMEOUT) -> Any:
    """Send one request to a daemon; its result, or ControlError (one line,
    whatever went wrong). `timeout`: for the whole exchange."""
    deadline = time.monotonic() + timeout
    late = ControlError(f"the daemon did not answer within {timeout:g}s ({path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no sbulb daemon is running (no control socket {path})") from None
        except ConnectionRefusedError:
            raise ControlError(f"no sbulb daemon answers on {path} (a stale socket?)") from None
        except PermissionError:
            raise ControlError(f"not allowed to use {path}: run sbulbctl as root") from None
        except TimeoutError:
            raise late from None
        except OSError as e:
            raise ControlError(f"cannot reach the daemon on {path}: {e.strerror or e}") from None
        data = bytearray()
        try:
            try:
                sock.sendall(json.dumps({"command": command, "args": args or {}}).encode()
                             + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered early (busy?) and closed: read that answer
            while not data.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise late
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise late from None
        except ConnectionResetError:
            pass  # what came before the reset, if anything, is the answer
        except OSError as e:
            raise ControlError(f"talking to the daemon on {path}: {e.strerror or e}") from None
    if not data.strip():
        raise ControlError(f"the daemon closed the connection without an answer ({path})")
    try:
        response = json.loads(data.decode())
    except (ValueError, RecursionError):
        response = None
    if not isinstance(response, dict):
        raise ControlError(f"the daemon's answer is not one it would give ({path})")
    if not response.get("ok"):
        raise ControlError(str(response.get("error") or "request failed"))
    return response.get("result")
