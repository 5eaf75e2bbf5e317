"""Prometheus metrics (off unless --metrics is given), through
prometheus-client: a collector that reads the data path's counters at each
scrape, served over HTTP by a thread of the daemon. Map reads are
lock-free syscalls, safe beside the main loop's writes.

    sbulb_packets_total{server,direction}       packets to / from a real server
    sbulb_bytes_total{server,direction}         frame bytes, idem
    sbulb_real_server_weight{server}            0: drained
    sbulb_associations                          client ip:port -> server entries
    sbulb_associations_max                      -ma
    sbulb_associations_created_total{by}        client, server, repick
    sbulb_forwarded_total{kind}                 rewritten packets: ingress, egress, icmp_*
    sbulb_passed_total{reason}                  given to the kernel untouched
    sbulb_drops_total{reason}                   dropped
    sbulb_forward_path_total{path}              how rewritten packets left (fib_tx, ...)
    sbulb_info{version,interfaces,virtual_server,forward}   1
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app

from sbulb import __version__
from sbulb.consts import Stat

if TYPE_CHECKING:
    from sbulb.service import Service

log = logging.getLogger(__name__)

class Collector:
    """Reads the service's data path at each scrape."""

    def __init__(self, service: "Service") -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        dp = service.dataplane
        config = service.config
        info = GaugeMetricFamily("sbulb_info", "sbulb instance",
                                 labels=["version", "interfaces", "virtual_server", "forward"])
        info.add_metric([__version__, ",".join(config.interfaces), str(config.virtual_server),
                         config.forward], 1)
        yield info

        packets = CounterMetricFamily("sbulb_packets", "Packets to and from each real server",
                                      labels=["server", "direction"])
        octets = CounterMetricFamily("sbulb_bytes", "Frame bytes to and from each real server",
                                     labels=["server", "direction"])
        weight = GaugeMetricFamily("sbulb_real_server_weight",
                                   "Weight of each real server (0: drained)", labels=["server"])
        traffic = dp.server_traffic()
        for server in service.real_servers:
            name = str(server.address)
            t = traffic.get(server.address)
            if t is not None:
                packets.add_metric([name, "to_server"], t.packets_to)
                packets.add_metric([name, "from_server"], t.packets_from)
                octets.add_metric([name, "to_server"], t.bytes_to)
                octets.add_metric([name, "from_server"], t.bytes_from)
            weight.add_metric([name], server.weight)
        yield packets
        yield octets
        yield weight

        yield GaugeMetricFamily("sbulb_associations", "Client ip:port -> real server entries",
                                value=len(dp.associations()))
        yield GaugeMetricFamily("sbulb_associations_max", "Size of the association map (-ma)",
                                value=config.limits.max_associations)

        stats = dp.stats()
        families = {
            "ASSOC_": CounterMetricFamily("sbulb_associations_created",
                                          "Associations created", labels=["by"]),
            "TX_": CounterMetricFamily("sbulb_forwarded", "Packets rewritten and sent on",
                                       labels=["kind"]),
            "PASS_": CounterMetricFamily("sbulb_passed", "Packets given to the kernel untouched",
                                         labels=["reason"]),
            "DROP_": CounterMetricFamily("sbulb_drops", "Packets dropped", labels=["reason"]),
            "FWD_": CounterMetricFamily("sbulb_forward_path",
                                        "How rewritten packets left", labels=["path"]),
        }
        for stat in Stat:
            if stat == Stat.PASS_FRAGMENT:
                continue  # retired
            for prefix, family in families.items():
                if stat.name.startswith(prefix):
                    family.add_metric([stat.name[len(prefix):].lower()], stats[stat])
        yield from families.values()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("metrics.request %s", format % args)


class MetricsServer:
    """The HTTP endpoint, in a daemon thread; stop() closes it."""

    def __init__(self, service: "Service", host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(service))  # type: ignore[arg-type]
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
