"""Prometheus metrics (off unless --metrics is given), through
prometheus-client: a collector that reads the running state's frozen
snapshot (sbulb/state.py) and the data path's counters at each scrape,
served over HTTP by a thread of the daemon. Map reads are lock-free
syscalls, safe beside the main loop's writes.

    sbulb_packets_total{service,server,direction}   packets to / from a real server
    sbulb_bytes_total{service,server,direction}     frame bytes, idem
    sbulb_real_server_weight{service,server}        0: drained
    sbulb_service_packets_total{service,direction}  packets to / from a service
    sbulb_service_bytes_total{service,direction}    frame bytes, idem
    sbulb_service_associations{service}             its clients
    sbulb_service_info{service,virtual_server,ports,mode}   1
    sbulb_associations                              client -> server entries, all services
    sbulb_associations_max                          -ma
    sbulb_associations_created_total{by}            client, server, repick
    sbulb_forwarded_total{kind}                     rewritten packets: ingress, egress, icmp_*
    sbulb_passed_total{reason}                      given to the kernel untouched
    sbulb_drops_total{reason}                       dropped
    sbulb_forward_path_total{path}                  how rewritten packets left (fib_tx, ...)
    sbulb_xdp_actions_total{action}                 the XDP action each packet finally got
    sbulb_info{version,interfaces,forward}          1
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app

from sbulb import __version__
from sbulb.consts import Stat, StatKind
from sbulb.dataplane import Dataplane, Traffic
from sbulb.state import Snapshot

log = logging.getLogger(__name__)


class Collector:
    """Reads the snapshot and the data path's counters at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot], dataplane: Dataplane) -> None:
        self.snapshot = snapshot
        self.dataplane = dataplane

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        dp = self.dataplane
        info = GaugeMetricFamily("sbulb_info", "sbulb instance",
                                 labels=["version", "interfaces", "forward"])
        info.add_metric([__version__, ",".join(snap.interfaces), snap.forward], 1)
        yield info

        packets = CounterMetricFamily("sbulb_packets", "Packets to and from each real server",
                                      labels=["service", "server", "direction"])
        octets = CounterMetricFamily("sbulb_bytes", "Frame bytes to and from each real server",
                                     labels=["service", "server", "direction"])
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
        svc_info = GaugeMetricFamily("sbulb_service_info", "A balanced service",
                                     labels=["service", "virtual_server", "ports", "mode"])
        traffic = dp.member_traffic()
        ids = [snap.ids[spec.name] for spec in snap.services]
        per_service = dp.service_traffic(ids)
        associations = dp.service_associations()
        counts: dict[int, int] = {}
        for (i, _, _) in associations:
            counts[i] = counts.get(i, 0) + 1
        for spec in snap.services:
            i = snap.ids[spec.name]
            svc_info.add_metric([spec.name, str(spec.vip), " ".join(map(str, spec.ports)),
                                 "sticky"], 1)
            _add_traffic(svc_packets, svc_octets, [spec.name], per_service.get(i, Traffic()))
            svc_assoc.add_metric([spec.name], counts.get(i, 0))
            for server in spec.servers:
                name = str(server.address)
                t = traffic.get((i, server.address), Traffic())
                _add_traffic(packets, octets, [spec.name, name], t)
                weight.add_metric([spec.name, name], server.weight)
        yield from (packets, octets, weight, svc_packets, svc_octets, svc_assoc, svc_info)

        yield GaugeMetricFamily("sbulb_associations", "Client ip:port -> real server entries",
                                value=len(associations))
        yield GaugeMetricFamily("sbulb_associations_max", "Size of the association map (-ma)",
                                value=snap.max_associations)

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
        }
        for stat in Stat:
            family = families.get(stat.kind)
            if family is not None:
                family.add_metric([stat.label], stats[stat])
        yield from families.values()


def _add_traffic(packets: CounterMetricFamily, octets: CounterMetricFamily, labels: list[str],
                 t: Traffic) -> None:
    packets.add_metric(labels + ["to_server"], t.packets_to)
    packets.add_metric(labels + ["from_server"], t.packets_from)
    octets.add_metric(labels + ["to_server"], t.bytes_to)
    octets.add_metric(labels + ["from_server"], t.bytes_from)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("metrics.request %s", format % args)


class MetricsServer:
    """The HTTP endpoint, in a daemon thread; stop() closes it."""

    def __init__(self, snapshot: Callable[[], Snapshot], dataplane: Dataplane, host: str,
                 port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(snapshot, dataplane))  # type: ignore[arg-type]
        app = make_wsgi_app(registry)
        try:
            is_v6 = ipaddress.ip_address(host).version == 6
        except ValueError:
            is_v6 = False  # a host name: IPv4
        server_class = _Server6 if is_v6 else _Server
        self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self.address = (host, self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        log.info("metrics.listening address=%s port=%d", host, self.address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
