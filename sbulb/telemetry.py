"""Telemetry services: each exporter's latest templates, and their replay.

The data path copies a NetFlow v9 / IPFIX datagram that holds a template to
every collector of a telemetry service, and hands its frame to the daemon
(sbulb/bpf/telemetry.h). An exporter sends its templates only now and then
(softflowd: every 16 datagrams; routers: every few minutes), so a collector
that joins (added, back from weight 0, back up) could not decode its share
of the data until then. The daemon keeps, per exporter (address, source
port, version, source id / observation domain), the latest datagram that
carried each template id, and sends them to a joining collector before the
data path gives it any data: from the exporter's address and port (a raw
socket), as the exporter sent them, since collectors key templates by
exporter.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

from sbulb.config import IPAddress
from sbulb.state import ServiceSpec, TemplateCounts

log = logging.getLogger("sbulb")

NF9, IPFIX = 9, 10
# the sets that hold templates: v9 flowset ids 0 and 1, IPFIX set ids 2 and 3
TEMPLATE_SETS = {NF9: (0, 1), IPFIX: (2, 3)}
HEADER_LEN = {NF9: 20, IPFIX: 16}
MAX_EXPORTERS = 4096  # per service; the oldest one seen goes first
MAX_TEMPLATES = 256  # template ids per exporter


class Exporter(NamedTuple):
    address: IPAddress
    port: int
    version: int  # 9 or 10
    domain: int  # v9 source id, IPFIX observation domain


@dataclass(frozen=True)
class TemplateDatagram:
    """A template datagram as an exporter sent it."""

    exporter: Exporter
    port: int  # the service port it was sent to
    template_ids: tuple[int, ...]
    payload: bytes  # the UDP payload


def parse_frame(frame: bytes) -> TemplateDatagram | None:
    """The template datagram in an Ethernet frame (IPv4 or IPv6, UDP), or
    None if it is not one whole datagram with templates we can read (a
    fragment: its templates may lie in the fragments that follow)."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        (frag,) = struct.unpack_from("!H", frame, 20)
        if frame[23] != socket.IPPROTO_UDP or frag & 0x3FFF or ihl < 20:
            return None
        source: IPAddress = ipaddress.IPv4Address(frame[26:30])
        udp = 14 + ihl
    elif ethertype == 0x86DD and len(frame) >= 62:
        if frame[20] != socket.IPPROTO_UDP:  # extension headers (a fragment): not kept
            return None
        source = ipaddress.IPv6Address(frame[22:38])
        udp = 54
    else:
        return None
    if len(frame) < udp + 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", frame, udp)
    payload = frame[udp + 8:udp + length]
    if length < 8 or len(payload) != length - 8:
        return None
    header = exporter_header(payload)
    if header is None:
        return None
    version, domain = header
    ids = template_ids(payload)
    if not ids:
        return None
    return TemplateDatagram(Exporter(source, sport, version, domain), dport, ids, payload)


def exporter_header(payload: bytes) -> tuple[int, int] | None:
    """(version, source id / observation domain) of a v9 / IPFIX export."""
    if len(payload) < 4:
        return None
    (version,) = struct.unpack_from("!H", payload)
    if version == NF9 and len(payload) >= 20:
        return version, struct.unpack_from("!I", payload, 16)[0]
    if version == IPFIX and len(payload) >= 16:
        return version, struct.unpack_from("!I", payload, 12)[0]
    return None


def template_ids(payload: bytes) -> tuple[int, ...]:
    """The template ids a v9 / IPFIX export defines (its template and
    options template sets), in order; () if it defines none or is
    malformed."""
    header = exporter_header(payload)
    if header is None:
        return ()
    version = header[0]
    end = len(payload)
    if version == IPFIX:
        (end,) = struct.unpack_from("!H", payload, 2)
        if end > len(payload):
            return ()
    ids: list[int] = []
    off = HEADER_LEN[version]
    while off + 4 <= end:
        set_id, length = struct.unpack_from("!HH", payload, off)
        if length < 4 or off + length > end:
            return ()
        if set_id in TEMPLATE_SETS[version]:
            ids.extend(_set_templates(payload[off + 4:off + length], version, set_id))
        off += length
    return tuple(ids)


def _set_templates(body: bytes, version: int, set_id: int) -> list[int]:
    """The template ids of the records of one template set (a set ends
    with padding shorter than a record header)."""
    ids, off = [], 0
    options = set_id == TEMPLATE_SETS[version][1]
    while off + 4 <= len(body):
        template_id, count = struct.unpack_from("!HH", body, off)
        if template_id < 256:  # padding, or not a template
            break
        ids.append(template_id)
        if version == NF9 and options:  # id, scope length, option length (bytes)
            if off + 6 > len(body):
                break
            (options_len,) = struct.unpack_from("!H", body, off + 4)
            off += 6 + count + options_len
            continue
        off += 6 if options else 4  # IPFIX options: the scope field count too
        for _ in range(count):  # field specifiers: type, length[, enterprise]
            if off + 4 > len(body):
                return ids
            (kind,) = struct.unpack_from("!H", body, off)
            off += 8 if version == IPFIX and kind & 0x8000 else 4
    return ids


class TemplateStore:
    """Each telemetry service's exporters and their latest template
    datagrams (per template id), bounded."""

    def __init__(self, max_exporters: int = MAX_EXPORTERS) -> None:
        self.max_exporters = max_exporters
        self._kept: dict[str, OrderedDict[Exporter, OrderedDict[int, TemplateDatagram]]] = {}
        self._counts: dict[str, TemplateCounts] = {}

    def add(self, service: str, frame: bytes) -> TemplateDatagram | None:
        """Keep the template datagram in a frame the data path handed over."""
        counts = self._counts.get(service, TemplateCounts())
        datagram = parse_frame(frame)
        if datagram is None:
            self._counts[service] = TemplateCounts(counts.exporters, counts.seen + 1,
                                                   counts.replayed, counts.not_kept + 1)
            return None
        exporters = self._kept.setdefault(service, OrderedDict())
        templates = exporters.pop(datagram.exporter, OrderedDict())
        exporters[datagram.exporter] = templates  # the most recent last
        for template_id in datagram.template_ids:
            templates.pop(template_id, None)
            templates[template_id] = datagram
        while len(templates) > MAX_TEMPLATES:
            templates.popitem(last=False)
        while len(exporters) > self.max_exporters:
            exporters.popitem(last=False)
        self._counts[service] = TemplateCounts(len(exporters), counts.seen + 1,
                                               counts.replayed, counts.not_kept)
        return datagram

    def datagrams(self, service: str) -> list[TemplateDatagram]:
        """What a joining collector is sent: each exporter's kept datagrams,
        each once, oldest first (a later one may redefine a template)."""
        out: list[TemplateDatagram] = []
        for templates in self._kept.get(service, {}).values():
            mine: list[TemplateDatagram] = []
            for datagram in templates.values():  # by when each template came last
                if not any(d is datagram for d in mine):
                    mine.append(datagram)
            out.extend(mine)
        return out

    def replayed(self, service: str, count: int) -> None:
        c = self._counts.get(service, TemplateCounts())
        self._counts[service] = TemplateCounts(c.exporters, c.seen, c.replayed + count, c.not_kept)

    def keep_only(self, services: Iterable[str]) -> None:
        """Forget the services that are no longer telemetry services."""
        wanted = set(services)
        for name in [n for n in self._kept if n not in wanted]:
            del self._kept[name]
        for name in [n for n in self._counts if n not in wanted]:
            del self._counts[name]

    def counts(self) -> dict[str, TemplateCounts]:
        return dict(self._counts)


def joiners(before: Mapping[str, ServiceSpec],
            after: Iterable[ServiceSpec]) -> dict[str, tuple[IPAddress, ...]]:
    """Per telemetry service, the collectors that start to get its data:
    copy targets now that were not before (added, back from weight 0 or
    from down; or the service just became a telemetry one)."""
    found: dict[str, tuple[IPAddress, ...]] = {}
    for spec in after:
        if spec.mode != "telemetry":
            continue
        old = before.get(spec.name)
        had = set(old.copies) if old is not None and old.mode == "telemetry" else set()
        new = tuple(a for a in spec.copies if a not in had)
        if new:
            found[spec.name] = new
    return found


def udp_packet(src: IPAddress, sport: int, dst: IPAddress, dport: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet (header included, for a raw socket) holding one
    UDP datagram, checksummed."""
    length = 8 + len(payload)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, socket.IPPROTO_UDP)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    check = _checksum(pseudo + header + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, length, check) + payload
    if src.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64,
                         socket.IPPROTO_UDP, 0, src.packed, dst.packed)
        # (a raw socket fills the id and the checksum anyway; a capture file needs it)
        return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + udp
    return struct.pack("!IHBB16s16s", 6 << 28, length, socket.IPPROTO_UDP, 64,
                       src.packed, dst.packed) + udp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Replayer:
    """Sends template datagrams from their exporter's address: raw sockets
    (one per family, opened on first use), through the host's routes."""

    def __init__(self) -> None:
        self._sockets: dict[int, socket.socket] = {}

    def send(self, datagram: TemplateDatagram, collector: IPAddress) -> bool:
        """One datagram to one collector; False (logged) if it cannot go."""
        exporter = datagram.exporter
        if exporter.address.version != collector.version:
            return False
        try:
            sock = self._sockets.get(collector.version)
            if sock is None:
                family = socket.AF_INET if collector.version == 4 else socket.AF_INET6
                # IPPROTO_RAW: the packet carries its own IP header (any source)
                sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
                sock.setblocking(False)
                self._sockets[collector.version] = sock
            sock.sendto(udp_packet(exporter.address, exporter.port, collector, datagram.port,
                                   datagram.payload), (str(collector), 0))
        except OSError as e:
            log.warning("telemetry.replay_failed collector=%s exporter=%s reason=%s",
                        collector, exporter.address, e.strerror or e)
            return False
        return True

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
