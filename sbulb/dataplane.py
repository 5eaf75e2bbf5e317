"""The C/Python boundary: compile and load the XDP program, own its maps,
attach it to interfaces, run it on test packets.

This is the only module that imports bcc or ctypes. Everything it returns is
plain Python (ipaddress objects, dataclasses, enums). Map keys and values are
written as bytes of the sizes checked in tests/test_contract.py; bcc derives
the ctypes types from the C declarations, so nothing is mirrored by hand.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes as ct
import errno
import importlib.resources
import ipaddress
import logging
import os
import re
import socket
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from sbulb import neigh, state
from sbulb.config import MAX_INTERFACES, MAX_MIRROR_TARGETS, IPAddress, Limits, RealServer
from sbulb.consts import EVENTS_NONE, STAT_MAX, EventType, Stat, XdpAction

log = logging.getLogger(__name__)

PROG_NAME = "sbulb_xdp"  # kernel program name, how sbulb recognises its own
MIRROR_PROG_NAME = "sbulb_mirror_tx"  # the egress program of every devmap entry (mirror.h)
BPF_XDP_DEVMAP = 33  # enum bpf_attach_type: a devmap entry's egress program

# uapi linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4  # swap in place of the program named by old_prog_fd

# Capability bits (uapi linux/capability.h)
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39

_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"

ADDR_SIZE = 16  # struct sbulb_addr
ENDPOINT_SIZE = 20  # struct sbulb_endpoint
MEMBER_REF_SIZE = 8  # struct sbulb_member_ref
SERVICE_SIZE = 48  # struct sbulb_service
MEMBER_SIZE = 24  # struct sbulb_member
ASSOC_KEY_SIZE = 20  # struct sbulb_assoc_key
ASSOC_SIZE = 16  # struct sbulb_assoc
EVENT_SIZE = 60  # struct sbulb_event
SERVICE_NAME_SIZE = 32  # a registry entry: the name, NUL-padded


BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "sbulb"
# Versioned: a new layout gets a new name. v1 was keyed by client ip:port
# alone (one VIP); v2 adds the service id. A v1 pin is migrated at start.
ASSOC_PIN = "sbulb_assoc_v2"
LEGACY_ASSOC_PIN = "sbulb_assoc_v1"
# Service name -> id, beside the associations they key (ids must survive a
# restart with them).
REGISTRY_PIN = "sbulb_services_v1"
REGISTRY_ENTRIES = 8193  # ids 1..2 * config.LIMIT_MAX_SERVICES (state.max_service_id)
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_LRU_HASH = 9


NETNS_DIR = Path("/run/netns")


def pin_dir(interface: str) -> Path:
    """Where an instance on `interface` pins its maps: /sys/fs/bpf/sbulb/<if>/;
    inside a named network namespace (`ip netns add NAME`),
    /sys/fs/bpf/sbulb/<if>@<NAME>/, since bpffs is shared by all of them."""
    netns = os.stat("/proc/self/ns/net").st_ino
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        names = []
    for name in names:
        try:
            if os.stat(NETNS_DIR / name).st_ino == netns:
                return PIN_ROOT / f"{interface}@{name}"
        except OSError:
            continue
    return PIN_ROOT / interface


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says of a map (struct bpf_map_info)."""

    type: int
    key_size: int
    value_size: int
    max_entries: int


def pinned_map_info(path: Path) -> MapInfo | None:
    """The layout of a pinned map, or None if there is none there."""
    lib = libbpf()
    fd = lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        return None
    try:
        info = ct.create_string_buffer(40)
        size = ct.c_uint32(40)
        if lib.bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) < 0:
            return None
        kind, _id, key, value, entries = struct.unpack_from("5I", info.raw)
        return MapInfo(kind, key, value, entries)
    finally:
        os.close(fd)


class DataplaneError(Exception):
    """The data path cannot be set up. str() is one line for the operator."""


def addr_to_bytes(address: IPAddress) -> bytes:
    """struct sbulb_addr: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    if address.version == 4:
        return _V4_MAPPED_PREFIX + address.packed
    return address.packed


def addr_from_bytes(raw: bytes) -> IPAddress:
    address = ipaddress.IPv6Address(bytes(raw))
    return address.ipv4_mapped or address


@dataclass(frozen=True)
class TestRun:
    """The outcome of running the program once on a frame."""

    action: XdpAction
    frame: bytes
    duration_ns: int


@dataclass(frozen=True)
class Event:
    """A data-path event (struct sbulb_event)."""

    type: EventType
    service: int  # service id
    client: IPAddress
    client_port: int
    port: int
    server: IPAddress
    other: IPAddress | None


@dataclass(frozen=True)
class TemplateFrame:
    """A telemetry template datagram as it reached the data path (the whole
    frame, before NAT), for the daemon to keep (sbulb/telemetry.py)."""

    service: int  # service id
    frame: bytes


# template frames held between two polls at most (the ring buffer holds
# about 120; more would only be a flood the daemon need not keep)
MAX_PENDING_TEMPLATES = 1024


@dataclass(frozen=True)
class ServerChange:
    """What a real-server update changed."""

    added: tuple[IPAddress, ...]
    removed: tuple[IPAddress, ...]
    kept: tuple[IPAddress, ...]
    reordered: bool = False  # weights or order changed the round-robin cycle

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.reordered)


@dataclass(frozen=True)
class Traffic:
    """Packets and frame bytes of one real server, both directions."""

    packets_to: int = 0
    bytes_to: int = 0
    packets_from: int = 0
    bytes_from: int = 0

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.packets_to + other.packets_to, self.bytes_to + other.bytes_to,
                       self.packets_from + other.packets_from, self.bytes_from + other.bytes_from)


@dataclass(frozen=True)
class AttachedProgram:
    """An XDP program attached to an interface."""

    id: int
    name: str
    flags: int  # XDP_FLAGS_DRV_MODE or XDP_FLAGS_SKB_MODE


# ---- libbpf through ctypes ------------------------------------------------
#
# Debian 12's bcc (0.26) has no working bpf_prog_test_run binding (libbpf 1.0
# removed the call it wraps), so the libbpf 1.x calls are bound here, with
# each opts struct declared as libbpf 1.1 declares it: libbpf reads `sz` and
# accepts any size it knows.


class _TestRunOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


class _XdpAttachOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("old_prog_fd", ct.c_int), ("_pad", ct.c_int)]


class _XdpQueryOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("prog_id", ct.c_uint32),
        ("drv_prog_id", ct.c_uint32),
        ("hw_prog_id", ct.c_uint32),
        ("skb_prog_id", ct.c_uint32),
        ("attach_mode", ct.c_uint8),
        ("_pad", ct.c_uint8 * 7),
    ]


# struct bpf_prog_info up to and including `name` (uapi linux/bpf.h).
_PROG_INFO_NAME_OFFSET = 64
_PROG_INFO_SIZE = 80


def _libbpf() -> ct.CDLL:
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_map_create.argtypes = [
        ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.c_void_p
    ]
    lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
    lib.bpf_map_get_next_key.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    lib.bpf_map_lookup_batch.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_void_p,
                                         ct.c_void_p, ct.POINTER(ct.c_uint32), ct.c_void_p]
    lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
    lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.POINTER(_TestRunOpts)]
    lib.bpf_xdp_attach.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(_XdpAttachOpts)]
    lib.bpf_xdp_detach.argtypes = [ct.c_int, ct.c_uint32, ct.POINTER(_XdpAttachOpts)]
    lib.bpf_xdp_query.argtypes = [ct.c_int, ct.c_int, ct.POINTER(_XdpQueryOpts)]
    lib.bpf_prog_get_fd_by_id.argtypes = [ct.c_uint32]
    lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    lib.bpf_obj_get.argtypes = [ct.c_char_p]
    lib.bpf_prog_load.argtypes = [
        ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_char_p, ct.c_size_t, ct.c_void_p
    ]
    return lib


_lib: ct.CDLL | None = None


def libbpf() -> ct.CDLL:
    global _lib
    if _lib is None:
        _lib = _libbpf()
    return _lib


def _errstr(ret: int) -> str:
    return os.strerror(-ret if ret < 0 else ct.get_errno())


# ---- environment checks ----------------------------------------------------


def missing_privileges() -> str | None:
    """Why this process cannot load XDP programs, or None."""
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)
        caps = int(match.group(1), 16) if match else 0
    except OSError:
        caps = 0

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if has(CAP_NET_ADMIN) and (has(CAP_SYS_ADMIN) or has(CAP_BPF)):
        return None
    return (
        "not enough privileges to load an XDP program: run sbulb as root "
        "(it needs CAP_BPF or CAP_SYS_ADMIN, and CAP_NET_ADMIN)"
    )


def kernel_headers_problem() -> str | None:
    """Why bcc will not find kernel headers, or None."""
    release = os.uname().release
    override = os.environ.get("BCC_KERNEL_SOURCE")
    build = Path(override) if override else Path(f"/lib/modules/{release}/build")
    if build.is_dir() or Path("/sys/kernel/kheaders.tar.xz").exists():
        return None
    return (
        f"kernel headers for {release} not found at {build}: install "
        f"linux-headers-{release}, or run `make setup`, which links the "
        "distribution's newest headers there"
    )


def interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise DataplaneError(f"no such network interface '{name}'") from None


def source_dir() -> Path:
    """The directory of the C sources, shipped as package data."""
    path = importlib.resources.files("sbulb").joinpath("bpf")
    if not isinstance(path, Path) or not (path / "balancer.c").is_file():
        raise DataplaneError(f"sbulb's C sources are not on the file system ({path})")
    return path


@contextlib.contextmanager
def _captured_stderr(enabled: bool = True) -> Iterator[list[str]]:
    """Collect what C libraries (clang, bcc, libbpf) write on fd 2, so that a
    failure is reported in one line; the text is handed to the caller."""
    lines: list[str] = []
    if not enabled:
        yield lines
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _explain_failure(what: str, exc: Exception, output: list[str]) -> str:
    text = "\n".join(output)
    if "kconfig.h' file not found" in text or "Unable to find kernel headers" in text:
        return (
            f"kernel headers for {os.uname().release} are missing or incomplete: "
            "run `make setup` or install the linux-headers package of this kernel"
        )
    errors = [line.strip() for line in output if "error:" in line]
    if errors:
        return f"cannot {what}: {errors[0]}"
    if "Failed to load BPF program" in str(exc):
        # the verifier's last words before its summary are the reason
        summary = [i for i, line in enumerate(output) if line.startswith("processed ")]
        detail = output[summary[0] - 1].strip() if summary and summary[0] > 0 else str(exc)
        return f"the kernel rejected the XDP program: {detail}"
    return f"cannot {what}: {exc}"


# ---- the data plane ----------------------------------------------------------


class Dataplane:
    """One loaded instance of the XDP program and its maps."""

    def __init__(
        self,
        limits: Limits,
        events: int = EVENTS_NONE,
        debug: int = 0,
        sources: Path | None = None,
        forward: str = "fib",
        defines: dict[str, int] | None = None,
        pin: Path | None = None,
    ) -> None:
        self.limits = limits
        self.events = events
        self.debug = debug
        self.forward = forward
        self._defines = dict(defines or {})  # more -D, for tests
        self.pin = pin  # directory to pin the associations in, or None
        self._sources = sources
        self._bpf = None  # bcc.BPF, once loaded
        self._fn = None  # bcc function (the program fd)
        self._tx_fn = None  # the devmap entries' egress program (mirror.h)
        self._interfaces: dict[str, int] = {}  # ifname -> ifindex: where it will be attached
        self.mirror_interfaces: dict[int, str] = {}  # mirror slot -> where its copies leave
        self._registry: _Registry | None = None  # service name <-> id
        self._legacy_fd: int | None = None  # a v1 association pin to migrate
        self._layout = state.Layout()  # configure() / set_real_servers() only
        self._single: tuple[IPAddress, tuple[int, ...], tuple[RealServer, ...]] | None = None
        self._attached: dict[str, tuple[int, int]] = {}  # ifname -> (ifindex, flags)
        self._ifslots: dict[int, int] = {}  # ifindex -> devmap slot
        self._events: list[Event] = []
        self._templates: list[TemplateFrame] = []

    # -- build

    def cflags(self) -> list[str]:
        sources = self._sources or source_dir()
        return [
            f"-I{sources}",
            f"-DSBULB_MAX_PORTS={self.limits.max_ports}",
            f"-DSBULB_MAX_REAL_SERVERS={self.limits.max_real_servers}",
            f"-DSBULB_MAX_SERVICES={self.limits.max_services}",
            f"-DSBULB_MAX_MEMBERS={self.limits.max_members}",
            f"-DSBULB_MAX_ENDPOINTS={self.limits.max_endpoints}",
            f"-DSBULB_MAX_ASSOCIATIONS={self.limits.max_associations}",
            *self._rate_flags(),
            f"-DSBULB_EVENTS={self.events}",
            f"-DSBULB_FORWARD_FIB={int(self.forward == 'fib')}",
            f"-DSBULB_MAX_INTERFACES={MAX_INTERFACES}",
            *(f"-D{name}={value}" for name, value in self._defines.items()),
            *([f'-DSBULB_ASSOC_PIN="{self.pin / ASSOC_PIN}"'] if self.pin else []),
        ]

    def _rate_flags(self) -> list[str]:
        """The new-association rate limit, shared evenly among the CPUs
        (each CPU has its own bucket: no lock), with a burst of a tenth of
        a second's worth."""
        rate = self.limits.new_associations_per_second
        if rate == 0:
            return []
        cpus = os.cpu_count() or 1
        interval = max(1, cpus * 1_000_000_000 // rate)
        burst = max(1, rate // 10 // cpus)
        return [f"-DSBULB_NEW_ASSOC_INTERVAL_NS={interval}", f"-DSBULB_NEW_ASSOC_BURST={burst}"]

    def load(self) -> None:
        """Compile the program and load it into the kernel (not attached)."""
        problem = kernel_headers_problem()
        if problem:
            raise DataplaneError(problem)
        if self.pin is not None:
            self._prepare_pin(self.pin)
        sources = self._sources or source_dir()
        try:
            from bcc import BPF  # imported here: importing bcc loads libbcc
        except ImportError:
            raise DataplaneError(
                "bcc is not importable: install python3-bpfcc (`make setup`) and run "
                "sbulb with Debian's /usr/bin/python3"
            ) from None

        with _captured_stderr(enabled=self.debug == 0) as output:
            try:
                bpf = BPF(
                    src_file=str(sources / "balancer.c").encode(),
                    cflags=self.cflags(),
                    debug=self.debug,
                )
            except Exception as e:
                failure: tuple[str, Exception] | None = ("compile the XDP program", e)
            else:
                failure = None
                try:
                    fn = bpf.load_func(PROG_NAME.encode(), BPF.XDP)
                    tx = bpf.load_func(MIRROR_PROG_NAME.encode(), BPF.XDP,
                                       attach_type=BPF_XDP_DEVMAP)
                except Exception as e:
                    failure = ("load the XDP program", e)
        for line in output:
            log.debug("bpf.output %s", line)
        if failure:
            raise DataplaneError(_explain_failure(failure[0], failure[1], output))
        self._bpf, self._fn, self._tx_fn = bpf, fn, tx
        if self._registry is None:
            self._registry = _Registry(None)
        if self.events:
            self._table("sbulb_events").open_ring_buffer(self._on_event)
        self._table("sbulb_templates").open_ring_buffer(self._on_template)
        log.info("dataplane.loaded prog_fd=%d cflags=%s", fn.fd, " ".join(self.cflags()[1:]))

    def _prepare_pin(self, directory: Path) -> None:
        """Keep a pinned association map whose layout and size match this
        build (its clients keep their servers), and the service ids that
        key it; replace any other, saying why. A pin of the previous
        layout (v1) is kept open for migrate_legacy(). Without bpffs, run
        unpinned, saying so."""
        if not os.path.ismount(BPFFS):
            # an ERROR: clients silently losing their servers at the next
            # restart is what sbulb exists to prevent (--no-pin says it is meant)
            log.error("pin.unavailable reason=bpffs is not mounted at %s: associations will "
                      "not survive a restart (mount -t bpf bpf %s, or --no-pin)", BPFFS, BPFFS)
            self.pin = None
            return
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise DataplaneError(f"cannot create {directory}: {e.strerror}") from None
        path = directory / ASSOC_PIN
        wanted = MapInfo(BPF_MAP_TYPE_LRU_HASH, ASSOC_KEY_SIZE, ASSOC_SIZE,
                         self.limits.max_associations)
        kept = _check_pin(path, wanted, "the associations it held are lost")
        if kept:
            log.info("pin.reused path=%s (associations kept)", path)
        else:
            log.info("pin.new path=%s", path)
        # the ids the kept associations are keyed by; new ones otherwise
        registry = directory / REGISTRY_PIN
        if not kept:
            registry.unlink(missing_ok=True)
        self._registry = _Registry(registry)
        # a v1 pin is migrated whenever it is there: also after a migration
        # that was cut short (the copy never overwrites, so it can run again)
        legacy = directory / LEGACY_ASSOC_PIN
        if legacy.exists():
            info = pinned_map_info(legacy)
            if info is not None and (info.type, info.key_size, info.value_size) == (
                    BPF_MAP_TYPE_LRU_HASH, ASSOC_KEY_SIZE, ASSOC_SIZE):
                self._legacy_fd = libbpf().bpf_obj_get(str(legacy).encode())
            else:
                log.warning("pin.legacy_unreadable path=%s: its associations are lost", legacy)
                legacy.unlink()

    def registered_services(self) -> dict[str, int]:
        """Service name -> id, as the pinned registry kept them (empty when
        new or unpinned)."""
        assert self._registry is not None, "load() first"
        return self._registry.read()

    def migrate_legacy(self, service_of: Callable[[IPAddress], int | None]) -> tuple[int, int]:
        """Copy the associations of a v1 pin (one VIP, keyed by client
        ip:port) into this map, each under the service id service_of(its
        server) gives (None: dropped), never over an entry already here;
        then remove the v1 pin. Returns (copied, dropped)."""
        if self._legacy_fd is None:
            return 0, 0
        fd, self._legacy_fd = self._legacy_fd, None
        table = self._table("sbulb_assoc")
        copied = dropped = 0
        try:
            for raw_key, raw_value in _map_items(fd, ASSOC_KEY_SIZE, ASSOC_SIZE):
                service = service_of(addr_from_bytes(raw_value))
                if service is None:
                    dropped += 1
                    continue
                key = raw_key[:ADDR_SIZE + 2] + struct.pack("H", service)
                k = table.Key.from_buffer_copy(key)
                try:
                    table[k]
                    continue  # a newer association is here already
                except KeyError:
                    pass
                table[k] = table.Leaf.from_buffer_copy(raw_value)
                copied += 1
        finally:
            os.close(fd)
        assert self.pin is not None
        (self.pin / LEGACY_ASSOC_PIN).unlink(missing_ok=True)
        log.info("pin.migrated from=%s to=%s copied=%d dropped=%d", LEGACY_ASSOC_PIN, ASSOC_PIN,
                 copied, dropped)
        return copied, dropped

    @property
    def loaded(self) -> bool:
        return self._bpf is not None

    @property
    def prog_fd(self) -> int:
        assert self._fn is not None, "load() first"
        return int(self._fn.fd)

    def _table(self, name: str):  # -> bcc table
        assert self._bpf is not None, "load() first"
        return self._bpf[name.encode()]

    def _put_array(self, name: str, base: int, values: Sequence[int]) -> None:
        """Write u32 values into an array map from index `base`, in batches
        (a Maglev table is 65537 entries: one syscall per 8192)."""
        table = self._table(name)
        step = 8192
        for start in range(0, len(values), step):
            chunk = values[start:start + step]
            keys = (table.Key * len(chunk))(*(table.Key(base + start + i)
                                               for i in range(len(chunk))))
            leaves = (table.Leaf * len(chunk))(*chunk)
            table.items_update_batch(keys, leaves)

    def _put(self, name: str, key: bytes, value: bytes) -> None:
        table = self._table(name)
        table[table.Key.from_buffer_copy(key)] = table.Leaf.from_buffer_copy(value)

    def _delete(self, name: str, key: bytes) -> None:
        table = self._table(name)
        try:
            del table[table.Key.from_buffer_copy(key)]
        except KeyError:
            pass

    # -- configuration

    def apply(self, writes: Sequence[state.Write]) -> None:
        """Apply a plan's writes (sbulb/state.py), in order. Raises
        DataplaneError on the first that fails."""
        for write in writes:
            try:
                self._apply(write)
            except DataplaneError:
                raise
            except Exception as e:  # bcc raises plain Exceptions on map writes
                raise DataplaneError(f"cannot apply {write}: {' '.join(str(e).split())}") from None

    def _apply(self, w: state.Write) -> None:
        if isinstance(w, state.PutVipPort):
            self._put("sbulb_vip_ports", _endpoint(w.vip, w.port), struct.pack("I", w.service))
        elif isinstance(w, state.DelVipPort):
            self._delete("sbulb_vip_ports", _endpoint(w.vip, w.port))
        elif isinstance(w, state.PutEndpoint):
            self._put("sbulb_endpoints", _endpoint(w.address, w.port),
                      struct.pack("II", w.service, w.slot))
        elif isinstance(w, state.DelEndpoint):
            self._delete("sbulb_endpoints", _endpoint(w.address, w.port))
        elif isinstance(w, state.PutMember):
            self._put("sbulb_rs", struct.pack("I", w.slot),
                      addr_to_bytes(w.address) + struct.pack("II", w.service, w.flags))
        elif isinstance(w, state.ClearMember):
            self._put("sbulb_rs", struct.pack("I", w.slot), bytes(MEMBER_SIZE))
            stats = self._table("sbulb_rs_stats")
            for index in (2 * w.slot, 2 * w.slot + 1):
                stats.clearitem(stats.Key(index))
            for name in ("sbulb_rs_unreach", "sbulb_rs_copy_fail"):
                counters = self._table(name)
                counters.clearitem(counters.Key(w.slot))
        elif isinstance(w, state.PutRing):
            self._put("sbulb_ring", struct.pack("I", w.index), struct.pack("I", w.slot))
        elif isinstance(w, state.PutService):
            self._put("sbulb_svc", struct.pack("I", w.id),
                      addr_to_bytes(w.vip) + struct.pack("8I", w.ring_base, w.ring_len, w.flags,
                                                         w.mirror, w.copy_base, w.copy_len,
                                                         w.maglev_base, w.maglev_len))
        elif isinstance(w, state.PutMaglev):
            self._put_array("sbulb_maglev", w.base, w.slots)
        elif isinstance(w, state.ClearService):
            self._put("sbulb_svc", struct.pack("I", w.id), bytes(SERVICE_SIZE))
            stats = self._table("sbulb_svc_stats")
            for index in (2 * w.id, 2 * w.id + 1):
                stats.clearitem(stats.Key(index))
            rr = self._table("sbulb_rr")
            rr[rr.Key(w.id)] = rr.Leaf()
        elif isinstance(w, state.PutMirror):
            if w.targets:
                ifindex = self._mirror_interface(w.targets)
                self.mirror_interfaces[w.slot] = socket.if_indextoname(ifindex)
                for i in range(len(w.targets)):
                    self._put(f"sbulb_mirror_{w.slot}", struct.pack("I", i),
                              self._devmap_entry(ifindex))
        elif isinstance(w, state.TrimMirror):
            for i in range(w.keep, MAX_MIRROR_TARGETS):
                self._delete(f"sbulb_mirror_{w.slot}", struct.pack("I", i))
        elif isinstance(w, state.PutAddress):
            self._put(_ADDRESS_MAPS[w.kind], addr_to_bytes(w.address), struct.pack("I", 1))
        elif isinstance(w, state.DelAddress):
            self._delete(_ADDRESS_MAPS[w.kind], addr_to_bytes(w.address))
        elif isinstance(w, state.NameService):
            assert self._registry is not None
            self._registry.put(w.id, w.name)
        elif isinstance(w, state.ForgetService):
            assert self._registry is not None
            self._registry.put(w.id, "")
        else:
            raise DataplaneError(f"unknown write {w!r}")

    # sbulb's one virtual server, for tests and the bench: the service
    # `default`, planned and applied here (the daemon plans for itself).

    def configure(self, vip: IPAddress, ports: Sequence[int]) -> None:
        """Set the virtual server and the balanced ports."""
        servers = self._single[2] if self._single else ()
        self._apply_single(vip, tuple(ports), servers)

    def set_real_servers(self, servers: Sequence[RealServer | IPAddress]) -> ServerChange:
        """Make `servers` the real servers of the one virtual server (an
        address alone has weight 1). See sbulb/state.py for the order of
        the writes."""
        if self._single is None:
            raise DataplaneError("configure() first")
        wanted = tuple(s if isinstance(s, RealServer) else RealServer(s) for s in servers)
        if len(wanted) > self.limits.max_real_servers:
            raise DataplaneError(f"more than {self.limits.max_real_servers} real servers")
        if len({s.address for s in wanted}) != len(wanted):
            raise DataplaneError("a real server is listed twice")
        vip, ports, _ = self._single
        return self._apply_single(vip, ports, wanted)

    def set_services(self, desired: state.DesiredState) -> state.Plan:
        """Make the maps hold `desired` (tests and the bench; the daemon
        plans and applies for itself). Afterwards configure() starts the
        one virtual server anew."""
        try:
            planned = state.plan(self._layout, desired, self.limits)
        except state.PlanError as e:
            raise DataplaneError(str(e)) from None
        self.apply(planned.writes)
        self._layout, self._single = planned.layout, None
        return planned

    def service_id(self, name: str) -> int:
        return self._layout.ids[name]

    def member_slot(self, service: str, address: IPAddress) -> int:
        """The slot of a (service, real server) (tests)."""
        return self._layout.slots[(service, address)]

    def _apply_single(self, vip: IPAddress, ports: tuple[int, ...],
                      servers: tuple[RealServer, ...]) -> ServerChange:
        desired = state.DesiredState.single(vip, ports, servers)
        old_ring = self._layout.rings.get("default")
        try:
            planned = state.plan(self._layout, desired, self.limits)
        except state.PlanError as e:
            raise DataplaneError(str(e)) from None
        self.apply(planned.writes)
        self._layout, self._single = planned.layout, (vip, ports, servers)
        change = planned.changes[0] if planned.changes else None
        addresses = tuple(s.address for s in servers)
        added = change.added if change else addresses
        return ServerChange(
            added=added,
            removed=change.removed if change else (),
            kept=tuple(a for a in addresses if a not in added),
            reordered=planned.layout.rings.get("default", (0, ()))[1] != (old_ring or (0, ()))[1],
        )

    # -- state

    def real_servers(self) -> list[IPAddress]:
        """The real servers the maps hold (drained ones included), by slot,
        each once."""
        found: list[IPAddress] = []
        for _, address, _ in self._members():
            if address not in found:
                found.append(address)
        return found

    def _members(self) -> list[tuple[int, IPAddress, int]]:
        """(slot, real server, service id) of every filled member slot."""
        rs = self._table("sbulb_rs")
        result = []
        for key, value in rs.items():
            raw = bytes(value)
            service, _ = struct.unpack_from("II", raw, ADDR_SIZE)
            if service:
                result.append((key.value, addr_from_bytes(raw[:ADDR_SIZE]), service))
        return sorted(result, key=lambda item: item[0])

    def member_unreachable(self) -> dict[tuple[int, IPAddress], int]:
        """(service id, real server) -> ICMP destination-unreachable errors
        translated for it so far, summed over CPUs (passive health)."""
        table = self._table("sbulb_rs_unreach")
        return {(service, address): int(table.sum(table.Key(slot)).value)
                for slot, address, service in self._members()}

    def member_copy_failures(self) -> dict[tuple[int, IPAddress], int]:
        """(service id, real server) -> mirror copies for it that could not
        be made (no route through the interface, no neighbour), summed over
        CPUs."""
        table = self._table("sbulb_rs_copy_fail")
        return {(service, address): int(table.sum(table.Key(slot)).value)
                for slot, address, service in self._members()}

    def member_traffic(self) -> dict[tuple[int, IPAddress], Traffic]:
        """(service id, real server) -> its traffic, summed over CPUs."""
        stats = self._table("sbulb_rs_stats")
        return {(service, address): _traffic(stats, slot)
                for slot, address, service in self._members()}

    def server_traffic(self) -> dict[IPAddress, Traffic]:
        """Traffic per real server (drained ones included), over all its
        services, summed over CPUs."""
        result: dict[IPAddress, Traffic] = {}
        for (_, address), t in self.member_traffic().items():
            result[address] = result[address] + t if address in result else t
        return result

    def service_traffic(self, ids: Sequence[int]) -> dict[int, Traffic]:
        """Service id -> its traffic, summed over CPUs."""
        stats = self._table("sbulb_svc_stats")
        return {i: _traffic(stats, i) for i in ids}

    def ring(self, service: int | None = None) -> list[IPAddress]:
        """A service's round-robin cycle as the maps hold it (default: the
        one virtual server of configure())."""
        if service is None:
            service = self._layout.ids.get("default", 0)
        raw = bytes(self._table("sbulb_svc")[self._table("sbulb_svc").Key(service)])
        base, length = struct.unpack_from("II", raw, ADDR_SIZE)
        ring = self._table("sbulb_ring")
        rs = self._table("sbulb_rs")
        return [addr_from_bytes(bytes(rs[rs.Key(ring[ring.Key(base + i)].value)])[:ADDR_SIZE])
                for i in range(length)]

    def service_associations(self) -> dict[tuple[int, IPAddress, int], IPAddress]:
        """(service id, client ip, client port) -> real server, as the LRU
        map holds them."""
        result = {}
        for key, value in self._table("sbulb_assoc").items():
            raw = bytes(key)
            (port,) = struct.unpack_from("!H", raw, ADDR_SIZE)  # network order
            (service,) = struct.unpack_from("H", raw, ADDR_SIZE + 2)  # host order
            result[(service, addr_from_bytes(raw[:ADDR_SIZE]), port)] = addr_from_bytes(
                bytes(value))
        return result

    def association_counts(self, batch: int = 0) -> dict[tuple[int, IPAddress], int]:
        """(service id, real server) -> how many clients the map holds for
        it: the map read in batches of `batch` entries (one syscall each, not
        two per entry) and counted in C (Counter over struct.iter_unpack),
        about 0.3 s for a million entries here."""
        counts: collections.Counter[tuple[tuple[int], tuple[bytes]]] = collections.Counter()
        fd = self._table("sbulb_assoc").map_fd
        for keys, values in _map_batches(fd, ASSOC_KEY_SIZE, ASSOC_SIZE, batch or BATCH_ENTRIES):
            counts.update(zip(struct.iter_unpack(f"{ADDR_SIZE + 2}xH", keys),
                              struct.iter_unpack(f"{ADDR_SIZE}s", values)))
        result: dict[tuple[int, IPAddress], int] = {}
        for ((service,), (server,)), n in counts.items():
            key = (service, addr_from_bytes(server))
            result[key] = result.get(key, 0) + n
        return result

    def associations(self) -> dict[tuple[IPAddress, int], IPAddress]:
        """(client ip, client port) -> real server, over every service (a
        client of two services appears once: use service_associations())."""
        return {(c, p): s for (_, c, p), s in self.service_associations().items()}

    def fragments_tracked(self) -> int:
        """Fragmented datagrams whose later fragments the program follows."""
        return sum(1 for _ in self._table("sbulb_frags").keys())

    def add_probe_endpoint(self, address: IPAddress, port: int) -> None:
        """A health-check probe socket's (local address, port): the answers
        real servers send it are for this host's stack (sbulb_probes).
        Safe from any thread (one map write)."""
        self._put("sbulb_probes", _endpoint(address, port), struct.pack("I", 1))

    def remove_probe_endpoint(self, address: IPAddress, port: int) -> None:
        self._delete("sbulb_probes", _endpoint(address, port))

    def _assoc_key(self, client: IPAddress, port: int, service: int | None):
        if service is None:  # the one virtual server of configure()
            service = self._layout.ids.get("default", 0)
        table = self._table("sbulb_assoc")
        return table, table.Key.from_buffer_copy(
            addr_to_bytes(client) + struct.pack("!H", port) + struct.pack("H", service))

    def association(self, client: IPAddress, port: int,
                    service: int | None = None) -> IPAddress | None:
        """One client's real server in a service (one map lookup)."""
        table, key = self._assoc_key(client, port, service)
        try:
            return addr_from_bytes(bytes(table[key]))
        except KeyError:
            return None

    def delete_association(self, client: IPAddress, port: int, service: int | None = None) -> bool:
        """Forget one client's association in a service (default: the one
        virtual server of configure()); whether there was one."""
        table, key = self._assoc_key(client, port, service)
        try:
            del table[key]
        except KeyError:
            return False
        return True

    def attached_modes(self) -> dict[str, str]:
        """interface -> 'native' or 'generic'."""
        return {name: "native" if flags == XDP_FLAGS_DRV_MODE else "generic"
                for name, (_, flags) in self._attached.items()}

    def stats(self) -> dict[Stat, int]:
        """Counters summed over CPUs."""
        table = self._table("sbulb_stats")
        return {stat: int(table.sum(table.Key(stat)).value) for stat in Stat}

    def reset_state(self) -> None:
        """Forget associations, fragments, counters and the round-robin
        position (tests)."""
        self._table("sbulb_assoc").clear()
        self._table("sbulb_frags").clear()
        stats = self._table("sbulb_stats")
        for index in range(STAT_MAX):
            stats.clearitem(stats.Key(index))
        rr = self._table("sbulb_rr")
        for index in range(len(rr)):
            rr[rr.Key(index)] = rr.Leaf()
        for name in ("sbulb_rs_stats", "sbulb_svc_stats"):
            traffic = self._table(name)
            for index in range(len(traffic)):
                traffic.clearitem(traffic.Key(index))
        self.take_templates()

    # -- events

    def _on_event(self, _ctx: object, data: int, _size: int) -> int:
        raw = self._table("sbulb_events").event(data)
        other = bytes(raw.other)
        try:
            kind = EventType(raw.type)
        except ValueError:
            log.warning("event.unknown type=%d", raw.type)
            return 0
        self._events.append(
            Event(
                type=kind,
                service=int(raw.service),
                client=addr_from_bytes(bytes(raw.client)),
                client_port=socket.ntohs(raw.client_port),
                port=socket.ntohs(raw.port),
                server=addr_from_bytes(bytes(raw.server)),
                other=addr_from_bytes(other) if any(other) else None,
            )
        )
        return 0

    def _on_template(self, _ctx: object, data: int, size: int) -> int:
        raw = ct.string_at(data, size)  # struct sbulb_template
        service, length = struct.unpack_from("II", raw)
        if len(self._templates) < MAX_PENDING_TEMPLATES and 8 + length <= size:
            self._templates.append(TemplateFrame(service, raw[8:8 + length]))
        return 0

    def templates_fd(self) -> int | None:
        """The template ring buffer's map fd: readable (select) when the
        data path has handed over a template."""
        return None if self._bpf is None else self._table("sbulb_templates").map_fd

    def take_templates(self) -> list[TemplateFrame]:
        """Telemetry template frames the data path handed over since the
        last call (sbulb/bpf/telemetry.h)."""
        if self._bpf is None:
            return []
        self._bpf.ring_buffer_consume()
        templates, self._templates = self._templates, []
        return templates

    def poll_events(self) -> list[Event]:
        """Events emitted since the last call (none unless compiled in)."""
        if not self.events or self._bpf is None:
            return []
        self._bpf.ring_buffer_consume()
        events, self._events = self._events, []
        return events

    # -- attach

    def attached_programs(self, ifname: str) -> list[AttachedProgram]:
        """XDP programs attached to an interface, whoever attached them."""
        ifindex = interface_index(ifname)
        lib = libbpf()
        opts = _XdpQueryOpts(sz=ct.sizeof(_XdpQueryOpts))
        ret = lib.bpf_xdp_query(ifindex, 0, ct.byref(opts))
        if ret < 0:
            raise DataplaneError(f"cannot query XDP on {ifname}: {_errstr(ret)}")
        found = []
        for prog_id, flags in ((opts.drv_prog_id, XDP_FLAGS_DRV_MODE), (opts.skb_prog_id, XDP_FLAGS_SKB_MODE)):
            if prog_id:
                found.append(AttachedProgram(prog_id, _prog_name(prog_id), flags))
        return found

    def detach_program(self, ifname: str, program: AttachedProgram) -> None:
        """Detach a given program (only if it is still the one attached)."""
        ifindex = interface_index(ifname)
        lib = libbpf()
        fd = lib.bpf_prog_get_fd_by_id(program.id)
        if fd < 0:
            return  # already gone
        try:
            opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=fd)
            ret = lib.bpf_xdp_detach(ifindex, program.flags, ct.byref(opts))
            if ret < 0:
                raise DataplaneError(
                    f"cannot detach XDP program {program.id} from {ifname}: {_errstr(ret)}"
                )
        finally:
            os.close(fd)

    def replace(self, ifname: str, old: AttachedProgram) -> None:
        """Swap this program in place of `old` on an interface, in its XDP
        mode, in one step: the kernel's replace-if-expected attach
        (XDP_FLAGS_REPLACE), so no packet meets the interface without a
        program, and nothing is replaced if `old` is no longer the one there."""
        ifindex = interface_index(ifname)
        lib = libbpf()
        fd = lib.bpf_prog_get_fd_by_id(old.id)
        if fd < 0:
            raise DataplaneError(f"XDP program {old.id} on {ifname} is gone: {_errstr(fd)}")
        # a redirect target before the first packet (the old program's
        # devmap is its own)
        self._add_redirect_target(ifindex)
        try:
            opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=fd)
            ret = lib.bpf_xdp_attach(ifindex, self.prog_fd, old.flags | XDP_FLAGS_REPLACE,
                                     ct.byref(opts))
        finally:
            os.close(fd)
        if ret < 0:
            raise DataplaneError(f"cannot replace XDP program {old.id} on {ifname}: "
                                 f"{_errstr(ret)}")
        self._attached_here(ifname, ifindex, old.flags)

    def attach(self, ifname: str, mode: str = "auto") -> None:
        """Attach to an interface that has no XDP program, in `mode`: native
        (in the driver), generic (in the stack) or auto (native, else generic
        with a warning). The interface becomes a redirect target."""
        ifindex = interface_index(ifname)
        modes = {"native": [XDP_FLAGS_DRV_MODE], "generic": [XDP_FLAGS_SKB_MODE],
                 "auto": [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE]}[mode]
        for flags in modes:
            opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=0)
            ret = libbpf().bpf_xdp_attach(
                ifindex, self.prog_fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST, ct.byref(opts)
            )
            if ret >= 0:
                break
            if -ret in (errno.EBUSY, errno.EEXIST):
                raise DataplaneError(f"interface {ifname} already has an XDP program attached")
            if flags == XDP_FLAGS_DRV_MODE and mode == "auto":
                log.warning(
                    "dataplane.generic_xdp interface=%s reason=native XDP refused (%s): "
                    "falling back to generic XDP, which is slower",
                    ifname,
                    _errstr(ret),
                )
                continue
            raise DataplaneError(
                f"cannot attach XDP ({mode}) to {ifname}: {_errstr(ret)}"
                + (" (try --xdp-mode generic)" if mode == "native" else "")
            )
        self._attached_here(ifname, ifindex, flags)

    def _add_redirect_target(self, ifindex: int) -> None:
        if ifindex in self._ifslots:
            return
        slot = min(set(range(MAX_INTERFACES)) - set(self._ifslots.values()))
        self._put("sbulb_devmap", struct.pack("i", slot), self._devmap_entry(ifindex))
        self._put("sbulb_ifslot", struct.pack("I", ifindex), struct.pack("I", slot))
        self._ifslots[ifindex] = slot

    def _devmap_entry(self, ifindex: int) -> bytes:
        """struct bpf_devmap_val: the interface, and the egress program
        every copy of a mirrored frame needs (mirror.h)."""
        assert self._tx_fn is not None
        return struct.pack("ii", ifindex, self._tx_fn.fd)

    def expect_interfaces(self, names: Sequence[str]) -> None:
        """The interfaces this program is for, before it is attached: each
        becomes a redirect target now, so that mirror copies find their
        interface from the first packet."""
        for name in names:
            ifindex = interface_index(name)
            self._interfaces[name] = ifindex
            self._add_redirect_target(ifindex)

    def _mirror_interface(self, targets: Sequence[IPAddress]) -> int:
        """The one interface (ifindex) a mirror service's targets are
        reached through: copies of a frame must leave by one interface
        (mirror.h). DataplaneError if there is none."""
        generic = [name for name, (_, flags) in self._attached.items()
                   if flags == XDP_FLAGS_SKB_MODE]
        if generic:
            raise DataplaneError(f"mirror mode needs native XDP, and {', '.join(generic)} "
                                 "runs generic XDP (--xdp-mode native)")
        ours = dict(self._interfaces)
        ours.update({name: ifindex for name, (ifindex, _) in self._attached.items()})
        if not ours:
            raise DataplaneError("mirror mode needs the interfaces first (expect_interfaces)")
        if len(ours) == 1:
            return next(iter(ours.values()))
        names = {ifindex: name for name, ifindex in ours.items()}
        found = {target: neigh.route_interface(target) for target in targets}
        through = {names.get(i, f"ifindex {i}") for i in found.values()}
        strangers = sorted(str(t) for t, i in found.items() if i not in names)
        if strangers:
            raise DataplaneError(f"mirror targets {', '.join(strangers)} are not reached through "
                                 f"an interface sbulb is attached to ({', '.join(sorted(ours))})")
        if len(through) > 1:
            raise DataplaneError("the targets of one mirror service must be reached through one "
                                 f"interface, not {', '.join(sorted(through))}")
        return next(iter(found.values()))

    def _attached_here(self, ifname: str, ifindex: int, flags: int) -> None:
        self._attached[ifname] = (ifindex, flags)
        self._add_redirect_target(ifindex)
        log.info(
            "dataplane.attached interface=%s ifindex=%d mode=%s",
            ifname,
            ifindex,
            "native" if flags == XDP_FLAGS_DRV_MODE else "generic",
        )

    def detach(self, ifname: str) -> None:
        """Detach our program from an interface (if it is still ours there)."""
        if ifname not in self._attached:
            return
        ifindex, flags = self._attached.pop(ifname)
        slot = self._ifslots.pop(ifindex, None)
        if slot is not None and self._bpf is not None:
            self._delete("sbulb_ifslot", struct.pack("I", ifindex))
        opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=self.prog_fd)
        ret = libbpf().bpf_xdp_detach(ifindex, flags, ct.byref(opts))
        if ret < 0:
            log.warning("dataplane.detach_failed interface=%s error=%s", ifname, _errstr(ret))
        else:
            log.info("dataplane.detached interface=%s", ifname)

    def take_neighbour_misses(self) -> list[tuple[IPAddress, int]]:
        """Next hops (address, ifindex) the FIB had no neighbour for since the
        last call; they are forgotten once taken."""
        table = self._table("sbulb_neigh_miss")
        misses = []
        for key in list(table.keys()):
            raw = bytes(key)
            (ifindex,) = struct.unpack_from("I", raw, ADDR_SIZE)
            misses.append((addr_from_bytes(raw[:ADDR_SIZE]), ifindex))
            try:
                del table[key]
            except KeyError:
                pass
        return misses

    def detach_all(self) -> None:
        for ifname in list(self._attached):
            self.detach(ifname)

    def close(self, detach: bool = True) -> None:
        """Detach everywhere (unless told not to: a restart in place, whose
        next process takes the program over) and release the program and
        its maps (an attached program keeps its own)."""
        if detach:
            self.detach_all()
        else:
            self._attached.clear()
        if self._legacy_fd is not None:
            os.close(self._legacy_fd)
            self._legacy_fd = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
            self._fn = None

    # -- test runs

    def test_run(self, frame: bytes, repeat: int = 1, ingress_ifindex: int = 0) -> TestRun:
        """Run the program on one frame with BPF_PROG_TEST_RUN (no interface
        needed; with ingress_ifindex, as if received there, in the calling
        thread's network namespace). The maps are the live ones: state
        carries over."""
        data_in = ct.create_string_buffer(frame, len(frame))
        size_out = len(frame) + 512
        data_out = ct.create_string_buffer(size_out)
        opts = _TestRunOpts(
            sz=ct.sizeof(_TestRunOpts),
            data_in=ct.cast(data_in, ct.c_void_p),
            data_out=ct.cast(data_out, ct.c_void_p),
            data_size_in=len(frame),
            data_size_out=size_out,
            repeat=repeat,
        )
        if ingress_ifindex:
            ctx = _xdp_md(len(frame), ingress_ifindex)
            opts.ctx_in = ct.cast(ctx, ct.c_void_p)
            opts.ctx_size_in = ct.sizeof(ctx)
        ret = libbpf().bpf_prog_test_run_opts(self.prog_fd, ct.byref(opts))
        if ret < 0:
            raise DataplaneError(f"BPF_PROG_TEST_RUN failed: {_errstr(ret)}")
        return TestRun(
            action=XdpAction(opts.retval),
            frame=data_out.raw[: opts.data_size_out],
            duration_ns=int(opts.duration),
        )


_ADDRESS_MAPS = {"vip": "sbulb_vips", "server": "sbulb_rs_index"}


def _endpoint(address: IPAddress, port: int) -> bytes:
    """struct sbulb_endpoint."""
    return addr_to_bytes(address) + struct.pack("!HH", port, 0)


def _traffic(stats, index: int) -> Traffic:  # stats: a bcc per-CPU table
    sums = []
    for direction in (0, 1):  # enum sbulb_direction
        per_cpu = stats.getvalue(stats.Key(2 * index + direction))
        sums.append((sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu)))
    return Traffic(*sums[0], *sums[1])


def _check_pin(path: Path, wanted: MapInfo, loss: str) -> bool:
    """Whether a pinned map at `path` has the wanted layout (then it is
    kept); any other is removed, saying why and what is lost."""
    if not path.exists():
        return False
    found = pinned_map_info(path)
    if found == wanted:
        return True
    reason = "unreadable" if found is None else ", ".join(
        f"{name} {getattr(found, name)} != {getattr(wanted, name)}"
        for name in ("type", "key_size", "value_size", "max_entries")
        if getattr(found, name) != getattr(wanted, name))
    log.warning("pin.replaced path=%s reason=%s: %s", path, reason, loss)
    path.unlink()
    return False


BATCH_ENTRIES = 16384  # entries per BPF_MAP_LOOKUP_BATCH


def _map_batches(fd: int, key_size: int, value_size: int,
                 entries: int = BATCH_ENTRIES) -> Iterator[tuple[bytes, bytes]]:
    """A hash map's keys and values, `entries` at a time (packed, as the
    kernel lays them out), by BPF_MAP_LOOKUP_BATCH. The kernel returns
    whole buckets: a bucket larger than the batch (ENOSPC) doubles it. The
    map may change meanwhile; each entry is seen at most once."""
    lib = libbpf()
    token_in = ct.create_string_buffer(8)  # a hash map's batch token is its u32 bucket
    token_out = ct.create_string_buffer(8)
    count = ct.c_uint32()
    first = True
    while True:
        keys = ct.create_string_buffer(key_size * entries)
        values = ct.create_string_buffer(value_size * entries)
        while True:
            count.value = entries
            ret = lib.bpf_map_lookup_batch(fd, None if first else token_in, token_out, keys,
                                           values, ct.byref(count), None)
            err = 0 if ret == 0 else (-ret if ret < 0 else ct.get_errno())
            if err == errno.ENOSPC and count.value == 0:
                entries *= 2
                break  # larger buffers
            if err not in (0, errno.ENOENT):
                raise DataplaneError(f"reading a map failed: {os.strerror(err)}")
            n = count.value
            if n:
                yield ct.string_at(keys, n * key_size), ct.string_at(values, n * value_size)
            if err == errno.ENOENT:
                return
            ct.memmove(token_in, token_out, 8)
            first = False


def _map_items(fd: int, key_size: int, value_size: int) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a map, by fd (libbpf; the map need not be
    one of bcc's)."""
    lib = libbpf()
    key = ct.create_string_buffer(key_size)
    next_key = ct.create_string_buffer(key_size)
    value = ct.create_string_buffer(value_size)
    first = True
    while lib.bpf_map_get_next_key(fd, None if first else key, next_key) == 0:
        first = False
        ct.memmove(key, next_key, key_size)
        if lib.bpf_map_lookup_elem(fd, key, value) == 0:
            yield key.raw, value.raw


class _Registry:
    """Service name <-> id: an ARRAY map pinned beside the associations
    (id -> NUL-padded name; "" is free), or a dict when unpinned."""

    def __init__(self, path: Path | None) -> None:
        self._names: dict[int, str] = {}
        self._fd: int | None = None
        if path is None:
            return
        wanted = MapInfo(BPF_MAP_TYPE_ARRAY, 4, SERVICE_NAME_SIZE, REGISTRY_ENTRIES)
        lib = libbpf()
        if _check_pin(path, wanted, "services get new ids (their clients pick anew)"):
            fd = lib.bpf_obj_get(str(path).encode())
        else:
            fd = lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, b"sbulb_services", 4, SERVICE_NAME_SIZE,
                                    REGISTRY_ENTRIES, None)
            if fd >= 0 and lib.bpf_obj_pin(fd, str(path).encode()) < 0:
                error = _errstr(-ct.get_errno())
                os.close(fd)
                raise DataplaneError(f"cannot pin {path}: {error}")
        if fd < 0:
            raise DataplaneError(f"cannot open the service registry {path}: {_errstr(fd)}")
        self._fd = fd
        for raw_key, raw_value in _map_items(fd, 4, SERVICE_NAME_SIZE):
            name = raw_value.rstrip(b"\0").decode("utf-8", "replace")
            if name:
                self._names[struct.unpack("I", raw_key)[0]] = name

    def read(self) -> dict[str, int]:
        return {name: i for i, name in self._names.items()}

    def put(self, service: int, name: str) -> None:
        if self._fd is not None:
            key = ct.create_string_buffer(struct.pack("I", service), 4)
            value = ct.create_string_buffer(name.encode().ljust(SERVICE_NAME_SIZE, b"\0"),
                                            SERVICE_NAME_SIZE)
            if libbpf().bpf_map_update_elem(self._fd, key, value, 0) < 0:
                raise DataplaneError(f"cannot name service {service}: {_errstr(-ct.get_errno())}")
        if name:
            self._names[service] = name
        else:
            self._names.pop(service, None)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


def _xdp_md(frame_len: int, ingress_ifindex: int) -> ct.Array[ct.c_char]:
    """A test run's context, struct xdp_md: data, data_end, data_meta,
    ingress_ifindex, rx_queue_index, egress_ifindex."""
    return ct.create_string_buffer(struct.pack("6I", 0, frame_len, 0, ingress_ifindex, 0, 0))


def run_live_frames(prog_fd: int, frame: bytes, ingress_ifindex: int, repeat: int,
                    batch_size: int = 64) -> bool:
    """BPF_PROG_TEST_RUN in live frames mode: run an XDP program `repeat`
    times on copies of `frame` as if received on `ingress_ifindex` (in the
    calling thread's network namespace), and really send what it returns
    XDP_TX for out of that interface, as a driver would. The benchmark's load
    generator; on a veth, the frames land in the peer's receive ring.
    Returns False when a signal cut the run short (the kernel checks
    between batches): how a caller bounds it in time. Each call costs a
    setup and a teardown (an RCU grace period, milliseconds): make them
    long."""
    data_in = ct.create_string_buffer(frame, len(frame))
    ctx = _xdp_md(len(frame), ingress_ifindex)
    opts = _TestRunOpts(
        sz=ct.sizeof(_TestRunOpts),
        data_in=ct.cast(data_in, ct.c_void_p),
        data_size_in=len(frame),
        ctx_in=ct.cast(ctx, ct.c_void_p),
        ctx_size_in=ct.sizeof(ctx),
        repeat=repeat,
        flags=BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size=batch_size,
    )
    ret = libbpf().bpf_prog_test_run_opts(prog_fd, ct.byref(opts))
    if ret == -errno.EINTR:
        return False
    if ret < 0:
        raise DataplaneError(f"BPF_PROG_TEST_RUN (live frames) failed: {_errstr(ret)}")
    return True


BPF_PROG_TYPE_XDP = 6
PASS_PROG_NAME = "sbulb_pass"
# r0 = XDP_PASS; exit  (struct bpf_insn: code, dst/src regs, off, imm)
_PASS_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, int(XdpAction.PASS)) + struct.pack(
    "<BBhi", 0x95, 0, 0, 0
)


def attach_pass_program(ifname: str) -> None:
    """Attach a two-instruction XDP_PASS program to an interface (in the
    calling thread's network namespace). A veth only delivers frames sent to
    it with XDP_TX or a redirect when its receiving end runs XDP; this is all
    it takes. The program stays attached until the link goes away."""
    ifindex = interface_index(ifname)
    lib = libbpf()
    fd = lib.bpf_prog_load(
        BPF_PROG_TYPE_XDP, PASS_PROG_NAME.encode(), b"GPL", _PASS_INSNS, 2, None
    )
    if fd < 0:
        raise DataplaneError(f"cannot load an XDP pass program: {_errstr(fd)}")
    try:
        opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=0)
        ret = lib.bpf_xdp_attach(ifindex, fd, 0, ct.byref(opts))
        if ret < 0:
            raise DataplaneError(f"cannot attach an XDP pass program to {ifname}: {_errstr(ret)}")
    finally:
        os.close(fd)


def _prog_name(prog_id: int) -> str:
    lib = libbpf()
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""
    try:
        info = ct.create_string_buffer(_PROG_INFO_SIZE)
        size = ct.c_uint32(_PROG_INFO_SIZE)
        if lib.bpf_obj_get_info_by_fd(fd, info, ct.byref(size)) < 0:
            return ""
        raw = info.raw[_PROG_INFO_NAME_OFFSET:_PROG_INFO_SIZE]
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")
    finally:
        os.close(fd)
