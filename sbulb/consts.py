"""Numbers shared with the XDP program (sbulb/bpf/consts.h).

Written out, never renumbered, never reused; tests/test_contract.py checks
that they match the C header.
"""

from __future__ import annotations

import enum


class Stat(enum.IntEnum):
    """Slots of the sbulb_stats per-CPU counter array (enum sbulb_stat)."""

    TX_INGRESS = 0
    TX_EGRESS = 1
    PASS_NOT_IP = 2
    PASS_NOT_UDP = 3
    PASS_NOT_BALANCED = 4
    PASS_FRAGMENT = 5  # unused since fragments are balanced; never reused
    PASS_TTL = 6
    PASS_MALFORMED = 7
    PASS_IPV6_EXT = 8
    DROP_NO_REAL_SERVER = 9
    DROP_NOT_ASSOCIATED = 10
    DROP_ASSOC_FAILED = 11
    ASSOC_CLIENT = 12
    ASSOC_SERVER = 13
    ASSOC_REPICK = 14
    DROP_FRAG_UNKNOWN = 15
    TX_ICMP_INGRESS = 16
    TX_ICMP_EGRESS = 17
    FWD_FIB_TX = 18
    FWD_FIB_REDIRECT = 19
    FWD_FIB_PASS = 20
    FWD_NO_NEIGH_SWAP = 21
    FWD_NO_NEIGH_PASS = 22
    FWD_MAC_SWAP = 23
    FWD_FIB_DROP = 24
    FWD_FIB_LOCAL = 25
    FWD_FRAG_NEEDED = 26

    @property
    def is_verdict(self) -> bool:
        """True for slots that count packets (one per packet); ASSOC_* count
        association changes, FWD_* how rewritten packets left."""
        return not self.name.startswith(("ASSOC_", "FWD_"))


STAT_MAX = 27


class EventType(enum.IntEnum):
    """Types of data-path events (enum sbulb_event_type)."""

    ASSOC_CLIENT = 1
    ASSOC_SERVER = 2
    ASSOC_REPICK = 3
    DROP_NOT_ASSOCIATED = 4
    DROP_NO_REAL_SERVER = 5
    REUSED_INGRESS = 6
    REUSED_EGRESS = 7


class XdpAction(enum.IntEnum):
    """XDP verdicts (uapi linux/bpf.h)."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


# Event verbosity compiled into the program (SBULB_EVENTS).
EVENTS_NONE = 0
EVENTS_CHANGES = 1
EVENTS_ALL = 2
