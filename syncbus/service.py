"""The async shell around a SyncCore: bus events in, timers, frames out.

    async with bus:
        member = Member(core, bus, clock)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(member.run())
            ...   # the daemon's own tasks call member.local_events(...) etc.

Member.run() owns three loops, children of one TaskGroup: one reads the bus
(messages, Connected, Disconnected) into the core; one sleeps until the core's
next deadline (or until woken because the daemon gave the core new work) and
publishes what core.poll() returns; one releases delayed frames (below). The
core is plain synchronous code, so the daemon may call it from any task of the
same event loop.

Sync impairment (a nemesis, for fault injection): member.impair(Impairment(...))
applies to every frame the member publishes and every message it receives,
like netem on its link to the broker: `loss` drops a share, `duplicate` sends
(delivers) a share twice, `delay` + uniform(0, `jitter`) postpones them. The
draws come from a seeded random.Random (impair(..., seed=N)), so a run
replays. Delayed frames wait in a queue (per direction) released by the
member's own task, never blocking the caller; without jitter they keep their
order, and while frames are queued the undelayed ones queue behind them.
Counters per direction: impair_stats["out"|"in"] = frames, dropped,
duplicated, delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from node.conntrack.events import CtEvent
from syncbus.bus import Bus, BusMessage, Connected, Disconnected
from syncbus.core import SyncCore
from syncbus.outbox import Publish

log = logging.getLogger("syncbus.service")
MAX_SLEEP = 0.25
MAX_DELAY = 3600.0  # seconds: delay and jitter bounds


@dataclass(frozen=True)
class Impairment:
    """What a nemesis does to a member's sync frames, both ways."""

    loss: float = 0.0  # share dropped, 0..1
    duplicate: float = 0.0  # share sent (delivered) twice, 0..1
    delay: float = 0.0  # seconds added to every frame
    jitter: float = 0.0  # plus uniform(0, jitter) seconds (reorders)

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], not {v!r}")
        for name in ("delay", "jitter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or not 0.0 <= v <= MAX_DELAY:
                raise ValueError(f"{name} must be a number of seconds in [0, {MAX_DELAY:g}], "
                                 f"not {v!r}")

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "duplicate": self.duplicate, "delay": self.delay,
                "jitter": self.jitter}


def _counters() -> dict[str, int]:
    return {"frames": 0, "dropped": 0, "duplicated": 0, "delayed": 0}


class _Delayed:
    """Frames (or messages) waiting for their time: a heap on (due, order)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, object]] = []
        self.last_due = float("-inf")

    def __len__(self) -> int:
        return len(self.heap)


class Member:
    def __init__(self, core: SyncCore, bus: Bus, clock: Callable[[], float]) -> None:
        self.core = core
        self.bus = bus
        self.clock = clock
        self._wake = asyncio.Event()
        self.role_events: asyncio.Queue[object] = asyncio.Queue()
        # Called with each role/gate/peer event as the core emits it, before the
        # queue: for what must be read at that very moment (the card at a promotion).
        self.on_event: Callable[[object], None] | None = None
        # Called when a peer's ack lets held packets go (defer): the daemon sends them.
        self.on_release: Callable[[], None] | None = None
        self.impairment: Impairment | None = None
        self.seed = 0
        self.rng = random.Random(self.seed)
        self.impair_stats = {"out": _counters(), "in": _counters()}
        self._out = _Delayed()
        self._in = _Delayed()
        self._order = itertools.count()
        self._delayed_wake = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._incoming())
            tg.create_task(self._timers())
            tg.create_task(self._release())

    def wake(self) -> None:
        """The core has new work (or an earlier deadline): poll it now."""
        self._wake.set()

    # ------------------------------------------------------------ impairment
    def impair(self, impairment: Impairment | None, seed: int | None = None) -> None:
        """Impair the sync frames from now on (None: stop; frames already delayed
        still go out when due). A seed restarts the random draws."""
        if seed is not None:
            self.seed = seed
            self.rng = random.Random(seed)
        self.impairment = impairment

    @property
    def pending(self) -> dict[str, int]:
        """Delayed frames not released yet, per direction."""
        return {"out": len(self._out), "in": len(self._in)}

    def _fate(self, q: _Delayed, stats: dict[str, int]) -> list[float | None]:
        """One entry per copy to pass on: None now, else the loop time it is due."""
        stats["frames"] += 1
        imp = self.impairment
        if imp is None:
            return [None] if not q.heap else [self._due(q, 0.0, False)]
        rng = self.rng
        if imp.loss and rng.random() < imp.loss:
            stats["dropped"] += 1
            return []
        copies = 1
        if imp.duplicate and rng.random() < imp.duplicate:
            stats["duplicated"] += 1
            copies = 2
        out: list[float | None] = []
        for _ in range(copies):
            d = imp.delay + (rng.uniform(0.0, imp.jitter) if imp.jitter else 0.0)
            if d > 0:
                stats["delayed"] += 1
            out.append(self._due(q, d, bool(imp.jitter)) if d > 0 or q.heap else None)
        return out

    def _due(self, q: _Delayed, delay: float, jitter: bool) -> float:
        due = asyncio.get_running_loop().time() + delay
        if not jitter:  # keep the order: never before what is queued already
            due = max(due, q.last_due)
        q.last_due = max(q.last_due, due)
        return due

    def _queue(self, q: _Delayed, due: float, item: object) -> None:
        heapq.heappush(q.heap, (due, next(self._order), item))
        self._delayed_wake.set()

    async def _release(self) -> None:
        """Send (deliver) delayed frames when they are due."""
        loop = asyncio.get_running_loop()
        while True:
            heads = [q.heap[0][0] for q in (self._out, self._in) if q.heap]
            if not heads:
                await self._delayed_wake.wait()
                self._delayed_wake.clear()
                continue
            wait = min(heads) - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._delayed_wake.wait()
                self._delayed_wake.clear()
                continue
            now = loop.time()
            while self._out.heap and self._out.heap[0][0] <= now:
                f = heapq.heappop(self._out.heap)[2]
                assert isinstance(f, Publish)
                await self.bus.publish(f.topic, f.payload, retain=f.retain)
            while self._in.heap and self._in.heap[0][0] <= now:
                m = heapq.heappop(self._in.heap)[2]
                assert isinstance(m, BusMessage)
                await self._deliver(m)

    # ------------------------------------------------------------ out
    async def publish(self, frames: Iterable[Publish]) -> None:
        stats = self.impair_stats["out"]
        for f in frames:
            if self.impairment is None and not self._out.heap:
                stats["frames"] += 1
                await self.bus.publish(f.topic, f.payload, retain=f.retain)
                continue
            for due in self._fate(self._out, stats):
                if due is None:
                    await self.bus.publish(f.topic, f.payload, retain=f.retain)
                else:
                    self._queue(self._out, due, f)

    async def local_events(self, events: Iterable[CtEvent], urgent: bool = False) -> None:
        """The engine's events (ct.take_events()), in order; `urgent`: the frames
        go out now, not at the flush timer (packets wait for them: defer)."""
        await self.publish(self.core.on_local_events(events, self.clock(), urgent))
        self.wake()

    async def touches(self) -> None:
        """Once per poll cycle, after noting local traffic in core.aging."""
        await self.publish(self.core.touches(self.clock()))

    async def set_fault(self, fault: str | None) -> None:
        """A tracked data link went down (why) or all are up (None): FAULT, told
        to the others at once (SyncCore.set_fault)."""
        frames = self.core.set_fault(fault, self.clock())
        self._events_out()
        await self.publish(frames)
        self.wake()

    async def goodbye(self) -> None:
        """A clean shutdown: tell the others now instead of waiting for the will."""
        core = self.core
        await self.publish([core.will(core.election.session, self.clock())])
        with contextlib.suppress(TimeoutError):
            await self.bus.drain(2.0)

    def _events_out(self) -> None:
        for ev in self.core.take_events():
            if self.on_event is not None:
                self.on_event(ev)
            self.role_events.put_nowait(ev)

    # ------------------------------------------------------------ in
    async def _deliver(self, m: BusMessage) -> None:
        core = self.core
        acked = core.deferrals.acked if core.deferrals is not None else 0
        frames = core.on_message(m.topic, m.payload, self.clock())
        if core.deferrals is not None and core.deferrals.acked != acked \
                and self.on_release is not None:
            self.on_release()
        self._events_out()
        await self.publish(frames)
        self.wake()

    async def _incoming(self) -> None:
        core = self.core
        stats = self.impair_stats["in"]
        async for ev in self.bus.events():
            if isinstance(ev, BusMessage):
                if self.impairment is None and not self._in.heap:
                    stats["frames"] += 1
                    await self._deliver(ev)
                    continue
                for due in self._fate(self._in, stats):
                    if due is None:
                        await self._deliver(ev)
                    else:
                        self._queue(self._in, due, ev)
                continue
            now = self.clock()
            if isinstance(ev, Connected):
                frames = core.on_connected(ev.session, now)
            elif isinstance(ev, Disconnected):
                core.on_disconnected(now)
                log.warning("%s: bus session %d lost: %s", core.cfg.node, ev.session, ev.reason)
                frames = []
            else:
                continue
            self._events_out()
            await self.publish(frames)
            self.wake()

    async def _timers(self) -> None:
        core = self.core
        while True:
            delay = min(max(core.next_deadline() - self.clock(), 0.0), MAX_SLEEP)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            frames = core.poll(self.clock())
            self._events_out()
            await self.publish(frames)
            if not frames:
                await asyncio.sleep(0)


__all__ = ["Impairment", "Member"]
