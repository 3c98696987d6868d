"""The dirty set: each connection is queued once and leaves with its latest state.

conntrackd's resend queue holds references to cache objects, not copies, and
pfsync keeps each state in at most one queue: an update to a connection that
is already queued costs nothing, and the batch carries whatever the connection
looks like when it is sent. Here a pending upsert is a reference to the live
engine object (read at flush time); a destroy replaces a pending upsert.

A destroy followed by a new connection on the same tuple (within one flush
window) keeps both, in that order: the receivers must retire the old
connection before they meet the new one, which has another identity. For the
same reason destroys of successive connections on one tuple are all kept.

Flush when the estimated bytes reach the budget (upsert() / delete() say so)
or when the flush timer set by the oldest pending item fires
(next_deadline(); the caller then calls drain()).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

S = TypeVar("S")  # what an upsert is read from at flush time (an Entry)
D = TypeVar("D")  # a finished delete record

UPSERT_BYTES = 110  # estimate: an IPv4 TCP upsert is 103 bytes on the wire
DELETE_BYTES = 30


class Coalescer(Generic[S, D]):
    def __init__(self, budget: int = 64 * 1024, delay: float = 0.005) -> None:
        if budget <= 0 or delay < 0:
            raise ValueError("the byte budget must be positive and the delay not negative")
        self.budget = budget
        self.delay = delay
        # key -> (pending deletes, oldest first; pending upsert source or None)
        self._pending: dict[Hashable, tuple[tuple[D, ...], S | None]] = {}
        self._bytes = 0
        self._first: float | None = None  # when the oldest pending item was queued
        self.coalesced = 0  # updates absorbed by an already-queued connection

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def upsert(self, key: Hashable, source: S, now: float) -> bool:
        """Queue `source`'s state under `key`. True when the budget is reached."""
        slot = self._pending.get(key)
        if slot is None:
            self._bytes += UPSERT_BYTES
            if self._first is None:
                self._first = now
            self._pending[key] = ((), source)
        else:
            if slot[1] is None:
                self._bytes += UPSERT_BYTES
            else:
                self.coalesced += 1
            self._pending[key] = (slot[0], source)  # keeps its place in the queue
        return self._bytes >= self.budget

    def delete(self, key: Hashable, record: D, now: float) -> bool:
        """Queue a destroy; it replaces a pending upsert of the same key (an
        earlier destroy of another connection on that tuple stays ahead of it)."""
        slot = self._pending.get(key)
        self._bytes += DELETE_BYTES
        if slot is None:
            if self._first is None:
                self._first = now
            self._pending[key] = ((record,), None)
            return self._bytes >= self.budget
        if slot[1] is not None:
            self._bytes -= UPSERT_BYTES
            self.coalesced += 1
        self._pending[key] = ((*slot[0], record), None)
        return self._bytes >= self.budget

    def next_deadline(self) -> float | None:
        return None if self._first is None else self._first + self.delay

    def due(self, now: float) -> bool:
        return self._first is not None and (now >= self._first + self.delay
                                            or self._bytes >= self.budget)

    def drain(self) -> list[tuple[tuple[D, ...], S | None]]:
        """Everything pending, oldest first: per connection key, the deletes to
        send (in order) and then the upsert source, if any."""
        out = list(self._pending.values())
        self._pending = {}
        self._bytes = 0
        self._first = None
        return out


__all__ = ["DELETE_BYTES", "UPSERT_BYTES", "Coalescer"]
