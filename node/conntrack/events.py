"""What leaves the engine: frozen views of entries and ctnetlink-style events.

ctnetlink turns the cached event bits of one packet into one message
(nf_conntrack_netlink.c ctnetlink_conntrack_event): DESTROY for IPCT_DESTROY,
NEW for IPCT_NEW/IPCT_RELATED, UPDATE for any other bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.conntrack.entry import (
    IPCT_DESTROY,
    IPCT_NEW,
    IPCT_RELATED,
    IPS_ASSURED,
    IPS_HW_OFFLOAD,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    event_names,
    status_names,
)
from node.conntrack.tuple import Tuple

NEW = "NEW"
UPDATE = "UPDATE"
DESTROY = "DESTROY"

# Why an entry was destroyed (not in ctnetlink: the engine knows, the control API
# shows it): its timeout passed, early drop (table full), a flush, a TCP RST that
# ended a connection never replied to, a SYN reopening a closed connection,
# removed by replication (a peer's delete or snapshot), or any other kill
# (act_ct force, a NAT clash).
DESTROY_REASONS = ("timeout", "early_drop", "flush", "rst", "reopen", "synced", "kill")


@dataclass(frozen=True, slots=True)
class CtView:
    """A snapshot of one entry, as ctnetlink would dump it."""

    id: int
    orig: Tuple
    reply: Tuple
    zone: int
    status: int
    proto_state: str | None
    timeout: float  # seconds left (not rounded)
    mark: int
    labels: int
    helper: str | None
    master: Tuple | None
    packets: tuple[int, int] = (0, 0)  # original, reply
    bytes: tuple[int, int] = (0, 0)
    period: float = 0.0  # the timeout the entry was last given, seconds (Entry.timeout)
    # The protocol state as it was when the view was made (the tracker's
    # capture(): TCP, its field values), expanded into `protoinfo` only when
    # read: most views (engine events) never are.
    proto_capture: Any = field(default=None, repr=False)
    tracker: Any = field(default=None, repr=False, compare=False)

    @property
    def protoinfo(self) -> dict[str, Any] | None:
        """Protocol details as ctnetlink dumps them (TCP: state, windows, scale,
        flags per direction), or None (the tracker's expand())."""
        return None if self.tracker is None else self.tracker.expand(self.proto_capture)

    @property
    def flags(self) -> list[str]:
        """The bracketed flags conntrack -L prints (UNREPLIED, ASSURED, [HW_]OFFLOAD)."""
        out = []
        if not self.status & IPS_SEEN_REPLY:
            out.append("UNREPLIED")
        if self.status & IPS_HW_OFFLOAD:
            out.append("HW_OFFLOAD")
        elif self.status & IPS_OFFLOAD:
            out.append("OFFLOAD")
        elif self.status & IPS_ASSURED:
            out.append("ASSURED")
        return out

    def labels_list(self) -> list[int]:
        return [i for i in range(128) if self.labels >> i & 1]

    def status_list(self) -> list[str]:
        return status_names(self.status)


@dataclass(frozen=True, slots=True)
class CtEvent:
    type: str  # NEW | UPDATE | DESTROY
    bits: int  # IPCT_* mask
    entry: CtView
    at: float  # engine time of the event
    reason: str = ""  # DESTROY only: why (DESTROY_REASONS); "" for NEW/UPDATE

    @property
    def bit_names(self) -> list[str]:
        return event_names(self.bits)


def event_type(bits: int) -> str:
    if bits & IPCT_DESTROY:
        return DESTROY
    if bits & (IPCT_NEW | IPCT_RELATED):
        return NEW
    return UPDATE
