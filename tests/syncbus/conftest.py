"""Brokers for the syncbus tests: LocalBroker, the embedded amqtt broker and a
real Mosquitto (started on a free loopback port, stopped by PID)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncbus.broker import MOSQUITTO, BrokerProcess, Mosquitto
from syncbus.bus import BusConfig, BusEvent, BusMessage, LocalBroker, LocalBus, MqttBus, Will

BROKERS = ["local", pytest.param("amqtt", marks=pytest.mark.broker),
           pytest.param("mosquitto", marks=pytest.mark.broker)]


def have_mosquitto() -> bool:
    return Path(MOSQUITTO).exists()


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[Mosquitto]:
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed")
    with Mosquitto() as m:
        yield m


class Brokered:
    """Makes buses against one broker of a given kind, and restarts it."""

    def __init__(self, kind: str, url: str | None, local: LocalBroker | None,
                 restart: Callable[[], Any]) -> None:
        self.kind, self.url, self.local, self._restart = kind, url, local, restart
        self.prefix = f"ctlab/t{uuid.uuid4().hex[:10]}"  # a unique topic tree per test

    def bus(self, client_id: str, subscriptions: tuple[str, ...] = (),
            will: Will | None = None, **kw: Any) -> MqttBus | LocalBus:
        cfg = BusConfig(self.url or "mqtt://local", f"{client_id}-{self.prefix[-6:]}",
                        subscriptions, will=will, **kw)
        if self.local is not None:
            return LocalBus(self.local, cfg)
        return MqttBus(cfg)

    async def restart(self) -> None:
        r = self._restart()
        if asyncio.iscoroutine(r):
            await r


@pytest.fixture(params=BROKERS)
async def brokered(request: pytest.FixtureRequest) -> AsyncIterator[Brokered]:
    kind = request.param
    if kind == "local":
        lb = LocalBroker()

        def bounce() -> None:
            lb.stop()
            lb.start()
        yield Brokered(kind, None, lb, bounce)
    elif kind == "mosquitto":
        m = request.getfixturevalue("mosquitto")
        yield Brokered(kind, m.url, None, m.restart)
    else:  # amqtt, in its own process as `ctlab broker` runs it (restart: by PID)
        with BrokerProcess() as bp:
            yield Brokered(kind, bp.url, None, bp.restart)


async def next_event(bus: MqttBus | LocalBus, want: type = BusMessage,
                     timeout: float = 10.0) -> BusEvent:
    async with asyncio.timeout(timeout):
        async for ev in bus.events():
            if isinstance(ev, want):
                return ev
    raise AssertionError("unreachable")


async def messages(bus: MqttBus | LocalBus, n: int, timeout: float = 20.0) -> list[BusMessage]:
    out: list[BusMessage] = []
    async with asyncio.timeout(timeout):
        async for ev in bus.events():
            if isinstance(ev, BusMessage):
                out.append(ev)
                if len(out) == n:
                    return out
    return out
