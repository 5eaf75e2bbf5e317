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
    ACTION_ABORTED = 27
    ACTION_DROP = 28
    ACTION_PASS = 29
    ACTION_TX = 30
    ACTION_REDIRECT = 31
    DROP_ICMP_MISDIRECTED = 32
    ASSOC_RATE_LIMITED = 33
    DROP_FRAG_RATE = 34
    TX_MIRROR = 35
    DROP_MIRROR_REPLY = 36
    DROP_MIRROR_NO_META = 37
    MIRROR_SENT = 38
    MIRROR_FAILED = 39
    TX_TEMPLATE = 40
    TEMPLATE_COPIED = 41
    TEMPLATE_NOT_KEPT = 42

    @property
    def kind(self) -> "StatKind":
        return STAT_KINDS[self]

    @property
    def is_verdict(self) -> bool:
        """True for slots that count packets (one per packet, by reason)."""
        return self.kind in (StatKind.TX, StatKind.PASS, StatKind.DROP)

    @property
    def label(self) -> str:
        """Its name within its kind, for metrics: TX_INGRESS -> ingress."""
        return self.name.split("_", 1)[1].lower()


class StatKind(enum.Enum):
    """What a counter slot counts."""

    TX = "tx"  # packets rewritten and sent on, by direction (verdict)
    PASS = "pass"  # packets given to the kernel untouched, by reason (verdict)
    DROP = "drop"  # packets dropped, by reason (verdict)
    ASSOC = "assoc"  # associations created (on top of a verdict)
    FWD = "fwd"  # how rewritten packets left (on top of a verdict)
    ACTION = "action"  # the XDP action each packet finally got
    LIMIT = "limit"  # new clients balanced but not remembered (on top of a verdict)
    MIRROR = "mirror"  # copies of mirrored datagrams, made or not (on top of a verdict)
    TEMPLATE = "template"  # telemetry templates copied, or not kept (on top of a verdict)
    RETIRED = "retired"  # a slot no longer counted; its number is never reused


# Written out, as the numbers are: a slot's kind is part of the contract.
STAT_KINDS = {
    Stat.TX_INGRESS: StatKind.TX,
    Stat.TX_EGRESS: StatKind.TX,
    Stat.PASS_NOT_IP: StatKind.PASS,
    Stat.PASS_NOT_UDP: StatKind.PASS,
    Stat.PASS_NOT_BALANCED: StatKind.PASS,
    Stat.PASS_FRAGMENT: StatKind.RETIRED,
    Stat.PASS_TTL: StatKind.PASS,
    Stat.PASS_MALFORMED: StatKind.PASS,
    Stat.PASS_IPV6_EXT: StatKind.PASS,
    Stat.DROP_NO_REAL_SERVER: StatKind.DROP,
    Stat.DROP_NOT_ASSOCIATED: StatKind.DROP,
    Stat.DROP_ASSOC_FAILED: StatKind.DROP,
    Stat.ASSOC_CLIENT: StatKind.ASSOC,
    Stat.ASSOC_SERVER: StatKind.ASSOC,
    Stat.ASSOC_REPICK: StatKind.ASSOC,
    Stat.DROP_FRAG_UNKNOWN: StatKind.DROP,
    Stat.TX_ICMP_INGRESS: StatKind.TX,
    Stat.TX_ICMP_EGRESS: StatKind.TX,
    Stat.FWD_FIB_TX: StatKind.FWD,
    Stat.FWD_FIB_REDIRECT: StatKind.FWD,
    Stat.FWD_FIB_PASS: StatKind.FWD,
    Stat.FWD_NO_NEIGH_SWAP: StatKind.FWD,
    Stat.FWD_NO_NEIGH_PASS: StatKind.FWD,
    Stat.FWD_MAC_SWAP: StatKind.FWD,
    Stat.FWD_FIB_DROP: StatKind.FWD,
    Stat.FWD_FIB_LOCAL: StatKind.FWD,
    Stat.FWD_FRAG_NEEDED: StatKind.FWD,
    Stat.ACTION_ABORTED: StatKind.ACTION,
    Stat.ACTION_DROP: StatKind.ACTION,
    Stat.ACTION_PASS: StatKind.ACTION,
    Stat.ACTION_TX: StatKind.ACTION,
    Stat.ACTION_REDIRECT: StatKind.ACTION,
    Stat.DROP_ICMP_MISDIRECTED: StatKind.DROP,
    Stat.ASSOC_RATE_LIMITED: StatKind.LIMIT,
    Stat.DROP_FRAG_RATE: StatKind.DROP,
    Stat.TX_MIRROR: StatKind.TX,
    Stat.DROP_MIRROR_REPLY: StatKind.DROP,
    Stat.DROP_MIRROR_NO_META: StatKind.DROP,
    Stat.MIRROR_SENT: StatKind.MIRROR,
    Stat.MIRROR_FAILED: StatKind.MIRROR,
    Stat.TX_TEMPLATE: StatKind.TX,
    Stat.TEMPLATE_COPIED: StatKind.TEMPLATE,
    Stat.TEMPLATE_NOT_KEPT: StatKind.TEMPLATE,
}

STAT_MAX = 43


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
