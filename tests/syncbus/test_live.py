"""Members on real time and real buses (LocalBus, embedded amqtt, Mosquitto):
the core, the async shell (service.Member) and the MQTT loop together."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from node.conntrack import Conntrack
from node.conntrack.entry import IPS_HW_OFFLOAD
from node.offload import Card, Faults, HwHit
from syncbus.core import SyncConfig, SyncCore
from syncbus.service import Member
from tests.syncbus.conftest import Brokered
from tests.syncbus.helpers import KEY, open_tcp, open_udp, tcp_packets

pytestmark = pytest.mark.timeout(120)
clock = time.monotonic


class LiveNode:
    def __init__(self, brokered: Brokered, cluster: str, name: str, epoch: int = 1,
                 **cfg: Any) -> None:
        self.name = name
        self.ct = Conntrack()
        self.card = Card(self.ct, Faults(insert_latency=0.0))
        self.core = SyncCore(SyncConfig(cluster, name, KEY, **cfg), self.ct, self.card,
                             epoch=epoch, now=clock())
        core = self.core
        self.bus = brokered.bus(name, tuple(core.subscriptions()),
                                will=lambda s: core.will(s, clock())[:2], backoff_max=0.2)
        self.member = Member(core, self.bus, clock)
        self.tasks: list[asyncio.Task[None]] = []

    async def datapath(self) -> None:
        """What the daemon does between packets: expiry, card polls, events out."""
        while True:
            now = clock()
            self.ct.expire(now)
            self.card.poll(now)
            await self.member.local_events(self.ct.take_events())
            await asyncio.sleep(0.02)

    async def commit(self) -> None:
        await self.member.local_events(self.ct.take_events())

    @property
    def role(self) -> str:
        return self.core.role


async def until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)
    assert cond(), what


@contextlib.asynccontextmanager
async def cluster(brokered: Brokered) -> AsyncIterator[Callable[..., Any]]:
    """Starts LiveNodes on demand; stops them all at the end."""
    name = "t" + uuid.uuid4().hex[:8]
    nodes: list[LiveNode] = []
    async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:

        async def start(node_name: str, **cfg: Any) -> LiveNode:
            n = LiveNode(brokered, name, node_name, **cfg)
            await stack.enter_async_context(n.bus)
            n.tasks = [tg.create_task(n.member.run()), tg.create_task(n.datapath())]
            nodes.append(n)
            return n
        try:
            yield start
        finally:
            for n in nodes:
                for t in n.tasks:
                    t.cancel()


async def kill(node: LiveNode) -> None:
    """kill -9: the will fires, nothing else is said."""
    for t in node.tasks:
        t.cancel()
    await node.bus.crash()


async def test_a_create_on_a_is_installed_in_bs_card(brokered: Brokered) -> None:
    async with cluster(brokered) as start:
        a = await start("a", priority=200)
        await until(lambda: a.role == "active")
        b = await start("b", priority=100)
        await until(lambda: b.role == "standby")
        entries = [open_tcp(a.ct, i, clock()) for i in range(50)]
        await a.commit()
        await until(lambda: b.core.replica.stats["installed"] == 50)
        for e in entries:
            mine = b.ct.find(e.orig)
            assert mine is not None and mine.status & IPS_HW_OFFLOAD
        lat = sorted(b.core.replica.install_latency)
        assert len(lat) == 50 and lat[-1] < 5.0


async def test_after_a_is_killed_b_forwards_as_flows_in_hardware_from_the_first_packet(
        brokered: Brokered) -> None:
    async with cluster(brokered) as start:
        a = await start("a", priority=200)
        await until(lambda: a.role == "active")
        b = await start("b", priority=100)
        await until(lambda: b.role == "standby")
        for i in range(30):
            open_tcp(a.ct, i, clock())
        await a.commit()
        await until(lambda: len(b.ct) == 30)
        t0 = clock()
        await kill(a)
        await until(lambda: b.role == "active", 5.0)
        failover = clock() - t0
        hits = [b.card.lookup(tcp_packets(i)[3], 0, clock()) for i in range(30)]
        assert all(isinstance(h, HwHit) for h in hits)
        assert failover < 2.0


async def test_a_broker_restart_is_followed_by_resync_and_convergence(
        brokered: Brokered) -> None:
    async with cluster(brokered) as start:
        a = await start("a", priority=200)
        await until(lambda: a.role == "active")
        b = await start("b", priority=100)
        await until(lambda: b.role == "standby")
        for i in range(10):
            open_udp(a.ct, i, clock())
        await a.commit()
        await until(lambda: len(b.ct) == 10)
        roles_before = [len(n.core.election.transitions) for n in (a, b)]
        await brokered.restart()
        await until(lambda: not a.bus.status()["connected"] or a.bus.status()["session"] > 1)
        for i in range(10, 20):  # changes while the broker is down (or just back)
            open_udp(a.ct, i, clock())
        await a.commit()
        await until(lambda: a.bus.status()["connected"] and b.bus.status()["connected"])
        await until(lambda: len(b.ct) == 20, 20.0, f"b has {len(b.ct)}")
        assert {e.orig for e in b.ct.entries()} == {e.orig for e in a.ct.entries()}
        assert a.role == "active" and b.role == "standby"
        # and nobody changed role on the way: Mosquitto, shutting down, publishes
        # a's will while b is still connected (b must not take it as a's death)
        assert [len(n.core.election.transitions) for n in (a, b)] == roles_before, \
            b.core.election.transitions


async def test_a_late_joiner_is_fully_synced_before_it_may_become_active(
        brokered: Brokered) -> None:
    async with cluster(brokered) as start:
        a = await start("a", priority=100)
        await until(lambda: a.role == "active")
        for i in range(500):
            open_tcp(a.ct, i, clock())
        await a.commit()
        c = await start("c", priority=250, preempt=True)
        became_active_with: list[int] = []

        def watch() -> bool:
            if c.role == "active" and not became_active_with:
                became_active_with.append(len(c.ct))
            return c.role == "active"
        await until(watch, 20.0)
        assert became_active_with == [500]  # never active with less than everything
        assert c.core.election.gate.state == "ready"
        await until(lambda: a.role == "standby")
