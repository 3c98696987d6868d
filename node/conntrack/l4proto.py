"""The contract between the conntrack core and a layer-4 tracker, and the
verdicts they exchange (struct nf_conntrack_l4proto, NF_* verdicts).

A tracker is an object with:

    packet(ct, entry, pkt, direction, ctinfo, now) -> int
        Called for every packet of `entry`, including its first packet, while
        the entry is still unconfirmed (`entry.confirmed` is False). It checks the
        packet, advances `entry.proto`, refreshes the timeout with
        `ct.refresh(entry, seconds, now)` and caches event bits in `entry.events`.
        Returns ACCEPT, INVALID (the packet is invalid; the entry is left as it
        was), DROP, or REPEAT (the tracker killed the entry; the packet must be
        looked up again and will create a new one).
    state_name(entry) -> str | None
        The protocol state ctnetlink reports (TCP only), else None.
    export(entry) -> dict | None
        Protocol details for dumps and replication (TCP: windows, flags, scale):
        expand(capture(entry)).
    capture(entry) -> object
        An immutable copy of what export() reports, cheap to take (TCP: the
        state's field values): a view captures it for every event, and
        expands it only when somebody reads it.
    expand(captured) -> dict | None
        export()'s dict from a capture().

Trackers hold no per-connection state of their own: it lives in `entry.proto`.
They are registered explicitly in `conntrack.table.TRACKERS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.table import Conntrack
    from node.packet import Packet

# Verdicts (include/uapi/linux/netfilter.h), with the kernel's "negative means
# invalid" convention spelled out.
DROP = 0
ACCEPT = 1
INVALID = -1  # -NF_ACCEPT
REPEAT = -4  # -NF_REPEAT


class L4Tracker(Protocol):
    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int: ...

    def state_name(self, entry: Entry) -> str | None: ...

    def export(self, entry: Entry) -> dict[str, Any] | None: ...

    def capture(self, entry: Entry) -> object: ...

    def expand(self, captured: Any) -> dict[str, Any] | None: ...
