"""What the card returns: packet outcomes, job results, poll results, statistics.

All values; nothing here has behaviour beyond reading its own fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IPS_DST_NAT,
    IPS_SRC_NAT,
    Entry,
)
from node.conntrack.tuple import Tuple
from node.offload.hwtable import HwState

# TCA_FLOWER_KEY_CT_FLAGS_* (include/uapi/linux/pkt_cls.h:568-576), as mlx5 writes them
# into its ct_state register for a hit (en/tc_ct.c:742-750).
CT_NEW = 1 << 0
CT_ESTABLISHED = 1 << 1
CT_TRACKED = 1 << 3
CT_REPLY = 1 << 5
CTINFO_CT_STATE = {IP_CT_NEW: CT_TRACKED | CT_NEW,
                   IP_CT_ESTABLISHED: CT_TRACKED | CT_ESTABLISHED,
                   IP_CT_ESTABLISHED_REPLY: CT_TRACKED | CT_ESTABLISHED | CT_REPLY}


class MissReason(IntEnum):
    """Why a packet left the card for software."""

    NO_ENTRY = 0  # no hardware entry for the tuple (or its insert is still in flight)
    FIN_RST = 1  # TCP FIN or RST: hardware rules never match them; the flow is torn down
    UNSUPPORTED = 2  # IPv4 options, fragment, TTL <= 1, IPv6 ext header, other L4 ...
    TABLE_FULL = 3  # the flow's hardware insert was refused: table full


class HwHit(NamedTuple):
    """A packet handled in hardware: the ct info the card restores (mlx5 CT table hit)."""

    entry: Entry
    direction: int  # ORIGINAL 0 / REPLY 1
    ctinfo: int  # IP_CT_*: what act_ct would have attached
    mark: int  # ct mark as installed
    labels: int  # ct labels as installed
    slot: int

    @property
    def zone(self) -> int:
        return self.entry.zone

    @property
    def ct_state(self) -> int:
        """flower ct_state bits: trk|est or trk|new, +rpl in the reply direction."""
        return CTINFO_CT_STATE[self.ctinfo]

    @property
    def nat(self) -> Tuple | None:
        """The tuple the packet is rewritten to (NAT mangle actions), or None."""
        entry = self.entry
        if not entry.status & (IPS_SRC_NAT | IPS_DST_NAT):
            return None
        return entry.tuple(1 - self.direction).invert()


class HwMiss(NamedTuple):
    reason: MissReason


MISS = {reason: HwMiss(reason) for reason in MissReason}


class SwHit(NamedTuple):
    """The software flow table's answer (act_ct skips conntrack for this packet)."""

    entry: Entry
    ctinfo: int
    direction: int


class InsertDone(NamedTuple):
    """A hardware insert took effect: the direction now matches in hardware.
    (Immutable, as the other outcomes; a NamedTuple because one is made per
    direction of every install, a replicated one included.)"""

    entry: Entry
    direction: int
    at: float


@dataclass(frozen=True, slots=True)
class InsertFailed:
    """A hardware insert was refused; the flow stays in software and is retried
    when the software path refreshes it."""

    entry: Entry
    direction: int
    reason: str  # "fault", "table_full", "busy"
    at: float


@dataclass(frozen=True, slots=True)
class Teardown:
    """A flow left the flow table and was handed back to conntrack (fixup done)."""

    entry: Entry
    reason: str  # "fin_rst", "idle", "ct_dying", "outdated"
    at: float


@dataclass(frozen=True, slots=True)
class PollResult:
    """What happened since the previous poll (jobs, teardowns) and in this one."""

    at: float
    gc: bool  # the 1 s bulk read + flow table GC ran in this poll
    completed: tuple[InsertDone, ...] = ()
    failed: tuple[InsertFailed, ...] = ()
    teardowns: tuple[Teardown, ...] = ()
    freed: int = 0
    stats_jobs: int = 0  # flows whose timeout/accounting were refreshed from hardware
    active: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """conntrack entry ids with hardware traffic since the previous bulk read"""


class FlowInfo(NamedTuple):
    """One flow as the card sees it (for tests, tools and listings)."""

    flags: list[str]  # NF_FLOW_* names
    timeout: float  # absolute flow timeout
    hw: tuple[HwState, HwState]  # original, reply
    packets: tuple[int, int]
    bytes: tuple[int, int]
    lastuse: tuple[float, float]


class CardCounters:
    """Live counters (attributes, so the packet path increments them cheaply)."""

    __slots__ = ("deletes", "flows_added", "hw_bytes", "hw_packets", "insert_failures",
                 "inserts", "last_poll_s", "misses", "polls", "stats_jobs", "sw_bytes",
                 "sw_packets", "synced", "teardowns", "updates")

    def __init__(self) -> None:
        self.hw_packets = 0
        self.hw_bytes = 0
        self.sw_packets = 0  # software flow table (fast path) hits
        self.sw_bytes = 0
        self.misses = [0] * len(MissReason)
        self.inserts = 0
        self.insert_failures: dict[str, int] = {}
        self.updates = 0
        self.deletes = 0
        self.flows_added = 0
        self.synced = 0
        self.teardowns: dict[str, int] = {}
        self.stats_jobs = 0
        self.polls = 0
        self.last_poll_s = 0.0  # set by the caller, who owns the clock

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        out["misses"] = {r.name.lower(): self.misses[r] for r in MissReason}
        out["insert_failures"] = sum(self.insert_failures.values())
        out["insert_failures_by_reason"] = dict(self.insert_failures)
        out["teardowns"] = dict(self.teardowns)
        return out
