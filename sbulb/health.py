"""Health checks for UDP real servers, as keepalived's UDP_CHECK does them.

Three layers, none of which touches the data path:

- parsing of the values an operator writes (durations, hex payloads, reply
  regexes, counts), each error a one-line ConfigError;
- the state machine (ServerHealth): verdicts in, UNKNOWN/UP/DOWN out, with
  keepalived's rise/fall hysteresis; pure, no I/O, no clock of its own;
- the Prober: one thread, one selector, a few shared UDP sockets (one per
  local address); it sends a probe every interval and turns what comes back
  (a reply, a reply that does not match, an ICMP error, nothing) into a
  Verdict.

The daemon owns the policy: it feeds verdicts to ServerHealth and changes the
desired state from the result. Like keepalived, a server whose health is not
known yet (UNKNOWN) takes traffic; `start_down` makes it wait for `rise`
successes instead.
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import itertools
import logging
import math
import re
import resource
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Mapping, NamedTuple, Optional

from sbulb.config import ConfigError, IPAddress

log = logging.getLogger(__name__)

MAX_DURATION = 3600.0  # seconds
MAX_COUNT = 100

# (service name, real server address)
Key = tuple[str, IPAddress]
Endpoint = tuple[IPAddress, int]

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?", re.IGNORECASE)
_HEX_RE = re.compile(r"[0-9A-Fa-f]*")
_WS_RE = re.compile(r"\s+")
_COUNT_RE = re.compile(r"[0-9]{1,4}")


# --- value parsing ----------------------------------------------------------

def parse_duration(text: str) -> float:
    """Seconds from "2s", "500ms", "1.5s" or "2" (seconds); 0 < d <= 3600 s."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"invalid duration '{text.strip()}' (examples: 2s, 500ms, 1.5)")
    value = float(m.group(1))
    if (m.group(2) or "s").lower() == "ms":
        value /= 1000.0
    if not value > 0:
        raise ConfigError(f"duration '{text.strip()}' must be greater than 0")
    if value > MAX_DURATION:
        raise ConfigError(f"duration '{text.strip()}' is longer than {MAX_DURATION:g}s")
    return value


def parse_hex(text: str) -> bytes:
    """Bytes from hex digits, "40 01 00 00" or "40010000"; empty -> b""."""
    digits = _WS_RE.sub("", text)
    if not _HEX_RE.fullmatch(digits):
        raise ConfigError(f"invalid hex payload '{text.strip()}' (example: 40 01 00 00)")
    if len(digits) % 2:
        raise ConfigError(f"hex payload '{text.strip()}' has an odd number of digits")
    return bytes.fromhex(digits)


def parse_expect(text: str) -> Optional[re.Pattern[bytes]]:
    """A regex matched (re.search) against a reply's bytes; empty -> None (any reply)."""
    if not text.strip():
        return None
    try:
        return re.compile(text.encode())
    except re.error as e:
        raise ConfigError(f"invalid reply regex '{text}': {e}") from None


def parse_count(text: str, name: str) -> int:
    """A count such as rise or fall: an integer from 1 to 100."""
    if not _COUNT_RE.fullmatch(text.strip()):
        raise ConfigError(f"{name} '{text.strip()}' is not a whole number")
    value = int(text.strip())
    if not 1 <= value <= MAX_COUNT:
        raise ConfigError(f"{name} {value} is out of range (1 to {MAX_COUNT})")
    return value


# --- what to check ----------------------------------------------------------

@dataclass(frozen=True)
class CheckSpec:
    """How to probe one real server: send `send` to `port` every `interval`,
    expect a reply (matching `expect`, if set) within `timeout`.

    Equal specs compare equal (compiled patterns compare by pattern and
    flags), which is how the Prober tells an unchanged target from a new one.
    """

    port: int
    send: bytes = b""
    expect: Optional[re.Pattern[bytes]] = None
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    start_down: bool = False

    def check(self) -> None:
        """ConfigError when the spec cannot work (the parsers check each value;
        this checks a spec built by hand and the values against each other)."""
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"check port {self.port} is out of range (1 to 65535)")
        for name, value in (("interval", self.interval), ("timeout", self.timeout)):
            if not (math.isfinite(value) and 0 < value <= MAX_DURATION):
                raise ConfigError(f"check {name} {value!r} is out of range "
                                  f"(above 0, at most {MAX_DURATION:g}s)")
        if self.timeout >= self.interval:
            # one probe at a time: its reply is awaited before the next one goes
            raise ConfigError(f"check timeout {self.timeout:g}s must be shorter than "
                              f"its interval {self.interval:g}s")
        for name, count in (("rise", self.rise), ("fall", self.fall)):
            if not 1 <= count <= MAX_COUNT:
                raise ConfigError(f"check {name} {count} is out of range (1 to {MAX_COUNT})")
        if len(self.send) > 65507:
            raise ConfigError(f"check payload of {len(self.send)} bytes does not fit a datagram")


# --- the state machine ------------------------------------------------------

class Health(str, Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


REASONS = ("ok", "timeout", "icmp", "mismatch", "error")


class Verdict(NamedTuple):
    """The outcome of one probe. rtt (seconds) is set for "ok" only.
    (A tuple: thousands are made a second.)"""

    ok: bool
    reason: str  # one of REASONS
    rtt: Optional[float] = None


@dataclass
class ServerHealth:
    """One real server's health as its verdicts come in.

    `reason` and `rtt` are those of the last verdict ("" and None before
    the first); `since` is when `state` last changed (or was created);
    `successes`/`failures` are consecutive, `probes`/`probe_failures` totals.
    """

    state: Health = Health.UNKNOWN
    since: float = 0.0
    reason: str = ""
    rtt: Optional[float] = None
    successes: int = 0
    failures: int = 0
    probes: int = 0
    probe_failures: int = 0

    @classmethod
    def initial(cls, spec: CheckSpec, now: float) -> ServerHealth:
        """UNKNOWN (takes traffic), or DOWN when the spec says start_down."""
        return cls(state=Health.DOWN if spec.start_down else Health.UNKNOWN, since=now)

    @property
    def takes_traffic(self) -> bool:
        return self.state != Health.DOWN

    def record(self, verdict: Verdict, now: float, spec: CheckSpec) -> bool:
        """Count one verdict; True when the state changed.

        An "icmp" verdict is a failure like a timeout, only earlier. rise and
        fall count consecutive verdicts, so a server that flaps faster than
        the thresholds keeps whatever state it had.
        """
        self.probes += 1
        self.reason = verdict.reason
        self.rtt = verdict.rtt
        if verdict.ok:
            self.successes += 1
            self.failures = 0
            new = Health.UP if self.successes >= spec.rise else self.state
        else:
            self.failures += 1
            self.successes = 0
            self.probe_failures += 1
            new = Health.DOWN if self.failures >= spec.fall else self.state
        if new == self.state:
            return False
        self.state = new
        self.since = now
        return True


# --- the prober -------------------------------------------------------------

# Linux values; Python's socket module does not export all of them.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

# What an ICMP destination-unreachable becomes (the error queue's ee_errno;
# also what a send to an unroutable destination raises).
_ICMP_ERRNOS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH))

FIRST_PROBE_SPREAD = 0.2  # seconds: new targets are first probed within this
# Timers fire up to this late, so that one wake-up sends every probe due
# within it (thousands of targets: tens of wake-ups a second, not thousands);
# a timeout is never shorter than configured.
TIMER_SLACK = 0.02
_MAX_DRAIN = 256  # datagrams read per drain: a flooding server cannot stall the loop
_FD_HEADROOM = 256  # descriptors left for the rest of the daemon
# a socket answers for thousands of targets: room for a few turns' replies
_RCVBUF = 4 << 20
_RECV_SIZE = 65535
_EE_ERRNO = struct.Struct("=I")  # struct sock_extended_err starts with ee_errno


def _reason_for(err: OSError) -> str:
    return "icmp" if err.errno in _ICMP_ERRNOS else "error"


class _Socket:
    """One unconnected UDP socket that probes many targets from one local
    endpoint. Replies are told apart by their source (server, port), so a
    socket has at most one target per source; a second target with the same
    source (two services checking one server's port) gets a socket of the
    next slot. ICMP errors arrive on the error queue with the destination
    of the probe they are about, which names the target."""

    __slots__ = ("sock", "slot", "endpoint", "targets")

    def __init__(self, sock: socket.socket, slot: tuple[int, str, int], endpoint: Endpoint) -> None:
        self.sock = sock
        self.slot = slot  # (family, local address, n)
        self.endpoint = endpoint  # the local (address, port)
        self.targets: dict[tuple[str, int], _Target] = {}  # by (server, port)


class _Target:
    """A target's schedule and socket. Touched under Prober._lock only."""

    __slots__ = ("key", "spec", "remote", "sock", "next_send", "sent_at",
                 "awaiting", "token", "removed")

    def __init__(self, key: Key, spec: CheckSpec) -> None:
        self.key = key
        self.spec = spec
        # (address, port) as recvfrom and the error queue spell the source
        self.remote = (str(key[1]), spec.port)
        self.sock: Optional[_Socket] = None
        self.next_send = 0.0
        self.sent_at = 0.0
        self.awaiting = False  # a probe is out; the timer is its deadline
        self.token = 0  # bumped on every reschedule: older heap entries are stale
        self.removed = False


class Prober:
    """Probes UDP targets from a thread of its own.

    on_verdicts([(key, verdict), ...]) is called from the prober thread, once
    per turn of its loop with that turn's verdicts (thousands of targets are
    a few calls a second, not thousands), under the prober's lock: it must be
    cheap (queue them). Holding the lock makes set_targets a barrier: once it
    returns, no verdict is delivered for a removed target, nor for an old
    spec of a changed one. on_verdicts may call set_targets itself (the lock
    is re-entrant).

    Probes leave from a few shared sockets (one per local address, unless
    two targets share a server and port), not one per target: with
    thousands of targets, a socket each cost four times the kernel time
    (a wake-up and a poll per reply) and as many descriptors.
    """

    def __init__(self, on_verdicts: Callable[[list[tuple[Key, Verdict]]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_verdicts = on_verdicts
        self._batch: list[tuple[Key, Verdict]] = []  # this turn's verdicts
        self._clock = clock
        self._lock = threading.RLock()
        self._selector = selectors.DefaultSelector()
        # the loop sleeps in select(); set_targets and stop write a byte here
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._targets: dict[Key, _Target] = {}
        self._sockets: dict[tuple[int, str, int], _Socket] = {}
        # a socket recreated after an error binds its predecessor's port again
        self._ports: dict[tuple[int, str, int], int] = {}
        self._timers: list[tuple[float, int, int, _Target]] = []  # (when, seq, token, t)
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._closed = False
        self._nofile_raised = False

    # -- public API --

    def set_targets(self, targets: Mapping[Key, CheckSpec]) -> None:
        """Probe exactly these targets from now on. A target whose spec is
        unchanged keeps its schedule; a new or changed one is first probed
        within min(interval, 0.2 s). Sockets no target uses any more are
        closed before this returns. Invalid specs raise ConfigError,
        changing nothing."""
        for key, spec in targets.items():
            if not (isinstance(key, tuple) and len(key) == 2
                    and isinstance(key[1], (ipaddress.IPv4Address, ipaddress.IPv6Address))):
                raise TypeError(f"target key {key!r} is not (service name, ip address)")
            spec.check()
        with self._lock:
            if self._closed:
                raise RuntimeError("prober is stopped")
            sources: dict[tuple[IPAddress, int], int] = {}
            for key, spec in targets.items():
                sources[(key[1], spec.port)] = sources.get((key[1], spec.port), 0) + 1
            # two families, and as many slots as targets share a source
            self._raise_nofile(2 * max(sources.values(), default=0))
            now = self._clock()
            fresh: list[_Target] = []
            # detach every removed and changed one before attaching any, and
            # keep the sockets until then: a changed target keeps its
            # socket and local endpoint (a reply in flight is ignored: the
            # new target has no probe out yet)
            for key in [k for k in self._targets if k not in targets]:
                self._drop(self._targets.pop(key), close_empty=False)
            changed = [key for key, spec in targets.items()
                       if key not in self._targets or self._targets[key].spec != spec]
            for key in changed:
                if key in self._targets:
                    self._drop(self._targets.pop(key), close_empty=False)
            locals_: dict[IPAddress, str] = {}
            for key in changed:
                target = _Target(key, targets[key])
                try:
                    self._attach(target, locals_)
                except OSError as e:
                    # reported at its first probe, which tries again
                    log.debug("health: socket for %s: %s", _show(key), e)
                self._targets[key] = target
                fresh.append(target)
            for sock in [sock for sock in self._sockets.values() if not sock.targets]:
                self._close_socket(sock)
                self._ports.pop(sock.slot, None)  # nothing left to keep the port for
            self._spread(fresh, now)
        self._wake()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                raise RuntimeError("prober already started")
            # targets set before start were scheduled from then: spread again
            # rather than fire every overdue probe at once
            self._spread(list(self._targets.values()), self._clock())
            self._thread = threading.Thread(target=self._run, name="sbulb-health", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop probing; join the thread (2 s at most) and close every socket."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
            if thread.is_alive():
                # stuck in on_verdicts: the thread closes everything on its way out
                log.warning("health: prober thread did not stop within 2s")
                return
        if thread is None or not thread.is_alive():
            self._close_all()

    def local_endpoints(self) -> set[Endpoint]:
        """(local address, local port) of every open probe socket: replies
        to these are the prober's, not traffic for the data path to balance."""
        with self._lock:
            return {s.endpoint for s in self._sockets.values()}

    # -- sockets --

    @staticmethod
    def _source_for(server: IPAddress) -> str:
        """The local address the routing table picks to reach server (a
        connected UDP socket learns it without sending anything)."""
        family = socket.AF_INET6 if server.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((str(server), 9))
            return str(ipaddress.ip_address(s.getsockname()[0]))

    def _attach(self, target: _Target, locals_: Optional[dict[IPAddress, str]] = None) -> None:
        """Give the target a socket: the first slot, for the local address
        that reaches its server, with no other target of the same source."""
        server = target.key[1]
        local = locals_.get(server) if locals_ is not None else None
        if local is None:
            local = self._source_for(server)
            if locals_ is not None:
                locals_[server] = local
        family = socket.AF_INET6 if server.version == 6 else socket.AF_INET
        n = 0
        while True:
            s = self._sockets.get((family, local, n))
            if s is None or target.remote not in s.targets:
                break
            n += 1
        if s is None:
            s = self._open((family, local, n))
        s.targets[target.remote] = target
        target.sock = s

    def _open(self, slot: tuple[int, str, int]) -> _Socket:
        """A non-blocking UDP socket on the slot's local address, with
        IP_RECVERR: ICMP unreachables for its probes land on its error
        queue. It binds the port its slot had before, if it can, so that
        the data path's list of probe endpoints stays put."""
        family, local, _ = slot
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            try:  # past net.core.rmem_max with CAP_NET_ADMIN, else up to it
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            port = self._ports.get(slot, 0)
            try:
                sock.bind((local, port))
            except OSError:
                if not port:
                    raise
                sock.bind((local, 0))  # taken meanwhile: any port
            endpoint = (ipaddress.ip_address(local), sock.getsockname()[1])
        except BaseException:
            sock.close()
            raise
        s = _Socket(sock, slot, endpoint)
        self._selector.register(sock, selectors.EVENT_READ, s)
        self._sockets[slot] = s
        self._ports[slot] = endpoint[1]
        return s

    def _close_socket(self, s: _Socket) -> None:
        """Close it; its targets get a new one at their next probe."""
        for target in s.targets.values():
            target.sock = None
        s.targets.clear()
        if self._sockets.get(s.slot) is s:
            del self._sockets[s.slot]
        try:
            self._selector.unregister(s.sock)
        except (KeyError, ValueError):
            pass
        s.sock.close()

    def _drop(self, target: _Target, close_empty: bool = True) -> None:
        target.removed = True
        target.awaiting = False
        s, target.sock = target.sock, None
        if s is None:
            return
        if s.targets.get(target.remote) is target:
            del s.targets[target.remote]
        if close_empty and not s.targets:
            self._close_socket(s)
            self._ports.pop(s.slot, None)  # nothing left to keep the port for

    def _close_all(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for target in self._targets.values():
                target.removed = True
            for s in list(self._sockets.values()):
                self._close_socket(s)
            self._targets.clear()
            self._timers.clear()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _raise_nofile(self, sockets: int) -> None:
        """Raise RLIMIT_NOFILE's soft limit to the hard one, once, when the
        probe sockets would not fit under it."""
        if self._nofile_raised:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or sockets + _FD_HEADROOM <= soft:
            return
        self._nofile_raised = True
        # an unlimited hard limit is not a valid soft one for descriptors
        new = hard if hard != resource.RLIM_INFINITY else max(soft, sockets + _FD_HEADROOM)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            log.info("health: raised the open-files limit from %d to %d for %d probe sockets",
                     soft, new, sockets)
        except (ValueError, OSError) as e:
            log.warning("health: cannot raise the open-files limit (%d) for %d probe "
                        "sockets: %s", soft, sockets, e)

    # -- scheduling --

    def _schedule(self, target: _Target, when: float) -> None:
        target.token += 1
        heapq.heappush(self._timers, (when, next(self._seq), target.token, target))

    def _spread(self, targets: list[_Target], now: float) -> None:
        """First probes within min(interval, 0.2 s), evenly spaced, so that
        thousands of new targets do not all fire in the same instant."""
        n = len(targets)
        for i, target in enumerate(targets):
            target.awaiting = False
            target.next_send = now + min(target.spec.interval, FIRST_PROBE_SPREAD) * i / n
            self._schedule(target, target.next_send)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed

    # -- the loop (prober thread) --

    def _run(self) -> None:
        _name_os_thread("sbulb-health")
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    timeout = None
                    if self._timers:
                        timeout = max(0.0, self._timers[0][0] - self._clock()) + TIMER_SLACK
                events = self._selector.select(timeout)
                with self._lock:
                    if self._stopping:
                        return
                    for key, _mask in events:
                        if key.data is None:
                            self._drain_wake()
                        else:
                            self._readable(key.data)
                    self._fire_timers()
                    self._deliver()
        except Exception:
            log.exception("health: prober thread failed")
        finally:
            self._close_all()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _fire_timers(self) -> None:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, token, target = heapq.heappop(self._timers)
            if target.removed or token != target.token:
                continue  # rescheduled or removed since
            if target.awaiting:
                target.awaiting = False
                self._verdict(target, Verdict(False, "timeout"))
                self._schedule(target, target.next_send)
            else:
                self._send(target, now)

    def _send(self, target: _Target, now: float) -> None:
        spec = target.spec
        # the next probe keeps the cadence; after a stall, skip rather than burst
        target.next_send += spec.interval
        if target.next_send <= now:
            target.next_send = now + spec.interval
        if target.sock is None:
            try:
                self._attach(target)
            except OSError as e:
                self._verdict(target, Verdict(False, _reason_for(e)))
                self._schedule(target, target.next_send)
                return
        assert target.sock is not None
        # whatever came while no probe was out (late replies, errors) made
        # the socket readable and was read by _readable before this turn's
        # timers fired, and a late one is told from an answer by awaiting
        try:
            target.sent_at = self._clock()
            target.sock.sock.sendto(spec.send, target.remote)
        except OSError as e:
            reason = _reason_for(e)
            if reason == "error":
                # the socket itself may be broken: every target it had gets
                # a new one (on the same port, if it can) at its next probe
                log.debug("health: probe of %s: %s", _show(target.key), e)
                self._close_socket(target.sock)
            self._verdict(target, Verdict(False, reason))
            self._schedule(target, target.next_send)
            return
        target.awaiting = True
        self._schedule(target, target.sent_at + spec.timeout)

    def _readable(self, s: _Socket) -> None:
        if self._sockets.get(s.slot) is not s:
            return  # an event for a socket closed since select() returned
        self._read_errors(s)
        for _ in range(_MAX_DRAIN):
            try:
                data, source = s.sock.recvfrom(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _ICMP_ERRNOS:
                    # an error queued meanwhile (its errno is reported once
                    # here, its details on the error queue)
                    self._read_errors(s)
                    continue
                log.debug("health: probe socket %s: %s", s.endpoint, e)
                self._close_socket(s)
                return
            target = s.targets.get((source[0], source[1]))
            if target is None or not target.awaiting:
                continue  # not from a target's server, or after its timeout
            rtt = self._clock() - target.sent_at
            target.awaiting = False
            expect = target.spec.expect
            if expect is None or expect.search(data):
                self._verdict(target, Verdict(True, "ok", rtt))
            else:
                self._verdict(target, Verdict(False, "mismatch"))
            self._schedule(target, target.next_send)

    def _read_errors(self, s: _Socket) -> None:
        """Empty the socket's error queue (poll keeps reporting an error
        while it holds anything); each ICMP error fails, at once, the probe
        whose destination it names."""
        for _ in range(_MAX_DRAIN):
            try:
                _, ancdata, _, destination = s.sock.recvmsg(1, 512, _MSG_ERRQUEUE)
            except OSError:
                return  # EAGAIN: empty
            err = None
            for _level, _type, data in ancdata:
                if len(data) >= _EE_ERRNO.size:
                    err = _EE_ERRNO.unpack_from(data)[0]
            if err is None or not destination:
                continue
            target = s.targets.get((destination[0], destination[1]))
            if target is None or not target.awaiting:
                continue  # about a probe that has timed out, or of a removed target
            target.awaiting = False
            self._verdict(target, Verdict(False, _reason_for(OSError(err, ""))))
            self._schedule(target, target.next_send)

    def _verdict(self, target: _Target, verdict: Verdict) -> None:
        self._batch.append((target.key, verdict))

    def _deliver(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            self._on_verdicts(batch)
        except Exception:
            log.exception("health: on_verdicts failed for %d verdicts", len(batch))


def _name_os_thread(name: str) -> None:
    """Give the calling thread a kernel name (top -H, /proc/PID/task/*/comm);
    Python before 3.12 names only its own Thread objects."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _show(key: Key) -> str:
    return f"{key[0]}/{key[1]}"
