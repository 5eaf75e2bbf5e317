"""VIP announcement through BIRD (2.x): sbulb decides, BIRD speaks BGP.

sbulb announces a VIP while it is attached and at least one service of
that VIP has a server that takes new clients (weight > 0, not down), and
withdraws it when it stops, when every server of its services is down or
drained, and when a reload failed to apply to one of its services (this
balancer's data path may then not be what its peers have). Its one
mechanism: it writes a file of two BIRD static protocols holding a route
per announced VIP (a /32 or /128, blackhole: BIRD only exports it, the
data path is XDP's), then asks BIRD to read its configuration again
(`birdc configure`), which changes the static routes without resetting
any BGP session. The operator's bird.conf includes the file and exports
the protocols `sbulb_vips4` / `sbulb_vips6` to the router (README,
Scale-out).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Iterable, Mapping

from sbulb.config import IPAddress
from sbulb.state import DesiredState

log = logging.getLogger("sbulb")

BIRDC_TIMEOUT = 5.0  # seconds: birdc configure answers in milliseconds


def decide(desired: DesiredState, attached: bool,
           failed: Iterable[str] = ()) -> dict[IPAddress, str]:
    """Each VIP's announcement: "announced", or why not ("not attached",
    "no server takes new clients", "reload failed")."""
    broken = set(failed)
    verdicts: dict[IPAddress, str] = {}
    for spec in desired.services:
        if not attached:
            verdict = "not attached"
        elif spec.name in broken:
            verdict = "reload failed"
        elif not any(s.weight > 0 for s in spec.serving):
            verdict = "no server takes new clients"
        else:
            verdict = "announced"
        # a VIP is announced if any of its services can serve
        if verdicts.get(spec.vip) != "announced":
            verdicts[spec.vip] = verdict
    return verdicts


def bird_config(vips: Iterable[IPAddress], pid: int) -> str:
    """The file BIRD includes: a static protocol per family, one route per VIP."""
    wanted = sorted(vips, key=lambda a: (a.version, a.packed))
    lines = [f"# written by sbulb (pid {pid}): the VIPs this balancer announces; do not edit"]
    for family, channel, bits in ((4, "ipv4", 32), (6, "ipv6", 128)):
        lines.append(f"protocol static sbulb_vips{family} {{")
        lines.append(f"\t{channel};")
        lines.extend(f"\troute {a}/{bits} blackhole;" for a in wanted if a.version == family)
        lines.append("}")
    return "\n".join(lines) + "\n"


class BirdAnnouncer:
    """Writes the include file and reconfigures BIRD when the set of
    announced VIPs changes."""

    def __init__(self, include: Path, control_socket: str) -> None:
        self.include = include
        self.control_socket = control_socket
        self._written: frozenset[IPAddress] | None = None  # None: not yet, or failed
        self._tried = False

    @property
    def active(self) -> bool:
        """Whether this sbulb has told BIRD (or tried to) anything yet."""
        return self._tried

    def apply(self, verdicts: Mapping[IPAddress, str]) -> bool:
        """Make BIRD announce exactly the VIPs whose verdict is
        "announced"; False (logged once per attempt) if BIRD could not be
        told (the next change tries again)."""
        wanted = frozenset(vip for vip, verdict in verdicts.items() if verdict == "announced")
        if wanted == self._written:
            return True
        self._tried = True
        try:
            self.include.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.include.with_name(f".{self.include.name}.{os.getpid()}")
            tmp.write_text(bird_config(wanted, os.getpid()))
            os.replace(tmp, self.include)
            result = subprocess.run(["birdc", "-s", self.control_socket, "configure"],
                                    capture_output=True, text=True, timeout=BIRDC_TIMEOUT)
            output = " ".join(result.stdout.split())
            # (birdc says a config error on its output, not in its exit code)
            accepted = "Reconfigured" in output or "Reconfiguration in progress" in output
            if result.returncode != 0 or not accepted:
                raise OSError(output or result.stderr.strip() or f"exit {result.returncode}")
        except (OSError, subprocess.SubprocessError) as e:
            self._written = None
            log.error("announce.failed include=%s socket=%s reason=%s", self.include,
                      self.control_socket, " ".join(str(e).split()))
            return False
        before = self._written or frozenset()
        self._written = wanted
        log.info("announce.changed announced=%s withdrawn=%s",
                 ",".join(map(str, sorted(wanted - before, key=str))) or "-",
                 ",".join(map(str, sorted(before - wanted, key=str))) or "-")
        return True
