"""The interpreter's cyclic garbage collector, watched: how long each collection
stopped the node.

A node holds its tables as Python objects (an entry, its tuples, its TCP state),
and CPython's cyclic collector walks every tracked object of a generation when
it collects it: with 200k connections a full (generation 2) collection stops
the event loop for a few hundred milliseconds, during which no packet is
forwarded and no heartbeat is answered. The pauses are measured here
(gc.callbacks) and shown in /state "gc" and /metrics (ctlab_gc_pause_seconds),
so that a long failover or a latency spike can be told apart from one.

And made rarer. A full collection runs when the objects promoted into the old
generation since the last one exceed a quarter of it. A standby promotes
objects at the rate it applies updates: a peer's frame (~600 records) is
decoded whole before any of it is applied, and its records (NamedTuples:
CPython never untracks a tuple subclass, gcmodule.c untrack_tuples()) stay
alive while the frame applies, through several young collections at the
default threshold of 700 allocations: promoted, then dead. Measured (a standby
with 100k TCP entries applying 400k updates): 3 full collections of up to
0.45 s at the default; none with a young threshold of 10000, whose young
collections stay under ~2 ms (the middle generation's under ~25 ms). The node
sets it while it runs (YOUNG_THRESHOLD).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from node.daemon.metrics import Histogram

PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


class GcWatch:
    """A gc.callbacks hook: install() it, and uninstall() it when the node stops."""

    def __init__(self) -> None:
        self.pauses = {gen: Histogram(PAUSE_BUCKETS, keep=1000) for gen in (0, 1, 2)}
        self.max_s = {0: 0.0, 1: 0.0, 2: 0.0}
        self.last_full_s: float | None = None
        self.collected = 0
        self._started = 0.0
        self._saved: tuple[int, ...] | None = None  # the thresholds before install()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        gen = int(info.get("generation", 2))
        if gen not in self.pauses:
            return
        self.pauses[gen].observe(took)
        self.max_s[gen] = max(self.max_s[gen], took)
        self.collected += int(info.get("collected", 0))
        if gen == 2:
            self.last_full_s = took

    def install(self, young_threshold: int | None = YOUNG_THRESHOLD) -> None:
        """Time every collection from now on; with `young_threshold`, also collect
        the young generation that much less often (restored by uninstall())."""
        gc.callbacks.append(self)
        if young_threshold is not None and self._saved is None:
            self._saved = gc.get_threshold()
            gc.set_threshold(young_threshold, *self._saved[1:])

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def summary(self) -> dict[str, Any]:
        """Collections, total and longest pause per generation (ms), the last
        full collection's pause, and how many unreachable objects (garbage that
        refcounting could not free: reference cycles) the collections found."""
        return {"collections": {str(g): h.count for g, h in self.pauses.items()},
                "pause_total_ms": {str(g): round(1000 * h.sum, 1)
                                   for g, h in self.pauses.items()},
                "pause_max_ms": {str(g): round(1000 * v, 1) for g, v in self.max_s.items()},
                "last_full_ms": None if self.last_full_s is None
                else round(1000 * self.last_full_s, 1), "unreachable": self.collected,
                "thresholds": list(gc.get_threshold())}
