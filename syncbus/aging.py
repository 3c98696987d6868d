"""Distributed aging, pure: an entry expires only when no member saw traffic on
it for its timeout.

Each member notes the connections its datapath (software path or card
counters) saw traffic on, and once per poll cycle publishes them as a
TouchDigest of (zone, orig, seconds_ago). Ages travel as "seconds ago" and each
receiver converts them to its own clock on receipt (last_seen = now -
seconds_ago), so a clock skew between members changes nothing; only the
transit time (milliseconds) is added.

Every member keeps the newest last-seen per connection across members and
extends the local entry so that it expires no earlier than last_seen + its
timeout (Conntrack.refresh), and its card flow no earlier than last_seen + the
flow timeout (Card.touch, as a hardware stats job would). An extension is never
taken back: when an active dies, its last touches stay in effect. A destroy is
a tombstone (replica.py), not an aging matter.

The daemon calls:
    note(zone, orig, at)          per connection with local traffic (max kept)
    digest(now) -> [Touch]        once per poll cycle; publish via Outbox.touches()
    receive(digest, now)          for each TouchDigest from a peer
    apply(ct, now, card)          after receive(): extend local entries
    forget(key)                   when an entry is destroyed
    prune(now)                    now and then (drops last-seen older than horizon)
"""

from __future__ import annotations

from typing import Protocol

from node.conntrack.entry import Entry
from node.conntrack.table import Conntrack
from node.conntrack.tuple import Tuple
from syncbus.messages import ConnKey, Touch, TouchDigest

HORIZON = 3600.0  # last-seen older than this is forgotten (the entry keeps its extension)


class TouchHook(Protocol):
    """node.offload.Card.touch: extend the connection's flow from a peer's lastused."""

    def touch(self, entry: Entry, lastused: float, now: float) -> bool: ...


class Aging:
    def __init__(self, *, horizon: float = HORIZON) -> None:
        self.horizon = horizon
        self.last_seen: dict[ConnKey, float] = {}  # newest remote last-seen, local clock
        self._pending: dict[ConnKey, float] = {}  # received, not yet applied
        self._local: dict[ConnKey, float] = {}  # this node's traffic since the last digest
        self.stats = {"noted": 0, "published": 0, "received": 0, "extended": 0, "unknown": 0}

    # ------------------------------------------------------------ local traffic
    def note(self, zone: int, orig: Tuple, at: float) -> None:
        key = (zone, orig)
        if self._local.get(key, float("-inf")) < at:
            self._local[key] = at
        self.stats["noted"] += 1

    def digest(self, now: float) -> list[Touch]:
        """This poll cycle's touches (and forget them)."""
        local, self._local = self._local, {}
        self.stats["published"] += len(local)
        return [Touch(zone, orig, max(now - at, 0.0)) for (zone, orig), at in local.items()]

    # ------------------------------------------------------------ remote traffic
    def receive(self, digest: TouchDigest, now: float) -> int:
        """Record a peer's touches in this node's clock; returns how many moved
        a connection's last-seen forward."""
        seen, pending = self.last_seen, self._pending
        moved = 0
        for zone, orig, ago in digest.touches:
            at = now - ago
            key = (zone, orig)
            if seen.get(key, float("-inf")) < at:
                seen[key] = at
                pending[key] = at
                moved += 1
        self.stats["received"] += len(digest.touches)
        return moved

    def apply(self, ct: Conntrack, now: float, card: TouchHook | None = None) -> int:
        """Extend local entries (and card flows) to last_seen + their timeout.
        Returns the number of entries extended. Connections not (yet) in the
        table are left to the replica, which reads last_seen when it creates them."""
        pending, self._pending = self._pending, {}
        extended = 0
        for (zone, orig), at in pending.items():
            entry = ct.find(orig, zone)
            if entry is None:
                self.stats["unknown"] += 1
                continue
            if extend(ct, entry, at, now):
                extended += 1
            if card is not None:
                card.touch(entry, at, now)
        self.stats["extended"] += extended
        return extended

    def forget(self, key: ConnKey) -> None:
        self.last_seen.pop(key, None)
        self._pending.pop(key, None)
        self._local.pop(key, None)

    def prune(self, now: float) -> int:
        cutoff = now - self.horizon
        old = [k for k, at in self.last_seen.items() if at < cutoff]
        for k in old:
            del self.last_seen[k]
        return len(old)


def extend(ct: Conntrack, entry: Entry, last_seen: float, now: float) -> bool:
    """Make `entry` expire no earlier than last_seen + its timeout. Conntrack's
    refresh() records the seconds it is given as the entry's timeout; the
    entry's own timeout (its state's) is put back, so the next extension still
    adds a full timeout to its last-seen."""
    period = entry.timeout
    at = last_seen + period
    if at <= entry.expires_at or at <= now:
        return False
    before = entry.expires_at
    ct.refresh(entry, at - now, now)  # a no-op for IPS_FIXED_TIMEOUT
    entry.timeout = period
    return entry.expires_at > before


__all__ = ["HORIZON", "Aging", "TouchHook", "extend"]
