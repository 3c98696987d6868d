"""The card's CT table: hardware entries and their counters.

One hardware entry per offloaded direction of a flow, at slot 2 * fid + direction
(fid: the flow's id in flowtable.FlowTables). Per slot the card keeps:

  state     HwState: ABSENT -> PENDING -> IN_HW -> DYING -> DEAD (then ABSENT when the
            flow is freed); FAILED / FULL when the last insert was refused
  ctinfo    what a hit restores (mlx5's restore_cookie = ct | ctinfo) and the ct_state
            register it writes: trk|est or trk|new, +rpl in the reply direction
  mark      ct mark at the time of the insert (labels: sparse dict, usually empty)
  packets, bytes         hardware counters (cumulative)
  rep_packets, rep_bytes what the last stats read returned (mlx5_fc_query_cached()
                         returns deltas since then); made by the first read: the
                         stats jobs read deltas only for conntrack accounting
                         (nf_conntrack_acct), so a card without it keeps none
  lastuse   the bulk poll at which the counters last changed (mlx5 fs_counters.c:77-91)
  dirty     hit since the last bulk poll

The fields the packet path touches (state, ctinfo, mark, packets, bytes, dirty) are
Python buffers (bytearray / array.array: fast scalar access), each with a numpy view
`<name>_v` over the same memory for the vectorized poll; the others are numpy arrays.

Capacity counts PENDING, IN_HW and DYING entries. Inserts are paced by a token
bucket (insert_rate/s, insert_burst deep): an insert without a token waits for one
(its effect is delayed) unless the wait would exceed max_insert_wait (BUSY).
"""

from __future__ import annotations

from array import array
from enum import IntEnum
from typing import Any

import numpy as np

from node.offload.faults import Faults


class HwState(IntEnum):
    ABSENT = 0
    PENDING = 1  # insert command in flight
    IN_HW = 2  # matches packets
    DYING = 3  # delete command in flight (still matches)
    DEAD = 4  # deleted; the slot is freed with its flow
    FAILED = 5  # the last insert failed (fault, busy)
    FULL = 6  # the last insert failed: table full


class InsertResult(IntEnum):
    OK = 0
    FAULT = 1  # injected failure (fail_next / fail_all)
    FULL = 2  # capacity reached (-ENOSPC)
    BUSY = 3  # rate limit: no token within max_insert_wait


# The members again as module names: an enum member read through its class
# costs a metaclass lookup (~0.2 us), and these are read on every insert.
INSERT_OK, INSERT_FAULT, INSERT_FULL, INSERT_BUSY = InsertResult
INSERT_FAILURE_NAMES = {INSERT_FAULT: "fault", INSERT_FULL: "table_full", INSERT_BUSY: "busy"}

ABSENT, PENDING, IN_HW, DYING, DEAD, FAILED, FULL = (int(s) for s in HwState)


def buffer_column(typecode: str, dtype: type, size: int,
                  old: array[Any] | bytearray | None = None) -> tuple[Any, np.ndarray]:
    """A zero-filled column of `size` items for scalar access (an array.array of
    `typecode`, a bytearray for ""), starting with a copy of `old`, and a numpy
    view of the same memory for the vectorised passes."""
    new: Any = array(typecode, bytes(size * array(typecode).itemsize)) if typecode \
        else bytearray(size)
    if old is not None:
        new[:len(old)] = old  # (the same kind of buffer: an array or a bytearray)
    return new, np.frombuffer(new, dtype)


class HwTable:
    """Hardware CT entries of one card (all zones), in slot-indexed arrays."""

    def __init__(self, faults: Faults, size: int = 2048) -> None:
        self.faults = faults
        self.labels: dict[int, int] = {}
        self.entries = 0  # PENDING + IN_HW + DYING
        self._tokens = float(faults.insert_burst)
        self._refilled_at = float("-inf")
        self.size = 0
        self._alloc(size)

    def _alloc(self, size: int) -> None:
        """(Re)allocate every field for `size` slots, keeping the current contents."""
        old = self.size

        def buf(name: str, typecode: str, dtype: type) -> None:
            col, view = buffer_column(typecode, dtype, size, getattr(self, name) if old else None)
            setattr(self, name, col)
            setattr(self, name + "_v", view)

        buf("state", "", np.uint8)
        buf("ctinfo", "", np.uint8)
        buf("dirty", "", np.uint8)
        buf("mark", "I", np.uint32)
        buf("packets", "q", np.int64)
        buf("bytes", "q", np.int64)
        for name, dtype in (("rep_packets", np.int64), ("rep_bytes", np.int64),
                            ("lastuse", np.float64)):
            current = getattr(self, name, None) if old else None
            if name.startswith("rep_") and current is None:
                setattr(self, name, None)  # (not read yet: read_deltas() makes them)
                continue
            arr = np.zeros(size, dtype)
            if current is not None:
                arr[:old] = current
            setattr(self, name, arr)
        self.size = size

    # Declared for type checkers; created by _alloc().
    state: bytearray
    ctinfo: bytearray
    dirty: bytearray
    mark: array[int]
    packets: array[int]
    bytes: array[int]
    state_v: np.ndarray
    ctinfo_v: np.ndarray
    dirty_v: np.ndarray
    mark_v: np.ndarray
    packets_v: np.ndarray
    bytes_v: np.ndarray
    rep_packets: np.ndarray | None
    rep_bytes: np.ndarray | None
    lastuse: np.ndarray

    def ensure(self, nslots: int) -> None:
        """Grow (zero-filled) to at least `nslots` slots."""
        size = self.size
        if nslots <= size:
            return
        while size < nslots:
            size *= 2
        self._alloc(size)

    # ------------------------------------------------------------ commands
    def _token(self, now: float) -> float | None:
        """When an insert issued at `now` gets its token, or None (busy)."""
        f = self.faults
        if now > self._refilled_at:
            elapsed = now - self._refilled_at
            self._tokens = min(float(f.insert_burst), self._tokens + elapsed * f.insert_rate)
            self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return now
        wait = (1.0 - self._tokens) / f.insert_rate
        if wait > f.max_insert_wait:
            return None
        self._tokens -= 1.0
        return now + wait

    def insert(self, slot: int, ctinfo: int, mark: int, labels: int,
               now: float) -> tuple[InsertResult, float]:
        """A new entry: (OK, when it takes effect) or (the failure, now)."""
        f = self.faults
        if f.take_insert_fault():
            self.state[slot] = FAILED
            return INSERT_FAULT, now
        if self.entries >= f.capacity:
            self.state[slot] = FULL
            return INSERT_FULL, now
        start = self._token(now)
        if start is None:
            self.state[slot] = FAILED
            return INSERT_BUSY, now
        self.entries += 1
        self.state[slot] = PENDING
        self.update(slot, ctinfo, mark, labels)
        return INSERT_OK, start + f.insert_latency

    def take_tokens(self, n: int, now: float) -> bool:
        """Whether `n` inserts issued at `now` would all succeed at once: no
        fault armed, room for n more entries, a token each without waiting.
        If so their tokens are taken (insert_taken() does the rest), exactly
        as n calls of insert() would take them; if not, nothing changes that
        those calls would not change the same way."""
        f = self.faults
        if n <= 0 or f.fail_all or f.fail_next or self.entries + n > f.capacity:
            return False
        if now > self._refilled_at:  # (_token()'s refill: once per instant)
            elapsed = now - self._refilled_at
            self._tokens = min(float(f.insert_burst), self._tokens + elapsed * f.insert_rate)
            self._refilled_at = now
        if self._tokens < n:  # (n - 1.0 would leave the last one waiting)
            return False
        self._tokens -= n  # (exact: whole numbers off a float below 2**53, as n times 1.0)
        return True

    def insert_taken(self, slot: int, ctinfo: int, mark: int, labels: int,
                     settled: bool) -> None:
        """insert() of an entry whose token take_tokens() took: PENDING until
        insert_latency after the instant it was issued, or already IN_HW
        (`settled`: no latency, settle() at once)."""
        self.entries += 1
        self.state[slot] = IN_HW if settled else PENDING
        self.update(slot, ctinfo, mark, labels)

    def update(self, slot: int, ctinfo: int, mark: int, labels: int) -> None:
        """Rewrite an entry's ct info in place (mlx5_tc_ct_entry_update_rules())."""
        self.ctinfo[slot] = ctinfo
        self.mark[slot] = mark
        if labels:
            self.labels[slot] = labels
        else:
            self.labels.pop(slot, None)

    def remove(self, slot: int, now: float) -> float:
        """Start deleting an IN_HW entry; returns when the delete takes effect."""
        self.state[slot] = DYING
        return now + self.faults.insert_latency

    def settle(self, slot: int) -> int:
        """A command in flight took effect: PENDING -> IN_HW, DYING -> DEAD.
        Returns the new state."""
        st = self.state[slot]
        if st == PENDING:
            st = IN_HW
        elif st == DYING:
            st = DEAD
            self.entries -= 1
        self.state[slot] = st
        return st

    def reset(self, slot: int) -> None:
        """The flow is freed: the slot goes back to ABSENT with zero counters."""
        if self.state[slot] in (PENDING, IN_HW, DYING):
            self.entries -= 1
        self.state[slot] = ABSENT
        self.packets[slot] = self.bytes[slot] = 0
        if self.rep_packets is not None and self.rep_bytes is not None:
            self.rep_packets[slot] = self.rep_bytes[slot] = 0
        self.lastuse[slot] = 0.0
        self.dirty[slot] = 0
        self.labels.pop(slot, None)

    # ------------------------------------------------------------ counters
    def bulk_read(self, now: float, nslots: int) -> np.ndarray:
        """mlx5's periodic bulk query: lastuse = now for every counter that moved.
        Returns the flow ids (slot // 2) with a moved counter, among the first
        `nslots` slots (an even number)."""
        dirty = self.dirty_v[:nslots]
        pairs = dirty.reshape(-1, 2)
        moved = np.flatnonzero(pairs[:, 0] | pairs[:, 1])
        if moved.size:
            np.copyto(self.lastuse[:nslots], now, where=dirty.view(np.bool_))
            dirty[:] = 0
        return moved

    def read_deltas(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mlx5_fc_query_cached(): packets and bytes since the previous read (the
        first read of a slot: since it was inserted)."""
        rep_packets, rep_bytes = self.rep_packets, self.rep_bytes
        if rep_packets is None or rep_bytes is None:
            rep_packets = self.rep_packets = np.zeros(self.size, np.int64)
            rep_bytes = self.rep_bytes = np.zeros(self.size, np.int64)
        pk = self.packets_v[slots]
        by = self.bytes_v[slots]
        dp = pk - rep_packets[slots]
        db = by - rep_bytes[slots]
        rep_packets[slots] = pk
        rep_bytes[slots] = by
        return dp, db
