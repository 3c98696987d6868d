"""Deferral: a packet that changed a connection leaves only when a peer has it.

Asynchronous replication has a window: a connection created (or moved on, say
from SYN_RECV to ESTABLISHED) in the last milliseconds before the active dies
exists only on the active. pfsync closes it with `defer`: the first packet of a
new state is held until the peer's INS_ACK or a timeout (PFSYNC_DEFER_TIMEOUT,
20 ms in current FreeBSD), at most 128 held per bucket, the oldest released
early when more come (if_pfsync.c, pfsync_defer()).

Here the node holds every packet whose processing produced a replicated change
(a new connection, a TCP state change, a new expectation), not only the first:
unlike pf, conntrack's TCP state machine refuses what a stale copy does not
expect (an ACK of a connection the standby still has in SYN_SENT is INVALID),
so each step of the handshake must be on a peer before the packet that made it
may move the endpoints on. Other connections' packets pass; a packet of a
connection with a packet held waits behind it (hold_behind()), so each
connection's packets leave in the order they came.

A peer acknowledges a ct frame (CtAck) once it applied it and every frame
before it; a held packet is tied to the ct seq of the frame that carries its
change. Pure: items and flow keys are opaque here, time is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 1024  # packets held at once (pfsync: 128 per bucket)


class _Held(NamedTuple, Generic[T]):
    seq: int  # the ct frame a peer must acknowledge
    flow: Hashable  # the connection it belongs to (its order is kept)
    since: float
    deadline: float
    item: T


class Deferrals(Generic[T]):
    def __init__(self, timeout: float, limit: int = DEFAULT_LIMIT) -> None:
        if not timeout > 0 or limit < 1:
            raise ValueError("the defer timeout must be positive and the limit at least 1")
        self.timeout = timeout
        self.limit = limit
        self.acked = 0  # highest ct seq a peer acknowledged (this epoch)
        self._held: deque[_Held[T]] = deque()  # arrival order
        self._flows: dict[Hashable, int] = {}  # flow -> how many of its packets are held
        self.stats = {"deferred": 0, "released_acked": 0, "released_timeout": 0,
                      "released_overflow": 0, "max_held": 0}
        self.waits: deque[float] = deque(maxlen=4096)  # seconds held, recent releases
        self.transits: deque[float] = deque(maxlen=4096)  # seconds an ack took, recent

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, flow: Hashable) -> bool:
        """Whether a packet of `flow` is held (the next one must wait behind it)."""
        return flow in self._flows

    def hold(self, seq: int, flow: Hashable, item: T, now: float) -> list[T]:
        """Hold `item` of `flow` until a peer acknowledged ct seq `seq` and the
        flow's earlier packets left. Returns what may leave now: the item itself
        when neither holds it, and the oldest held item when the queue is full."""
        if seq <= self.acked and flow not in self._flows:
            return [item]
        self._held.append(_Held(seq, flow, now, now + self.timeout, item))
        self._flows[flow] = self._flows.get(flow, 0) + 1
        self.stats["deferred"] += 1
        self.stats["max_held"] = max(self.stats["max_held"], len(self._held))
        if len(self._held) > self.limit:
            oldest = self._held.popleft()
            self._left(oldest, now)
            self.stats["released_overflow"] += 1
            return [oldest.item]
        return []

    def hold_behind(self, flow: Hashable, item: T, now: float) -> list[T]:
        """A packet that changed nothing, of a flow with packets held: it leaves
        right after them (it waits for what they wait for)."""
        return self.hold(0, flow, item, now)

    def ack(self, seq: int, transit: float | None = None) -> None:
        """A peer applied our ct frames up to `seq` (release() hands them out);
        `transit`: how long the ack took to come (its send time on the peer's
        clock against ours: meaningful only on one host, or with synced clocks)."""
        if seq > self.acked:
            self.acked = seq
        if transit is not None:
            self.transits.append(transit)

    def next_deadline(self) -> float | None:
        return self._held[0].deadline if self._held else None  # deadlines only grow

    def release(self, now: float) -> list[T]:
        """What may leave now, in arrival order: every held packet whose frame a
        peer acknowledged or whose time is up, unless an earlier packet of its
        flow stays held."""
        out: list[T] = []
        kept: deque[_Held[T]] = deque()
        blocked: set[Hashable] = set()
        acked, stats = self.acked, self.stats
        for h in self._held:
            if h.flow not in blocked:
                if h.seq <= acked:
                    stats["released_acked"] += 1
                elif h.deadline <= now:
                    stats["released_timeout"] += 1
                else:
                    blocked.add(h.flow)
                    kept.append(h)
                    continue
                self._left(h, now)
                out.append(h.item)
            else:
                kept.append(h)
        self._held = kept
        return out

    def _left(self, h: _Held[T], now: float) -> None:
        n = self._flows[h.flow] - 1
        if n:
            self._flows[h.flow] = n
        else:
            del self._flows[h.flow]
        self.waits.append(now - h.since)

    def summary(self) -> dict[str, float | int]:
        waits, transits = sorted(self.waits), sorted(self.transits)
        return {**self.stats, "held": len(self._held), "acked_seq": self.acked,
                "timeout_ms": round(self.timeout * 1000, 3),
                "wait_p50_ms": _ms(waits, 0.5), "wait_p99_ms": _ms(waits, 0.99),
                "wait_max_ms": _ms(waits, 1.0), "ack_transit_p50_ms": _ms(transits, 0.5),
                "ack_transit_p99_ms": _ms(transits, 0.99)}


def _ms(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


__all__ = ["DEFAULT_LIMIT", "Deferrals"]
