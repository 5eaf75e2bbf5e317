"""The running daemon: start, main loop, signals, reload, sd_notify, stop.

Signal handlers and the file watcher only record what was asked and wake
the main loop through a pipe; the main loop does all the work, so the
configuration maps are only ever written from one thread. Control requests
(sbulbctl) are answered on the control server's threads (sbulb/control.py),
never in the main loop: they read the frozen snapshot and the maps, and
delete associations, nothing else.
"""

from __future__ import annotations

import bisect
import fcntl
import itertools
import logging
import os
import queue
import select
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from sbulb import __version__, announce, health, neigh, state, telemetry
from sbulb.config import (
    COPY_MODES,
    DEFAULT_SERVICE,
    MAX_WEIGHT,
    Config,
    ConfigError,
    IPAddress,
    endpoint,
    parse_address,
    read_file,
)
from sbulb.control import RUN_DIR, AfterAnswer, ControlError, ControlServer, socket_path
from sbulb.consts import EVENTS_ALL, EVENTS_CHANGES, EVENTS_NONE, EventType
from sbulb.dataplane import (
    PROG_NAME,
    XDP_FLAGS_SKB_MODE,
    Dataplane,
    DataplaneError,
    Event,
    Traffic,
    interface_index,
    missing_privileges,
    pin_dir,
)
from sbulb.log import TRACE
from sbulb.notify import SystemdNotifier, pending_job
from sbulb.state import DesiredState, Layout, PlanError, Snapshot
from sbulb.watcher import ConfigWatcher

if TYPE_CHECKING:  # prometheus-client is needed only with --metrics
    from sbulb.metrics import MetricsServer

log = logging.getLogger(__name__)

JOB_TIMEOUT = 10.0  # seconds a control request waits for the main loop
PASSIVE_SCAN = 0.25  # seconds between reads of the ICMP-unreachable counters
HEALTH_SHOWN = 1.0  # seconds between snapshots of the probe counters
# verdicts are taken at most this often: every turn of the main loop reads
# the data path's event and neighbour maps, which thousands of verdicts a
# second must not multiply
VERDICTS_TAKEN = 0.1
RELOAD_DEBOUNCE = 0.1  # seconds of quiet after a file event: editors write in steps
EVENT_INTERVAL = 0.1  # how often data-path events are read, when compiled in
IDLE_INTERVAL = 1.0  # wake-up period otherwise
LOCK_DIR = RUN_DIR


class StartError(Exception):
    """sbulb cannot start. str() is one line telling the operator what to do."""


class Notifier(Protocol):
    def notify(self, state: str) -> None: ...


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec= (WATCHDOG_USEC), if it is for us."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    try:
        if not usec or (pid and int(pid) != os.getpid()):
            return None
        return int(usec) / 2e6
    except ValueError:
        return None


def events_level(log_level: str) -> int:
    """Which data-path events to compile in for a log level."""
    if log_level == "TRACE":
        return EVENTS_ALL
    if log_level == "DEBUG":
        return EVENTS_CHANGES
    return EVENTS_NONE


def log_event(event: Event, names: dict[int, str]) -> None:
    client = endpoint(event.client, event.client_port)
    service = names.get(event.service, str(event.service))
    if event.type == EventType.ASSOC_CLIENT:
        log.debug("assoc.new by=client service=%s client=%s server=%s port=%d", service, client,
                  event.server, event.port)
    elif event.type == EventType.ASSOC_SERVER:
        log.debug("assoc.new by=server service=%s client=%s server=%s port=%d", service, client,
                  event.server, event.port)
    elif event.type == EventType.ASSOC_REPICK:
        log.debug(
            "assoc.moved service=%s client=%s from=%s to=%s reason=server-removed",
            service,
            client,
            event.other,
            event.server,
        )
    elif event.type == EventType.DROP_NOT_ASSOCIATED:
        log.debug(
            "packet.dropped reason=not-associated service=%s client=%s server=%s associated=%s",
            service,
            client,
            event.server,
            event.other,
        )
    elif event.type == EventType.DROP_NO_REAL_SERVER:
        log.debug("packet.dropped reason=no-real-server service=%s client=%s port=%d", service,
                  client, event.port)
    elif event.type == EventType.REUSED_INGRESS:
        log.log(TRACE, "assoc.reused direction=ingress service=%s client=%s server=%s", service,
                client, event.server)
    elif event.type == EventType.REUSED_EGRESS:
        log.log(TRACE, "assoc.reused direction=egress service=%s client=%s server=%s", service,
                client, event.server)


def health_targets(base: DesiredState) -> dict[state.Member, health.CheckSpec]:
    """What to probe: every server of every checked service, on its
    check_port (default: the service's first port)."""
    targets = {}
    for spec in base.services:
        check = spec.checks.spec
        if check is None:
            continue
        port = check.port or spec.ports[0]
        for server in spec.servers:
            targets[(spec.name, server.address)] = replace(check, port=port)
    return targets


class _InterfaceLock:
    """One sbulb per interface (and network namespace): an flock held for the
    life of the process. A program named like ours on an interface whose lock
    we hold is a leftover of a killed sbulb, safe to replace."""

    def __init__(self, interface: str, lock_dir: Path) -> None:
        netns = os.stat("/proc/self/ns/net").st_ino
        self.path = lock_dir / f"{interface}.{netns}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as e:
            raise StartError(f"cannot create {self.path.parent}: {e.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise StartError(f"cannot create the lock file {self.path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise StartError(
                    f"another sbulb (pid {owner}) is already running on this interface "
                    f"(lock {self.path})"
                ) from None
            # the previous owner may have removed the file between our open and
            # our lock: then we hold a lock nobody else sees, so start again
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # still locked: nobody holds it meanwhile
            os.close(self._fd)
            self._fd = None


class Service:
    """One sbulb instance: a loaded program attached to its interfaces."""

    def __init__(
        self,
        config: Config,
        dataplane: Dataplane | None = None,
        notifier: Notifier | None = None,
        lock_dir: Path = LOCK_DIR,
    ) -> None:
        self.config = config
        self.dataplane = dataplane or Dataplane(
            config.limits,
            events=events_level(config.log_level),
            debug=config.debug,
            forward=config.forward,
            pin=pin_dir(config.interfaces[0]) if config.pin else None,
        )
        self.notifier = notifier or SystemdNotifier()
        # what the config says, and what is applied: that with the servers
        # the health checks say are down
        self.base = DesiredState.from_config(config)
        self.desired = self.base
        self.layout = Layout()  # what the maps hold (sbulb/state.py)
        self._targets: dict[state.Member, health.CheckSpec] = {}
        self._health: dict[state.Member, health.ServerHealth] = {}
        self._rtts: dict[state.Member, tuple[list[int], float]] = {}
        self._verdicts: queue.SimpleQueue[list[tuple[state.Member, health.Verdict]]] = (
            queue.SimpleQueue())
        self._prober: health.Prober | None = None
        # passive detection: per (service, server), when its window began and
        # its ICMP-unreachable count then
        self._passive: dict[state.Member, tuple[float, int]] = {}
        self._next_passive = 0.0
        self._verdicts_waiting = False
        self._next_verdicts = 0.0  # when verdicts may be taken again
        self._disabled: frozenset[state.Member] = frozenset()  # sbulbctl server disable
        self._weights: dict[state.Member, int] = {}  # sbulbctl server set-weight, drain
        self._local_vips: set[IPAddress] = set()  # VIPs that are this host's, warned about
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], threading.Event,
                                            list[object]]] = queue.SimpleQueue()
        self._health_shown = 0.0  # when the snapshot last took the probe counters
        self._probe_endpoints: set[tuple[IPAddress, int]] = set()
        self._last_reload_ok = True
        self._reloads = {True: 0, False: 0}  # applied, failed
        self._last_reload_at = self._last_reload_success_at = time.time()
        self._last_reload_error = ""
        self._loaded = False  # _prepare() done
        self.check_report: list[str] = []  # what --check says it found (check())
        self._pinned: str | None = None  # where the associations are pinned, once loaded
        # --announce-bird (sbulb/announce.py): announced while attached
        self._announcer = (announce.BirdAnnouncer(config.announce_bird, config.bird_socket)
                           if config.announce_bird else None)
        self._attached = False
        self._failed_services: set[str] = set()  # a reload failed to apply to them
        self._announcements: dict[str, str] = {}
        self._templates = telemetry.TemplateStore()  # telemetry services' exporters
        self._replayer = telemetry.Replayer()
        self.snapshot = self._make_snapshot()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop_requested = False
        self._reload_requested = False
        self._restart_requested = False
        self._stop_during_restart = False
        self._run_dir = lock_dir
        # started by a restart in place, or right after a stop for
        # systemctl restart: the sbulb program attached is ours to take over
        self._takeover = os.environ.pop(TAKEOVER_ENV, None) is not None
        try:
            self._takeover_marker().unlink()
            self._takeover = True
        except OSError:
            pass
        self._file_changed_at: float | None = None
        self._watcher: ConfigWatcher | None = None
        self._locks = [_InterfaceLock(name, lock_dir) for name in config.interfaces]
        self._control: ControlServer | None = None
        self._metrics: MetricsServer | None = None  # with --metrics
        self._watchdog = watchdog_interval()  # seconds between WATCHDOG=1, or None
        self._next_ping = 0.0

    # -- requests (any thread, signal handlers)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake anyway

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake()

    def _takeover_marker(self) -> Path:
        """Left by a stop for systemctl restart, for the next sbulb."""
        return socket_path(self.config.interfaces[0], self._run_dir).with_suffix(".takeover")

    def request_restart(self) -> None:
        """Restart in place (SIGUSR2, sbulbctl restart): stop everything but
        the data path, which keeps serving, and let the caller exec a new
        sbulb that takes the program over (run() returns RESTART)."""
        self._restart_requested = True
        self._stop_requested = True
        self._wake()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake()

    def _on_file_event(self) -> None:
        self._file_changed_at = time.monotonic()
        self._wake()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
        elif signum == signal.SIGUSR2:
            self._restart_requested = True
            self._stop_requested = True
        else:
            # (during a restart in place: the next sbulb is to stop)
            self._stop_during_restart = self._restart_requested
            self._stop_requested = True

    # -- start / stop

    def _check_environment(self) -> None:
        problem = missing_privileges()
        if problem:
            raise StartError(problem)
        try:
            for name in self.config.interfaces:
                interface_index(name)
        except DataplaneError as e:
            raise StartError(str(e)) from None
        if self.config.xdp_mode == "generic":
            self._refuse_generic(list(self.config.interfaces))
        self._warn_local_vips(self.base)

    def _refuse_generic(self, generic: list[str]) -> None:
        """Mirror and telemetry copies need native XDP: StartError if a
        service needs them and `generic` interfaces would run generic XDP."""
        copying = [s for s in self.base.services if s.mode in COPY_MODES]
        if generic and copying:
            raise StartError(f"{copying[0].mode} service {copying[0].name} needs native XDP, "
                             f"and {', '.join(sorted(generic))} would run generic XDP "
                             "(mirror.h: generic XDP keeps no metadata across a redirect)")

    def _warn_local_vips(self, desired: DesiredState) -> None:
        """A VIP that is also an address of this host gets, whenever sbulb
        is not attached (a stop, a restart), to the host's own stack: say so
        once per VIP (README, Deployment checklist)."""
        local = neigh.local_addresses()
        for spec in desired.services:
            if spec.vip not in self._local_vips and spec.vip in local:
                self._local_vips.add(spec.vip)
                log.warning("start.vip_local vip=%s service=%s: the VIP is an address of this "
                            "host; while sbulb is not attached (stop, restart) its datagrams go "
                            "to the host's own stack", spec.vip, spec.name)

    def _prepare(self) -> None:
        """Everything before attaching: compile, load, fill the maps."""
        try:
            self.dataplane.load()
        except DataplaneError as e:
            raise StartError(str(e)) from None
        # None: bpffs was missing (or --no-pin, or --check)
        self._pinned = str(self.dataplane.pin) if self.dataplane.pin else None
        self._loaded = True
        try:
            self.dataplane.expect_interfaces(self.config.interfaces)
        except DataplaneError as e:
            raise StartError(str(e)) from None
        # service ids are kept from the pinned registry: they key the
        # associations that survived the restart
        self.layout = Layout.with_ids(self.dataplane.registered_services())
        self._targets = health_targets(self.base)
        self._health = self._healths_for(self._targets)
        try:
            self.apply(self._effective(self.base, self._health))
        except (PlanError, DataplaneError) as e:
            raise StartError(f"cannot fill the maps: {e}") from None
        desired, ids = self.desired, self.layout.ids
        self.dataplane.migrate_legacy(
            lambda server: ids.get(state.legacy_service(server, desired) or ""))

    def apply(self, desired: DesiredState) -> state.Plan:
        """The one way the maps change (start, reload, sbulbctl): plan the
        writes from what the maps hold to `desired`, apply them, publish a
        new snapshot. Raises PlanError or DataplaneError; then the running
        state is the old one."""
        planned = state.plan(self.layout, desired, self.config.limits)
        # a collector that joins a telemetry service gets the templates it
        # needs before the data path sends it any data
        self._replay(telemetry.joiners(self.layout.services, desired.services))
        try:
            self.dataplane.apply(planned.writes)
        except DataplaneError:
            if self.layout.services:  # at start there is nothing to go back to
                self._roll_back(planned.layout)
            # this balancer may not be serving them as its peers do
            self._failed_services |= set(planned.added) | {
                c.name for c in planned.changes if c.changed}
            self._announce()
            raise
        self._failed_services.clear()
        self.layout, self.desired = planned.layout, desired
        self._announce()
        self._templates.keep_only(s.name for s in desired.services if s.mode == "telemetry")
        self.snapshot = self._make_snapshot()
        return planned

    def _announce(self) -> None:
        """Tell BIRD which VIPs to announce (--announce-bird), if that changed."""
        if self._announcer is None:
            return
        verdicts = announce.decide(self.desired, self._attached, self._failed_services)
        # before the first attach, BIRD is left as it is: in a restart the
        # sbulb before this one announced the VIPs, and still serves them
        if self._attached or self._announcer.active:
            self._announcer.apply(verdicts)
        self._announcements = {str(vip): verdict for vip, verdict in verdicts.items()}
        self.snapshot = replace(self.snapshot, announcements=dict(self._announcements))

    def _replay(self, joining: dict[str, tuple[IPAddress, ...]]) -> None:
        for name, collectors in joining.items():
            datagrams = self._templates.datagrams(name)
            if not datagrams:
                continue
            for collector in collectors:
                sent = sum(self._replayer.send(d, collector) for d in datagrams)
                self._templates.replayed(name, sent)
                log.info("telemetry.replay service=%s collector=%s datagrams=%d exporters=%d",
                         name, collector, sent, len({d.exporter for d in datagrams}))

    def _keep_templates(self) -> None:
        """Keep the template datagrams the data path handed over (the
        latest per exporter and template id)."""
        frames = self.dataplane.take_templates()
        if not frames:
            return
        names = self.snapshot.names()
        for frame in frames:
            name = names.get(frame.service)
            spec = self.desired.service(name) if name else None
            if spec is not None and spec.mode == "telemetry":
                self._templates.add(name, frame.frame)
        self.snapshot = replace(self.snapshot, templates=self._templates.counts())

    def _roll_back(self, attempted: Layout) -> None:
        """A write failed part way through a plan: put the maps back to the
        running configuration, so that they never mix two of them."""
        try:
            back = state.rollback(self.layout, attempted, self.desired, self.config.limits)
            self.dataplane.apply(back.writes)
        except (PlanError, DataplaneError) as e:
            # the maps hold part of each: plan the next change from the
            # attempted layout, which covers everything it may have written
            log.error("config.rollback_failed reason=%s; the maps may hold part of the "
                      "rejected configuration until the next successful reload", e)
            self.layout = Layout(ids={**self.layout.ids, **attempted.ids},
                                 services=attempted.services, slots=attempted.slots,
                                 rings=attempted.rings, half=attempted.half,
                                 mirrors={**self.layout.mirrors, **attempted.mirrors},
                                 maglevs=attempted.maglevs, maglev_half=attempted.maglev_half)
        else:
            self.layout = back.layout

    # -- health checks (sbulb/health.py): verdicts come from the prober's
    # thread through a queue; the main loop applies what they change

    def _healths_for(self, targets: dict[state.Member, health.CheckSpec]
                     ) -> dict[state.Member, health.ServerHealth]:
        now = time.monotonic()
        return {key: self._health.get(key) or health.ServerHealth.initial(spec, now)
                for key, spec in targets.items()}

    def _effective(self, base: DesiredState, healths: dict[state.Member, health.ServerHealth],
                   weights: dict[state.Member, int] | None = None,
                   disabled: frozenset[state.Member] | None = None) -> DesiredState:
        """What is applied: the file's state with the operator's weights
        (sbulbctl set-weight, drain; default: the current ones) and without
        the servers that take no new client: down by their health checks,
        or disabled by the operator (sbulbctl server disable)."""
        weights = self._weights if weights is None else weights
        disabled = self._disabled if disabled is None else disabled
        downs: dict[str, set[IPAddress]] = {}
        for (name, address), h in healths.items():
            if not h.takes_traffic:
                downs.setdefault(name, set()).add(address)
        for name, address in disabled:
            downs.setdefault(name, set()).add(address)
        return base.with_weights(weights).with_down(
            {name: frozenset(addresses) for name, addresses in downs.items()})

    # -- requests of control threads that change the maps: run by the main
    # loop (the one writer), answered when done

    def _in_main_loop(self, job: Callable[[], object]) -> object:
        done = threading.Event()
        box: list[object] = []
        self._jobs.put((job, done, box))
        self._wake()
        if not done.wait(JOB_TIMEOUT):
            raise ControlError("the daemon did not get to it in time (busy?): try again")
        result = box[0]
        if isinstance(result, ControlError):
            raise result
        return result

    def _run_jobs(self) -> None:
        while True:
            try:
                job, done, box = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                box.append(job())
            except ControlError as e:
                box.append(e)
            except (PlanError, DataplaneError) as e:
                box.append(ControlError(f"not applied: {e}"))
            except Exception as e:  # a bug: say so, keep serving
                log.exception("control.job_failed")
                box.append(ControlError(f"internal error: {e}"))
            done.set()

    def _set_disabled(self, server: IPAddress, names: list[str], disabled: bool) -> object:
        """sbulbctl server disable|enable: an operator override (until
        enabled again or a restart), applied like a health change."""
        keys = self._members(server, names)
        before = set(self._disabled)
        self._disabled = self._disabled | keys if disabled else self._disabled - keys
        if self._disabled != before:
            self.apply(self._effective(self.base, self._health))
            self.notifier.notify(f"STATUS={self.status()}")
        verb = "disabled" if disabled else "enabled"
        services = sorted(name for name, _ in keys)
        log.info("server.%s server=%s services=%s by=sbulbctl", verb, server, ",".join(services))
        return {verb: services}

    def _members(self, server: IPAddress, names: list[str]) -> set[state.Member]:
        keys = {(spec.name, server) for spec in self.base.services
                if spec.name in names and spec.server(server) is not None}
        if not keys:
            raise ControlError(f"{server} is not a real server of "
                               f"{'service ' + names[0] if len(names) == 1 else 'any service'}")
        return keys

    def _set_weight(self, server: IPAddress, names: list[str], weight: int | None) -> object:
        """sbulbctl server set-weight|drain (a weight), reset (None: the
        file's weight, and enabled): runtime overrides over the file, kept
        until the file changes that server, a reset or a restart."""
        keys = self._members(server, names)
        weights = dict(self._weights)
        disabled = self._disabled
        for key in keys:
            if weight is None:
                weights.pop(key, None)
            else:
                weights[key] = weight
        if weight is None:
            disabled = disabled - keys
        if weights != self._weights or disabled != self._disabled:
            self.apply(self._effective(self.base, self._health, weights, disabled))
            self._weights, self._disabled = weights, disabled
            self.snapshot = self._make_snapshot()
            self.notifier.notify(f"STATUS={self.status()}")
        services = sorted(name for name, _ in keys)
        if weight is None:
            log.info("server.reset server=%s services=%s by=sbulbctl", server, ",".join(services))
        else:
            log.info("server.weight_set server=%s weight=%d services=%s by=sbulbctl", server,
                     weight, ",".join(services))
        return {"services": services}

    def _on_verdicts(self, batch: list[tuple[state.Member, health.Verdict]]) -> None:
        """From the prober's thread: queue them, wake the main loop (once
        until it has taken them: thousands of verdicts a second are a few
        wake-ups)."""
        self._verdicts.put(batch)
        if not self._verdicts_waiting:
            self._verdicts_waiting = True
            self._wake()

    def _start_health(self) -> None:
        if not self._targets:
            return
        self._prober = health.Prober(self._on_verdicts)
        # the counters of a new program start at zero: so do the windows
        # (a server added by a later reload starts from its count then)
        now = time.monotonic()
        self._passive = {key: (now, 0) for key in self._targets}
        self._set_targets(self._targets)
        self._prober.start()
        log.info("health.started targets=%d", len(self._targets))

    def _set_targets(self, targets: dict[state.Member, health.CheckSpec]) -> None:
        """Probe these; the data path leaves the answers to our probe
        sockets to this host's stack (set_targets opens the sockets, so
        their endpoints are known before their first probe)."""
        assert self._prober is not None
        self._prober.set_targets(targets)
        endpoints = self._prober.local_endpoints()
        for address, port in endpoints - self._probe_endpoints:
            self.dataplane.add_probe_endpoint(address, port)
        for address, port in self._probe_endpoints - endpoints:
            self.dataplane.remove_probe_endpoint(address, port)
        self._probe_endpoints = endpoints

    def _passive_downs(self, now: float) -> list[state.Member]:
        """Servers of services with passive_fall whose translated ICMP
        destination-unreachable errors reached it within one interval."""
        checked = {s.name: s for s in self.base.services if s.checks.passive_fall}
        if not checked or now < self._next_passive:
            return []
        self._next_passive = now + PASSIVE_SCAN
        names = {i: name for name, i in self.layout.ids.items()}
        found = []
        for (i, address), count in self.dataplane.member_unreachable().items():
            name = names.get(i)
            if name not in checked or (name, address) not in self._health:
                continue
            key = (name, address)
            spec = checked[name]
            began, base = self._passive.get(key, (now, count))
            if count - base >= spec.checks.passive_fall:
                found.append(key)
                began, base = now, count
            elif now - began >= self._targets[key].interval:
                began, base = now, count
            self._passive[key] = (began, base)
        return found

    def _take_verdicts(self) -> None:
        changed = False
        now = time.monotonic()
        taking = self._verdicts_waiting and now >= self._next_verdicts
        if taking:
            self._verdicts_waiting = False  # before draining: a later one wakes us again
            self._next_verdicts = now + VERDICTS_TAKEN
        for key in self._passive_downs(now):
            server = self._health[key]
            if server.state != health.Health.DOWN:
                server.state, server.since, server.reason = health.Health.DOWN, now, "icmp"
                server.successes = 0
                changed = True
                log.warning("health.down service=%s server=%s reason=icmp passive=yes "
                            "(client datagrams refused)", *key)
        verdicts: list[tuple[state.Member, health.Verdict]] = []
        while taking:
            try:
                verdicts.extend(self._verdicts.get_nowait())
            except queue.Empty:
                break
        for key, verdict in verdicts:
            h, spec = self._health.get(key), self._targets.get(key)
            if h is None or spec is None:
                continue  # a target a reload removed
            if verdict.ok and verdict.rtt is not None:
                # per bucket here (the first bound >= rtt; past the last:
                # the +Inf slot), cumulated when shown
                counts, total = self._rtts.get(key) or ([0] * (len(state.RTT_BUCKETS) + 1), 0.0)
                counts[bisect.bisect_left(state.RTT_BUCKETS, verdict.rtt)] += 1
                self._rtts[key] = (counts, total + verdict.rtt)
            if h.record(verdict, now, spec):
                changed = True
                name, address = key
                level = logging.WARNING if h.state == health.Health.DOWN else logging.INFO
                log.log(level, "health.%s service=%s server=%s reason=%s%s", h.state.value,
                        name, address, verdict.reason,
                        f" rtt_ms={verdict.rtt * 1000:.1f}" if verdict.rtt is not None else "")
        if changed:
            # self.desired is still what it was before these verdicts: only
            # apply() changes it (and this is costly enough with thousands of
            # servers to be worth doing only when something changed)
            before = {s.name: bool(s.serving) for s in self.desired.services if s.checks.spec}
            try:
                self.apply(self._effective(self.base, self._health))
            except (PlanError, DataplaneError) as e:
                log.error("health.not_applied reason=%s", e)
            for service in self.desired.services:
                if service.name in before and before[service.name] != bool(service.serving):
                    if service.serving:
                        log.info("health.service_back service=%s", service.name)
                    else:
                        log.error("health.all_down service=%s: every real server is down; new "
                                  "clients are dropped", service.name)
            self.notifier.notify(f"STATUS={self.status()}")
        # a change is shown at once; the probe counters and RTTs once a second
        if changed or now - self._health_shown >= HEALTH_SHOWN:
            self._health_shown = now
            self.snapshot = self._make_snapshot()

    def _health_views(self) -> dict[state.Member, state.HealthView]:
        views = {}
        for key, h in self._health.items():
            counts, total = self._rtts.get(key, ([], 0.0))
            views[key] = state.HealthView(h.state.value, h.since, h.reason, h.rtt, h.probes,
                                          h.probe_failures, tuple(itertools.accumulate(counts)),
                                          total)
        return views

    def _make_snapshot(self) -> Snapshot:
        return Snapshot(
            services=self.desired.services,
            ids=dict(self.layout.ids),
            interfaces=self.config.interfaces,
            forward=self.config.forward,
            max_associations=self.config.limits.max_associations,
            config_file=str(self.config.config_file) if self.config.config_file else None,
            last_reload_ok=self._last_reload_ok,
            reloads_ok=self._reloads[True],
            reloads_failed=self._reloads[False],
            last_reload_at=self._last_reload_at,
            last_reload_success_at=self._last_reload_success_at,
            last_reload_error=self._last_reload_error,
            pinned=self._pinned,
            pin_requested=self.config.pin,
            health=self._health_views(),
            disabled=self._disabled,
            file_weights={key: _file_weight(self.base, key) or 0 for key in self._weights},
            templates=self._templates.counts(),
            announcements=dict(self._announcements),
        )

    def check(self) -> list[str]:
        """Dry run: everything but attaching (and pinning). Returns what
        the operator should know (a VIP that is a local address)."""
        self._check_environment()
        self.dataplane.pin = None
        try:
            self._prepare()
        finally:
            self.dataplane.close()
        modes = {s.name: s.mode for s in self.desired.services}
        self.check_report = [
            f"{modes.get(name, 'mirror')} service {name}: "
            f"{'template copies' if modes.get(name) == 'telemetry' else 'copies'} made by an XDP "
            f"devmap broadcast, out of {self.dataplane.mirror_interfaces.get(slot, '?')} "
            "(needs native XDP)"
            for name, slot in sorted(self.layout.mirrors.items())]
        return [f"VIP {vip} is an address of this host: while sbulb is not attached (stop, "
                f"restart) its datagrams go to the host's own stack (README, Deployment "
                f"checklist)" for vip in sorted(self._local_vips, key=str)]

    def _attach(self) -> None:
        try:
            # refuse before touching anything if any interface is taken
            for interface in self.config.interfaces:
                for program in self.dataplane.attached_programs(interface):
                    if program.name != PROG_NAME:
                        raise StartError(
                            f"interface {interface} already runs XDP program "
                            f"'{program.name}' (id {program.id}); sbulb will not replace "
                            f"it: remove it with `ip link set dev {interface} xdp off`"
                        )
            # a replace keeps the old program's XDP mode: refuse generic
            # before the swap, while the old program still serves
            self._refuse_generic([
                interface for interface in self.config.interfaces
                if any(p.flags == XDP_FLAGS_SKB_MODE
                       for p in self.dataplane.attached_programs(interface))])
            # an sbulb program still attached (a restart in place, or an sbulb
            # that was killed) is swapped for ours in one step: no packet
            # meets the interface without a program
            modes = set()
            rest = []
            for interface in self.config.interfaces:
                leftovers = self.dataplane.attached_programs(interface)
                if not leftovers:
                    rest.append(interface)
                    continue
                old = leftovers[0]
                if self._takeover:
                    log.info("start.took_over interface=%s prog_id=%d", interface, old.id)
                else:
                    log.warning("start.replacing_leftover interface=%s prog_id=%d (left by an "
                                "sbulb that did not stop cleanly)", interface, old.id)
                try:
                    self.dataplane.replace(interface, old)
                    modes.add("generic" if old.flags == XDP_FLAGS_SKB_MODE else "native")
                except DataplaneError as e:
                    log.warning("start.replace_failed interface=%s reason=%s: detaching it first",
                                interface, e)
                    self.dataplane.detach_program(interface, old)
                    rest.append(interface)
            if rest and modes and self.config.xdp_mode == "auto":
                for interface in rest:  # the mode of the others: redirects need one
                    self.dataplane.attach(interface, modes.pop() if len(modes) == 1 else "auto")
            elif rest:
                self._attach_all(rest)
        except DataplaneError as e:
            raise StartError(str(e)) from None
        # (auto: an interface that refused native XDP)
        self._refuse_generic([name for name, mode in self.dataplane.attached_modes().items()
                              if mode == "generic"])

    def _attach_all(self, interfaces: Sequence[str]) -> None:
        """Attach everywhere in one XDP mode: a redirect from a native
        interface to one in generic mode is dropped, so with auto, one
        interface refusing native XDP makes them all generic."""
        mode = self.config.xdp_mode
        if mode != "auto" or len(interfaces) == 1:
            for interface in interfaces:
                self.dataplane.attach(interface, mode)
            return
        try:
            for interface in interfaces:
                self.dataplane.attach(interface, "native")
        except DataplaneError as e:
            log.warning(
                "start.generic_xdp reason=%s: using generic XDP on every interface "
                "(redirects between native and generic XDP are dropped)",
                e,
            )
            self.dataplane.detach_all()
            for interface in interfaces:
                self.dataplane.attach(interface, "generic")

    def start(self) -> None:
        """Load, configure and attach; raises StartError, leaving nothing
        attached."""
        self._check_environment()
        try:
            for lock in self._locks:
                lock.acquire()
            if self.config.config_file is not None:
                # watch from now on, so that edits made while compiling count
                self._watcher = ConfigWatcher(self.config.config_file, self._on_file_event)
                try:
                    self._watcher.start()
                except OSError as e:
                    raise StartError(
                        f"cannot watch {self.config.config_file.parent}: {e.strerror or e} "
                        "(inotify limits: see sysctl fs.inotify)"
                    ) from None
            self._prepare()
            if self._stop_requested:
                if self._takeover:
                    # a stop during a restart in place: the program the last
                    # sbulb left attached goes, as a stop detaches
                    for interface in self.config.interfaces:
                        for program in self.dataplane.attached_programs(interface):
                            if program.name == PROG_NAME:
                                self.dataplane.detach_program(interface, program)
                    if self._announcer is not None:
                        self._announcer.apply({})  # what the last sbulb announced
                return
            self._attach()
            self._attached = True
            self._announce()
            try:
                self._control = ControlServer(self.config.interfaces, self.handle_control,
                                              self._run_dir)
            except OSError as e:
                raise StartError(f"cannot create the control socket: {e.strerror or e}") from None
            if self.config.metrics is not None:
                self._start_metrics(*self.config.metrics)
            self._start_health()
        except BaseException:
            self._shutdown()
            raise
        log.info("start.ready interfaces=%s forward=%s services=%d",
                 ",".join(self.config.interfaces), self.config.forward,
                 len(self.desired.services))
        for spec in self.desired.services:
            log.info("start.service service=%s mode=%s vip=%s ports=%s real_servers=%s",
                     spec.name, spec.mode, spec.vip, ",".join(map(str, spec.ports)),
                     ",".join(map(str, spec.servers)))
        self._warn_if_all_drained()
        self._last_reload_at = self._last_reload_success_at = time.time()
        self.snapshot = self._make_snapshot()
        self.notifier.notify(f"READY=1\nSTATUS={self.status()}")

    def _start_metrics(self, host: str, port: int) -> None:
        try:
            from sbulb.metrics import MetricsServer
        except ImportError:
            raise StartError("python3-prometheus-client is not installed: run `make setup`") from None
        try:
            self._metrics = MetricsServer(lambda: self.snapshot, self.dataplane, host, port)
        except OSError as e:
            raise StartError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None

    def _shutdown(self, detach: bool = True) -> None:
        if self._prober is not None:
            self._prober.stop()
            self._prober = None
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._replayer.close()
        if detach and self._attached:
            # withdrawn before the program goes: routers stop sending here first
            self._attached = False
            self._announce()
        self.dataplane.close(detach=detach)
        for lock in self._locks:
            lock.release()

    def stop(self) -> None:
        if not self._restart_requested and self._loaded and pending_job() == "restart":
            # systemctl restart: systemd starts a new sbulb right after, which
            # takes the program over; detaching now would leave the VIP to
            # the host's stack for the whole compile
            self.notifier.notify("STOPPING=1")
            self._shutdown(detach=False)
            self._takeover_marker().write_text(f"{os.getpid()}\n")
            log.info("stop.restart_pending interfaces=%s (left attached for the sbulb systemd "
                     "starts next)", ",".join(self.config.interfaces))
            return
        if self._restart_requested:
            # the program stays attached and serving: the next sbulb swaps
            # its own in (RELOADING=1 now, its READY=1 when it has)
            now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={now_usec}\n"
                                 "STATUS=restarting in place (the data path keeps serving)")
            self._shutdown(detach=False)
            log.info("stop.restarting interfaces=%s (left attached for the next sbulb)",
                     ",".join(self.config.interfaces))
            return
        self.notifier.notify("STOPPING=1")
        self._shutdown()
        log.info("stop.done interfaces=%s", ",".join(self.config.interfaces))

    def _warn_if_all_drained(self) -> None:
        for spec in self.desired.services:
            if not any(server.weight for server in spec.servers):
                log.warning("config.all_drained service=%s: every real server has weight 0; "
                            "new clients are dropped until one has a weight", spec.name)

    def status(self) -> str:
        """One line for sd_notify's STATUS=."""
        interfaces = ", ".join(self.config.interfaces)
        services = self.desired.services
        down = sum(len(s.down) for s in services)
        health_note = f", {down} down (health checks)" if down else ""
        if self.config.pin and self._loaded and self._pinned is None:
            health_note += ", associations NOT pinned (a restart loses them)"
        if len(services) == 1:
            spec = services[0]
            return (f"balancing UDP {spec.vip} port(s) {' '.join(map(str, spec.ports))} over "
                    f"{len(spec.servers)} real server(s) on {interfaces}{health_note}")
        servers = len({s.address for spec in services for s in spec.servers})
        return (f"balancing {len(services)} UDP services "
                f"({', '.join(s.name for s in services)}) over {servers} real server(s) "
                f"on {interfaces}{health_note}")

    # -- reload

    def reload(self, trigger: str) -> bool:
        """Re-read the config file; apply it if valid, else keep the running
        configuration. Returns whether it was applied."""
        path = self.config.config_file
        if path is None:
            log.warning("reload.ignored trigger=%s reason=no config file (-rs given)", trigger)
            return False
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")
        running = len({s.address for spec in self.desired.services for s in spec.servers})
        planned = None
        error = ""
        try:
            new = self.config.with_file(read_file(path))
            base = DesiredState.from_config(new)
            # servers that stay keep their health; new ones start afresh
            targets = health_targets(base)
            healths = self._healths_for(targets)
            # an override stays while the file leaves that server as it was
            weights = {key: weight for key, weight in self._weights.items()
                       if _file_weight(base, key) == _file_weight(self.base, key)}
            for name, address in sorted(self._weights.keys() - weights.keys(), key=str):
                log.info("server.override_dropped service=%s server=%s reason=the file changed it",
                         name, address)
            planned = self.apply(self._effective(base, healths, weights))
            self.base, self._targets, self._health = base, targets, healths
            self._weights = weights
            self._disabled = frozenset((name, address) for name, address in self._disabled
                                       if (spec := base.service(name)) is not None
                                       and spec.server(address) is not None)
            if self._prober is not None:
                self._set_targets(targets)
            elif targets and self.dataplane.loaded:
                self._start_health()
        except (ConfigError, PlanError) as e:
            error = str(e)
            log.error(
                "config.rejected file=%s reason=%s; keeping the running configuration "
                "(%d services, %d real servers)",
                path, e, len(self.desired.services), running,
            )
        except DataplaneError as e:  # a map write failed: keep serving, say so
            error = str(e)
            log.error("config.not_applied file=%s reason=%s", path, e)
        else:
            self._warn_local_vips(base)
            self.config = new
            self._log_plan(planned, path, trigger)
            self._warn_if_all_drained()
        self._last_reload_ok = planned is not None
        self._reloads[planned is not None] += 1
        self._last_reload_at = time.time()
        if planned is not None:
            self._last_reload_success_at = self._last_reload_at
        self._last_reload_error = error
        self.snapshot = self._make_snapshot()
        status = self.status() if planned else f"{self.status()} (last reload rejected)"
        self.notifier.notify(f"READY=1\nSTATUS={status}")
        return planned is not None

    def _log_plan(self, planned: state.Plan, path: Path, trigger: str) -> None:
        if not planned.changed:
            log.info("config.unchanged file=%s trigger=%s", path, trigger)
            return
        for old, new in planned.renamed:
            log.warning("config.service_renamed from=%s to=%s: a service is known by its "
                        "name, so the clients of %s pick their servers anew", old, new, old)
        for name in planned.removed:
            log.info("config.service_removed service=%s (its clients are forgotten)", name)
        for name in planned.added:
            spec = planned.layout.services[name]
            log.info("config.service_added service=%s mode=%s vip=%s ports=%s real_servers=%s",
                     name, spec.mode, spec.vip, ",".join(map(str, spec.ports)),
                     ",".join(map(str, spec.servers)))
        for change in planned.changes:
            if not change.changed:
                continue
            spec = planned.layout.services[change.name]
            log.info(
                "config.applied file=%s trigger=%s service=%s mode=%s vip=%s ports=%s added=%s "
                "removed=%s reweighted=%s real_servers=%s",
                path, trigger, change.name, spec.mode, spec.vip, ",".join(map(str, spec.ports)),
                ",".join(map(str, change.added)) or "-",
                ",".join(map(str, change.removed)) or "-",
                ",".join(map(str, change.reweighted)) or "-",
                ",".join(map(str, spec.servers)),
            )

    # -- control requests (sbulbctl), answered on the control server's
    # threads: read self.snapshot once (frozen), and the maps

    def handle_control(self, command: str, args: dict) -> object:
        """Answer one sbulbctl request. `service` (a name) narrows every
        command to one service; without it they cover all services."""
        snapshot = self.snapshot
        ids = _service_arg(args, snapshot)
        names = snapshot.names()
        if command == "status":
            return self.status_report(ids, snapshot)
        if command in ("server.disable", "server.enable"):
            server = _address_arg(args, "server", required=True)
            assert server is not None
            target: IPAddress = server
            chosen = [name for i, name in sorted(names.items()) if i in ids]
            return self._in_main_loop(lambda: self._set_disabled(
                target, chosen, command == "server.disable"))
        if command == "restart":  # once sbulbctl has its answer
            return AfterAnswer({"pid": os.getpid()}, self.request_restart)
        if command in ("server.set-weight", "server.drain", "server.reset"):
            server = _address_arg(args, "server", required=True)
            assert server is not None
            member: IPAddress = server
            weight: int | None = None
            if command == "server.set-weight":
                if args.get("weight") is None:
                    raise ControlError("set-weight needs a weight")
                weight = _int_arg(args, "weight")
                if weight > MAX_WEIGHT:
                    raise ControlError(f"weight must be 0 to {MAX_WEIGHT}, not {weight}")
            elif command == "server.drain":
                weight = 0
            picked = [name for i, name in sorted(names.items()) if i in ids]
            return self._in_main_loop(lambda: self._set_weight(member, picked, weight))
        if command == "associations.list":
            client = _address_arg(args, "client")
            server = _address_arg(args, "server")
            limit = _int_arg(args, "limit")
            entries = sorted(self.dataplane.service_associations().items(),
                             key=lambda item: (item[0][0], item[0][1].packed, item[0][2]))
            found = [
                {"service": names.get(i, str(i)), "client": str(c), "port": p, "server": str(s)}
                for (i, c, p), s in entries
                if i in ids and (client is None or c == client) and (server is None or s == server)
            ]
            return {"total": len(found), "associations": found[:limit] if limit else found}
        if command == "associations.count":
            return sum(n for (i, _), n in self.dataplane.association_counts().items() if i in ids)
        if command in ("associations.get", "associations.delete"):
            client = _address_arg(args, "client", required=True)
            port = _port_arg(args)
            assert client is not None
            if command == "associations.delete":
                deleted = [names.get(i, str(i)) for i in sorted(ids)
                           if self.dataplane.delete_association(client, port, i)]
                log.info("assoc.deleted client=%s services=%s by=sbulbctl",
                         endpoint(client, port), ",".join(deleted) or "-")
                return bool(deleted)
            owners = {names.get(i, str(i)): server for i in sorted(ids)
                      if (server := self.dataplane.association(client, port, i)) is not None}
            if len(owners) > 1:
                raise ControlError(
                    f"{endpoint(client, port)} is a client of several services "
                    f"({', '.join(owners)}): choose one with --service")
            return str(next(iter(owners.values()))) if owners else None
        if command == "associations.flush":
            # every association only when asked in so many words ("all": true)
            flush_all = _bool_arg(args, "all")
            server = _address_arg(args, "server")
            if server is None and not flush_all:
                raise ControlError("server is required (or all: true, to flush every client)")
            if server is not None and flush_all:
                raise ControlError("flush one server's clients or all of them, not both")
            count = 0
            for (i, client, port), owner in self.dataplane.service_associations().items():
                if i in ids and (flush_all or owner == server):
                    count += self.dataplane.delete_association(client, port, i)
            log.info("assoc.flushed server=%s services=%s count=%d by=sbulbctl",
                     "*" if flush_all else server,
                     ",".join(names.get(i, str(i)) for i in sorted(ids)), count)
            return count
        raise ControlError(f"unknown command '{command}'")

    def status_report(self, ids: set[int] | None = None,
                      snapshot: Snapshot | None = None) -> dict:
        """What sbulbctl status shows: every service (or those of `ids`),
        its servers and their traffic, and the counters."""
        snapshot = snapshot or self.snapshot
        traffic = self.dataplane.member_traffic()
        copy_failures = self.dataplane.member_copy_failures()
        per_member = self.dataplane.association_counts()
        per_service: dict[int, int] = {}
        for (i, _), count in per_member.items():
            per_service[i] = per_service.get(i, 0) + count
        service_ids = [snapshot.ids[spec.name] for spec in snapshot.services]
        service_traffic = self.dataplane.service_traffic(service_ids)
        services = []
        for spec in snapshot.services:
            i = snapshot.ids[spec.name]
            if ids is not None and i not in ids:
                continue
            servers = []
            now = time.monotonic()
            for rs in spec.servers:
                t = traffic.get((i, rs.address), Traffic())
                view = snapshot.health.get((spec.name, rs.address))
                down = rs.address in spec.down
                disabled = (spec.name, rs.address) in snapshot.disabled
                file_weight = snapshot.file_weights.get((spec.name, rs.address))
                servers.append({
                    "address": str(rs.address),
                    "weight": rs.weight,
                    # sbulbctl set-weight / drain: what the file says under it
                    "file_weight": rs.weight if file_weight is None else file_weight,
                    "override": file_weight is not None,
                    "state": ("disabled" if disabled else "down" if down
                              else "active" if rs.weight else "drained"),
                    "associations": per_member.get((i, rs.address), 0),
                    **_traffic_fields(t),
                    # mirror: packets_to are the copies it was sent
                    **({} if spec.mode != "mirror" else {"primary": rs is spec.servers[0]}),
                    **({} if spec.mode not in COPY_MODES else {
                        "copy_failures": copy_failures.get((i, rs.address), 0),
                    }),
                    **({} if view is None else {
                        "health": view.state,
                        "health_since_s": round(now - view.since, 1),
                        "health_reason": view.reason,
                        "rtt_ms": None if view.rtt is None else round(view.rtt * 1000, 2),
                        "probes": view.probes,
                        "probe_failures": view.probe_failures,
                    }),
                })
            services.append({
                "name": spec.name,
                "id": i,
                "virtual_server": str(spec.vip),
                "ports": list(spec.ports),
                "mode": spec.mode,
                "scheduler": spec.scheduler.kind,
                **({} if spec.scheduler.kind != "maglev" else {
                    "maglev_table": spec.scheduler.table, "maglev_seed": spec.scheduler.seed}),
                "associations": per_service.get(i, 0),
                **_traffic_fields(service_traffic.get(i, Traffic())),
                **({} if spec.mode != "telemetry" else {
                    "templates": snapshot.templates.get(spec.name, state.TemplateCounts())._asdict(),
                }),
                "real_servers": servers,
            })
        report = {
            "version": __version__,
            "pid": os.getpid(),
            "interfaces": self.dataplane.attached_modes(),
            "forward": snapshot.forward,
            "config_file": snapshot.config_file,
            "last_reload_ok": snapshot.last_reload_ok,
            "last_reload_error": snapshot.last_reload_error,
            "last_reload_at": round(snapshot.last_reload_at, 3),
            "reloads": {"ok": snapshot.reloads_ok, "failed": snapshot.reloads_failed},
            "pinned": snapshot.pinned,
            # --announce-bird: each VIP, "announced" or why not
            "announcements": dict(snapshot.announcements),
            "pin_requested": snapshot.pin_requested,
            "associations": sum(per_service.get(snapshot.ids[spec.name], 0)
                                for spec in snapshot.services
                                if ids is None or snapshot.ids[spec.name] in ids),
            "max_associations": snapshot.max_associations,
            "services": services,
            "counters": {stat.name: value for stat, value in self.dataplane.stats().items()},
        }
        # sbulb's one virtual server, as before services: the default one
        # (or the only one)
        first = next((s for s in services if s["name"] == DEFAULT_SERVICE),
                     services[0] if len(services) == 1 else None)
        if first is not None:
            report.update(virtual_server=first["virtual_server"], ports=first["ports"],
                          real_servers=first["real_servers"])
        return report

    # -- main loop

    def _timeout(self) -> float:
        timeout = EVENT_INTERVAL if self.dataplane.events else IDLE_INTERVAL
        if self._file_changed_at is not None:
            timeout = self._file_changed_at + RELOAD_DEBOUNCE - time.monotonic()
        if self._watchdog is not None:
            timeout = min(timeout, self._next_ping - time.monotonic())
        if self._prober is not None and any(s.checks.passive_fall for s in self.base.services):
            timeout = min(timeout, self._next_passive - time.monotonic())
        if self._verdicts_waiting:
            timeout = min(timeout, self._next_verdicts - time.monotonic())
        return max(0.0, timeout)

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 when due: proof that the main loop turns."""
        if self._watchdog is not None and time.monotonic() >= self._next_ping:
            self.notifier.notify("WATCHDOG=1")
            self._next_ping = time.monotonic() + self._watchdog

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def loop(self) -> None:
        while not self._stop_requested:
            self._ping_watchdog()
            # the template ring buffer too: templates are kept at once
            templates = self.dataplane.templates_fd()
            select.select([self._wake_r] + ([templates] if templates is not None else []), [], [],
                          self._timeout())
            self._drain_wake_pipe()
            if self._stop_requested:
                break
            if self._reload_requested:
                self._reload_requested = False
                self._file_changed_at = None
                self.reload("signal")
            changed_at = self._file_changed_at
            if changed_at is not None and time.monotonic() - changed_at >= RELOAD_DEBOUNCE:
                self._file_changed_at = None
                self.reload("file")
            self._keep_templates()
            events = self.dataplane.poll_events()
            if events:
                names = self.snapshot.names()
                for event in events:
                    log_event(event, names)
            if self.config.forward == "fib":
                neigh.resolve(self.dataplane.take_neighbour_misses())
            self._run_jobs()
            if self._prober is not None:
                self._take_verdicts()

    def run(self, handle_signals: bool = True) -> int:
        """Start, serve until asked to stop, stop. Returns the exit code (0);
        raises StartError if it cannot start."""
        previous = {}
        if handle_signals:
            for signum in HANDLED_SIGNALS:
                previous[signum] = signal.signal(signum, self._on_signal)
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            # a restart in place blocks them until here (below): one sent
            # meanwhile is taken now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        try:
            self.start()
            try:
                self.loop()
            finally:
                self.stop()
        finally:
            if handle_signals:
                if self._restart_requested:
                    # from here to the next sbulb's handlers (cli.main execs
                    # it), signals stay pending, across the exec: a stop sent
                    # meanwhile is not lost. One taken since the restart began
                    # is sent again, for the next sbulb.
                    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
                    if self._stop_during_restart:
                        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
                signal.set_wakeup_fd(-1)
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return RESTART if self._restart_requested else 0


RESTART = -1  # run()'s answer to a restart in place: exec a new sbulb (cli.main)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
TAKEOVER_ENV = "SBULB_TAKEOVER"  # set for that new sbulb


def _shown(value: object) -> str:
    """A request's value in an error message: short, whatever it is."""
    if isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 40 else f"{text[:37]}..."
    return f"a JSON {type(value).__name__}"


def _address_arg(args: dict, name: str, required: bool = False) -> IPAddress | None:
    value = args.get(name)
    if value is None:
        if required:
            raise ControlError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ControlError(f"{name} must be an IP address (a string), not {_shown(value)}")
    try:
        return parse_address(value, name)
    except ConfigError as e:
        raise ControlError(str(e)) from None


def _file_weight(base: DesiredState, key: state.Member) -> int | None:
    """The weight a state gives a member, None if it has no such member."""
    spec = base.service(key[0])
    server = spec.server(key[1]) if spec is not None else None
    return server.weight if server is not None else None


def _service_arg(args: dict, snapshot: Snapshot) -> set[int]:
    """The ids a request covers: its `service`, or every service."""
    name = args.get("service")
    if name is None:
        return {snapshot.ids[s.name] for s in snapshot.services}
    if not isinstance(name, str):
        raise ControlError(f"service must be a name (a string), not {_shown(name)}")
    if snapshot.service(name) is None:
        known = ", ".join(s.name for s in snapshot.services)
        raise ControlError(f"no service '{name}' (services: {known})")
    return {snapshot.ids[name]}


def _int_arg(args: dict, name: str) -> int:
    value = args.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ControlError(f"{name} must be a whole number, not {_shown(value)}")
    return value


def _bool_arg(args: dict, name: str) -> bool:
    value = args.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ControlError(f"{name} must be true or false, not {_shown(value)}")
    return value


def _traffic_fields(t: Traffic) -> dict[str, int]:
    return {"packets_to": t.packets_to, "bytes_to": t.bytes_to,
            "packets_from": t.packets_from, "bytes_from": t.bytes_from}


def _port_arg(args: dict) -> int:
    value = args.get("port")
    if value is None:
        raise ControlError("a client port is required")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ControlError(f"port must be a number, not {_shown(value)}")
    try:
        port = int(value)
    except ValueError:
        raise ControlError(f"port must be a number, not {_shown(value)}") from None
    if not 1 <= port <= 65535:
        raise ControlError(f"port {port} is not between 1 and 65535")
    return port
