"""NetFlow v9 / IPFIX in the lab (tests, `make demo`), with real tools:
a libpcap capture of N distinct UDP flows, softflowd replaying it as an
exporter, and nfcapd/nfdump as the collector. Stdlib only.

Facts these helpers rely on (softflowd 1.1.0, nfcapd/nfdump 1.7.1):
- `softflowd -r FILE` blocks in accept() on its control socket unless given
  `-c none`; with it, it reads the whole file, flushes every flow at EOF,
  prints its statistics on stdout and exits by itself.
- nfcapd keys templates by (exporter IP, source id / observation domain), not
  by source port; data whose template it has not seen is dropped silently.
"""

from __future__ import annotations

import csv
import ipaddress
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

from sbulb.telemetry import udp_packet

SRC_NETS = {4: "10.1.0.0/16", 6: "2001:db8:1::/64"}
DSTS = {4: "10.0.0.1", 6: "2001:db8::1"}
T0 = 1_700_000_000  # capture timestamps start here (seconds)


def _in_ns(netns: str | None, cmd: Sequence[str]) -> list[str]:
    """`cmd` run through nsenter in /run/netns/NETNS (nsenter execs: same PID)."""
    return [*(["nsenter", f"--net=/run/netns/{netns}"] if netns else []), *cmd]


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An Ethernet frame with one UDP datagram, IPv4 or IPv6 (from the address
    form), IP and UDP checksums valid."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ethertype = 0x0800 if s.version == 4 else 0x86DD
    macs = bytes.fromhex("020000000002" "020000000001")
    return macs + struct.pack("!H", ethertype) + udp_packet(s, sport, d, dport, payload)


def write_capture(path: Path, flows: int, family: int = 4, src_net: str | None = None,
                  dst: str | None = None, dport: int = 5683, packets: int = 1) -> None:
    """Write a classic libpcap file (LINKTYPE_ETHERNET, microseconds) holding
    `flows` distinct UDP flows to `dst`:`dport`, each of `packets` packets.
    Flow i comes from host (1 + i % H) of `src_net`, port 1024 + i // H,
    H = min(hosts in src_net, 4096); timestamps increase by 10 us a packet,
    the packets of one flow spread over the file (round j holds everyone's
    packet j)."""
    net = ipaddress.ip_network(src_net or SRC_NETS[family])
    dst = dst or DSTS[family]
    if net.version != family or ipaddress.ip_address(dst).version != family:
        raise ValueError(f"src_net {net} / dst {dst} are not IPv{family}")
    hosts = int(min(net.num_addresses - 2, 4096))
    if hosts < 1 or flows > hosts * (65536 - 1024):
        raise ValueError(f"{flows} flows do not fit in {net}")
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    tick = 0
    for round_ in range(packets):
        for i in range(flows):
            src = str(net.network_address + 1 + i % hosts)
            frame = udp_frame(src, dst, 1024 + i // hosts, dport, b"flow %d/%d" % (i, round_))
            usec = tick * 10
            sec, usec = T0 + usec // 1_000_000, usec % 1_000_000
            out += struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame
            tick += 1
    Path(path).write_bytes(out)


def hostport(addr: str, port: int) -> str:
    """softflowd's -n form: `a.b.c.d:port` or `[v6]:port`."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


_EXPORTED = re.compile(
    r"Flows exported: (\d+) \((\d+) records\) in (\d+) packets \((\d+) failures\)")


def run_softflowd(netns: str | None, capture: Path, dest: str, port: int, version: int,
                  timeout: float = 30.0) -> int:
    """Replay `capture` through softflowd, exporting NetFlow `version` (9, or
    10 = IPFIX) to dest:port, and wait (at most `timeout` s) for it to exit
    at the end of the file. Returns the flows softflowd says it exported
    (its statistics line); raises if it failed or reports send failures.
    `-c none` is what makes it read the file and exit; every flow is flushed
    at EOF ("flushed" reason); -m 65536 keeps captures up to that size whole
    (beyond it the oldest are force-expired, still exported)."""
    cmd = _in_ns(netns, ["softflowd", "-r", str(capture), "-n", hostport(dest, port),
                         "-v", str(version), "-d", "-c", "none", "-m", "65536"])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    match = _EXPORTED.search(done.stdout)
    if done.returncode != 0 or match is None or int(match.group(4)):
        raise RuntimeError(f"softflowd failed ({done.returncode}): {done.stdout}{done.stderr}")
    return int(match.group(1))


def _udp_sockets(netns: str | None, port: int) -> list[tuple[int, int]]:
    """(Recv-Q bytes, drops so far) of each UDP socket bound to `port`
    (`ss -m`: a socket's line, then its skmem:(...,d<drops>) line)."""
    out = subprocess.run(_in_ns(netns, ["ss", "-Hulnm", "sport", "=", f":{port}"]),
                         capture_output=True, text=True, timeout=10, check=True).stdout
    queues = [int(line.split()[1]) for line in out.splitlines() if line[:1].strip()]
    drops = [int(d) for d in re.findall(r"skmem:\(.*?,d(\d+)\)", out)]
    return list(zip(queues, drops))


class Collector:
    """nfcapd listening on ADDR:PORT (in `netns` if given), writing to a
    directory of its own; use as a context manager, or call close().

    Started in the foreground (-w DIR -p PORT -b ADDR -B BUFSIZE; -b with an
    IPv6 address binds IPv6, -6 is only for the wildcard) and returned once
    its socket is bound and it has said 'Startup' (after it set the buffer
    size), bounded by `timeout`. After stop(), `drops` holds the datagrams
    the kernel dropped on its socket (buffer full), from ss."""

    def __init__(self, netns: str | None, addr: str, port: int, workdir: Path | None = None,
                 bufsize: int = 1 << 23, timeout: float = 10.0) -> None:
        self.netns, self.addr, self.port, self.timeout = netns, addr, port, timeout
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="nfcapd-")) if workdir is None else Path(workdir)
        self.flowdir = self.dir / "flows"
        self.flowdir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.dir / "nfcapd.log"
        with open(self.logfile, "wb") as log:
            self.process = subprocess.Popen(
                _in_ns(netns, ["nfcapd", "-w", str(self.flowdir), "-p", str(port),
                               "-b", addr, "-B", str(bufsize)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.drops = 0
        deadline = time.monotonic() + timeout
        while "Startup" not in self.log() or not _udp_sockets(netns, port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.close()
                raise RuntimeError(f"nfcapd did not start on {addr}:{port}: {log}")
            time.sleep(0.01)

    def log(self) -> str:
        """What nfcapd printed so far (its per-exporter lines, and at exit the
        'Ident: ... Flows: N, ..., Sequence Errors: N, Bad Packets: N' line)."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self) -> None:
        """Wait (bounded) until nfcapd has read every datagram queued on its
        socket, then SIGTERM it by PID so that it flushes and closes its file."""
        if self.process.poll() is not None:
            return
        deadline = time.monotonic() + self.timeout
        while True:
            sockets = _udp_sockets(self.netns, self.port)
            self.drops = sum(d for _, d in sockets)
            if not any(q for q, _ in sockets) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=self.timeout)

    def records(self) -> list[dict[str, str]]:
        """Every flow nfcapd stored, decoded by `nfdump -R DIR -o csv` (keys:
        sa, da, sp, dp, pr, ipkt, ibyt, ra = exporter address, ...). Stops
        nfcapd first: its current file is only complete after it exits."""
        self.stop()
        out = subprocess.run(["nfdump", "-R", str(self.flowdir), "-o", "csv"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        lines = out.splitlines()
        rows = lines[:lines.index("Summary")] if "Summary" in lines else lines  # then totals
        return [r for r in csv.DictReader(rows) if r.get("ts") != "No matching flows"]

    def flows(self) -> int:
        """The number of flows nfdump decodes from what nfcapd stored."""
        return len(self.records())

    def close(self) -> None:
        """Stop nfcapd and remove the directory if this object made it."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Collector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

