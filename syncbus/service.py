"""The async shell around a SyncCore: bus events in, timers, frames out.

    async with bus:
        member = Member(core, bus, clock)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(member.run())
            ...   # the daemon's own tasks call member.local_events(...) etc.

Member.run() owns two loops, children of one TaskGroup: one reads the bus
(messages, Connected, Disconnected) into the core; one sleeps until the core's
next deadline (or until woken because the daemon gave the core new work) and
publishes what core.poll() returns. The core is plain synchronous code, so the
daemon may call it from any task of the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from node.conntrack.events import CtEvent
from syncbus.bus import Bus, BusMessage, Connected, Disconnected
from syncbus.core import SyncCore
from syncbus.outbox import Publish

log = logging.getLogger("syncbus.service")
MAX_SLEEP = 0.25


class Member:
    def __init__(self, core: SyncCore, bus: Bus, clock: Callable[[], float]) -> None:
        self.core = core
        self.bus = bus
        self.clock = clock
        self._wake = asyncio.Event()
        self.role_events: asyncio.Queue[object] = asyncio.Queue()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._incoming())
            tg.create_task(self._timers())

    def wake(self) -> None:
        """The core has new work (or an earlier deadline): poll it now."""
        self._wake.set()

    async def publish(self, frames: Iterable[Publish]) -> None:
        for f in frames:
            await self.bus.publish(f.topic, f.payload, retain=f.retain)

    async def local_events(self, events: Iterable[CtEvent]) -> None:
        """The engine's events (ct.take_events()), in order."""
        await self.publish(self.core.on_local_events(events, self.clock()))
        self.wake()

    async def touches(self) -> None:
        """Once per poll cycle, after noting local traffic in core.aging."""
        await self.publish(self.core.touches(self.clock()))

    async def goodbye(self) -> None:
        """A clean shutdown: tell the others now instead of waiting for the will."""
        core = self.core
        await self.publish([core.will(core.election.session, self.clock())])
        with contextlib.suppress(TimeoutError):
            await self.bus.drain(2.0)

    def _events_out(self) -> None:
        for ev in self.core.take_events():
            self.role_events.put_nowait(ev)

    async def _incoming(self) -> None:
        core = self.core
        async for ev in self.bus.events():
            now = self.clock()
            if isinstance(ev, BusMessage):
                frames = core.on_message(ev.topic, ev.payload, now)
            elif isinstance(ev, Connected):
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


__all__ = ["Member"]
