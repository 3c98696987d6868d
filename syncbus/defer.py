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
may move the endpoints on. Packets leave in the order they arrived: one that
did not change anything but arrived behind a held one waits with it.

A peer acknowledges a ct frame (CtAck) once it applied it and every frame
before it; the held packets are tied to the ct seq of the frame that carries
their change. Pure: items are opaque to this module and time is passed in.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 1024  # packets held at once (pfsync: 128 per bucket)


class Deferrals(Generic[T]):
    def __init__(self, timeout: float, limit: int = DEFAULT_LIMIT) -> None:
        if not timeout > 0 or limit < 1:
            raise ValueError("the defer timeout must be positive and the limit at least 1")
        self.timeout = timeout
        self.limit = limit
        self.acked = 0  # highest ct seq a peer acknowledged (this epoch)
        self._held: deque[tuple[int, float, float, T]] = deque()  # seq, since, deadline, item
        self.stats = {"deferred": 0, "released_acked": 0, "released_timeout": 0,
                      "released_overflow": 0, "max_held": 0}
        self.waits: deque[float] = deque(maxlen=4096)  # seconds held, recent releases

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, seq: int, item: T, now: float) -> list[T]:
        """Hold `item` until a peer acknowledged ct seq `seq` (0: nothing to wait
        for, only the order). Returns what may leave now: the item itself when
        nothing is held and `seq` is acknowledged already, and the oldest held
        item when the queue is full."""
        if not self._held and seq <= self.acked:
            return [item]
        self._held.append((seq, now, now + self.timeout, item))
        self.stats["deferred"] += 1
        self.stats["max_held"] = max(self.stats["max_held"], len(self._held))
        if len(self._held) > self.limit:
            _, since, _, oldest = self._held.popleft()
            self.stats["released_overflow"] += 1
            self.waits.append(now - since)
            return [oldest]
        return []

    def ack(self, seq: int) -> None:
        """A peer applied our ct frames up to `seq` (release() hands them out)."""
        if seq > self.acked:
            self.acked = seq

    def next_deadline(self) -> float | None:
        return self._held[0][2] if self._held else None

    def due(self, now: float) -> bool:
        if not self._held:
            return False
        seq, _, deadline, _ = self._held[0]
        return seq <= self.acked or deadline <= now

    def release(self, now: float) -> list[T]:
        """What may leave now, in arrival order: everything from the head whose
        frame a peer acknowledged or whose time is up."""
        out: list[T] = []
        held, stats = self._held, self.stats
        while held:
            seq, since, deadline, item = held[0]
            if seq <= self.acked:
                stats["released_acked"] += 1
            elif deadline <= now:
                stats["released_timeout"] += 1
            else:
                break
            held.popleft()
            self.waits.append(now - since)
            out.append(item)
        return out

    def summary(self) -> dict[str, float | int]:
        waits = sorted(self.waits)
        return {**self.stats, "held": len(self._held), "acked_seq": self.acked,
                "timeout_ms": round(self.timeout * 1000, 3),
                "wait_p50_ms": _ms(waits, 0.5), "wait_p99_ms": _ms(waits, 0.99),
                "wait_max_ms": _ms(waits, 1.0)}


def _ms(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


__all__ = ["DEFAULT_LIMIT", "Deferrals"]
