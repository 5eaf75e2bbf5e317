"""The benchmark's own XDP programs (tools.c), loaded with bcc: the load
generator, the counter on the far end of the link, and the ceilings."""

from __future__ import annotations

import ctypes as ct
import os
import signal
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from bcc import BPF  # type: ignore[import-not-found]

from sbulb.dataplane import XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, run_live_frames
from sbulb.lab import netns

SOURCE = Path(__file__).with_name("tools.c")
XDP_PASS, XDP_DROP = 2, 1
GENERATOR_CPU = 0
HEADER_LEN = 14 + 20 + 8  # Ethernet, IPv4 without options, UDP
MAX_RUNS = (1 << 31) - 1  # a test run's repeat count: the timer ends it first
MAX_RATE = 50e6  # frames per second no veth reaches: the bound when no count is given


@dataclass(frozen=True)
class Generated:
    sent: int  # frames sent
    rate: float  # frames per second while sending (the generator's own clock)
    seconds: float  # wall time of the run, set-up and tear-down included

    @property
    def sending_seconds(self) -> float:
        return self.sent / self.rate if self.rate else 0.0


class BenchTools:
    def __init__(self, port: int) -> None:
        self.bpf = BPF(src_file=str(SOURCE).encode(), cflags=[f"-DBENCH_PORT={port}", "-w"])
        self.functions = {name: self.bpf.load_func(name.encode(), BPF.XDP)
                          for name in ("generate", "count", "reflect", "drop")}

    # -- attaching (in the calling thread's namespace `ns`)

    def attach(self, ns: str, ifname: str, name: str, generic: bool = False) -> None:
        flags = XDP_FLAGS_SKB_MODE if generic else XDP_FLAGS_DRV_MODE
        with netns(ns):
            self.bpf.attach_xdp(ifname.encode(), self.functions[name], flags)

    def detach(self, ns: str, ifname: str, generic: bool = False) -> None:
        flags = XDP_FLAGS_SKB_MODE if generic else XDP_FLAGS_DRV_MODE
        with netns(ns):
            self.bpf.remove_xdp(ifname.encode(), flags)

    # -- the counter

    def counted(self) -> dict[IPv4Address, int]:
        """Packets counted so far, by destination address."""
        return {IPv4Address(int.from_bytes(key.value.to_bytes(4, "little"), "big")): value.value
                for key, value in self.bpf[b"counted"].items()}

    def reset_counted(self) -> None:
        self.bpf[b"counted"].clear()

    def let_counted_through(self, through: bool) -> None:
        """What the counter does with what it counted: pass it on to the
        far end's stack (sockets see it) or drop it."""
        self.bpf[b"count_action"][ct.c_int(0)] = ct.c_uint32(XDP_PASS if through else XDP_DROP)

    def ceiling_count(self) -> int:
        return sum(self.bpf[b"ceiling"][ct.c_int(0)])

    def reset_ceiling(self) -> None:
        self.bpf[b"ceiling"].clear()

    # -- the generator

    def generate(self, ns: str, ifname: str, frame: bytes, seconds: float,
                 rate: float = 0.0, clients: int = 1, base: IPv4Address = IPv4Address("10.99.0.0"),
                 count: int = 0, base_port: int = 1024) -> Generated:
        """Send `frame` (Ethernet, IPv4 without options, UDP) out of
        `ifname` for `seconds`, at most `count` frames if given, `rate`
        frames per second (0: as fast as this CPU can), the source taking
        `clients` values in turn: address base + i // 16384, port
        base_port + i % 16384. Test runs on CPU GENERATOR_CPU, each ended by
        a timer signal (or its repeat count): a test run costs milliseconds
        to set up and tear down, so they are long."""
        config = self.bpf[b"gen_config"]
        entry = config[ct.c_int(0)]
        entry.interval_ps = int(1e12 / rate) if rate else 0
        # bounded in frames as well as in time
        entry.limit = count or int(seconds * MAX_RATE)
        entry.clients = clients
        entry.base_saddr = int(base)
        entry.base_port = base_port
        header = frame[:HEADER_LEN]
        ct.memmove(ct.addressof(entry.header), header, len(header))
        config[ct.c_int(0)] = entry
        self.bpf[b"gen_state"].clear()
        fd = self.functions["generate"].fd
        affinity = os.sched_getaffinity(0)
        previous = signal.signal(signal.SIGALRM, lambda *_: None)
        os.sched_setaffinity(0, {GENERATOR_CPU})
        try:
            with netns(ns):
                ifindex = socket.if_nametoindex(ifname)
                start = time.monotonic()
                deadline = start + seconds
                while True:
                    left = deadline - time.monotonic()
                    sent = self.sent()
                    if left <= 0 or (count and sent >= count):
                        break
                    if count and not rate:
                        # unpaced, every run sends: the count is a repeat count
                        repeat, slot = count - sent, left
                    elif count:
                        # paced: the time the rest should take, a little more
                        repeat, slot = MAX_RUNS, min(left, (count - sent) / rate * 1.1 + 0.02)
                    else:
                        repeat, slot = MAX_RUNS, left
                    # re-armed every 5 ms: a signal that lands before the
                    # test run starts must not leave it unbounded
                    signal.setitimer(signal.ITIMER_REAL, slot, 0.005)
                    run_live_frames(fd, frame, ifindex, repeat)
                    signal.setitimer(signal.ITIMER_REAL, 0)
                elapsed = time.monotonic() - start
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.sched_setaffinity(0, affinity)
        state = self.bpf[b"gen_state"][ct.c_int(0)]
        span = (state.stamp_ns - state.first_ns) / 1e9
        measured = state.stamp_seq / span if span > 0 else 0.0
        return Generated(int(state.seq), measured, elapsed)

    def sent(self) -> int:
        return int(self.bpf[b"gen_state"][ct.c_int(0)].seq)

    def close(self) -> None:
        self.bpf.cleanup()
