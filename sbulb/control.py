"""The daemon's control socket, and the client side of it.

A Unix stream socket per interface, /run/sbulb/<interface>.<netns>.sock
(the netns inode keeps daemons of different network namespaces apart),
owner-only (0600: root). One request per connection, one JSON line each
way:

    -> {"command": "status", "args": {}}
    <- {"ok": true, "result": {...}}   or   {"ok": false, "error": "..."}

The daemon serves requests in its main loop, like everything else that
touches the maps.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/sbulb")
REQUEST_TIMEOUT = 2.0  # seconds a client has to send its request
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """A control request failed. str() is one line for the operator."""


def netns_id() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def socket_path(interface: str, run_dir: Path = RUN_DIR) -> Path:
    return run_dir / f"{interface}.{netns_id()}.sock"


def daemons(run_dir: Path = RUN_DIR) -> dict[str, Path]:
    """interface -> control socket of the daemons of this network namespace."""
    suffix = f".{netns_id()}.sock"
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return {}
    return {name[: -len(suffix)]: run_dir / name for name in names if name.endswith(suffix)}


Handler = Callable[[str, dict[str, Any]], Any]


class ControlServer:
    """The listening side, for the daemon's main loop: fileno() to select on,
    serve_one() when it is readable."""

    def __init__(self, interfaces: tuple[str, ...], handler: Handler,
                 run_dir: Path = RUN_DIR) -> None:
        self.paths = [socket_path(name, run_dir) for name in interfaces]
        self._handler = handler
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        for path in self.paths:
            path.unlink(missing_ok=True)  # a killed daemon's (we hold the lock)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: root only
        try:
            self._sock.bind(str(self.paths[0]))
        finally:
            os.umask(old_umask)
        for path in self.paths[1:]:
            os.link(self.paths[0], path)  # the same socket, under each name
        self._sock.listen(8)
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def serve_one(self) -> None:
        """Accept and answer one request (never raises)."""
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return
        with conn:
            try:
                conn.settimeout(REQUEST_TIMEOUT)
                request = _read_line(conn)
                command = request.get("command")
                args = request.get("args") or {}
                if not isinstance(command, str) or not isinstance(args, dict):
                    raise ControlError("malformed request")
                response = {"ok": True, "result": self._handler(command, args)}
            except ControlError as e:
                response = {"ok": False, "error": str(e)}
            except (OSError, ValueError) as e:
                log.debug("control.bad_request error=%s", e)
                return
            except Exception as e:  # a bug: say so, keep serving
                log.exception("control.failed")
                response = {"ok": False, "error": f"internal error: {e}"}
            try:
                conn.sendall(json.dumps(response).encode() + b"\n")
            except OSError as e:
                log.debug("control.reply_failed error=%s", e)

    def close(self) -> None:
        self._sock.close()
        for path in self.paths:
            path.unlink(missing_ok=True)


def _read_line(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ControlError("request too long")
    request = json.loads(data.decode() or "{}")
    if not isinstance(request, dict):
        raise ControlError("malformed request")
    return request


def request(path: Path, command: str, args: dict[str, Any] | None = None,
            timeout: float = 30.0) -> Any:
    """Send one request to a daemon; its result, or ControlError."""
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
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        response = json.loads(data.decode())
    except ValueError:
        raise ControlError("the daemon gave no answer") from None
    if not response.get("ok"):
        raise ControlError(response.get("error", "request failed"))
    return response.get("result")
