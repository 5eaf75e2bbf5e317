"""Prometheus metrics (off unless --metrics is given), through
prometheus-client: a collector that reads the running state's frozen
snapshot (sbulb/state.py) and the data path's counters, rendered at most
once a second whatever the number of scrapes, served over HTTP by one
thread of the daemon (MetricsServer). Map reads are lock-free syscalls,
safe beside the main loop's writes.

    sbulb_packets_total{service,server,direction}   packets to / from a real server
    sbulb_bytes_total{service,server,direction}     frame bytes, idem
    sbulb_real_server_weight{service,server}        0: drained
    sbulb_service_packets_total{service,direction}  packets to / from a service
    sbulb_service_bytes_total{service,direction}    frame bytes, idem
    sbulb_service_associations{service}             its clients
    sbulb_real_server_associations{service,server}  the clients of each real server
    sbulb_associations_count_age_seconds            how old those counts are
    sbulb_associations_count_duration_seconds       what their last count took
    sbulb_service_info{service,virtual_server,ports,mode}   1
    sbulb_associations                              client -> server entries, all services
    sbulb_associations_max                          -ma
    sbulb_associations_fill_ratio                   sbulb_associations / _max
    sbulb_associations_created_total{by}            client, server, repick
    sbulb_forwarded_total{kind}                     rewritten packets: ingress, egress, icmp_*
    sbulb_passed_total{reason}                      given to the kernel untouched
    sbulb_drops_total{reason}                       dropped
    sbulb_forward_path_total{path}                  how rewritten packets left (fib_tx, ...)
    sbulb_xdp_actions_total{action}                 the XDP action each packet finally got
    sbulb_associations_refused_total{reason}        new clients not remembered (rate_limited)
    sbulb_info{version,interfaces,forward}          1
    sbulb_build_info{version,python,bcc,kernel}     1
    sbulb_associations_pinned                       1: in bpffs, kept over restarts
    sbulb_config_last_reload_successful             1, or 0 after a rejected reload
    sbulb_config_last_reload_success_timestamp_seconds  the last good one (or the start)
    sbulb_config_reloads_total{result}              success, failure
    process_*, python_*                             prometheus-client's own collectors

Association counts come from a walk of the map (batched reads, about
0.4 s for a million entries), not from the data path (an LRU map evicts
without telling anyone, so counts kept there would drift): a render
reuses the last counts unless they are older than max(1 s, 10 x the last
walk), so the walk takes at most a tenth of a CPU whatever the scrape rate.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import platform
import socket
import sys
import threading
import time
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from sbulb import __version__
from sbulb.config import COPY_MODES, IPAddress
from sbulb.consts import Stat, StatKind
from sbulb.dataplane import Dataplane, Traffic
from sbulb.state import RTT_BUCKETS, Snapshot, TemplateCounts

log = logging.getLogger(__name__)


COUNT_MIN_INTERVAL = 1.0  # seconds between two walks of the association map, at least
COUNT_SHARE = 0.1  # of the time, at most, spent walking it


class CountCache:
    """The association counts, walked again only when older than
    max(COUNT_MIN_INTERVAL, last walk / COUNT_SHARE). Used by the metrics
    thread only: no lock."""

    def __init__(self, count: Callable[[], dict[tuple[int, IPAddress], int]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._count = count
        self._clock = clock
        self.counts: dict[tuple[int, IPAddress], int] = {}
        self.taken_at: float | None = None
        self.duration = 0.0

    def get(self) -> dict[tuple[int, IPAddress], int]:
        now = self._clock()
        interval = max(COUNT_MIN_INTERVAL, self.duration / COUNT_SHARE)
        if self.taken_at is None or now - self.taken_at >= interval:
            self.counts = self._count()
            self.taken_at = self._clock()
            self.duration = self.taken_at - now
        return self.counts

    def age(self) -> float:
        return 0.0 if self.taken_at is None else max(0.0, self._clock() - self.taken_at)


def build_labels() -> list[str]:
    """version, python, bcc, kernel: what sbulb_build_info says."""
    bcc = sys.modules.get("bcc")
    return [__version__, platform.python_version(), str(getattr(bcc, "__version__", "")),
            platform.release()]


class Collector:
    """Reads the snapshot and the data path's counters at each render
    (Exposition: at most once per RENDER_INTERVAL, not at each scrape)."""

    def __init__(self, snapshot: Callable[[], Snapshot], dataplane: Dataplane) -> None:
        self.snapshot = snapshot
        self.dataplane = dataplane
        self.counts = CountCache(dataplane.association_counts)

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        dp = self.dataplane
        info = GaugeMetricFamily("sbulb_info", "sbulb instance",
                                 labels=["version", "interfaces", "forward"])
        info.add_metric([__version__, ",".join(snap.interfaces), snap.forward], 1)
        yield info
        build = GaugeMetricFamily("sbulb_build_info", "What sbulb runs on",
                                  labels=["version", "python", "bcc", "kernel"])
        build.add_metric(build_labels(), 1)
        yield build
        yield GaugeMetricFamily("sbulb_associations_pinned",
                                "1 if the associations are pinned in bpffs (kept over a "
                                "restart), 0 if a restart loses them",
                                value=1 if snap.pinned else 0)
        yield GaugeMetricFamily("sbulb_config_last_reload_successful",
                                "1 if the last reload of the config file was applied (or "
                                "none was asked), 0 if it was rejected",
                                value=1 if snap.last_reload_ok else 0)
        yield GaugeMetricFamily("sbulb_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last applied reload, or of the start",
                                value=snap.last_reload_success_at)
        reloads = CounterMetricFamily("sbulb_config_reloads", "Reloads of the config file",
                                      labels=["result"])
        reloads.add_metric(["success"], snap.reloads_ok)
        reloads.add_metric(["failure"], snap.reloads_failed)
        yield reloads

        packets = CounterMetricFamily("sbulb_packets", "Packets to and from each real server",
                                      labels=["service", "server", "direction"])
        octets = CounterMetricFamily("sbulb_bytes", "Frame bytes to and from each real server",
                                     labels=["service", "server", "direction"])
        up = GaugeMetricFamily("sbulb_real_server_up",
                               "1 if a real server takes new clients by its health (0: down; "
                               "unchecked servers are 1)", labels=["service", "server"])
        probes = CounterMetricFamily("sbulb_health_probes", "Health probes, by result",
                                     labels=["service", "server", "result"])
        rtt = HistogramMetricFamily("sbulb_health_probe_rtt_seconds",
                                    "Round-trip time of the good health probes",
                                    labels=["service", "server"])
        weight = GaugeMetricFamily("sbulb_real_server_weight",
                                   "Weight of each real server (0: drained)",
                                   labels=["service", "server"])
        svc_packets = CounterMetricFamily("sbulb_service_packets",
                                          "Packets to and from each service",
                                          labels=["service", "direction"])
        svc_octets = CounterMetricFamily("sbulb_service_bytes",
                                         "Frame bytes to and from each service",
                                         labels=["service", "direction"])
        svc_assoc = GaugeMetricFamily("sbulb_service_associations",
                                      "Client ip:port -> real server entries of each service",
                                      labels=["service"])
        rs_assoc = GaugeMetricFamily("sbulb_real_server_associations",
                                     "Client ip:port -> real server entries of each real server "
                                     "(counted: see sbulb_associations_count_age_seconds)",
                                     labels=["service", "server"])
        svc_info = GaugeMetricFamily("sbulb_service_info", "A balanced service",
                                     labels=["service", "virtual_server", "ports", "mode"])
        traffic = dp.member_traffic()
        copy_failures = dp.member_copy_failures()
        failed = CounterMetricFamily("sbulb_mirror_copy_failures",
                                     "Copies for each target of a mirror service that could "
                                     "not be made (no route through the interface, no "
                                     "neighbour); copies sent are its packets to the server",
                                     labels=["service", "server"])
        templates = CounterMetricFamily(
            "sbulb_telemetry_templates", "Telemetry template datagrams: seen (handed to the "
            "daemon), replayed to joining collectors, not kept (fragments, unreadable)",
            labels=["service", "result"])
        exporters = GaugeMetricFamily("sbulb_telemetry_exporters",
                                      "Exporters whose templates a telemetry service keeps",
                                      labels=["service"])
        ids = [snap.ids[spec.name] for spec in snap.services]
        per_service = dp.service_traffic(ids)
        per_member = self.counts.get()
        counts: dict[int, int] = {}
        for (i, _), n in per_member.items():
            counts[i] = counts.get(i, 0) + n
        for spec in snap.services:
            i = snap.ids[spec.name]
            svc_info.add_metric([spec.name, str(spec.vip), " ".join(map(str, spec.ports)),
                                 spec.mode], 1)
            _add_traffic(svc_packets, svc_octets, [spec.name], per_service.get(i, Traffic()))
            svc_assoc.add_metric([spec.name], counts.get(i, 0))
            if spec.mode == "telemetry":
                tc = snap.templates.get(spec.name, TemplateCounts())
                for result in ("seen", "replayed", "not_kept"):
                    templates.add_metric([spec.name, result], getattr(tc, result))
                exporters.add_metric([spec.name], tc.exporters)
            for server in spec.servers:
                name = str(server.address)
                t = traffic.get((i, server.address), Traffic())
                _add_traffic(packets, octets, [spec.name, name], t)
                weight.add_metric([spec.name, name], server.weight)
                rs_assoc.add_metric([spec.name, name], per_member.get((i, server.address), 0))
                up.add_metric([spec.name, name], 0 if server.address in spec.down else 1)
                if spec.mode in COPY_MODES:
                    failed.add_metric([spec.name, name], copy_failures.get((i, server.address), 0))
                view = snap.health.get((spec.name, server.address))
                if view is not None:
                    probes.add_metric([spec.name, name, "ok"], view.probes - view.probe_failures)
                    probes.add_metric([spec.name, name, "failed"], view.probe_failures)
                    if view.rtt_counts:
                        buckets = [(str(bound), count) for bound, count
                                   in zip(RTT_BUCKETS, view.rtt_counts)]
                        buckets.append(("+Inf", view.rtt_counts[-1]))
                        rtt.add_metric([spec.name, name], buckets, view.rtt_sum)
        yield from (packets, octets, weight, svc_packets, svc_octets, svc_assoc, rs_assoc,
                    svc_info, failed)
        yield from (up, probes, rtt, templates, exporters)

        total = sum(per_member.values())
        yield GaugeMetricFamily("sbulb_associations_count_age_seconds",
                                "Seconds since the association counts were taken (a walk "
                                "of the map, repeated at most every max(1 s, 10 x its duration))",
                                value=round(self.counts.age(), 3))
        yield GaugeMetricFamily("sbulb_associations_count_duration_seconds",
                                "How long the last walk of the association map took",
                                value=round(self.counts.duration, 6))
        yield GaugeMetricFamily("sbulb_associations", "Client ip:port -> real server entries",
                                value=total)
        yield GaugeMetricFamily("sbulb_associations_max", "Size of the association map (-ma)",
                                value=snap.max_associations)
        yield GaugeMetricFamily("sbulb_associations_fill_ratio",
                                "How full the association map is (0..1): near 1, new "
                                "clients evict the least recently seen ones",
                                value=total / max(1, snap.max_associations))

        stats = dp.stats()
        families = {
            StatKind.ASSOC: CounterMetricFamily("sbulb_associations_created",
                                                "Associations created", labels=["by"]),
            StatKind.TX: CounterMetricFamily("sbulb_forwarded", "Packets rewritten and sent on",
                                             labels=["kind"]),
            StatKind.PASS: CounterMetricFamily("sbulb_passed",
                                               "Packets given to the kernel untouched",
                                               labels=["reason"]),
            StatKind.DROP: CounterMetricFamily("sbulb_drops", "Packets dropped",
                                               labels=["reason"]),
            StatKind.FWD: CounterMetricFamily("sbulb_forward_path",
                                              "How rewritten packets left", labels=["path"]),
            StatKind.ACTION: CounterMetricFamily("sbulb_xdp_actions",
                                                 "The XDP action each packet finally got",
                                                 labels=["action"]),
            StatKind.LIMIT: CounterMetricFamily("sbulb_associations_refused",
                                                "New clients balanced but not remembered",
                                                labels=["reason"]),
            StatKind.MIRROR: CounterMetricFamily("sbulb_mirror_copies",
                                                 "Copies of datagrams to mirror services, "
                                                 "sent or not made", labels=["result"]),
            StatKind.TEMPLATE: CounterMetricFamily("sbulb_telemetry_template_frames",
                                                   "Telemetry templates: copies sent, and "
                                                   "those the daemon could not be given",
                                                   labels=["result"]),
        }
        for stat in Stat:
            family = families.get(stat.kind)
            if family is not None:
                family.add_metric([stat.label], stats[stat])
        yield from families.values()


def make_registry(snapshot: Callable[[], Snapshot], dataplane: Dataplane) -> CollectorRegistry:
    """sbulb's metrics, and the process's (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(snapshot, dataplane))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def _add_traffic(packets: CounterMetricFamily, octets: CounterMetricFamily, labels: list[str],
                 t: Traffic) -> None:
    packets.add_metric(labels + ["to_server"], t.packets_to)
    packets.add_metric(labels + ["from_server"], t.packets_from)
    octets.add_metric(labels + ["to_server"], t.bytes_to)
    octets.add_metric(labels + ["from_server"], t.bytes_from)


# Why the server looks like this: the metrics port is reachable by any local
# user, so what a client can make the daemon spend must not grow with the
# number of clients. One thread serves every connection from a selector (a
# thread per connection let 3000 idle clients starve the main loop, and with
# it sbulbctl and systemd's watchdog); a connection lives REQUEST_TIMEOUT
# seconds at most, whatever it does; at most MAX_CONNECTIONS are open, the
# excess is closed as soon as it is accepted; and the exposition text (whose
# rendering walks the whole association map) is rendered at most once per
# RENDER_INTERVAL, however many scrapes come.

MAX_CONNECTIONS = 64  # open at once; more are closed on accept
REQUEST_TIMEOUT = 5.0  # seconds a connection may live: request, answer and close
RENDER_INTERVAL = 1.0  # seconds between the end of a render and the next one
MAX_REQUEST = 8192  # bytes of request line and headers
LISTEN_BACKLOG = 128
ACCEPTS_PER_WAKEUP = 64  # then serve the open connections before accepting more
STOP_TIMEOUT = 30.0  # seconds stop() waits for a render in progress


class Exposition:
    """The rendered exposition text, shared by every scrape: render() runs
    again only when the text is RENDER_INTERVAL old, counted from the end
    of the last render (so a slow render is not followed by another at
    once). A failed render is remembered as None for as long, so failures
    cost no more than successes. Used by the server thread only: no lock."""

    def __init__(self, render: Callable[[], bytes], interval: float = RENDER_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._render = render
        self._interval = interval
        self._clock = clock
        self._text: bytes | None = None
        self._fresh_until: float | None = None
        self.renders = 0

    def get(self) -> bytes | None:
        """The text, or None if the last render failed."""
        if self._fresh_until is None or self._clock() >= self._fresh_until:
            self.renders += 1
            try:
                self._text = self._render()
            except Exception as e:  # a map read that failed: one line, the daemon goes on
                log.warning("metrics.render_failed error=%s", e or type(e).__name__)
                self._text = None
            self._fresh_until = self._clock() + self._interval
        return self._text


class _Connection:
    """One client: the request read so far, then the answer left to send,
    then (answer sent, our side shut) what it still sends, discarded until
    it closes: closing with unread data would reset the connection and
    could cut the answer short."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.answer: memoryview | None = None  # None: still reading the request
        self.lingering = False


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head: bool = False, extra: str = "") -> bytes:
    header = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return header.encode("ascii") + (b"" if head else body)


class MetricsServer:
    """The HTTP endpoint: one thread, a selector, bounded connections and a
    cached rendering (see above). stop() ends it and joins its thread, so
    nothing reads the data path once stop() has returned."""

    def __init__(self, snapshot: Callable[[], Snapshot], dataplane: Dataplane, host: str,
                 port: int, max_connections: int = MAX_CONNECTIONS,
                 timeout: float = REQUEST_TIMEOUT, render_interval: float = RENDER_INTERVAL
                 ) -> None:
        registry = make_registry(snapshot, dataplane)
        self.exposition = Exposition(lambda: generate_latest(registry), render_interval)
        self._max_connections = max_connections
        self._timeout = timeout
        try:
            is_v6 = ipaddress.ip_address(host).version == 6
        except ValueError:
            is_v6 = False  # a host name: IPv4
        listener = socket.socket(socket.AF_INET6 if is_v6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        # stop() writes a byte here to wake the selector
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._connections: dict[socket.socket, _Connection] = {}
        self._stopping = False
        self.rejected = 0  # connections closed on accept: too many open
        self._next_warning = 0.0
        self.address = (host, listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics.listening address=%s port=%d", host, self.address[1])

    def stop(self) -> None:
        """Stop accepting, close every connection, end the thread and wait
        for it (a render in progress finishes first)."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the thread has ended already
        self._thread.join(timeout=STOP_TIMEOUT)
        if self._thread.is_alive():
            log.warning("metrics.stop_timeout seconds=%s", STOP_TIMEOUT)
        self._wake_w.close()

    close = stop

    # -- the server thread

    def _serve(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                # wake up for the next deadline; at least once a second anyway
                wait = min([c.deadline for c in self._connections.values()], default=now + 1.0)
                for key, _ in self._selector.select(max(0.0, min(wait - now, 1.0))):
                    if self._stopping:
                        break
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wakeups()
                    else:
                        conn = self._connections.get(key.fileobj)  # type: ignore[call-overload]
                        if conn is not None:
                            self._service(conn)
                now = time.monotonic()
                for conn in [c for c in self._connections.values() if c.deadline <= now]:
                    log.debug("metrics.timeout")
                    self._close(conn)
        except Exception:
            log.exception("metrics.failed: the metrics endpoint has stopped")
        finally:
            for conn in list(self._connections.values()):
                self._close(conn)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()

    def _warn_rarely(self, message: str, *args: object) -> None:
        """At most one warning a minute: a client must not flood the log."""
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + 60.0
            log.warning(message, *args)

    def _drain_wakeups(self) -> None:
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE, ECONNABORTED...: the next wakeup retries
                self._warn_rarely("metrics.accept_failed error=%s", e.strerror or e)
                # the listener stays readable: back off rather than spin
                time.sleep(0.1)
                return
            if len(self._connections) >= self._max_connections:
                self.rejected += 1
                sock.close()
                self._warn_rarely("metrics.busy open=%d rejected_total=%d: connection closed",
                                  len(self._connections), self.rejected)
                continue
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + self._timeout)
            self._connections[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _service(self, conn: _Connection) -> None:
        try:
            if conn.answer is not None and not conn.lingering:
                self._send(conn)
                return
            data = conn.sock.recv(4096)
            if not data:  # the client has closed (or given up)
                self._close(conn)
                return
            if conn.lingering:
                return  # discarded
            conn.request += data
            end = conn.request.find(b"\r\n\r\n")
            if end < 0:
                end = conn.request.find(b"\n\n")
            if end >= 0:
                conn.answer = memoryview(self._answer(bytes(conn.request[:end])))
                self._send(conn)
            elif len(conn.request) > MAX_REQUEST:
                conn.answer = memoryview(_response("431 Request Header Fields Too Large",
                                                   b"request too large\n"))
                self._send(conn)
        except OSError:  # reset by the client and the like
            self._close(conn)

    def _answer(self, request: bytes) -> bytes:
        parts = request.split(b"\r\n" if b"\r\n" in request else b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response("400 Bad Request", b"bad request\n")
        method = parts[0]
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET or HEAD\n",
                             extra="Allow: GET, HEAD\r\n")
        # every path answers the metrics, as prometheus-client's own server does
        text = self.exposition.get()
        if text is None:
            return _response("500 Internal Server Error", b"cannot read the counters\n",
                             head=method == b"HEAD")
        return _response("200 OK", text, CONTENT_TYPE_LATEST, head=method == b"HEAD")

    def _send(self, conn: _Connection) -> None:
        assert conn.answer is not None
        try:
            sent = conn.sock.send(conn.answer)
        except BlockingIOError:
            sent = 0  # the send buffer is full: wait until it is writable
        conn.answer = conn.answer[sent:]
        if conn.answer:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, None)
            return
        # all sent: shut our side, then wait (within the deadline) for the
        # client to close, discarding whatever it still sends
        conn.sock.shutdown(socket.SHUT_WR)
        conn.lingering = True
        self._selector.modify(conn.sock, selectors.EVENT_READ, None)

    def _close(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock, None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
