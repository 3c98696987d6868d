"""Nemesis hooks of the sync layer: a held bus link (hold/release: the will fires
at once, no reconnect until released) on every broker kind, and the Member's
sync impairment (loss, duplication, delay with and without jitter, seeded) on
a recording bus and between two live members."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from node.conntrack import Conntrack
from node.offload import Card, Faults
from syncbus.bus import BusConfig, BusEvent, Connected, Disconnected, LocalBroker, LocalBus
from syncbus.core import SyncConfig, SyncCore
from syncbus.outbox import Publish
from syncbus.service import Impairment, Member
from tests.syncbus.conftest import Brokered, messages, next_event
from tests.syncbus.helpers import KEY, open_tcp

pytestmark = pytest.mark.timeout(60)
clock = time.monotonic


# ================================================================ hold / release
async def test_a_held_link_fires_the_will_and_stays_down_until_released(
        brokered: Brokered) -> None:
    p = brokered.prefix

    def will(session: int) -> tuple[str, bytes]:
        return f"{p}/hb/a", f"offline {session}".encode()
    async with brokered.bus("watch", (f"{p}/hb/+",)) as watch, \
            brokered.bus("a", will=will, keepalive=5, backoff_max=0.1) as a:
        await watch.wait_connected()
        assert isinstance(await next_event(a, Connected), Connected)
        await a.publish(f"{p}/hb/a", b"alive", retain=True)
        assert (await messages(watch, 1))[0].payload == b"alive"
        t0 = time.monotonic()
        a.hold()
        assert (await messages(watch, 1, timeout=4))[0].payload == b"offline 1"
        assert time.monotonic() - t0 < 4  # at once, not after the keepalive
        ev = await next_event(a, Disconnected)
        assert isinstance(ev, Disconnected) and ev.session == 1
        await asyncio.sleep(0.6)  # several backoffs: it does not reconnect
        st = a.status()
        assert st["link"] == "cut" and not st["connected"] and st["session"] == 1
        assert st["holds"] == 1 and "held" in st["last_error"]
        assert not await a.publish(f"{p}/hb/a", b"lost")
        assert a.status()["dropped_offline"] >= 1
        a.release()
        ev = await next_event(a, Connected)
        assert isinstance(ev, Connected) and ev.session == 2
        assert a.status()["link"] == "up"
        await a.wait_connected()
        await a.publish(f"{p}/hb/a", b"back", retain=True)
        assert (await messages(watch, 1))[0].payload == b"back"


async def test_a_hold_while_disconnected_keeps_the_bus_off_until_released() -> None:
    broker = LocalBroker()
    async with LocalBus(broker, BusConfig("mqtt://local", "a", backoff_max=0.05)) as a:
        await a.wait_connected()
        broker.stop()
        await asyncio.sleep(0.05)
        a.hold()
        broker.start()
        await asyncio.sleep(0.3)
        assert not a.connected and a.status()["link"] == "cut"
        a.release()
        await a.wait_connected(2)


# ================================================================ impairment, one member
class Recorder:
    """A Bus that records what is published (and delivers nothing)."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self.queue: asyncio.Queue[BusEvent] = asyncio.Queue()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        self.sent.append((asyncio.get_running_loop().time(), payload))
        return True

    async def subscribe(self, pattern: str) -> None:
        pass

    async def events(self) -> AsyncIterator[BusEvent]:
        while True:
            yield await self.queue.get()

    async def drain(self, timeout: float = 10.0) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}

    def abort_connection(self) -> None:
        pass

    async def crash(self, timeout: float = 10.0) -> None:
        pass

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


def member(bus: Any) -> Member:
    core = SyncCore(SyncConfig("c1", "a", KEY), Conntrack(), None, epoch=1, now=clock())
    return Member(core, bus, clock)


FRAMES = [Publish("t", str(i).encode()) for i in range(200)]


async def test_loss_and_duplication_are_seeded_draws() -> None:
    runs = []
    for _ in range(2):
        rec = Recorder()
        m = member(rec)
        m.impair(Impairment(loss=0.3, duplicate=0.2), seed=42)
        await m.publish(FRAMES)
        runs.append([p for _, p in rec.sent])
        st = m.impair_stats["out"]
        assert st["frames"] == 200 and 30 < st["dropped"] < 90 and 10 < st["duplicated"] < 60
        assert len(rec.sent) == 200 - st["dropped"] + st["duplicated"]
    assert runs[0] == runs[1]
    rec = Recorder()
    m = member(rec)
    m.impair(Impairment(loss=1.0))
    await m.publish(FRAMES)
    assert rec.sent == [] and m.impair_stats["out"]["dropped"] == 200
    m.impair(None)
    await m.publish(FRAMES[:3])
    assert [p for _, p in rec.sent] == [b"0", b"1", b"2"]


async def test_delay_postpones_without_blocking_and_keeps_the_order() -> None:
    rec = Recorder()
    m = member(rec)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(m._release())
        loop = asyncio.get_running_loop()
        m.impair(Impairment(delay=0.2))
        t0 = loop.time()
        await m.publish(FRAMES[:10])
        assert loop.time() - t0 < 0.05 and rec.sent == []  # the caller did not wait
        assert m.pending == {"out": 10, "in": 0}
        m.impair(None)  # undelayed frames queue behind the delayed ones
        await m.publish(FRAMES[10:12])
        async with asyncio.timeout(2):
            while len(rec.sent) < 12:
                await asyncio.sleep(0.01)
        assert [p for _, p in rec.sent] == [f.payload for f in FRAMES[:12]]
        assert rec.sent[0][0] - t0 >= 0.2
        assert m.impair_stats["out"]["delayed"] == 10 and m.pending["out"] == 0
        # jitter: each frame gets its own extra delay, so they may reorder
        rec.sent.clear()
        m.impair(Impairment(delay=0.01, jitter=0.1), seed=1)
        await m.publish(FRAMES[:30])
        async with asyncio.timeout(2):
            while len(rec.sent) < 30:
                await asyncio.sleep(0.01)
        got = [p for _, p in rec.sent]
        assert sorted(got) == sorted(f.payload for f in FRAMES[:30])
        assert got != [f.payload for f in FRAMES[:30]]
        task.cancel()


# ================================================================ impairment, two live members
class Live:
    def __init__(self, broker: LocalBroker, cluster: str, name: str, **cfg: Any) -> None:
        self.ct = Conntrack()
        self.card = Card(self.ct, Faults(insert_latency=0.0))
        self.core = core = SyncCore(SyncConfig(cluster, name, KEY, **cfg), self.ct, self.card,
                                    epoch=1, now=clock())
        self.bus = LocalBus(broker, BusConfig("mqtt://local", name, tuple(core.subscriptions()),
                                              will=lambda s: core.will(s, clock())[:2],
                                              backoff_max=0.1))
        self.member = Member(core, self.bus, clock)


@contextlib.asynccontextmanager
async def two() -> AsyncIterator[tuple[Live, Live]]:
    broker = LocalBroker()
    name = "t" + uuid.uuid4().hex[:8]
    a, b = Live(broker, name, "a", priority=200), Live(broker, name, "b", priority=100)
    async with a.bus, b.bus, asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(a.member.run()), tg.create_task(b.member.run())]
        try:
            async with asyncio.timeout(10):
                while (a.core.role, b.core.role) != ("active", "standby"):
                    await asyncio.sleep(0.02)
            yield a, b
        finally:
            for t in tasks:
                t.cancel()


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_outbound_loss_keeps_the_creates_from_the_peer_until_it_stops() -> None:
    async with two() as (a, b):
        a.member.impair(Impairment(loss=1.0))
        e = open_tcp(a.ct, 1, clock())
        await a.member.local_events(a.ct.take_events())
        await asyncio.sleep(0.5)
        assert b.ct.find(e.orig) is None
        assert a.member.impair_stats["out"]["dropped"] >= 1
        a.member.impair(None)
        e2 = open_tcp(a.ct, 2, clock())
        await a.member.local_events(a.ct.take_events())
        await until(lambda: b.ct.find(e2.orig) is not None and b.ct.find(e.orig) is not None)
        assert b.core.replica.stats["gaps"] >= 1  # the lost frame came back by resync


async def test_inbound_loss_duplication_and_delay_on_the_receiver() -> None:
    async with two() as (a, b):
        b.member.impair(Impairment(loss=1.0))
        e = open_tcp(a.ct, 1, clock())
        await a.member.local_events(a.ct.take_events())
        await asyncio.sleep(0.3)
        assert b.ct.find(e.orig) is None and b.member.impair_stats["in"]["dropped"] >= 1
        b.member.impair(Impairment(duplicate=1.0, delay=0.3))
        t0 = clock()
        e2 = open_tcp(a.ct, 2, clock())
        await a.member.local_events(a.ct.take_events())
        await until(lambda: b.ct.find(e2.orig) is not None)
        assert clock() - t0 >= 0.3
        st = b.member.impair_stats["in"]
        assert st["duplicated"] >= 1 and st["delayed"] >= 2
        assert b.core.replica.stats["duplicates"] >= 1
