"""sd_notify(3) without blocking the daemon.

systemd reads $NOTIFY_SOCKET promptly, but a datagram socket whose reader
stalls (systemd busy, a test harness that is not reading) fills up, and a
blocking send would then stop the main loop: no reloads, no health, no
control socket. So: STATUS= and WATCHDOG=1 are sent without waiting (when
the queue is full they are dropped, counted and logged once); READY=,
RELOADING= and STOPPING=, which change what systemd does, wait for at most
STATE_TIMEOUT. A no-op when NOTIFY_SOCKET is not set.

pending_job() asks systemd which job it runs for sbulb's unit: on SIGTERM,
a restart and a stop look alike otherwise.
"""

from __future__ import annotations

import logging
import os
import subprocess
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)

STATE_TIMEOUT = 1.0  # seconds a READY=/RELOADING=/STOPPING= message may wait
_STATES = ("READY=", "RELOADING=", "STOPPING=")


def notify_address(environ: Mapping[str, str]) -> Optional[str]:
    """The socket address NOTIFY_SOCKET names: a path, or "@name" for the
    abstract namespace; None when unset or of a kind we do not speak (vsock)."""
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.address = notify_address(environ)
        self.dropped = 0  # messages not sent (queue full, or socket gone)
        self._sock: Optional[socket.socket] = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, message: str) -> None:
        if self._sock is None or self.address is None:
            return
        waits = any(line.startswith(_STATES) for line in message.splitlines())
        self._sock.settimeout(STATE_TIMEOUT if waits else 0.0)
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as e:  # BlockingIOError, TimeoutError, ECONNREFUSED, ENOENT
            self.dropped += 1
            if self.dropped == 1 or waits:
                log.warning("notify.dropped message=%s reason=%s dropped=%d (is the service "
                            "manager reading NOTIFY_SOCKET?)", message.split("=", 1)[0],
                            e.__class__.__name__, self.dropped)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


UNIT_ENV = "SBULB_UNIT"  # the units set it to their own name (%n)
JOB_TIMEOUT = 2.0  # seconds systemctl may take to answer


def pending_job(unit: str | None = None) -> str | None:
    """The type of the job systemd runs for our unit right now ("restart"
    while `systemctl restart` stops us, "stop" for `systemctl stop`), or
    None: not under one of sbulb's units, no job, or systemctl did not
    answer in time (then sbulb stops as always: detached)."""
    unit = unit or os.environ.get(UNIT_ENV)
    if not unit:
        return None
    try:
        listed = subprocess.run(["systemctl", "list-jobs", "--no-legend", "--no-pager", unit],
                                capture_output=True, text=True, timeout=JOB_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("notify.jobs_unknown unit=%s error=%s", unit, e)
        return None
    for line in listed.stdout.splitlines():
        fields = line.split()  # JOB UNIT TYPE STATE
        if len(fields) >= 3 and fields[1] == unit:
            return fields[2]
    return None
